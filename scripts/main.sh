#!/usr/bin/env bash
# The main job on the embedded defaults, for a newcomer: the whole study at a small budget (about 15 min
# on 2 cores). Converts SmolLM2-135M-Instruct, builds train and test data (disjoint sources), trains the
# SFT baseline and the contrastive method at equal compute, scores zero-shot / SFT / contrastive / oracle
# with lm-eval (vLLM backend) on the omission and placeholder tasks, and publishes the leaderboard:
# runs/quick/page/index.html (+ leaderboard.json, leaderboard.md, f1_by_domain.png, screenshot.png).
# Run it again after an interruption: finished stages are skipped, training resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m leaderboard.experiment --budget "${BUDGET:-15m}" --out "${OUT:-runs/quick}"
