"""The sweep command end to end on a tiny random Llama (HF backend): two learning rates, each trained for the
same FLOP budget on the same train split, scored with lm-eval on the validation split, published with the
best one picked; run again it redoes nothing; given one more setting and a baseline it trains only that one and
pairs every setting against the baseline; a flag the trainer does not have stops it before anything is written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from absence_tasks.schema import DOMAINS
from study.plan import StudyError
from study.sweep import parse_settings, setting_name

ROOT = Path(__file__).resolve().parent.parent


def _sweep_command(model: Path, out: Path, *settings: str) -> list[str]:
    return [sys.executable, "-m", "study.sweep", "--model", str(model), "--out", str(out), "--backend", "hf",
            "--method", "sft", *settings, "--compute-budget-flops", "1e9", "--n-val", "1", "--n-train", "2",
            "--", "--max_length", "4096"]


def test_settings_are_the_grid_product_then_each_setting():
    settings = parse_settings(["learning_rate=1e-4,3e-4", "warmup_steps=0,0.1"], ["learning_rate=1e-3 seed=1"], "sft")
    assert [setting_name(s) for s in settings] == [
        "learning_rate-1e-4+warmup_steps-0", "learning_rate-1e-4+warmup_steps-0.1",
        "learning_rate-3e-4+warmup_steps-0", "learning_rate-3e-4+warmup_steps-0.1", "learning_rate-1e-3+seed-1"]
    assert parse_settings([], ["lambda_seq=0 lambda_gap=0.5"], "contrastive") == (
        (("lambda_seq", "0"), ("lambda_gap", "0.5")),)


@pytest.mark.parametrize("grid, setting, message", [
    (["lambda_seq=0,1"], [], "--grid 'lambda_seq=0,1': python -m trainers.sft has no option --lambda_seq"),
    (["output_dir=a"], [], "--grid 'output_dir=a': --output_dir is set for every run by the command itself"),
    ([], ["learning_rate"], "--setting 'learning_rate': expected FLAG=VALUE"),
    ([], [], 'nothing to sweep: give --grid FLAG=V1,V2 or --setting "FLAG=V ..."'),
    (["learning_rate=1e-4"], ["learning_rate=1e-4"], "setting 'learning_rate-1e-4' is given twice"),
])
def test_bad_settings_are_one_clear_error(grid, setting, message):
    with pytest.raises(StudyError) as error:
        parse_settings(grid, setting, "sft")
    assert str(error.value) == message


def test_sweep_trains_each_setting_scores_it_on_validation_and_picks_the_best(tiny_llama_dir, tmp_path):
    out = tmp_path / "sweep"
    command = _sweep_command(tiny_llama_dir, out, "--grid", "learning_rate=1e-4,1e-2")
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-4000:]

    from study.experiment import training_record
    from trainers.card import read_model_card

    names = ["learning_rate-1e-4", "learning_rate-1e-2"]
    cards = {name: read_model_card(out / "models" / name) for name in names}
    assert [cards[n]["training_args"]["learning_rate"] for n in names] == [1e-4, 1e-2]
    for card in cards.values():  # the same budget and the same data for every setting
        assert card["compute"]["budget_flops"] == 1e9 and card["compute"]["flops"] >= 1e9
        assert card["data"]["sha256"] == cards[names[0]]["data"]["sha256"]
    # One precision measurement per sweep: the first setting's; the others are told to use it.
    precisions = [training_record(out / "models" / name)["precision"] for name in names]
    assert precisions[0]["requested"] == "auto" and precisions[0]["chosen"] in ("bf16", "fp32")
    assert precisions[1]["requested"] == precisions[1]["chosen"] == precisions[0]["chosen"]
    assert sorted(p.name for p in (out / "data" / "validation").iterdir()) == \
        sorted(f"{d}_omission_validation.jsonl" for d in DOMAINS)

    board = json.loads((out / "leaderboard.json").read_text())
    rows = {row["model"]: row for row in board["rows"]}
    assert sorted(rows) == sorted(["tiny-llama-zero-shot", *(f"tiny-llama-sft-{n}" for n in names)])
    assert all("split validation" in row["suite"]["description"] for row in rows.values())

    summary = json.loads((out / "sweep.json").read_text())
    averages = {s["name"]: s["average"]["value"] for s in summary["settings"]}
    assert summary["best"] == max(names, key=lambda n: (averages[n], -names.index(n)))
    assert averages[summary["best"]] == round(100 * rows[f"tiny-llama-sft-{summary['best']}"]["average"]["value"], 2)
    other = next(s for s in summary["settings"] if s["name"] != summary["best"])
    assert other["minus_best"]["p_holm"] is not None and other["flags"] in ({"learning_rate": "1e-4"},
                                                                           {"learning_rate": "1e-2"})
    assert [c["family"] for c in board["comparisons"]] == ["sweep"]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "page" / "index.html").is_file()

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("done before, skipped") == 8  # model, data, 2 trainings, 3 evaluations, publish

    changed = subprocess.run(_sweep_command(tiny_llama_dir, out, "--grid", "learning_rate=1e-4"), cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert changed.returncode == 2
    assert changed.stderr.strip().splitlines() == [
        f"sweep: error: {out / 'plan.json'}: this sweep was planned otherwise (method sft, settings "
        f"learning_rate-1e-4, learning_rate-1e-2, 1 validation instances per domain); a sweep may gain settings "
        f"and validation instances, nothing else: use another --out for a different sweep"]

    # Extended by one setting, with a control: only the new setting is trained and scored, all are published.
    extended = subprocess.run(_sweep_command(tiny_llama_dir, out, "--grid", "learning_rate=1e-4,1e-2", "--setting",
                                             "learning_rate=3e-3", "--baseline", "learning_rate=1e-2"),
                              cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert extended.returncode == 0, extended.stderr[-4000:]
    assert extended.stderr.count("done before, skipped") == 7  # all but the new training, its evaluation, publish
    summary = json.loads((out / "sweep.json").read_text())
    assert [s["name"] for s in summary["settings"]] == [*names, "learning_rate-3e-3"]
    assert summary["baseline"] == "learning_rate-1e-2"
    board = json.loads((out / "leaderboard.json").read_text())
    against_baseline = {c["row_a"]["model"] for c in board["comparisons"]
                        if c["row_b"]["model"] == "tiny-llama-sft-learning_rate-1e-2" and c["task"] == "average"}
    assert against_baseline == {"tiny-llama-sft-learning_rate-1e-4", "tiny-llama-sft-learning_rate-3e-3"}
    for setting in summary["settings"]:
        assert (setting["minus_baseline"] is None) == (setting["name"] == "learning_rate-1e-2")
    families = {c["family"] for c in board["comparisons"]}
    assert families == ({"sweep"} if summary["best"] == "learning_rate-1e-2" else {"sweep", "baseline"})

    # A larger validation set: nothing is retrained, every model is scored again on it (the first instance
    # of each domain is the one scored before), all are published on it.
    model_files = {p: p.read_bytes() for p in (out / "models").rglob("*.safetensors")}
    first_validation = {p.name: p.read_text().splitlines() for p in (out / "data" / "validation").iterdir()}
    train_bytes = (out / "data" / "train.jsonl").read_bytes()
    three = _sweep_command(tiny_llama_dir, out, "--grid", "learning_rate=1e-4,1e-2", "--setting",
                           "learning_rate=3e-3", "--baseline", "learning_rate=1e-2")
    at = three.index("--n-val") + 1
    grown = subprocess.run([*three[:at], "2", *three[at + 1:]], cwd=ROOT, capture_output=True, text=True,
                           timeout=900)
    assert grown.returncode == 0, grown.stderr[-4000:]
    assert grown.stderr.count("done before, skipped") == 4  # the model and the three trainings
    assert {p: p.read_bytes() for p in (out / "models").rglob("*.safetensors")} == model_files
    assert (out / "data" / "train.jsonl").read_bytes() == train_bytes
    for path in (out / "data" / "validation").iterdir():
        lines = path.read_text().splitlines()
        assert len(lines) == 2 and lines[:1] == first_validation[path.name]
    board = json.loads((out / "leaderboard.json").read_text())
    assert {task["n_instances"] for row in board["rows"] for task in row["tasks"].values()} == {2}
    assert json.loads((out / "sweep.json").read_text())["validation_instances_per_domain"] == 2
    shrunk = subprocess.run(three, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert shrunk.returncode == 2 and "a sweep may gain settings and validation instances" in shrunk.stderr


def test_a_flag_the_trainer_lacks_stops_the_sweep_before_anything_is_written(tiny_llama_dir, tmp_path):
    out = tmp_path / "sweep"
    result = subprocess.run(_sweep_command(tiny_llama_dir, out, "--grid", "lerning_rate=1e-4"), cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sweep: error: --grid 'lerning_rate=1e-4': python -m trainers.sft has no option --lerning_rate"]
    assert not (out / "plan.json").exists()


def test_a_baseline_that_is_not_swept_stops_the_sweep_before_anything_is_written(tiny_llama_dir, tmp_path):
    out = tmp_path / "sweep"
    result = subprocess.run(_sweep_command(tiny_llama_dir, out, "--grid", "learning_rate=1e-4,1e-3",
                                           "--baseline", "learning_rate=1e-2"),
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "sweep: error: --baseline 'learning_rate=1e-2' is not one of the settings swept; give it as a --setting too"]
    assert not (out / "plan.json").exists()
