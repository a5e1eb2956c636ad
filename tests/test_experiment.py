"""The study command end to end on a tiny random Llama (HF backend): killed in the middle of SFT
training, run again, it resumes that training, skips finished stages and publishes the leaderboard."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from leaderboard.experiment import (FIXED_SECONDS, LAST_STEP_RESERVE_SECONDS, SHORT_RUN_SECONDS,
                                   VLLM_INSTANCES_PER_SECOND, VLLM_START_SECONDS, make_plan, parse_duration)

ROOT = Path(__file__).resolve().parent.parent


def test_parse_duration():
    assert parse_duration("90m") == 5400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("45s") == 45
    assert parse_duration("600") == 600
    with pytest.raises(Exception, match="not a duration"):
        parse_duration("soon")


@pytest.mark.parametrize("minutes", [15, 25, 60, 90])
def test_plan_fits_the_budget(minutes):
    plan = make_plan(minutes * 60, "vllm", seed=0)
    # SFT and contrastive train for about sft_seconds each (a short run: plus at most one long step each);
    # evaluation of three models takes the rest.
    assert plan.n_eval >= 2 and plan.sft_seconds >= 30
    short = plan.sft_seconds < SHORT_RUN_SECONDS
    assert plan.gradient_accumulation_steps == (1 if short else 4)
    evaluation = 3 * (VLLM_START_SECONDS + plan.n_eval * 6 / VLLM_INSTANCES_PER_SECOND)
    training = 2 * (plan.sft_seconds + (LAST_STEP_RESERVE_SECONDS if short else 0))
    if plan.sft_seconds > 30:
        assert FIXED_SECONDS + evaluation + training <= minutes * 60 + 1
    else:  # 15 min: the smallest study there is (its measured costs are below these estimates)
        assert (plan.n_eval, plan.sft_seconds, minutes) == (2, 30, 15)
    bigger = make_plan(minutes * 60 * 2, "vllm", seed=0)
    assert bigger.n_eval > plan.n_eval and bigger.sft_seconds > plan.sft_seconds


def _study_command(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "leaderboard.experiment", "--model", str(model), "--out", str(out),
            "--backend", "hf", "--n-eval", "1", "--sft-seconds", "12", "--budget", "10m", "--",
            "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--save_steps", "1",
            "--max_length", "3000"]


def test_study_killed_during_training_resumes_and_publishes(tiny_llama_dir, tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "REVERSE_NEEDLE_CACHE": str(tmp_path / "cache")}
    first = subprocess.Popen(_study_command(tiny_llama_dir, out), cwd=ROOT, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((out / "models" / "sft").glob("checkpoint-*/trainer_state.json")):
        assert first.poll() is None, f"study ended before SFT saved a checkpoint:\n{first.stderr.read()[-3000:]}"
        assert time.time() < deadline, "SFT saved no checkpoint within 5 minutes"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    data_marker = json.loads((out / "stages" / "data.json").read_text())
    assert not (out / "stages" / "sft.json").exists()

    second = subprocess.run(_study_command(tiny_llama_dir, out), cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "stage 2/9 data: done before, skipped" in second.stderr
    assert json.loads((out / "stages" / "data.json").read_text()) == data_marker

    from trainers.sft import read_model_card

    sft, contrastive = read_model_card(out / "models" / "sft"), read_model_card(out / "models" / "contrastive")
    assert sft["resumed_from"] is not None  # the second run continued the killed training
    assert sft["compute"]["stopped_by_time"]
    # Equal compute: contrastive trains until it has spent SFT's FLOPs (and stops within one step of it).
    assert contrastive["compute"]["budget_flops"] == sft["compute"]["flops"]
    assert contrastive["compute"]["flops"] >= sft["compute"]["flops"]

    board = json.loads((out / "leaderboard.json").read_text())
    methods = {row["method"] for row in board["rows"]}
    assert {"oracle", "zero-shot", "sft", "contrastive", "reported"} <= methods
    oracle = next(row for row in board["rows"] if row["method"] == "oracle")
    assert oracle["average"]["value"] == 1.0
    assert board["comparisons"], "the contrastive-vs-SFT paired test is missing"
    assert {row["model"] for row in board["rows"] if row["method"] == "sft"} == {"tiny-llama-sft"}
    page = out / "page"
    assert (page / "index.html").is_file() and (page / "f1_by_domain.png").stat().st_size > 0

    # A finished study run again does nothing but say so.
    third = subprocess.run(_study_command(tiny_llama_dir, out), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert third.returncode == 0 and third.stderr.count("done before, skipped") == 9


def test_bad_model_path_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "study"
    result = subprocess.run([sys.executable, "-m", "leaderboard.experiment", "--model", str(tmp_path),
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "config.json" in result.stderr
    assert not out.exists()


def test_a_plan_binds_only_once_its_study_has_finished_a_stage(tmp_path):
    import argparse

    from leaderboard.experiment import StudyError, load_or_make_plan

    def args(minutes: int) -> argparse.Namespace:
        return argparse.Namespace(budget=minutes * 60, backend="hf", seed=0, n_eval=None, sft_seconds=None,
                                  train_domains=["numerical"])

    assert load_or_make_plan(tmp_path, args(15)).budget_seconds == 900
    # Nothing ran yet: a corrected command replaces the plan.
    assert load_or_make_plan(tmp_path, args(20)).budget_seconds == 1200
    assert json.loads((tmp_path / "plan.json").read_text())["budget_seconds"] == 1200
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "model.json").write_text("{}")
    with pytest.raises(StudyError, match="planned for a 20 min budget"):
        load_or_make_plan(tmp_path, args(30))
    with pytest.raises(StudyError, match="outside 10m..48h"):
        make_plan(99999 * 3600, "hf", seed=0)
