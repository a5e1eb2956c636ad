"""The whole study in one command: zero-shot vs SFT vs contrastive at equal compute, published.

    python -m study.experiment --train-minutes 3 --n-eval 20 --n-eval-placeholder 0 --out runs/quick
    python -m study.experiment --train-minutes 30 --out runs/study        # the real study
    python -m study.experiment --train-minutes 30 --out runs/confirm --contrastive-budget flops time \
        --contrastive-setting "lambda_seq=1 lambda_gap=0" --contrastive-setting "lambda_probe=1 lambda_gap=0"

Stages, in order, each a separate process where it loads a model (so a crash or a kill loses only that
stage, and vLLM gets a fresh process):

    model        the embedded SmolLM2-135M-Instruct as an HF checkpoint (or --model PATH)
    data         train split (3 domains, omission) and test suite (omission + placeholder); the generator
                 splits by a hash of each source, so no test document's source is trained on
    sft          python -m trainers.sft for a wall-time budget (its FLOPs are counted)
    contrastive  python -m trainers.contrastive with --compute_budget_flops = what SFT used: equal compute
                 (left out with --methods sft). One arm per --contrastive-setting (its own trainer flags, in
                 its name), each at SFT's FLOPs and/or, with --contrastive-budget time, at SFT's wall time
    rl           with --rl-minutes M only: python -m trainers.rl from the SFT checkpoint for M minutes
    sft-continued  ... and the SFT checkpoint trained on with SFT for the FLOPs RL used: equal *additional*
                 compute, the row RL is paired against
    eval-*       lm-eval on the test suite for zero-shot, SFT, contrastive (and rl, sft-continued; vLLM when
                 installed, else HF) and the difflib oracle (the upper bound), with --log_samples
    pass-at-k-*  with --rl-minutes only: pass@1/4/8 of the SFT checkpoint (RL's start) and of RL's end on the
                 validation split (lm-eval's absencebench_pass_at_k, 8 answers at temperature 1 per instance)
    heldout-*    with --heldout DOMAIN=FILE only: zero-shot and every trained model on that file's omission
                 instances (ours or upstream AbsenceBench's JSONL, through the tasks' data_file switch): transfer
                 to a source the training never saw, e.g. PRs mined from another repository
    publish      leaderboard JSON (+ the AbsenceBench paper's reported rows), the paired bootstrap tests
                 SFT vs zero-shot, each contrastive arm vs SFT (Holm-adjusted together when there are several)
                 and rl vs sft-continued, on the test suite and on each held-out file,
                 Markdown, HTML page, plots, a headless-Chromium screenshot

A finished stage writes `stages/<name>.json`; running the same command again skips finished stages,
resumes an interrupted training run from its last checkpoint and reuses the answers an interrupted
evaluation already cached (lm-eval's --use_cache). The plan (training time, test-set sizes) is fixed at the
first run and stored in `plan.json`, so a resumed study is the same study — except that the same command with
more `--heldout` files scores a finished study's models on them too (only those stages run, then `publish`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from absence_tasks.io import check_output_folder, run_command
from absence_tasks.io import atomic_write_bytes
from absence_tasks.schema import DOMAINS, atomic_write_text
from study.plan import (BUDGETS, METHODS, PASS_AT_K_SAMPLES, Arm, Plan, StudyError, check_methods,
                        load_or_make_plan, parse_contrastive_settings, parse_heldout, setting_flags)
from study.plots import learning_curve_png


class Study:
    program = "experiment"  # what its log lines and errors start with
    first_trained = "sft"  # the model whose measured precision every later training and the evaluation use

    def __init__(self, out: Path, plan: Plan, model: Path | None, extra_train_args: list[str]):
        self.out, self.plan, self.extra_train_args = out, plan, extra_train_args
        self.model = model or out / "models" / "zero-shot"
        self.user_model = model is not None
        # Leaderboard row names: "<base model>-<method>"; the embedded default is SmolLM2-135M(-Instruct).
        self.model_label = model.name if model is not None else "smollm2-135m"
        self.started = time.time()

    @staticmethod
    def check_args(args: argparse.Namespace) -> None:
        """The command line's errors that need no plan, found before anything is written."""
        rl_config = getattr(args, "rl_config", None)
        if rl_config is not None and not rl_config.is_file():
            raise StudyError(f"{rl_config}: no such file (--rl-config)")
        if rl_config is not None and not args.rl_minutes:
            raise StudyError("--rl-config needs --rl-minutes")
        check_methods(getattr(args, "methods", METHODS))
        parse_heldout(getattr(args, "heldout", None) or [])
        parse_contrastive_settings(getattr(args, "contrastive_setting", None) or [])

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
        result = subprocess.run(args, env=env)  # every path in args is absolute: any working folder will do
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
        from trainers.data import load_training_instances

        data = self.out / "data"
        # The recipe's length curriculum (trainers/recipe.py): short documents first, the test suite's last.
        train = load_training_instances(self.plan.train_domains, ["omission"], self.plan.n_train, self.plan.seed,
                                        curriculum=True)
        write_jsonl(data / "train.jsonl", train)
        for domain in DOMAINS:
            for variant, n in (("omission", self.plan.n_eval), ("placeholder", self.plan.n_eval_placeholder)):
                if n:
                    test = generate_instances(domain, variant, n, "test", self.plan.seed)
                    write_jsonl(data / "suite" / f"{domain}_{variant}_test.jsonl", test)
        return {"train_instances": len(train), "test_instances_per_omission_task": self.plan.n_eval,
                "test_instances_per_placeholder_task": self.plan.n_eval_placeholder}

    def train(self, method: str, name: str | None = None, train_file: Path | None = None,
              run_args: list[str] | None = None, start: Path | None = None, flags: list[str] | None = None) -> dict:
        """`python -m trainers.<method>` from `start` (default: the base model) into models/<name>; `run_args`
        say how long and how fast it trains (default: the study's budgets: SFT for a wall time, RL for its own).
        RL draws its own short documents (its default), the others the train split. `flags`, a run's own
        setting, come after the extra flags every trainer gets, so they win."""
        output = self.out / "models" / (name or method)
        data = [] if method == "rl" else ["--train_file", str(train_file or self.out / "data" / "train.jsonl")]
        args = [sys.executable, "-m", f"trainers.{method}", "--model_name_or_path", str(start or self.model),
                *data, "--output_dir", str(output),
                "--seed", str(self.plan.seed), "--logging_steps", "10", "--save_steps", "50", "--save_total_limit",
                "1", "--report_to", "none",
                "--curve_instances_per_domain", str(self.plan.curve_instances_per_domain),
                "--curve_every_steps", str(self.plan.curve_every_steps)]  # the rest: the trainers' recipe
        args += self.budget_args(method) if run_args is None else run_args
        args += self.pinned_precision(output)
        from trainers.run import last_complete_checkpoint

        if last_complete_checkpoint(output):
            args += ["--resume_from_checkpoint", "last"]
        self.command(args + self.extra_train_args + (flags or []))
        compute = training_record(output)["compute"]
        return {"flops": compute["flops"], "tokens_trained": compute["tokens_trained"],
                "instances_trained": compute["instances_trained"]}

    def budget_args(self, method: str) -> list[str]:
        # The trainers' recipe (precision measured at start-up, a schedule over the budget, the curriculum
        # carried by the train file) with the study's budgets: a budget, not the epochs, ends training.
        args = ["--num_train_epochs", "100"]
        if method == "sft":
            return args + ["--max_train_seconds", str(self.plan.train_seconds)]
        if method == "rl":
            config = ["--config", self.plan.rl_config] if self.plan.rl_config else []
            # pass@k before and after is the study's own stage (lm-eval, vLLM when installed): far faster than
            # the trainer's HF sampling, which took 33 minutes for 30 instances x 8 answers on 2 AVX2-only cores.
            return args + config + ["--max_train_seconds", str(self.plan.rl_seconds),
                                    "--pass_at_k_instances_per_domain", "0"]
        raise StudyError(f"no study budget for method {method!r}")

    def arm_args(self, arm: Arm) -> list[str]:
        """A contrastive arm's budget: the FLOPs SFT counted (equal compute), or SFT's wall time (equal time)."""
        if arm.budget == "time":
            return ["--num_train_epochs", "100", "--max_train_seconds", str(self.plan.train_seconds)]
        flops = training_record(self.out / "models" / "sft")["compute"]["flops"]
        return ["--num_train_epochs", "100", "--compute_budget_flops", str(flops)]

    def train_arm(self, arm: Arm) -> dict:
        return self.train("contrastive", arm.name, run_args=self.arm_args(arm), flags=setting_flags(arm.setting))

    def continue_sft(self) -> dict:
        """SFT from the SFT checkpoint for the FLOPs RL spent: the same start and the same extra compute."""
        flops = training_record(self.out / "models" / "rl")["compute"]["flops"]
        return self.train("sft", "sft-continued", start=self.out / "models" / "sft",
                          run_args=["--num_train_epochs", "100", "--compute_budget_flops", str(flops)])

    def measured_precision(self) -> str | None:
        """The precision ("bf16" or "fp32") the first trained model's trainer measured faster on this machine in
        this run (bf16 autocast trained 2x faster than fp32 on an EPYC with avx512_bf16, 16x slower on an
        AVX2-only one); None before it has trained."""
        first = self.out / "models" / self.first_trained
        if not (first / "training_record.json").is_file():
            return None
        return (training_record(first).get("precision") or {}).get("chosen")

    def pinned_precision(self, output: Path) -> list[str]:
        """Every training after the first runs in the precision the first measured: one measurement per study,
        since runs compared with each other should not differ in precision, and a start-up measurement on a
        busy machine can come out the other way. Extra flags and a run's own setting come later and win."""
        chosen = self.measured_precision()
        return ["--precision", chosen] if chosen and output != self.out / "models" / self.first_trained else []

    def eval_dtype(self) -> str:
        """vLLM's dtype: the precision the training measured faster."""
        return "bfloat16" if self.measured_precision() == "bf16" else "float32"

    def evaluate(self, name: str, model: Path | None = None, groups: tuple[str, ...] | None = None) -> dict:
        """lm-eval on the test suite into eval/<name>: the oracle, or a model (default: the base model for
        zero-shot, else models/<name>)."""
        output = self.out / "eval" / name
        if name != "oracle":
            model = model or (self.model if name == "zero-shot" else self.out / "models" / name)
        settings: dict[str, Any] = {"data_dir": str(self.out / "data" / "suite")}
        if model is not None and walks_first(model):
            settings["scratchpad"] = True  # trained to walk the document first: budgets that fit the walk
        self.lm_eval(model, groups or self.plan.task_groups, settings, output,
                     cache=self.out / "eval" / f".cache-{name}")
        return {"output": str(output)}

    def evaluate_heldout(self, domain: str, data_file: str, name: str) -> dict:
        """lm-eval on a held-out file's omission instances (the tasks' `data_file` switch) into
        eval/heldout-<domain>/<name>: zero-shot (the base model) or models/<name>."""
        from absence_tasks.models import file_sha256

        model = self.model if name == "zero-shot" else self.out / "models" / name
        settings: dict[str, Any] = {"data_file": data_file, **({"scratchpad": True} if walks_first(model) else {})}
        self.lm_eval(model, (f"absence_{domain}",), settings, self.out / "eval" / f"heldout-{domain}" / name,
                     cache=self.out / "eval" / f".cache-heldout-{domain}-{name}")
        return {"output": str(self.out / "eval" / f"heldout-{domain}" / name), "data_file": data_file,
                "data_file_sha256": file_sha256(Path(data_file))}

    def pass_at_k(self, name: str) -> dict:
        """pass@1/4/8 of models/<name> (lm-eval's absencebench_pass_at_k: 8 answers sampled at temperature 1 per
        validation instance) into pass_at_k/<name>: RL's starting point (sft) and its end (rl)."""
        output = self.out / "pass_at_k" / name
        settings = {"split": "validation", "n": self.plan.pass_at_k_instances_per_domain, "seed": self.plan.seed}
        self.lm_eval(self.out / "models" / name, ("absencebench_pass_at_k",), settings, output, cache=None)
        from leaderboard.publish import find_results_files

        (path,) = find_results_files([output])  # one model folder: its newest results file
        results = json.loads(path.read_text())["results"]
        return {"output": str(output), "pass_at_k": {
            task: {key.split(",")[0]: round(100 * value, 2) for key, value in metrics.items()
                   if key.endswith(",all_samples") and "_stderr" not in key}
            for task, metrics in results.items()}}

    def lm_eval(self, model: Path | None, tasks: tuple[str, ...], metadata: dict[str, Any], output: Path,
                cache: Path | None) -> None:
        """`absence-lm-eval` (lm_eval's CLI with the project's models and task folder) on `tasks`: the oracle
        when `model` is None, else the model through vLLM or HF; started through the interpreter so it is the
        same environment even when the console script is not on PATH."""
        lm_eval_cli = [sys.executable, "-c", "from absence_tasks.lm_eval_models import main; main()"]
        args = [*lm_eval_cli, "--tasks", *tasks, "--metadata", json.dumps(metadata), "--output_path", str(output),
                "--log_samples", "--seed", str(self.plan.seed)]
        if model is None:
            args += ["--model", "absence-oracle"]
        else:
            args += ["--apply_chat_template", *(["--use_cache", str(cache)] if cache else [])]
            if self.plan.backend == "vllm":
                from absence_tasks.lm_eval_models import vllm_cpu_model_args  # imports lm_eval: only when scoring

                args += ["--model", "vllm", "--batch_size", "auto", "--model_args",
                         f"pretrained={model},{vllm_cpu_model_args(self.eval_dtype())}"]
            else:
                args += ["--model", "hf", "--batch_size", "8", "--model_args", f"pretrained={model},dtype=float32"]
        self.command(args)

    def publish(self) -> dict:
        board = self.out / "leaderboard.json"
        board.unlink(missing_ok=True)  # rebuilt from the evaluations every time
        lb = [sys.executable, "-m", "leaderboard"]

        def row(name: str) -> list[str]:
            method = "oracle" if name == "oracle" else self.plan.method_of(name)
            return ["--method", method, "--model-name",
                    "difflib-oracle" if name == "oracle" else f"{self.model_label}-{name}"]

        for name in ("oracle", "zero-shot", *self.plan.trained):
            self.command(lb + ["publish", str(self.out / "eval" / name), "--out", str(board), *row(name)])
        for domain, _ in self.plan.heldout:
            for name in ("zero-shot", *self.plan.trained):
                self.command(lb + ["publish", str(self.out / "eval" / f"heldout-{domain}" / name), "--out",
                                   str(board), *row(name)])
        self.command(lb + ["add-reported", "--out", str(board)])
        # Did training teach anything (SFT against the model it started from), and does a method beat the row
        # trained at its compute: on the same instances, of the test suite and of each held-out file.
        # Several contrastive arms against SFT on one data suite are one family: Holm-adjusted together.
        suites = [({"data_dir": str(self.out / "data" / "suite")}, [], "contrastive arms")]
        suites += [({"data_file": path}, ["--task", f"absence_{domain}"], f"contrastive arms, held-out {domain}")
                   for domain, path in self.plan.heldout]
        for metadata, task, family in suites:
            for a, b, in_family in self.plan.paired:
                self.command(lb + ["compare", str(board), self.row_selector(board, a, metadata),
                                   self.row_selector(board, b, metadata), *task,
                                   *(["--family", family] if in_family else [])])
        if self.plan.rl_seconds:
            for name in ("sft", "rl"):  # the stages' own record, in the log beside the comparison
                group = json.loads(self.marker(f"pass-at-k-{name}").read_text())["pass_at_k"]["absencebench_pass_at_k"]
                self.log(f"pass@k of {name} (validation, {self.plan.pass_at_k_instances_per_domain} per domain, "
                         f"{PASS_AT_K_SAMPLES} samples): " + ", ".join(f"{k.replace('_at_', '@')} {v:.1f}" for k, v in group.items()))
        self.command(lb + ["render", str(board), "--out", str(self.out / "page"), "--screenshot"])
        curves = {name: training_record(self.out / "models" / name).get("learning_curve") or []
                  for name in ("sft", *(arm.name for arm in self.plan.arms))}
        if any(curves.values()):
            atomic_write_bytes(self.out / "page" / "learning_curve.png", learning_curve_png(curves))
        return {"leaderboard": str(board), "page": str(self.out / "page" / "index.html")}

    def row_selector(self, board: Path, name: str, metadata: dict[str, Any]) -> str:
        """`model@method@suite` of models/<name>'s row on the data `metadata` chooses (the test suite or a
        held-out file): a model has one row per data it was scored on."""
        from leaderboard.publish import describe_data
        from leaderboard.schema import format_key, row_key

        model = f"{self.model_label}-{name}"
        data = describe_data(metadata) + ";"
        (match,) = [r for r in json.loads(board.read_text())["rows"]
                    if r["model"] == model and r["suite"]["description"].startswith(data)]
        return format_key(row_key(match))

    def stages(self) -> list[tuple[str, Any]]:
        rl = [("rl", lambda: self.train("rl", start=self.out / "models" / "sft")),
              ("sft-continued", self.continue_sft)] if self.plan.rl_seconds else []
        heldout = [(f"heldout-{domain}-{n}", lambda d=domain, p=path, n=n: self.evaluate_heldout(d, p, n))
                   for domain, path in self.plan.heldout for n in ("zero-shot", *self.plan.trained)]
        return [("model", self.prepare_model), ("data", self.build_data),
                ("sft", lambda: self.train("sft")), *[(arm.name, lambda a=arm: self.train_arm(a)) for arm in self.plan.arms],
                *rl,
                *[(f"eval-{n}", lambda n=n: self.evaluate(n)) for n in ("oracle", "zero-shot", *self.plan.trained)],
                *[(f"pass-at-k-{n}", lambda n=n: self.pass_at_k(n)) for n in (("sft", "rl") if self.plan.rl_seconds else ())],
                *heldout, ("publish", self.publish)]

    def run(self) -> None:
        stages = self.stages()
        for index, (name, run) in enumerate(stages, 1):
            self.stage(name, index, len(stages), run)
        total = sum(json.loads(self.marker(n).read_text())["seconds"] for n, _ in stages)
        self.log(f"study finished: {total / 60:.1f} min of stage time in all; page: {self.out / 'page' / 'index.html'}")


