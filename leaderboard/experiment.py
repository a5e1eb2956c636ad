"""The whole study in one command: zero-shot vs SFT vs contrastive at equal compute, published.

    python -m leaderboard.experiment --budget 15m --out runs/study-quick        # the newcomer's run
    python -m leaderboard.experiment --budget 60m --out runs/study              # the real study

Stages, in order, each a separate process where it loads a model (so a crash or a kill loses only that
stage, and vLLM gets a fresh process):

    model        the embedded SmolLM2-135M-Instruct as an HF checkpoint (or --model PATH)
    data         train split (3 domains, omission) and test suite (omission + placeholder); the generator
                 splits by a hash of each source, so no test document's source is trained on
    sft          python -m trainers.sft for a wall-time budget (its FLOPs are counted)
    contrastive  python -m trainers.contrastive with --compute_budget_flops = what SFT used: equal compute
    eval-*       lm-eval on the test suite for zero-shot, SFT, contrastive (vLLM when installed, else HF)
                 and the difflib oracle (the upper bound), with --log_samples
    publish      leaderboard JSON (+ the AbsenceBench paper's reported rows), the paired bootstrap test
                 contrastive vs SFT, Markdown, HTML page, plots, a headless-Chromium screenshot

A finished stage writes `stages/<name>.json`; running the same command again skips finished stages,
resumes an interrupted training run from its last checkpoint and reuses the answers an interrupted
evaluation already cached (lm-eval's --use_cache). The plan (how the budget is split) is fixed at the
first run and stored in `plan.json`, so a resumed study is the same study.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from absence_tasks.io import check_output_folder, run_command
from absence_tasks.schema import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
TASK_GROUPS = ("absencebench", "absencebench_placeholder")
DOMAINS = ("numerical", "poetry", "github_prs")
EVAL_VARIANTS = ("omission", "placeholder")

# Costs measured on the 2-core machine, used only to split a wall-time budget: an lm-eval + vLLM start of
# a 135M model (eager, CPU) about 1.5 minutes; the 6-task suite (omission + placeholder) about 0.2 instances/s
# with vLLM (bf16) and far less with lm-eval's HF backend; an optimizer step of 8 instances ~3 min (SFT,
# bf16 autocast).
VLLM_START_SECONDS = 90
VLLM_INSTANCES_PER_SECOND = 0.2
HF_INSTANCES_PER_SECOND = 0.03
FIXED_SECONDS = 240              # model conversion, data, oracle evaluation, publishing, model loads and saves
SHORT_RUN_SECONDS = 600          # below this SFT budget, optimizer steps of 2 instances, not 8
# A time budget is checked after each optimizer step, so training ends up to one step late. A short run's
# step over two long PR diffs took 136 s (SFT) and 124 s (contrastive) in a 15-minute study, so a short
# plan keeps that much in reserve for each of the two trainings.
LAST_STEP_RESERVE_SECONDS = 140
# The smallest budget that still trains and evaluates each model (fixed costs alone take 4 minutes), and the
# largest a study on this machine sensibly runs unattended (beyond it the planned test sets exceed what the
# generators' sources give distinct instances for).
MIN_BUDGET_SECONDS = 10 * 60
MAX_BUDGET_SECONDS = 48 * 3600


@dataclass
class Plan:
    """How a study spends its budget; stored in plan.json at the first run."""
    budget_seconds: float
    backend: str
    n_eval: int              # test instances per task (6 tasks: 3 domains x omission/placeholder)
    n_train: int             # train instances per domain
    sft_seconds: float       # SFT wall-time budget; contrastive gets SFT's FLOPs
    seed: int
    train_domains: tuple[str, ...] = DOMAINS  # fewer: cross-domain transfer to the left-out ones
    # The time budget is checked after each optimizer step; a short run needs short steps to stop on time.
    gradient_accumulation_steps: int = 4


def parse_duration(text: str) -> float:
    """'90m', '1h30m', '45s', '2h' or plain seconds -> seconds."""
    match = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 15m, 90m, 1h30m, 600)")
    hours, minutes, seconds = (float(g) if g else 0.0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def format_duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return "".join(f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (secs, "s")) if value) or "0s"


def make_plan(budget_seconds: float, backend: str, seed: int, n_eval: int | None = None,
              sft_seconds: float | None = None, train_domains: tuple[str, ...] = DOMAINS) -> Plan:
    """Split the budget: about 40% of it evaluates the three models, the rest trains SFT and then
    contrastive for about the same time each (equal FLOPs; contrastive does more per second, so it
    needs no more time than SFT)."""
    if not MIN_BUDGET_SECONDS <= budget_seconds <= MAX_BUDGET_SECONDS:
        raise StudyError(f"--budget {format_duration(budget_seconds)} is outside "
                         f"{format_duration(MIN_BUDGET_SECONDS)}..{format_duration(MAX_BUDGET_SECONDS)}")
    rate = VLLM_INSTANCES_PER_SECOND if backend == "vllm" else HF_INSTANCES_PER_SECOND
    start = VLLM_START_SECONDS if backend == "vllm" else 20  # HF: loading the model
    usable = max(budget_seconds - FIXED_SECONDS, 60)
    if n_eval is None:
        per_model = 0.4 * usable / 3 - start
        n_eval = max(2, int(per_model * rate / (len(DOMAINS) * len(EVAL_VARIANTS))))
    if sft_seconds is None:
        eval_seconds = 3 * (start + n_eval * len(DOMAINS) * len(EVAL_VARIANTS) / rate)
        training_seconds = budget_seconds - FIXED_SECONDS - eval_seconds  # SFT and contrastive together
        if training_seconds / 2 < SHORT_RUN_SECONDS:
            training_seconds -= 2 * LAST_STEP_RESERVE_SECONDS
        sft_seconds = max(30.0, training_seconds / 2)
    # Far more distinct training instances than a budget gets through (a few s each): the budget ends training.
    n_train = max(20, min(1000, int(sft_seconds / len(train_domains)) + 10))
    accumulation = 1 if sft_seconds < SHORT_RUN_SECONDS else 4
    return Plan(budget_seconds, backend, n_eval, n_train, round(sft_seconds, 1), seed, tuple(train_domains),
                accumulation)


def default_backend() -> str:
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


# ---- running stages ------------------------------------------------------------------------------

class Study:
    program = "experiment"  # what its log lines and errors start with

    def __init__(self, out: Path, plan: Plan, model: Path | None, extra_train_args: list[str]):
        self.out, self.plan, self.extra_train_args = out, plan, extra_train_args
        self.model = model or out / "models" / "zero-shot"
        self.user_model = model is not None
        # Leaderboard row names: "<base model>-<method>"; the embedded default is SmolLM2-135M(-Instruct).
        self.model_label = model.name if model is not None else "smollm2-135m"
        self.started = time.time()

    def log(self, message: str) -> None:
        elapsed = time.time() - self.started
        print(f"[{self.program} {elapsed / 60:5.1f} min] {message}", file=sys.stderr, flush=True)

    def marker(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage}.json"

    def stage(self, name: str, index: int, total: int, run) -> None:
        if self.marker(name).is_file():
            self.log(f"stage {index}/{total} {name}: done before, skipped")
            return
        self.log(f"stage {index}/{total} {name} ...")
        started = time.time()
        details = run() or {}
        seconds = time.time() - started
        atomic_write_text(self.marker(name), json.dumps({"stage": name, "seconds": round(seconds, 1),
                                                         "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                                         **details}, indent=2) + "\n")
        self.log(f"stage {index}/{total} {name}: finished in {seconds / 60:.1f} min")

    def command(self, args: list[str]) -> None:
        """Run a stage's process, its progress bars passing through; a failure stops the study."""
        self.log("$ " + shlex.join(args))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        result = subprocess.run(args, cwd=ROOT, env=env)
        if result.returncode != 0:
            raise StudyError(f"stage command failed (exit {result.returncode}): {shlex.join(args)}")

    # ---- stages ----

    def prepare_model(self) -> dict:
        from absence_tasks.models import load_checkpoint_or_die, prepare_embedded_model

        if self.user_model:
            load_checkpoint_or_die(self.model)  # checked in main() already; a resumed study checks again
        else:
            prepare_embedded_model(self.model)
        return {"model": str(self.model)}

    def build_data(self) -> dict:
        from absence_tasks.generate import generate_instances
        from absence_tasks.schema import write_jsonl

        data = self.out / "data"
        train = [instance for domain in self.plan.train_domains
                 for instance in generate_instances(domain, "omission", self.plan.n_train, "train", self.plan.seed)]
        write_jsonl(data / "train.jsonl", train)
        for domain in DOMAINS:
            for variant in EVAL_VARIANTS:
                test = generate_instances(domain, variant, self.plan.n_eval, "test", self.plan.seed)
                write_jsonl(data / "suite" / f"{domain}_{variant}_test.jsonl", test)
        return {"train_instances": len(train), "test_instances_per_task": self.plan.n_eval}

    def train(self, method: str, name: str | None = None, train_file: Path | None = None,
              run_args: list[str] | None = None) -> dict:
        """`python -m trainers.<method>` into models/<name>; `run_args` say how long and how fast it trains
        (default: the study's budgets: SFT for a wall time, contrastive for the FLOPs SFT used)."""
        output = self.out / "models" / (name or method)
        args = [sys.executable, "-m", f"trainers.{method}", "--model_name_or_path", str(self.model),
                "--train_file", str(train_file or self.out / "data" / "train.jsonl"), "--output_dir", str(output),
                "--seed", str(self.plan.seed), "--logging_steps", "1", "--save_steps", "10", "--save_total_limit",
                "1", "--report_to", "none", "--per_device_train_batch_size", "2",
                "--bf16", "true", "--use_cpu", "true"]  # bf16 autocast: about 1.7x faster steps on this CPU
        args += self.budget_args(method) if run_args is None else run_args
        from trainers.sft import last_complete_checkpoint

        if last_complete_checkpoint(output):
            args += ["--resume_from_checkpoint", "last"]
        self.command(args + self.extra_train_args)
        compute = training_record(output)["compute"]
        return {"flops": compute["flops"], "tokens_trained": compute["tokens_trained"],
                "instances_trained": compute["instances_trained"]}

    def budget_args(self, method: str) -> list[str]:
        # A budget-limited run is a few dozen optimizer steps: a constant rate (after warm-up) of 1e-4 moves
        # a 135M model within them; the trainers' 2e-5 default is for longer runs.
        args = ["--num_train_epochs", "100",  # a budget ends training
                "--learning_rate", "1e-4", "--lr_scheduler_type", "constant_with_warmup", "--warmup_steps", "5",
                "--gradient_accumulation_steps", str(self.plan.gradient_accumulation_steps)]
        if method == "sft":
            return args + ["--max_train_seconds", str(self.plan.sft_seconds)]
        return args + ["--compute_budget_flops", str(training_record(self.out / "models" / "sft")["compute"]["flops"])]

    def evaluate(self, name: str, model: Path | None = None, groups: tuple[str, ...] = TASK_GROUPS) -> dict:
        """lm-eval on the test suite into eval/<name>: the oracle, or a model (default: the base model for
        zero-shot, else models/<name>)."""
        output = self.out / "eval" / name
        metadata = json.dumps({"data_dir": str(self.out / "data" / "suite")})
        # `absence-lm-eval`: lm_eval's CLI with the project's models (the oracle) and task folder; started
        # through the interpreter so it is the same environment even when the console script is not on PATH.
        lm_eval_cli = [sys.executable, "-c", "from absence_tasks.lm_eval_models import main; main()"]
        args = [*lm_eval_cli, "--tasks", *groups, "--metadata", metadata, "--output_path", str(output), "--log_samples",
                "--seed", str(self.plan.seed)]
        if name == "oracle":
            args += ["--model", "absence-oracle"]
        else:
            model = model or (self.model if name == "zero-shot" else self.out / "models" / name)
            args += ["--apply_chat_template", "--use_cache", str(self.out / "eval" / f".cache-{name}")]
            if self.plan.backend == "vllm":
                args += ["--model", "vllm", "--batch_size", "auto", "--model_args",
                         f"pretrained={model},dtype=bfloat16,gpu_memory_utilization=0.35,max_model_len=8192,"
                         f"enforce_eager=True"]
            else:
                args += ["--model", "hf", "--batch_size", "8", "--model_args", f"pretrained={model},dtype=float32"]
        self.command(args)
        return {"output": str(output)}

    def publish(self) -> dict:
        board = self.out / "leaderboard.json"
        board.unlink(missing_ok=True)  # rebuilt from the evaluations every time
        lb = [sys.executable, "-m", "leaderboard"]
        for name in ("oracle", "zero-shot", "sft", "contrastive"):
            self.command(lb + ["publish", str(self.out / "eval" / name), "--out", str(board), "--method", name,
                               "--model-name", "difflib-oracle" if name == "oracle" else f"{self.model_label}-{name}"])
        self.command(lb + ["add-reported", "--out", str(board)])
        self.command(lb + ["compare", str(board), f"{self.model_label}-contrastive", f"{self.model_label}-sft"])
        self.command(lb + ["render", str(board), "--out", str(self.out / "page"), "--screenshot"])
        return {"leaderboard": str(board), "page": str(self.out / "page" / "index.html")}

    def stages(self) -> list[tuple[str, Any]]:
        return [("model", self.prepare_model), ("data", self.build_data),
                ("sft", lambda: self.train("sft")), ("contrastive", lambda: self.train("contrastive")),
                *[(f"eval-{n}", lambda n=n: self.evaluate(n)) for n in ("oracle", "zero-shot", "sft", "contrastive")],
                ("publish", self.publish)]

    def run(self) -> None:
        stages = self.stages()
        for index, (name, run) in enumerate(stages, 1):
            self.stage(name, index, len(stages), run)
        total = sum(json.loads(self.marker(n).read_text())["seconds"] for n, _ in stages)
        self.log(f"study finished: {total / 60:.1f} min of stage time in all; page: {self.out / 'page' / 'index.html'}")


