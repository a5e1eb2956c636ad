#!/usr/bin/env bash
# The main job on the embedded defaults: prepare SmolLM2-135M-Instruct, write the default omission test
# suite (100 instances per domain), check it with the oracle, and score the model zero-shot with lm-eval
# on the vLLM backend (CPU). About 8 minutes on 2 cores; N=20 makes it a 2-minute smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-100}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

absence-bench prepare-model --out checkpoints/smollm2-135m-instruct
absence-bench generate-suite --out-dir data/suite --variants omission --n "$N"
for file in data/suite/*_omission_test.jsonl; do
  absence-bench oracle --data "$file" > /dev/null && echo "oracle F1 1.0 on $file"
done
lm_eval --include_path task_configs --tasks absencebench \
  --model vllm --apply_chat_template --batch_size auto \
  --model_args pretrained=checkpoints/smollm2-135m-instruct,dtype=bfloat16,gpu_memory_utilization=0.35,max_model_len=8192,enforce_eager=True \
  --metadata "{\"data_dir\": \"data/suite\"}" \
  --output_path results/zero-shot --log_samples
