"""The AbsenceBench tasks inside the real lm-eval: CLI runs, data switches, budgets, log samples."""

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from absence_tasks.generate import generate_instances
from absence_tasks.lm_eval_tasks import (BYTES, generation_budget, instance_from_doc, micro_f1_aggregation,
                                         token_counter)
from absence_tasks.loading import load_instances_for_task
from absence_tasks.schema import DataError, Instance, write_jsonl
from absence_tasks.scoring import PASS50_F1, oracle_answer, pass_at_ks, score_response

ROOT = Path(__file__).resolve().parent.parent
TASKS = str(ROOT / "task_configs")


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "REVERSE_NEEDLE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(cmd, env, cwd):
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def results_of(out_dir: Path, key: str = "results") -> dict:
    (path,) = out_dir.rglob("results_*.json")
    return json.loads(path.read_text())[key]


def samples_of(out_dir: Path, task: str) -> list[dict]:
    (path,) = out_dir.rglob(f"samples_{task}_2*.jsonl")  # 2…: the date, not a longer task name
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_oracle_scores_one_on_every_task_through_the_cli(tmp_path, env):
    out = tmp_path / "oracle"
    # No --include_path: absence-lm-eval indexes the installed task folder itself.
    run(["absence-lm-eval", "--tasks", "absencebench", "absencebench_placeholder",
         "absencebench_needle", "--model", "absence-oracle", "--metadata", json.dumps({"n": 12}),
         "--output_path", str(out), "--log_samples"], env, tmp_path)
    results = results_of(out)
    tasks = [t for t in results if t.startswith("absence_")]
    assert len(tasks) == 9
    for task in tasks:
        assert results[task]["f1,none"] == 1.0 and results[task]["micro_f1,none"] == 1.0, task
    for group in ("absencebench", "absencebench_placeholder", "absencebench_needle"):
        assert results[group]["f1,none"] == 1.0
    sample = samples_of(out, "absence_poetry")[0]
    assert sample["micro_f1"]["fp"] == 0 and sample["micro_f1"]["fn"] == 0
    assert sample["micro_f1"]["matched_lines"] == sample["micro_f1"]["parsed_lines"]


def test_empty_answers_score_zero(tmp_path, env):
    out = tmp_path / "empty"
    run(["absence-lm-eval", "--include_path", TASKS, "--tasks", "absencebench", "--model", "absence-empty",
         "--metadata", json.dumps({"n": 8}), "--output_path", str(out)], env, tmp_path)
    results = results_of(out)
    assert results["absencebench"]["f1,none"] == 0.0
    assert all(results[t]["recall,none"] == 0.0 for t in ("absence_numerical", "absence_poetry", "absence_github_prs"))


@pytest.mark.parametrize("chat", [False, True], ids=["raw", "chat-template"])
def test_plain_lm_eval_with_an_hf_model(tmp_path, env, tiny_llama_dir, chat):
    """The README's invocation, on a tiny random Llama: the run completes and reports every metric."""
    out = tmp_path / "hf"
    cmd = ["lm_eval", "--include_path", TASKS, "--tasks", "absence_poetry", "absence_numerical",
           "--model", "hf", "--model_args", f"pretrained={tiny_llama_dir},dtype=float32",
           "--metadata", json.dumps({"n": 3}), "--output_path", str(out), "--log_samples"]
    run(cmd + (["--apply_chat_template"] if chat else []), env, tmp_path)
    results = results_of(out)
    for task in ("absence_poetry", "absence_numerical"):
        for metric in ("f1", "precision", "recall", "micro_f1"):
            assert 0.0 <= results[task][f"{metric},none"] <= 1.0
        assert "f1_stderr,none" in results[task]
    samples = samples_of(out, "absence_poetry")
    assert len(samples) == 3
    prompt = samples[0]["arguments"]["gen_args_0"]["arg_0"]
    assert "Here is the complete original poem:" in prompt
    assert ("<|im_start|>user" in prompt) == chat
    # Each request carries its own budget, the one stored with the doc.
    assert all(s["arguments"]["gen_args_0"]["arg_1"]["max_gen_toks"] == s["doc"]["max_gen_toks"] for s in samples)


