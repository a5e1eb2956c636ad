"""The leaderboard: bootstrap statistics on inputs with known answers, publishing real lm-eval outputs of the
project's oracle and empty models, the paper's reported rows, paired comparisons, schema validation and
one-line errors that leave the leaderboard file untouched."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from leaderboard.compare import compare
from leaderboard.publish import add_reported, checkpoint_sha256, publish
from leaderboard.schema import OMISSION_TASKS, LeaderboardError, empty_leaderboard, load, save, validate
from leaderboard.stats import average_ci, bootstrap_ci, holm_adjusted, paired_bootstrap, paired_bootstrap_average

ROOT = Path(__file__).resolve().parent.parent


# ---- statistics on hand-made inputs ------------------------------------------------------------

def test_constant_scores_give_a_zero_width_interval():
    for value in (0.0, 0.3, 1.0):
        estimate = bootstrap_ci([value] * 17)
        assert estimate.value == estimate.ci_low == estimate.ci_high == value


def test_bootstrap_interval_of_a_coin_matches_the_normal_approximation():
    estimate = bootstrap_ci([0.0, 1.0] * 50, n_resamples=20_000)
    half_width = 1.96 * 0.5 / np.sqrt(100)  # standard error of a fair coin's mean over 100 draws
    assert estimate.value == 0.5
    assert estimate.ci_low == pytest.approx(0.5 - half_width, abs=0.015)
    assert estimate.ci_high == pytest.approx(0.5 + half_width, abs=0.015)


def test_bootstrap_is_reproducible_by_seed_and_narrows_with_confidence():
    values = [0.1, 0.9, 0.4, 0.0, 1.0, 0.7, 0.2]
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    # Few resamples, so the interval's ends show which resamples were drawn.
    assert bootstrap_ci(values, n_resamples=50, seed=3) != bootstrap_ci(values, n_resamples=50, seed=4)
    wide, narrow = bootstrap_ci(values, confidence=0.95), bootstrap_ci(values, confidence=0.5)
    assert wide.ci_low < narrow.ci_low <= narrow.value <= narrow.ci_high < wide.ci_high


def test_bootstrap_refuses_empty_or_senseless_input():
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([0.5], confidence=1.5)
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([0.5, float("nan")])


def test_average_weighs_tasks_equally_whatever_their_sizes():
    # 10 perfect instances and 1,000 failed ones: upstream's Average is (1 + 0) / 2, not the pooled 0.0099.
    estimate = average_ci([[1.0] * 10, [0.0] * 1000])
    assert estimate.value == estimate.ci_low == estimate.ci_high == 0.5
    mixed = average_ci([[0.0, 1.0] * 20, [0.5] * 40])
    assert mixed.value == pytest.approx(0.5)
    assert mixed.ci_low < 0.5 < mixed.ci_high
    # Resampling within tasks: the constant task adds no spread, so the CI is half the coin task's.
    coin = bootstrap_ci([0.0, 1.0] * 20)
    assert mixed.ci_high - mixed.ci_low == pytest.approx((coin.ci_high - coin.ci_low) / 2, rel=0.1)


def test_holm_multiplies_the_ith_smallest_p_by_m_minus_i_and_keeps_their_order():
    # Sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06.
    assert holm_adjusted([0.04, 0.01, 0.03]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm_adjusted([0.6, 0.5]) == [1.0, 1.0]  # capped at 1
    assert holm_adjusted([0.02]) == [0.02]  # a family of one is the test itself
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        holm_adjusted([1.2])


def test_paired_bootstrap_of_identical_rows_is_exactly_zero():
    row = {f"i{k}": k / 10 for k in range(10)}
    result = paired_bootstrap(row, dict(row))
    assert (result.mean_difference, result.ci_low, result.ci_high, result.n, result.p_value) == (0, 0, 0, 10, 1)


def test_paired_bootstrap_finds_a_clearly_better_row():
    rng = np.random.default_rng(0)
    better = {f"i{k}": float(v) for k, v in enumerate(rng.uniform(0.6, 1.0, 40))}
    worse = {f"i{k}": float(v) for k, v in enumerate(rng.uniform(0.0, 0.4, 40))}
    result = paired_bootstrap(better, worse)
    assert 0 < result.ci_low < result.mean_difference < result.ci_high
    assert result.p_value == 0
    flipped = paired_bootstrap(worse, better)
    assert flipped.mean_difference == pytest.approx(-result.mean_difference)
    assert flipped.ci_high < 0


def test_paired_bootstrap_uses_only_the_shared_instances():
    a = {"x": 1.0, "y": 0.0, "only-a": 1.0}
    b = {"x": 0.0, "y": 0.0, "only-b": 1.0}
    result = paired_bootstrap(a, b)
    assert (result.mean_difference, result.n) == (0.5, 2)
    with pytest.raises(ValueError, match="share no instances"):
        paired_bootstrap({"x": 1.0}, {"y": 1.0})


def test_the_detectable_difference_is_2_8_standard_errors_and_halves_with_four_times_the_pairs():
    rng = np.random.default_rng(1)
    sizes = {}
    for n in (100, 400):
        a = {f"i{k}": float(v) for k, v in enumerate(rng.uniform(0, 1, n))}
        b = {f"i{k}": float(v) for k, v in enumerate(rng.uniform(0, 1, n))}
        result = paired_bootstrap(a, b)
        differences = np.array([a[k] - b[k] for k in a])
        standard_error = differences.std(ddof=1) / np.sqrt(n)
        # (z_0.975 + z_0.8) = 1.960 + 0.842; the bootstrap SE is the plug-in one, within resampling noise.
        assert result.minimum_detectable_difference == pytest.approx(2.802 * standard_error, rel=0.05)
        sizes[n] = result.minimum_detectable_difference
    assert sizes[400] == pytest.approx(sizes[100] / 2, rel=0.15)
    row = {f"i{k}": k / 10 for k in range(10)}
    assert paired_bootstrap(row, dict(row)).minimum_detectable_difference == 0


def test_paired_average_is_the_mean_of_the_per_task_differences():
    a = {"t1": {"a": 1.0, "b": 1.0}, "t2": {f"c{k}": 0.5 for k in range(8)}, "only-a": {"z": 1.0}}
    b = {"t1": {"a": 0.0, "b": 0.0}, "t2": {f"c{k}": 0.5 for k in range(8)}}
    result = paired_bootstrap_average(a, b)
    assert (result.mean_difference, result.ci_low, result.ci_high, result.n) == (0.5, 0.5, 0.5, 10)


# ---- real lm-eval outputs ----------------------------------------------------------------------

def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "leaderboard", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("leaderboard: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def lm_eval_runs(tmp_path_factory, tiny_llama_dir):
    """absence-oracle and absence-empty on 3 instances per omission task, run through the real lm-eval CLI
    with --log_samples (both at once: each is mostly start-up time). The empty model counts its budgets in
    SmolLM2's tokens and the oracle in bytes, as two different models do: their rows' budget columns differ."""
    base = tmp_path_factory.mktemp("lm_eval")
    env = {**os.environ, "REVERSE_NEEDLE_CACHE": str(base / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    runs, procs = {}, {}
    for model in ("absence-oracle", "absence-empty"):
        runs[model] = base / model
        procs[model] = subprocess.Popen(
            ["absence-lm-eval", "--include_path", str(ROOT / "task_configs"), "--tasks", "absencebench",
             "--model", model, "--metadata", json.dumps({"n": 3}), "--output_path", str(runs[model]),
             "--log_samples", *(["--model_args", f"tokenizer={tiny_llama_dir}"] if model == "absence-empty" else [])],
            cwd=base, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for model, proc in procs.items():
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    return runs


def results_file(run_dir: Path) -> Path:
    (path,) = run_dir.rglob("results_*.json")
    return path


def samples_path(run_dir: Path, task: str = "absence_poetry") -> Path:
    (path,) = run_dir.rglob(f"samples_{task}_*.jsonl")
    return path


def rows_by_model(board: Path) -> dict[str, dict]:
    return {row["model"]: row for row in json.loads(board.read_text())["rows"]}


def test_publish_scores_the_oracle_one_and_the_empty_model_zero(lm_eval_runs, tmp_path):
    board = tmp_path / "leaderboard.json"
    for model in ("absence-oracle", "absence-empty"):
        proc = cli("publish", lm_eval_runs[model], "--out", board, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
    assert "average F1 100.0 [100.0, 100.0] (3 tasks, 9 instances)" in cli(
        "publish", lm_eval_runs["absence-oracle"], "--out", board, cwd=tmp_path).stdout
    rows = rows_by_model(board)
    oracle, empty = rows["absence-oracle"], rows["absence-empty"]
    assert (oracle["method"], empty["method"]) == ("oracle", "zero-shot")
    assert (oracle["backend"], empty["backend"]) == ("absence-oracle", "absence-empty")
    assert sorted(oracle["tasks"]) == sorted(OMISSION_TASKS)
    for task in OMISSION_TASKS:
        for metric in ("f1", "precision", "recall"):
            assert oracle["tasks"][task][metric] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
            assert empty["tasks"][task][metric] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
        assert oracle["tasks"][task]["n_instances"] == 3
        assert list(oracle["per_instance"][task].values()) == [1.0, 1.0, 1.0]
    assert oracle["average"] == {"value": 1.0, "ci_low": 1.0, "ci_high": 1.0}
    assert empty["average"] == {"value": 0.0, "ci_low": 0.0, "ci_high": 0.0}
    # Same instances, same suite, though lm-eval's doc_hash differs (the budgets are in other units); the id
    # is the start of the hash over (task, instance id, instance hash).
    doc_hashes = [{json.loads(line)["doc_hash"] for line in samples_path(lm_eval_runs[m]).read_text().splitlines()}
                  for m in ("absence-oracle", "absence-empty")]
    assert len(doc_hashes[0]) == 3 and not doc_hashes[0] & doc_hashes[1]
    assert oracle["suite"] == empty["suite"]
    assert oracle["suite"]["id"] == oracle["suite"]["sha256"][:12]
    assert "n=3" in oracle["suite"]["description"] and "9 instances" in oracle["suite"]["description"]
    assert oracle["per_instance"]["absence_poetry"].keys() == empty["per_instance"]["absence_poetry"].keys()
    assert oracle["lm_eval_version"] == "0.4.13"
    assert oracle["source"] == str(results_file(lm_eval_runs["absence-oracle"]))
    assert (oracle["training"], oracle["checkpoint_sha256"]) == (None, None)
    assert "valid (schema 1.7, 2 rows" in cli("validate", board, cwd=tmp_path).stdout


def test_a_family_of_comparisons_gets_holm_adjusted_p_values_built_up_run_by_run(lm_eval_runs, tmp_path):
    from leaderboard.render import markdown

    board = tmp_path / "leaderboard.json"
    publish([lm_eval_runs["absence-oracle"], lm_eval_runs["absence-empty"]], board)
    compare(board, "absence-oracle", "absence-empty", task="absence_poetry")  # alone: no family, no p_holm
    first = compare(board, "absence-oracle", "absence-empty", family="ablation")
    assert first["family"] == "ablation" and first["p_holm"] == first["p_value"]  # a family of one
    proc = cli("compare", board, "absence-empty", "absence-oracle", "--task", "absence_numerical", "--family",
               "ablation", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "family 'ablation', 2 comparisons, Holm-adjusted p:" in proc.stdout
    doc = json.loads(board.read_text())
    alone, *family = doc["comparisons"]
    assert "p_holm" not in alone and [c["p_holm"] for c in family] == holm_adjusted([c["p_value"] for c in family])
    validate(doc)
    assert "p, Holm over the family" in markdown(doc) and "(ablation)" in markdown(doc)
    assert "p, Holm over the family" not in markdown({**doc, "comparisons": [alone]})
    before = board.read_bytes()
    assert_one_line_error(cli("compare", board, "absence-oracle", "absence-empty", "--family", " ", cwd=tmp_path),
                          "--family must be a non-empty name")
    assert board.read_bytes() == before


def test_publishing_again_replaces_the_row_and_its_stale_comparisons(lm_eval_runs, tmp_path):
    board = tmp_path / "leaderboard.json"
    publish([lm_eval_runs["absence-oracle"], lm_eval_runs["absence-empty"]], board)
    compare(board, "absence-oracle", "absence-empty")
    assert len(json.loads(board.read_text())["comparisons"]) == 1
    publish([results_file(lm_eval_runs["absence-oracle"])], board)
    doc = json.loads(board.read_text())
    assert [r["model"] for r in doc["rows"]].count("absence-oracle") == 1 and len(doc["rows"]) == 2
    assert doc["comparisons"] == []  # made with the replaced row
    publish([lm_eval_runs["absence-oracle"]], board, model_name="difflib", method="zero-shot")
    assert sorted(rows_by_model(board)) == ["absence-empty", "absence-oracle", "difflib"]
    assert rows_by_model(board)["difflib"]["method"] == "zero-shot"


def test_paired_compare_oracle_minus_empty_is_one(lm_eval_runs, tmp_path):
    board = tmp_path / "leaderboard.json"
    publish([lm_eval_runs["absence-oracle"], lm_eval_runs["absence-empty"]], board)
    add_reported(board)
    proc = cli("compare", board, "absence-oracle@oracle", "absence-empty", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "average F1: +100.0 [+100.0, +100.0] points" in proc.stdout and "n=9" in proc.stdout
    assert "detectable at 80% power: 0.0 points" in proc.stdout  # every pair differs by exactly 1
    poetry = compare(board, "absence-empty", "absence-oracle", task="absence_poetry")
    assert (poetry["mean_difference"], poetry["ci_low"], poetry["ci_high"], poetry["n_instances"]) == (-1, -1, -1, 3)
    stored = json.loads(board.read_text())["comparisons"]
    assert [(c["row_a"]["model"], c["task"], c["mean_difference"]) for c in stored] == [
        ("absence-oracle", "average", 1.0), ("absence-empty", "absence_poetry", -1.0)]
    before = board.read_bytes()
    assert_one_line_error(cli("compare", board, "absence-oracle", "GPT-4.1", cwd=tmp_path),
                          "GPT-4.1@reported", "no per-instance scores")
    assert_one_line_error(cli("compare", board, "absence-oracle", "nobody", cwd=tmp_path), "no row 'nobody'")
    assert_one_line_error(cli("compare", board, "absence-oracle", "absence-empty", "--task", "absence_poetry_needle",
                              cwd=tmp_path), "has no task absence_poetry_needle")
    assert board.read_bytes() == before


def test_missing_samples_are_an_error_unless_allowed_and_then_the_row_says_so(lm_eval_runs, tmp_path):
    only_results = tmp_path / "run"
    only_results.mkdir()
    shutil.copy(results_file(lm_eval_runs["absence-oracle"]), only_results)
    board = tmp_path / "leaderboard.json"
    assert_one_line_error(cli("publish", only_results, "--out", board, cwd=tmp_path),
                          "samples_absence_", "--log_samples")
    assert not board.exists()
    proc = cli("publish", only_results, "--out", board, "--allow-missing-samples", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    row = rows_by_model(board)["absence-oracle"]
    assert row["tasks"]["absence_poetry"]["f1"] == {"value": 1.0, "ci_low": None, "ci_high": None}
    assert "per_instance" not in row and "no samples" in row["notes"][0]
    assert row["suite"]["sha256"] is None and row["suite"]["id"].startswith("results-only-")
    assert_one_line_error(cli("compare", board, "absence-oracle", "absence-oracle", cwd=tmp_path),
                          "published without samples")


def test_training_budget_method_and_weight_hash_come_from_the_checkpoint(lm_eval_runs, tmp_path):
    checkpoint = tmp_path / "my-sft-model"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights v1")
    (checkpoint / "config.json").write_text("{}")
    # A model card as the trainers write it: a summary, then the full record in a JSON block.
    record = {"method": "sft", "compute": {"instances_trained": 16, "tokens_trained": 1234, "tokens_forward_only": 0,
                                           "flops": 7.4e9, "train_seconds": 40.25, "stopped_by": ["max_train_seconds"]},
              "wall_seconds_last_session": 42.5, "data": {"sha256": "0" * 64}}
    card = "# my-sft-model\n\n| method | sft |\n\n## Full record\n\n```json\n" + json.dumps(record) + "\n```\n"
    (checkpoint / "README.md").write_text(card)
    board = tmp_path / "leaderboard.json"
    (row,) = publish([lm_eval_runs["absence-oracle"]], board, checkpoint=checkpoint)
    assert (row["model"], row["method"]) == ("my-sft-model", "sft")
    assert row["training"] == {"instances": 16, "tokens": 1234, "flops": 7.4e9, "wall_seconds": 40.25,
                               "stopped_by": ["max_train_seconds"]}
    assert load(board)["rows"][0]["training"] == row["training"]  # valid under the schema, as saved
    first_hash = row["checkpoint_sha256"]
    assert first_hash == checkpoint_sha256(checkpoint) and len(first_hash) == 64
    (checkpoint / "README.md").write_text(card + "\nedited\n")  # not a weight file
    assert checkpoint_sha256(checkpoint) == first_hash
    (checkpoint / "model.safetensors").write_bytes(b"weights v2")
    assert checkpoint_sha256(checkpoint) != first_hash


def test_a_run_from_a_trained_checkpoint_names_it_and_its_budget(lm_eval_runs, tmp_path):
    def model(name: str, record: dict) -> Path:
        folder = tmp_path / "models" / name
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(name.encode())
        (folder / "training_record.json").write_text(json.dumps(record))
        return folder

    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)  # the base model: no training record
    sft = model("sft", {"method": "sft", "global_step": 364, "model_args": {"model_name_or_path": str(base)},
                        "compute": {"instances_trained": 364, "tokens_trained": 309268, "flops": 2.5e14,
                                    "train_seconds": 1806.6}})
    continued = model("sft-continued", {
        "method": "sft", "global_step": 220, "model_args": {"model_name_or_path": str(sft)},
        "compute": {"instances_trained": 220, "tokens_trained": 181601, "flops": 1.47e14, "train_seconds": 905.8}})
    board = tmp_path / "leaderboard.json"
    (row,) = publish([lm_eval_runs["absence-oracle"]], board, checkpoint=continued)
    assert row["training"] == {
        "optimizer_steps": 220, "instances": 220, "tokens": 181601, "flops": 1.47e14, "wall_seconds": 905.8,
        "started_from": {"model": str(sft.resolve()), "method": "sft", "training": {
            "optimizer_steps": 364, "instances": 364, "tokens": 309268, "flops": 2.5e14, "wall_seconds": 1806.6}}}
    assert load(board)["rows"][0]["training"] == row["training"]  # valid under the schema, as saved
    (row,) = publish([lm_eval_runs["absence-oracle"]], tmp_path / "other.json", checkpoint=sft)
    assert "started_from" not in row["training"]  # started from a model without a training record


def test_the_training_record_sidecar_is_read_without_torch_or_the_trainers(lm_eval_runs, tmp_path):
    checkpoint = tmp_path / "my-contrastive-model"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    record = {"method": "contrastive", "compute": {"instances_trained": 8, "tokens_trained": 99, "flops": 1e9,
                                                   "train_seconds": 3.5}}
    (checkpoint / "training_record.json").write_text(json.dumps(record))
    # The card's block is stale here on purpose: the sidecar is the record the leaderboard reads.
    (checkpoint / "README.md").write_text("# card\n\n```json\n" + json.dumps({"method": "sft"}) + "\n```\n")
    board = tmp_path / "leaderboard.json"
    script = "\n".join([
        "import json, sys",
        "from leaderboard.publish import publish",
        f"(row,) = publish([{str(lm_eval_runs['absence-oracle'])!r}], {str(board)!r}, checkpoint={str(checkpoint)!r})",
        "loaded = sorted(m for m in ('torch', 'trl', 'trainers', 'lm_eval') if m in sys.modules)",
        "print(json.dumps({'method': row['method'], 'training': row['training'], 'loaded': loaded}))",
    ])
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result == {"method": "contrastive", "loaded": [],
                      "training": {"instances": 8, "tokens": 99, "flops": 1e9, "wall_seconds": 3.5}}

    (checkpoint / "training_record.json").write_text("[1, 2]")
    with pytest.raises(LeaderboardError, match="training_record.json: expected a JSON object"):
        publish([lm_eval_runs["absence-oracle"]], board, checkpoint=checkpoint)


def test_reported_rows_are_the_papers_fractions_without_intervals(tmp_path):
    board = tmp_path / "leaderboard.json"
    rows = add_reported(board)
    assert len(rows) == 9 and load(board)["rows"] == rows
    by_model = {r["model"]: r for r in rows}
    claude = by_model["Claude-3.7-Sonnet*"]
    assert claude["tasks"]["absence_poetry"]["f1"] == {"value": 0.727, "ci_low": None, "ci_high": None}
    assert claude["tasks"]["absence_numerical"]["f1"]["value"] == 0.96  # the paper's "Sequences"
    assert claude["tasks"]["absence_github_prs"]["f1"]["value"] == 0.4
    assert claude["average"]["value"] == 0.696
    assert by_model["Mixtral-8x7B-Instruct"]["average"]["value"] == 0.147
    assert by_model["Claude-3.7-Sonnet"]["average"]["value"] == 0.669  # the same model without reasoning
    for row in rows:
        assert row["method"] == "reported" and "per_instance" not in row
        assert row["suite"]["description"] == "AbsenceBench paper data (~5K-token contexts)"
        # The paper's average is the mean of its three columns, to the printed rounding.
        mean = sum(row["tasks"][t]["f1"]["value"] for t in OMISSION_TASKS) / 3
        assert abs(mean - row["average"]["value"]) <= 0.0006
    add_reported(board)  # again: refreshed, not duplicated
    assert len(load(board)["rows"]) == 9


# ---- schema and bad input ----------------------------------------------------------------------

def a_valid_doc() -> dict:
    doc = empty_leaderboard()

    def estimate():
        return {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6}

    doc["rows"] = [{
        "model": "m", "checkpoint_sha256": None, "method": "zero-shot", "training": None,
        "tasks": {"absence_poetry": {"f1": estimate(), "precision": estimate(), "recall": estimate(),
                                     "n_instances": 2}},
        "average": estimate(), "suite": {"id": "s1", "sha256": "a" * 64, "description": "two poems"},
        "backend": "hf", "lm_eval_version": "0.4.13", "date": "2026-11-23T10:00:00+00:00", "source": "r.json",
        "per_instance": {"absence_poetry": {"p-0": 0.4, "p-1": 0.6}},
    }]
    return doc


def test_the_json_schema_accepts_exactly_the_methods_the_code_names():
    import json

    from leaderboard.schema import METHODS, SCHEMA_PATH

    schema = json.loads(SCHEMA_PATH.read_text())
    found = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("method"), dict) and "enum" in node["method"]:
                found.append(node["method"]["enum"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert found and all(sorted(enum) == sorted([*METHODS, "reported"]) for enum in found)


@pytest.mark.parametrize("break_it, where, what", [
    (lambda d: d["rows"][0]["tasks"]["absence_poetry"]["f1"].update(value=1.5),
     "rows[0].tasks.absence_poetry.f1.value", "1.5 is greater than the maximum of 1"),
    (lambda d: d["rows"][0].update(method="magic"), "rows[0].method", "'magic' is not one of"),
    (lambda d: d["rows"][0].pop("suite"), "rows[0]", "'suite' is a required property"),
    (lambda d: d.update(schema_version="2.0"), "schema_version", "'2.0' is not one of ['1.0', '1.1', '1.2', '1.3', '1.4', '1.5', '1.6', '1.7']"),
    (lambda d: d["rows"][0].update(method="reported", backend=None), "rows[0].per_instance", "not allowed here"),
    (lambda d: d["rows"].append(dict(d["rows"][0])), "rows[1]", "a second row for m@zero-shot@s1"),
    (lambda d: d.update(comparisons=[{
        "row_a": {"model": "m", "method": "zero-shot", "suite_id": "s1"},
        "row_b": {"model": "x", "method": "sft", "suite_id": "s1"}, "task": "average", "mean_difference": 0.1,
        "ci_low": 0.0, "ci_high": 0.2, "confidence": 0.95, "n_instances": 2, "p_value": 0.5, "n_resamples": 10,
        "seed": 0, "date": "2026-11-23T10:00:00+00:00"}]), "comparisons[0].row_b", "no row x@sft@s1"),
])
def test_schema_rejects_a_broken_document_naming_the_place(break_it, where, what):
    doc = a_valid_doc()
    validate(doc)
    break_it(doc)
    with pytest.raises(LeaderboardError) as error:
        validate(doc)
    message = str(error.value)
    assert message.startswith(where + ":") and what in message and "\n" not in message


def test_a_version_1_0_file_is_read_and_written_back_at_the_current_version(tmp_path):
    board = tmp_path / "leaderboard.json"
    old = a_valid_doc()
    old["schema_version"] = "1.0"  # 1.0 had no training.instances; its rows are valid 1.1 rows
    board.write_text(json.dumps(old))
    save(board, load(board))
    assert json.loads(board.read_text())["schema_version"] == "1.7"


def test_an_invalid_document_is_never_written_and_validate_reports_it(tmp_path):
    board = tmp_path / "leaderboard.json"
    save(board, a_valid_doc())
    before = board.read_bytes()
    broken = a_valid_doc()
    broken["rows"][0]["average"]["ci_low"] = -0.1
    with pytest.raises(LeaderboardError, match="refusing to write"):
        save(board, broken)
    assert board.read_bytes() == before
    board.write_text(json.dumps(broken))
    assert_one_line_error(cli("validate", board, cwd=tmp_path), str(board), "rows[0].average.ci_low")


def _bad_inputs(tmp_path: Path, good_run: Path | None) -> dict[str, tuple[Path, str]]:
    """name -> (path to publish, text the error must contain)."""
    cases = {}
    malformed = tmp_path / "malformed" / "results_2026-01-01T00-00-00.json"
    malformed.parent.mkdir()
    malformed.write_text('{"results": {')
    cases["malformed JSON"] = (malformed, "malformed JSON")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"accuracy": 0.9}))
    cases["not lm-eval output"] = (foreign, "not an lm-eval results file")
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    cases["no results in folder"] = (empty, "no lm-eval results_*.json")
    cases["missing path"] = (tmp_path / "nowhere", "no such file or folder")
    if good_run is not None:
        broken_samples = tmp_path / "broken-samples"
        shutil.copytree(good_run, broken_samples)
        (samples,) = broken_samples.rglob("samples_absence_poetry_*.jsonl")
        lines = samples.read_text().splitlines()
        samples.write_text("\n".join([lines[0], "{not json", *lines[2:]]) + "\n")
        cases["malformed samples"] = (broken_samples, f"{samples.name}:2: malformed JSON")
        other_run = tmp_path / "mismatched-samples"
        shutil.copytree(good_run, other_run)
        (samples,) = other_run.rglob("samples_absence_numerical_*.jsonl")
        records = [json.loads(line) for line in samples.read_text().splitlines()]
        records[0]["f1"] = 0.0
        samples.write_text("".join(json.dumps(r) + "\n" for r in records))
        cases["samples of another run"] = (other_run, "differs from")
    return cases


def test_bad_input_is_one_line_exit_2_and_leaves_the_leaderboard_unchanged(tmp_path, request):
    good_run = request.getfixturevalue("lm_eval_runs")["absence-oracle"]
    board = tmp_path / "leaderboard.json"
    add_reported(board)
    before = board.read_bytes()
    for name, (path, fragment) in _bad_inputs(tmp_path, good_run).items():
        proc = cli("publish", path, "--out", board, cwd=tmp_path)
        assert_one_line_error(proc, fragment)
        assert board.read_bytes() == before, name
    board.write_text("[1, 2")
    assert_one_line_error(cli("publish", tmp_path / "foreign.json", "--out", board, cwd=tmp_path),
                          str(board), "malformed JSON")
    assert board.read_text() == "[1, 2"


def test_committed_study_leaderboards_are_valid():
    """The study results committed under results/ stay readable as the schema evolves."""
    boards = sorted((Path(__file__).resolve().parent.parent / "results").rglob("leaderboard.json"))
    assert boards, "no committed leaderboard found"
    for board in boards:
        doc = load(board)
        assert any(row["method"] in ("sft", "contrastive") for row in doc["rows"]), board