class StudyError(RuntimeError):
    pass


def training_record(model_dir: Path) -> dict[str, Any]:
    from trainers.sft import read_model_card

    if not (model_dir / "README.md").is_file():
        raise StudyError(f"{model_dir}: no finished model (model card missing); rerun to resume its training")
    return read_model_card(model_dir)


def load_or_make_plan(out: Path, args: argparse.Namespace) -> Plan:
    path = out / "plan.json"
    # A plan whose study never finished a stage binds nothing yet: a corrected command replaces it.
    if path.is_file() and any((out / "stages").glob("*.json")):
        stored = json.loads(path.read_text())
        plan = Plan(**{**stored, "train_domains": tuple(stored["train_domains"])})
        if args.budget is not None and args.budget != plan.budget_seconds:
            raise StudyError(f"{path}: this study was planned for a {plan.budget_seconds / 60:.0f} min budget; "
                             f"use another --out for a different budget")
        return plan
    plan = make_plan(args.budget if args.budget is not None else 60 * 60, args.backend or default_backend(),
                     args.seed, args.n_eval, args.sft_seconds, tuple(args.train_domains))
    atomic_write_text(path, json.dumps(asdict(plan), indent=2) + "\n")
    return plan


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leaderboard.experiment", description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=parse_duration, default=None,
                        help="wall-time budget of the whole study (default 60m; 15m for a quick look)")
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="study folder (resumable)")
    parser.add_argument("--model", type=Path, default=None,
                        help="base checkpoint (default: the embedded SmolLM2-135M-Instruct, converted here)")
    parser.add_argument("--backend", choices=("vllm", "hf"), default=None,
                        help="lm-eval backend (default: vllm when installed, else hf)")
    parser.add_argument("--n-eval", type=int, default=None, help="test instances per task (default: from budget)")
    parser.add_argument("--sft-seconds", type=float, default=None,
                        help="SFT training wall time (default: from budget); contrastive gets SFT's FLOPs")
    parser.add_argument("--train-domains", nargs="+", choices=DOMAINS, default=list(DOMAINS),
                        help="domains to train on; leave one out to measure cross-domain transfer, e.g. "
                             "--train-domains numerical poetry (all three are always evaluated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after `--`: extra flags for both trainers, e.g. -- --learning_rate 5e-5")
    return launch(parser.parse_args(argv), load_or_make_plan, Study)


def launch(args: argparse.Namespace, plan_loader, study_class: type[Study]) -> int:
    """Check the base model, plan (or take the stored plan) and run the stages; errors are one line, exit 2.
    Shared by the study and the data-efficiency curve (`leaderboard.curve`)."""
    extra = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args

    def run() -> None:
        if args.model is not None:  # before anything is written
            from absence_tasks.models import load_checkpoint_or_die

            load_checkpoint_or_die(args.model)
        check_output_folder(args.out)
        args.out.mkdir(parents=True, exist_ok=True)
        plan = plan_loader(args.out, args)
        study = study_class(args.out.resolve(), plan, args.model.resolve() if args.model else None, extra)
        study.log(f"plan: {json.dumps(asdict(plan))}")
        study.run()

    return run_command(study_class.program, run, handled=(StudyError, ValueError, OSError))

if __name__ == "__main__":  # vLLM and the trainers run in child processes
    sys.exit(main())