def test_data_file_switch_accepts_our_and_upstream_files(tmp_path, env):
    instances = generate_instances("poetry", "omission", 5, "test", seed=9, progress=False)
    ours = tmp_path / "held_out.jsonl"
    write_jsonl(ours, instances)
    from absence_tasks import upstream

    theirs = tmp_path / "poetry_upstream.jsonl"
    upstream.write_upstream(theirs, instances)
    for path in (ours, theirs):
        out = tmp_path / f"out_{path.stem}"
        run(["absence-lm-eval", "--include_path", TASKS, "--tasks", "absence_poetry", "--model", "absence-oracle",
             "--metadata", json.dumps({"data_file": str(path)}), "--output_path", str(out)], env, tmp_path)
        assert results_of(out)["absence_poetry"]["f1,none"] == 1.0
        assert results_of(out, "n-samples")["absence_poetry"]["effective"] == 5


def test_data_file_of_another_variant_is_refused(tmp_path):
    path = tmp_path / "needles.jsonl"
    write_jsonl(path, generate_instances("poetry", "needle", 2, progress=False))
    with pytest.raises(DataError, match="holds poetry/needle instances; this task expects poetry/omission"):
        load_instances_for_task("poetry", "omission", data_file=str(path))


def test_generated_sets_are_cached_and_identical(tmp_path, monkeypatch):
    monkeypatch.setenv("REVERSE_NEEDLE_CACHE", str(tmp_path))
    first = load_instances_for_task("numerical", "omission", n=7, seed=2)
    cached = list((tmp_path / "datasets").glob("numerical_omission_test_n7_s2_*.jsonl"))
    assert len(cached) == 1
    assert load_instances_for_task("numerical", "omission", n=7, seed=2) == first


def test_unknown_source_is_an_error():
    with pytest.raises(DataError, match="unknown data source"):
        load_instances_for_task("poetry", "omission", source="internet")


def test_generation_budget_grows_with_the_lines_to_list():
    from absence_tasks.schema import Instance

    lines = [f"line number {i} " + "x" * 60 for i in range(40)]
    one = Instance("a", "poetry", "omission", "test", lines, lines[1:], [0])
    many = Instance("b", "poetry", "omission", "test", lines, lines[20:], list(range(20)))
    assert 64 <= generation_budget(one) < generation_budget(many) <= 4096
    assert generation_budget(many) >= 20 * 75 // 3  # room for twenty 75-character lines
    assert generation_budget(many) % 64 == 0  # a few sizes, so requests batch together


def test_micro_f1_aggregation_sums_counts():
    items = [{"tp": 1, "fp": 0, "fn": 0}, {"tp": 0, "fp": 1, "fn": 2}]
    assert micro_f1_aggregation(items) == pytest.approx(2 / (2 + 1 + 2))