def training_record(model_dir: Path) -> dict[str, Any]:
    from trainers.card import read_model_card

    if not (model_dir / "README.md").is_file():
        raise StudyError(f"{model_dir}: no finished model (model card missing); rerun to resume its training")
    return read_model_card(model_dir)


def walks_first(model_dir: Path) -> bool:
    """Whether a checkpoint was trained with `--scratchpad true`: its training record (the trainers' JSON
    sidecar) says so. A model without one, like the base model, was not."""
    from trainers.card import RECORD_NAME

    if not (model_dir / RECORD_NAME).is_file():
        return False
    return bool(training_record(model_dir).get("script_args", {}).get("scratchpad"))



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.experiment", description=__doc__.splitlines()[0])
    parser.add_argument("--train-minutes", type=float, default=30.0,
                        help="training wall time of SFT in minutes (default 30); contrastive trains for the FLOPs "
                             "SFT used. Evaluation comes on top (the study prints its estimate)")
    parser.add_argument("--out", type=Path, default=Path("runs/study"), help="study folder (resumable)")
    parser.add_argument("--model", type=Path, default=None,
                        help="base checkpoint (default: the embedded SmolLM2-135M-Instruct, converted here)")
    parser.add_argument("--backend", choices=("vllm", "hf"), default=None,
                        help="lm-eval backend (default: vllm when installed, else hf)")
    parser.add_argument("--n-eval", type=int, default=100, help="test instances per omission task (default 100)")
    parser.add_argument("--n-eval-placeholder", type=int, default=30,
                        help="test instances per placeholder task (default 30; 0 leaves those tasks out)")
    parser.add_argument("--train-domains", nargs="+", choices=DOMAINS, default=list(DOMAINS),
                        help="domains to train on; leave one out to measure cross-domain transfer, e.g. "
                             "--train-domains numerical poetry (all three are always evaluated)")
    parser.add_argument("--rl-minutes", type=float, default=0.0,
                        help="also train python -m trainers.rl from the SFT checkpoint for this wall time, and SFT on "
                             "from the same checkpoint for the FLOPs RL used, and pair them (default 0: no RL)")
    parser.add_argument("--rl-config", type=Path, default=None,
                        help="a YAML config for the rl stage (python -m trainers.rl --config: TRL's keys, e.g. "
                             "num_generations, pass_at_k_instances_per_domain); the study's budget flags win")
    parser.add_argument("--pass-at-k-instances", type=int, default=10,
                        help="with --rl-minutes: validation instances per domain on which pass@1/4/8 of the SFT "
                             "checkpoint (RL's start) and of RL's end are measured (default 10; 8 answers each)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS),
                        help="methods trained from the base model (default: both); sft is required, e.g. "
                             "--methods sft --rl-minutes 30 for RL against SFT continued alone")
    parser.add_argument("--contrastive-setting", action="append", default=[], metavar="\"FLAG=V FLAG=V\"",
                        help="a contrastive arm with these python -m trainers.contrastive flags (repeatable: one arm "
                             "each, paired against SFT and Holm-adjusted together; default: one arm with the "
                             "trainer's defaults), e.g. \"lambda_seq=1 lambda_gap=0\"")
    parser.add_argument("--contrastive-budget", nargs="+", choices=BUDGETS, default=["flops"],
                        help="each arm trains for the FLOPs SFT counted (flops: equal compute, the default), for "
                             "SFT's wall time (time: equal time; its name ends in -equal-time), or both (two arms)")
    parser.add_argument("--heldout", action="append", default=[], metavar="DOMAIN=FILE",
                        help="also score zero-shot and every trained model on this file's omission instances (ours or "
                             "upstream AbsenceBench's JSONL; one per domain, repeatable), with the paired tests: "
                             "transfer to a source the training never saw, e.g. github_prs=prs.jsonl from "
                             "`absence-bench generate --domain github_prs --git-repo OTHER_REPO`. Given to a finished "
                             "study, only these evaluations run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after `--`: extra flags for every trainer, e.g. -- --learning_rate 5e-5")
    return launch(parser.parse_args(argv), load_or_make_plan, Study)


