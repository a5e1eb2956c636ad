"""The study command end to end on a tiny random Llama (HF backend): killed in the middle of SFT
training, run again, it resumes that training, skips finished stages, trains the contrastive arm at SFT's
FLOPs and at its wall time, RL and SFT-continued from the SFT checkpoint at equal additional FLOPs, publishes
the leaderboard, and scores every model on a held-out file when asked."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from study.plan import PLANNED_INSTANCES_PER_SECOND, make_plan

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("minutes", [3, 15, 30, 60])
def test_a_plan_trains_for_the_time_asked_and_evaluates_on_top(minutes):
    plan = make_plan(minutes * 60, "vllm", seed=0)
    assert plan.train_seconds == minutes * 60 and (plan.n_eval, plan.n_eval_placeholder) == (100, 30)
    assert plan.task_groups == ("absencebench", "absencebench_placeholder")
    # More train instances than the time gets through (each domain's share, with room to spare).
    assert plan.n_train * len(plan.train_domains) >= minutes * 60 * PLANNED_INSTANCES_PER_SECOND - 3
    assert plan.estimated_seconds() > 2 * plan.train_seconds  # evaluation comes on top of training
    assert plan.curve_instances_per_domain == (6 if minutes >= 20 else 3 if minutes >= 10 else 0)
    assert make_plan(60, "hf", 0, n_eval=20, n_eval_placeholder=0).task_groups == ("absencebench",)


def _study_command(model: Path, out: Path) -> list[str]:
    # RL's own settings, small for a test, from a YAML config as TRL reads it.
    rl_config = out.parent / "rl.yaml"
    rl_config.write_text("max_completion_length: 24\n")
    return [sys.executable, "-m", "study.experiment", "--model", str(model), "--out", str(out),
            "--backend", "hf", "--n-eval", "1", "--n-eval-placeholder", "1", "--train-minutes", "0.2",
            "--rl-minutes", "0.2", "--rl-config", str(rl_config), "--pass-at-k-instances", "1",
            "--contrastive-budget", "flops", "time", "--",
            "--gradient_accumulation_steps", "1", "--save_steps", "1", "--max_length", "3000",
            "--curve_instances_per_domain", "1"]


def test_study_killed_during_training_resumes_and_publishes(tiny_llama_dir, git_repo, tmp_path):
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
    assert "stage 2/17 data: done before, skipped" in second.stderr
    assert json.loads((out / "stages" / "data.json").read_text()) == data_marker

    from trainers.card import read_model_card

    sft, contrastive = read_model_card(out / "models" / "sft"), read_model_card(out / "models" / "contrastive")
    assert sft["resumed_from"] is not None  # the second run continued the killed training
    assert sft["compute"]["stopped_by_time"]
    # Equal compute: contrastive trains until it has spent SFT's FLOPs (and stops within one step of it).
    assert contrastive["compute"]["budget_flops"] == sft["compute"]["flops"]
    assert contrastive["compute"]["flops"] >= sft["compute"]["flops"]
    # Equal time: the same arm trains for SFT's wall time instead.
    equal_time = read_model_card(out / "models" / "contrastive-equal-time")
    assert equal_time["compute"]["stopped_by_time"] and equal_time["compute"].get("budget_flops") is None

    # One precision measurement per study (SFT's); every later training is told to use it.
    from study.experiment import training_record

    chosen = training_record(out / "models" / "sft")["precision"]["chosen"]
    for name in ("contrastive", "contrastive-equal-time", "rl", "sft-continued"):
        assert training_record(out / "models" / name)["precision"]["requested"] == chosen, name

    # RL from the SFT checkpoint for its wall time; SFT continued from the same checkpoint for RL's FLOPs.
    rl, continued = read_model_card(out / "models" / "rl"), read_model_card(out / "models" / "sft-continued")
    assert rl["model_args"]["model_name_or_path"] == continued["model_args"]["model_name_or_path"] == str(
        (out / "models" / "sft").resolve())
    assert rl["compute"]["stopped_by_time"] and continued["compute"]["budget_flops"] == rl["compute"]["flops"]
    assert continued["compute"]["flops"] >= rl["compute"]["flops"]
    assert rl["training_args"]["max_completion_length"] == 24   # the --rl-config YAML reached the RL stage
    # pass@k before and after RL: the study's lm-eval stages (8 samples per validation instance), not the trainer's.
    assert not rl["pass_at_k"]
    for name in ("sft", "rl"):
        marker = json.loads((out / "stages" / f"pass-at-k-{name}.json").read_text())
        group = marker["pass_at_k"]["absencebench_pass_at_k"]
        assert set(group) == {f"pass{t}_at_{k}" for t in ("", "50") for k in (1, 4, 8)} and 0 <= group["pass_at_1"] <= group["pass_at_8"] <= 100
    assert "pass@k of rl (validation, 1 per domain, 8 samples): pass@1" in second.stderr

    board = json.loads((out / "leaderboard.json").read_text())
    methods = {row["method"] for row in board["rows"]}
    assert {"oracle", "zero-shot", "sft", "contrastive", "rl", "reported"} <= methods
    oracle = next(row for row in board["rows"] if row["method"] == "oracle")
    assert oracle["average"]["value"] == 1.0
    pairs = {(c["row_a"]["model"], c["row_b"]["model"]) for c in board["comparisons"]}
    assert pairs == {("tiny-llama-sft", "tiny-llama-zero-shot"), ("tiny-llama-contrastive", "tiny-llama-sft"),
                     ("tiny-llama-contrastive-equal-time", "tiny-llama-sft"), ("tiny-llama-rl", "tiny-llama-sft-continued")}
    # The two arms against SFT are one family, Holm-adjusted together.
    arms = [c for c in board["comparisons"] if c.get("family") == "contrastive arms"]
    assert len(arms) == 2 and all(c["p_holm"] >= c["p_value"] for c in arms)
    assert {row["model"] for row in board["rows"] if row["method"] == "sft"} == {"tiny-llama-sft",
                                                                                 "tiny-llama-sft-continued"}
    sft_row = next(row for row in board["rows"] if row["model"] == "tiny-llama-sft")
    assert sft_row["training"]["optimizer_steps"] == sft["global_step"]
    page = out / "page"
    assert (page / "index.html").is_file() and (page / "f1_by_domain.png").stat().st_size > 0
    # The trainers' learning curves (start and end of each run, on the validation split), plotted.
    assert [p["step"] for p in sft["learning_curve"]][0] == 0 and len(contrastive["learning_curve"]) >= 2
    assert (page / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A finished study run again does nothing but say so.
    third = subprocess.run(_study_command(tiny_llama_dir, out), cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=120)
    assert third.returncode == 0 and third.stderr.count("done before, skipped") == 17

    # Transfer: the same command with a held-out file (PRs of a repository the training pool never held, in
    # upstream AbsenceBench's format) scores every model on it and pairs them there too; nothing is retrained.
    heldout = tmp_path / "widgets_prs.jsonl"
    subprocess.run([sys.executable, "-m", "absence_tasks.cli", "generate", "--domain", "github_prs", "--split", "train",
                    "--n", "2", "--git-repo", str(git_repo), "--format", "upstream",
                    "--out", str(heldout)], cwd=ROOT, env=env, check=True, capture_output=True)
    fourth = subprocess.run(_study_command(tiny_llama_dir, out)[:3] + ["--heldout", f"github_prs={heldout}"]
                            + _study_command(tiny_llama_dir, out)[3:], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=600)
    assert fourth.returncode == 0, fourth.stderr[-4000:]
    assert fourth.stderr.count("done before, skipped") == 16 and "stage 22/23 heldout-github_prs-sft-continued ..." \
        in fourth.stderr
    board = json.loads((out / "leaderboard.json").read_text())
    transfer = [row for row in board["rows"] if row["suite"]["description"].startswith(f"data_file {heldout};")]
    assert sorted(row["model"] for row in transfer) == sorted(f"tiny-llama-{name}" for name in (
        "zero-shot", "sft", "contrastive", "contrastive-equal-time", "rl", "sft-continued"))
    assert all(set(row["tasks"]) == {"absence_github_prs"} for row in transfer)
    transfer_suite = transfer[0]["suite"]["id"]
    assert sorted((c["row_a"]["model"], c["row_b"]["model"]) for c in board["comparisons"]
                  if c["row_a"]["suite_id"] == transfer_suite) == sorted(pairs)
    assert all(c["task"] == "absence_github_prs" for c in board["comparisons"] if c["row_a"]["suite_id"] == transfer_suite)
    assert len(board["comparisons"]) == 8


def test_bad_model_path_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "study"
    result = subprocess.run([sys.executable, "-m", "study.experiment", "--model", str(tmp_path),
                             "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "config.json" in result.stderr
    assert not out.exists()
    from absence_tasks.generate import generate_instances
    from absence_tasks.schema import write_jsonl

    numbers = tmp_path / "numbers.jsonl"
    write_jsonl(numbers, generate_instances("numerical", "omission", 1, "test", seed=0, progress=False))
    for flags, named in [(["--rl-minutes", "5", "--rl-config", str(tmp_path / "no.yaml")], "no.yaml: no such file"),
                         (["--rl-config", __file__], "--rl-config needs --rl-minutes"),
                         (["--methods", "contrastive"], "--methods must include sft"),
                         (["--heldout", str(numbers)], "expected DOMAIN=FILE"),
                         (["--heldout", f"github_prs={tmp_path / 'no.jsonl'}"], "no.jsonl: no such file"),
                         (["--heldout", f"github_prs={numbers}"], "holds numerical/omission instances")]:
        result = subprocess.run([sys.executable, "-m", "study.experiment", "--out", str(out), *flags], cwd=ROOT,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and result.stderr.strip().count("\n") == 0 and named in result.stderr
        assert not out.exists()


def test_a_plan_binds_only_once_its_study_has_finished_a_stage(tmp_path):
    import argparse

    from study.plan import StudyError, load_or_make_plan

    def args(minutes: float, heldout: tuple[str, ...] = ()) -> argparse.Namespace:
        return argparse.Namespace(train_minutes=minutes, backend="hf", seed=0, n_eval=100, n_eval_placeholder=30,
                                  train_domains=["numerical"], rl_minutes=0, rl_config=None,
                                  methods=["sft", "contrastive"], pass_at_k_instances=10, heldout=list(heldout),
                                  contrastive_setting=[], contrastive_budget=["flops"])

    assert load_or_make_plan(tmp_path, args(15)).train_seconds == 900
    # Nothing ran yet: a corrected command replaces the plan.
    assert load_or_make_plan(tmp_path, args(20)).train_seconds == 1200
    assert json.loads((tmp_path / "plan.json").read_text())["train_seconds"] == 1200
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "model.json").write_text("{}")
    with pytest.raises(StudyError, match="planned for --train-minutes 20 --n-eval 100"):
        load_or_make_plan(tmp_path, args(30))
    # A held-out file only adds evaluations: a bound (even a published) study may gain one, never swap it.
    from absence_tasks.generate import generate_instances
    from absence_tasks.schema import write_jsonl

    poems, other = tmp_path / "poems.jsonl", tmp_path / "other_poems.jsonl"
    write_jsonl(poems, generate_instances("poetry", "omission", 2, "test", seed=0, progress=False))
    write_jsonl(other, generate_instances("poetry", "omission", 2, "test", seed=1, progress=False))
    (tmp_path / "stages" / "publish.json").write_text("{}")
    assert load_or_make_plan(tmp_path, args(20, [f"poetry={poems}"])).heldout == (("poetry", str(poems)),)
    assert json.loads((tmp_path / "plan.json").read_text())["heldout"] == [["poetry", str(poems)]]
    assert not (tmp_path / "stages" / "publish.json").exists()  # published again, with the new rows
    assert load_or_make_plan(tmp_path, args(20, [f"poetry={poems}"])).heldout == (("poetry", str(poems)),)
    with pytest.raises(StudyError, match=f"scores poetry on {poems}"):
        load_or_make_plan(tmp_path, args(20, [f"poetry={other}"]))
    with pytest.raises(StudyError, match="outside"):
        make_plan(99999 * 3600, "hf", seed=0)


def test_methods_choose_the_arms_trained_from_the_base_model(tmp_path):
    from study.experiment import Study
    from study.plan import StudyError

    plan = make_plan(600, "hf", 0, rl_seconds=600, methods=("sft",))
    assert plan.trained == ("sft", "rl", "sft-continued")
    names = [name for name, _ in Study(tmp_path, plan, None, []).stages()]
    assert "contrastive" not in names and "eval-contrastive" not in names
    assert names.index("sft") < names.index("rl") < names.index("sft-continued")
    # The stages keep their order whatever order the flag gives.
    assert make_plan(600, "hf", 0, methods=("contrastive", "sft")).methods == ("sft", "contrastive")
    with pytest.raises(StudyError, match="must include sft"):
        make_plan(600, "hf", 0, methods=("contrastive",))


def test_contrastive_arms_each_get_their_flags_and_budget(tmp_path):
    import shutil

    from study.experiment import Study
    from study.plan import StudyError, parse_contrastive_settings

    settings = parse_contrastive_settings(["lambda_seq=1 lambda_gap=0", "hard_negative_kinds=shortest_line,changed_line"])
    plan = make_plan(600, "hf", 0, contrastive_settings=settings, contrastive_budgets=("time", "flops"))
    names = ["contrastive-lambda_seq-1+lambda_gap-0", "contrastive-lambda_seq-1+lambda_gap-0-equal-time",
             "contrastive-hard_negative_kinds-shortest_line-changed_line",
             "contrastive-hard_negative_kinds-shortest_line-changed_line-equal-time"]
    assert [arm.name for arm in plan.arms] == names and plan.trained == ("sft", *names)
    assert {plan.method_of(name) for name in names} == {"contrastive"} and plan.method_of("sft-continued") == "sft"
    assert plan.paired == [("sft", "zero-shot", False), *[(name, "sft", True) for name in names]]
    study = Study(tmp_path, plan, None, ["--learning_rate", "5e-5"])
    stages = [name for name, _ in study.stages()]
    assert stages[:7] == ["model", "data", "sft", *names] and f"eval-{names[-1]}" in stages
    shutil.copytree(ROOT / "results" / "study-30m" / "models" / "sft", tmp_path / "models" / "sft")  # SFT's record
    flops = json.loads((tmp_path / "models" / "sft" / "training_record.json").read_text())["compute"]["flops"]
    by_name = {arm.name: arm for arm in plan.arms}
    assert study.arm_args(by_name[names[0]]) == ["--num_train_epochs", "100", "--compute_budget_flops", str(flops)]
    assert study.arm_args(by_name[names[1]]) == ["--num_train_epochs", "100", "--max_train_seconds", str(plan.train_seconds)]
    # The default: one arm, the trainer's defaults at SFT's FLOPs, named as before.
    assert [arm.name for arm in make_plan(600, "hf", 0).arms] == ["contrastive"]
    assert make_plan(600, "hf", 0).paired[1] == ("contrastive", "sft", False)
    with pytest.raises(StudyError, match="has no option --lambda_sequence"):
        parse_contrastive_settings(["lambda_sequence=1"])
    with pytest.raises(StudyError, match="needs the contrastive method"):
        make_plan(600, "hf", 0, methods=("sft",), contrastive_settings=settings)


def test_vllm_evaluates_in_the_precision_sft_measured_faster(tmp_path):
    import shutil

    from study.experiment import Study

    sft = tmp_path / "models" / "sft"
    shutil.copytree(ROOT / "results" / "study-30m" / "models" / "sft", sft)  # a real record: bf16 chosen
    study = Study(tmp_path, make_plan(600, "vllm", 0), None, [])
    assert study.eval_dtype() == "bfloat16"
    record = json.loads((sft / "training_record.json").read_text())
    record["precision"]["chosen"] = "fp32"  # as on an AVX2-only machine, where bf16 autocast measures slower
    (sft / "training_record.json").write_text(json.dumps(record))
    assert study.eval_dtype() == "float32"
