#!/usr/bin/env bash
# The main job on the embedded defaults, for a newcomer: the whole study, small (18.4 min on 2 cores, timed
# 2026-12-06 in a fresh clone; see the README).
# Converts SmolLM2-135M-Instruct, builds a curriculum train split and a test suite (disjoint sources), trains
# the SFT baseline for 3 minutes and the contrastive method for the same FLOPs with the trainers' recipe,
# scores zero-shot / SFT / contrastive / oracle with lm-eval (vLLM backend) on 20 instances per omission
# task, and publishes the leaderboard: runs/quick/page/index.html (+ leaderboard.json, leaderboard.md,
# f1_by_domain.png, screenshot.png). Run it again after an interruption: finished stages are skipped,
# training resumes from its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m study.experiment --train-minutes "${TRAIN_MINUTES:-3}" --n-eval "${N_EVAL:-20}" \
    --n-eval-placeholder "${N_EVAL_PLACEHOLDER:-0}" --out "${OUT:-runs/quick}"
