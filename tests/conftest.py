"""Shared fixtures: a tiny random Llama checkpoint, the prepared SmolLM2 checkpoint, a git repository of PR-style
commits, and killing a training run at its first checkpoint."""

import json
import os
import signal
import subprocess
import time
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
def git_repo(tmp_path_factory) -> Path:
    """A real repository with PR-style commits (subjects ending in (#N)) of a small Python file: a PR source
    that neither the embedded records nor any training pool holds."""
    repo = tmp_path_factory.mktemp("repo")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(git + ["init", "-q", "-b", "main"], check=True)
    body = [f"value_{i} = {i * 7}" for i in range(40)]
    for n in range(12):
        for i in range(n % 3, 40, 3):
            body[i] = f"value_{i} = {i * 7 + n + 1}  # revision {n}"
        (repo / "values.py").write_text("\n".join(body) + "\n")
        subprocess.run(git + ["add", "values.py"], check=True)
        subprocess.run(git + ["commit", "-q", "-m", f"Revise values round {n} (#{100 + n})"], check=True)
    return repo


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as an HF checkpoint, converted once per machine (~30 s) into
    $REVERSE_NEEDLE_CACHE (default ~/.cache/reverse-needle) and reused by later sessions."""
    from absence_tasks.models import prepare_embedded_model

    cache_root = Path(os.environ.get("REVERSE_NEEDLE_CACHE") or Path.home() / ".cache" / "reverse-needle")
    return prepare_embedded_model(cache_root / "checkpoints" / "smollm2-135m-instruct")


@pytest.fixture
def kill_at_first_checkpoint():
    """kill(command, out, env, cwd): start a training command, SIGKILL it as soon as its first checkpoint in `out`
    is complete (the run must still be going then), and return that checkpoint's global step."""
    def kill(command: list[str], out: Path, env: dict[str, str], cwd: Path, timeout: float = 240.0) -> int:
        from trainers.run import last_complete_checkpoint

        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + timeout
            while last_complete_checkpoint(out) is None and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, "the run ended before it could be killed"
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
        return json.loads((Path(last_complete_checkpoint(out)) / "trainer_state.json").read_text())["global_step"]
    return kill
