#!/usr/bin/env bash
# The main job on the embedded defaults: prepare SmolLM2-135M-Instruct, write the default omission test
# suite, check it with the oracle, and score the model zero-shot with lm-eval (HF backend, CPU).
# N (instances per domain, default 20) trades time for precision: 20 per domain takes ~15 min on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-20}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

absence-bench prepare-model --out checkpoints/smollm2-135m-instruct
absence-bench generate-suite --out-dir data/suite --variants omission --n "$N"
for file in data/suite/*_omission_test.jsonl; do
  absence-bench oracle --data "$file" > /dev/null && echo "oracle F1 1.0 on $file"
done
lm_eval --include_path task_configs --tasks absencebench \
  --model hf --model_args pretrained=checkpoints/smollm2-135m-instruct,dtype=float32 \
  --apply_chat_template --batch_size 4 \
  --metadata "{\"data_dir\": \"data/suite\"}" \
  --output_path results/zero-shot --log_samples