@pytest.mark.parametrize("make_bad", ["missing", "empty_dir", "garbage_config"])
def test_a_pretrained_path_that_is_not_a_model_is_one_line(tmp_path, env, make_bad):
    bad = tmp_path / "not-a-model"
    if make_bad == "empty_dir":
        bad.mkdir()
    elif make_bad == "garbage_config":
        bad.mkdir()
        (bad / "config.json").write_text("{not json")
    proc = subprocess.run(["absence-lm-eval", "--include_path", TASKS, "--tasks", "absence_poetry", "--model", "hf",
                           "--model_args", f"pretrained={bad}"], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "not a Hugging Face model checkpoint" in lines[0]


def test_a_data_file_with_missing_fields_is_one_line(tmp_path, env):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "domain": "poetry", "variant": "omission"}\n')
    proc = subprocess.run(["absence-lm-eval", "--include_path", TASKS, "--tasks", "absence_poetry", "--model",
                           "absence-oracle", "--metadata", json.dumps({"data_file": str(bad)})],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("absence-lm-eval: error: ")
    assert "bad.jsonl:1: missing field(s)" in proc.stderr.strip().splitlines()[-1]


def test_unknown_domain_or_variant_in_a_config():
    from absence_tasks.lm_eval_tasks import dataset_loader

    with pytest.raises(ValueError, match="unknown variant 'sonnet'"):
        dataset_loader("poetry", "sonnet")
    with pytest.raises(ValueError, match="unknown domain 'limericks'"):
        dataset_loader("limericks", "omission")


def test_absence_lm_eval_indexes_the_plugin_task_folder_beside_a_users_include_path(tmp_path, env):
    mine = tmp_path / "my_tasks"
    mine.mkdir()
    (mine / "my_task.yaml").write_text("task: my_own_task\ndataset_path: json\noutput_type: generate_until\n"
                                       "doc_to_text: '{{text}}'\ndoc_to_target: '{{text}}'\n")
    listed = run(["absence-lm-eval", "ls", "tasks", "--include_path", str(mine)], env, tmp_path).stdout
    assert "my_own_task" in listed and "absence_poetry" in listed and "absencebench" in listed
    # Plain lm_eval reads no task entry points: without --include_path it knows neither.
    plain = run(["lm_eval", "ls", "tasks"], env, tmp_path).stdout
    assert "absence_poetry" not in plain


def test_lm_evals_own_tasks_are_indexed_only_when_a_run_asks_for_one_of_them():
    from absence_tasks.lm_eval_models import only_project_tasks

    assert only_project_tasks(["absencebench", "absencebench_placeholder", "absence_poetry_pass_at_k"])
    # One of lm-eval's own tasks, a task of a user's --include_path, or tasks from a --config file (None): the
    # full index, as plain lm_eval builds it.
    assert not only_project_tasks(["absence_poetry", "hellaswag"])
    assert not only_project_tasks(["my_own_task"])
    assert not only_project_tasks(None) and not only_project_tasks([])


def lock_file_diff(k: int, n_lines: int) -> Instance:
    """A lock-file diff: base64 hashes run near one token per character (a third of it was the old
    estimate), every third changed line omitted."""
    hashes = [base64.b64encode(hashlib.sha512(f"{k}-{i}".encode()).digest()).decode() for i in range(n_lines)]
    lines = ["diff --git a/package-lock.json b/package-lock.json", "--- a/package-lock.json",
             "+++ b/package-lock.json", f"@@ -1,1 +1,{n_lines + 1} @@", ' {',
             *[f'+      "integrity": "sha512-{h}",' for h in hashes]]
    omitted = list(range(5, len(lines), 3))
    return Instance(f"lock-{k}", "github_prs", "omission", "test", lines,
                    [x for i, x in enumerate(lines) if i not in omitted], omitted)


def test_generation_budget_is_counted_in_the_models_tokens(tiny_llama_dir):
    counter = token_counter({"pretrained": str(tiny_llama_dir)})
    for inst in (lock_file_diff(0, 6), lock_file_diff(1, 30)):
        (answer_tokens,) = counter.counts([oracle_answer(inst)])
        assert answer_tokens <= generation_budget(inst, counter)
        # Without a tokenizer a byte counts as a token: never fewer than the model's tokens.
        assert answer_tokens <= generation_budget(inst, BYTES)
        chars = sum(len(x) for x in inst.answer_lines)
        assert answer_tokens > chars / 3 + 8 * len(inst.answer_lines)  # what the old estimate allowed


def test_the_oracle_model_answers_within_the_budget(tiny_llama_dir):
    from lm_eval.api.instance import Instance as Request

    from absence_tasks.lm_eval_models import OracleLM
    from absence_tasks.lm_eval_tasks import to_hf_dataset

    doc = dict(to_hf_dataset([lock_file_diff(2, 9)])[0])
    full = oracle_answer(lock_file_diff(2, 9))
    for model_args, counter in (({"tokenizer": str(tiny_llama_dir)}, token_counter({"tokenizer": str(tiny_llama_dir)})),
                                ({}, BYTES)):
        request = Request("generate_until", doc, ("prompt", {"max_gen_toks": 20, "until": []}), 0)
        (answer,) = OracleLM(**model_args).generate_until([request])
        assert full.startswith(answer) and 0 < counter.counts([answer])[0] <= 20 < counter.counts([full])[0]


def test_prompts_longer_than_the_context_are_counted_recorded_and_skippable(tmp_path, env, tiny_llama_dir):
    data = tmp_path / "lock_files.jsonl"
    write_jsonl(data, [lock_file_diff(k, n) for k, n in enumerate((4, 5, 6, 40, 60))])
    base = ["absence-lm-eval", "--include_path", TASKS, "--tasks", "absence_github_prs", "--model", "absence-oracle",
            "--log_samples"]
    # vLLM's name for the context: the two long diffs do not fit 1,500 tokens.
    warned = run(base + ["--model_args", f"tokenizer={tiny_llama_dir},max_model_len=1500",
                         "--metadata", json.dumps({"data_file": str(data)}), "--output_path", str(tmp_path / "w")],
                 env, tmp_path)
    warnings = [x for x in warned.stderr.splitlines() if "1500-token context" in x]
    assert len(warnings) == 1 and "2 of 5 prompts" in warnings[0]
    assert results_of(tmp_path / "w", "configs")["absence_github_prs"]["metadata"]["prompts_over_context"] == 2
    assert results_of(tmp_path / "w")["absence_github_prs"]["f1,none"] == 1.0  # the oracle, cut to its budgets
    board = tmp_path / "leaderboard.json"
    published = subprocess.run([sys.executable, "-m", "leaderboard", "publish", str(tmp_path / "w"), "--out",
                                str(board)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert published.returncode == 0, published.stderr
    (row,) = json.loads(board.read_text())["rows"]
    assert any("2 prompts with their answer budget exceeded the model's context" in n for n in row["notes"])
    # max_length: the same two are skipped (and counted) instead.
    run(base + ["--model_args", f"tokenizer={tiny_llama_dir}",
                "--metadata", json.dumps({"data_file": str(data), "max_length": 1500}),
                "--output_path", str(tmp_path / "s")], env, tmp_path)
    assert results_of(tmp_path / "s", "configs")["absence_github_prs"]["metadata"]["skipped_over_context"] == 2
    assert results_of(tmp_path / "s", "n-samples")["absence_github_prs"]["effective"] == 3


def test_pass_at_k_tasks_sample_eight_answers_on_the_validation_split(tmp_path, env, tiny_llama_dir):
    out = tmp_path / "oracle"
    run(["absence-lm-eval", "--tasks", "absencebench_pass_at_k", "--model", "absence-oracle",
         "--metadata", json.dumps({"n": 3}), "--output_path", str(out), "--log_samples"], env, tmp_path)
    results = results_of(out)
    for key in ("pass_at_1", "pass_at_4", "pass_at_8", "pass50_at_1", "pass50_at_4", "pass50_at_8"):
        assert results["absencebench_pass_at_k"][f"{key},all_samples"] == 1.0  # the oracle always passes
    sample = samples_of(out, "absence_poetry_pass_at_k")[0]
    assert sample["doc"]["split"] == "validation" and len(sample["filtered_resps"][0]) == 8

    # A model sampling at temperature 1: eight different answers per instance, the estimator's values.
    out = tmp_path / "hf"
    run(["absence-lm-eval", "--tasks", "absence_numerical_pass_at_k", "--model", "hf", "--model_args",
         f"pretrained={tiny_llama_dir},dtype=float32",
         "--metadata", json.dumps({"n": 2}), "--output_path", str(out), "--log_samples",
         "--seed", "0"], env, tmp_path)
    results = results_of(out)["absence_numerical_pass_at_k"]
    assert 0.0 <= results["pass_at_1,all_samples"] <= results["pass_at_4,all_samples"] <= results[
        "pass_at_8,all_samples"] <= 1.0
    for sample in samples_of(out, "absence_numerical_pass_at_k"):
        (answers,) = sample["filtered_resps"]
        assert len(answers) == 8 and len(set(answers)) > 1
        instance = instance_from_doc(sample["doc"])
        f1s = [score_response(instance, a).f1 for a in answers]
        assert sample["pass_at_4"] == pass_at_ks(f1s)[4]
        assert sample["pass50_at_4"] == pass_at_ks(f1s, PASS50_F1)[4] >= sample["pass_at_4"]
