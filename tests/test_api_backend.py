"""Models behind an OpenAI-compatible API run the same tasks: a real `vllm serve` on localhost answers
lm-eval's `local-chat-completions` backend exactly as lm-eval's direct vLLM backend does, and a server
that is down or answers garbage is one error line."""

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from absence_tasks.lm_eval_models import vllm_cpu_every_core

N_INSTANCES = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lm_eval_env(tmp_path: Path) -> dict:
    # The server's engine gets the thread binding absence-lm-eval gives its own vLLM backend: the same thread
    # count, hence the same floating-point sums and the same greedy answers.
    return {**os.environ, **vllm_cpu_every_core(), "REVERSE_NEEDLE_CACHE": str(tmp_path / "cache"),
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def chat_api_args(port: int, model: str = "smollm2", tokenizer: Path | None = None) -> list[str]:
    # tokenizer=: the tasks size each instance's generation budget in the served model's tokens.
    return ["--model", "local-chat-completions", "--apply_chat_template", "--model_args",
            f"model={model},base_url=http://127.0.0.1:{port}/v1/chat/completions,num_concurrent=1,"
            f"max_retries=1,tokenized_requests=False{f',tokenizer={tokenizer}' if tokenizer else ''}"]


def run_task(tmp_path: Path, out: Path, model_args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["absence-lm-eval", "--tasks", "absence_poetry", *model_args, "--metadata", json.dumps({"n": N_INSTANCES}),
         "--output_path", str(out), "--log_samples"],
        env=lm_eval_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=900)


def samples_by_doc(out: Path) -> dict[str, dict]:
    (samples_file,) = out.rglob("samples_absence_poetry_*.jsonl")
    return {s["doc_hash"]: s for s in map(json.loads, samples_file.read_text().splitlines())}


@pytest.mark.slow
def test_a_local_openai_compatible_server_scores_like_the_direct_vllm_backend(tmp_path, smollm2_dir):
    pytest.importorskip("vllm", reason="the vllm extra is not installed")
    port = free_port()
    engine_args = ["--dtype", "bfloat16", "--max-model-len", "4096", "--enforce-eager"]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        ["vllm", "serve", str(smollm2_dir), "--host", "127.0.0.1", "--port", str(port), "--served-model-name",
         "smollm2", "--gpu-memory-utilization", "0.3", *engine_args],
        env=lm_eval_env(tmp_path), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "vllm serve did not come up in 10 minutes"
                time.sleep(2)
        api = run_task(tmp_path, tmp_path / "api", chat_api_args(port, tokenizer=smollm2_dir))
        assert api.returncode == 0, api.stderr[-3000:]
    finally:
        server.terminate()
        server.wait(timeout=120)
        log.close()
    # The direct backend runs after the server is gone: two engines would each reserve their share of RAM.
    direct = run_task(tmp_path, tmp_path / "direct", [
        "--model", "vllm", "--apply_chat_template", "--model_args",
        f"pretrained={smollm2_dir},dtype=bfloat16,gpu_memory_utilization=0.3,max_model_len=4096,enforce_eager=True"])
    assert direct.returncode == 0, direct.stderr[-3000:]
    api_samples, direct_samples = samples_by_doc(tmp_path / "api"), samples_by_doc(tmp_path / "direct")
    assert len(api_samples) == N_INSTANCES and api_samples.keys() == direct_samples.keys()
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    for doc_hash, sample in api_samples.items():
        reference = direct_samples[doc_hash]
        # The chat prompt, the per-instance budget and the stop sequence reached the server unchanged: the
        # API gets the chat messages that the direct backend renders with the checkpoint's chat template ...
        (messages,) = [json.loads(m) for m in sample["arguments"]["gen_args_0"]["arg_0"]]
        assert [m["role"] for m in messages] == ["user"]
        assert reference["arguments"]["gen_args_0"]["arg_0"] == tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True)
        assert sample["arguments"]["gen_args_0"]["arg_1"] == reference["arguments"]["gen_args_0"]["arg_1"]
        assert sample["arguments"]["gen_args_0"]["arg_1"]["max_gen_toks"] == reference["doc"]["max_gen_toks"]
        # ... so greedy decoding gave the same answer and the same score.
        assert sample["resps"] == reference["resps"] and sample["resps"][0][0]
        assert sample["f1"] == reference["f1"] and sample["micro_f1"] == reference["micro_f1"]
    # The API row is published under the served model's name, next to the paper's reported rows.
    board = tmp_path / "leaderboard.json"
    for args in (["publish", str(tmp_path / "api")], ["add-reported"]):
        proc = subprocess.run([sys.executable, "-m", "leaderboard", *args, "--out", str(board)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
    rows = json.loads(board.read_text())["rows"]
    (api_row,) = [r for r in rows if r["method"] != "reported"]
    assert (api_row["model"], api_row["method"], api_row["backend"]) == ("smollm2", "zero-shot", "local-chat-completions")
    assert any(r["method"] == "reported" for r in rows)


class _GarbageHandler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("body, fragment", [
    (b"<html>not an API</html>", "is not a chat completion"),
    (b'{"object": "error", "message": "no such model"}', "is not a chat completion"),
    (b'{"choices": []}', "is not a chat completion"),
])
def test_a_server_that_answers_garbage_is_one_error_line(tmp_path, body, fragment):
    handler = type("Handler", (_GarbageHandler,), {"body": body})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = run_task(tmp_path, tmp_path / "out", chat_api_args(server.server_address[1]))
    finally:
        server.shutdown()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("absence-lm-eval: error: the API server at "), proc.stderr[-2000:]
    assert fragment in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_server_that_is_down_is_one_error_line(tmp_path):
    port = free_port()
    proc = run_task(tmp_path, tmp_path / "out", chat_api_args(port))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"absence-lm-eval: error: the API server at "
                                                f"http://127.0.0.1:{port}/v1/chat/completions does not answer (ConnectionError)"]
    assert not (tmp_path / "out").exists()
