"""Shared fixtures: a tiny random Llama checkpoint and the prepared SmolLM2 checkpoint."""

import os
from pathlib import Path

import pytest

# Nothing in the suite may reach the Hugging Face hub (the machine has no network for it).
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with the real SmolLM2 tokenizer and chat template, built once per session."""
    from absence_tasks.models import tiny_llama_checkpoint

    return tiny_llama_checkpoint(tmp_path_factory.mktemp("models") / "tiny-llama", seed=0)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as an HF checkpoint, converted once per machine (~30 s) into
    $REVERSE_NEEDLE_CACHE (default ~/.cache/reverse-needle) and reused by later sessions."""
    from absence_tasks.models import prepare_embedded_model

    cache_root = Path(os.environ.get("REVERSE_NEEDLE_CACHE") or Path.home() / ".cache" / "reverse-needle")
    return prepare_embedded_model(cache_root / "checkpoints" / "smollm2-135m-instruct")