def launch(args: argparse.Namespace, plan_loader, study_class: type[Study]) -> int:
    """Check the base model, plan (or take the stored plan) and run the stages; errors are one line, exit 2.
    Shared by the study and the data-efficiency curve (`study.curve`)."""
    extra = args.train_args[1:] if args.train_args[:1] == ["--"] else args.train_args

    def run() -> None:
        if args.model is not None:  # before anything is written
            from absence_tasks.models import load_checkpoint_or_die

            load_checkpoint_or_die(args.model)
        study_class.check_args(args)
        check_output_folder(args.out)
        args.out.mkdir(parents=True, exist_ok=True)
        plan = plan_loader(args.out, args)
        study = study_class(args.out.resolve(), plan, args.model.resolve() if args.model else None, extra)
        study.log(f"plan: {json.dumps(asdict(plan))}")
        if isinstance(plan, Plan):
            study.log(f"estimated {plan.estimated_seconds() / 60:.0f} min: training "
                      f"{((1 + len(plan.arms)) * plan.train_seconds + 2 * plan.rl_seconds) / 60:.0f} min, the rest "
                      f"evaluation")
        study.run()

    return run_command(study_class.program, run, handled=(StudyError, ValueError, OSError))

if __name__ == "__main__":  # vLLM and the trainers run in child processes
    sys.exit(main())
