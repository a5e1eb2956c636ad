"""A hyper-parameter sweep, selected on the validation split, in one command.

    python -m study.sweep --method sft --grid learning_rate=3e-5,1e-4,3e-4,1e-3 --train-minutes 12 --out runs/lr-sweep
    python -m study.sweep --method contrastive --compute-budget-flops 1.5e14 --out runs/lambda-sweep \\
        --setting "lambda_seq=0 lambda_gap=0" --setting "lambda_seq=0 lambda_gap=0.1" \\
        --setting "lambda_seq=0.5 lambda_gap=0" --baseline "lambda_seq=0 lambda_gap=0"

Each setting is a set of trainer flags (`--grid KEY=V1,V2,...` sweeps the product of its lists; each
`--setting "KEY=V KEY=V"` adds one setting). Every setting trains a fresh copy of the base model with the
trainers' recipe on the same train split (the study's length curriculum, the same seed and data order) for
the same budget — a training wall time, or a FLOP budget, which does not depend on what else runs on the
machine — in the precision the first setting's trainer measured faster, and is scored with lm-eval on a
validation set whose sources are neither trained on nor in the test suite the studies report, so a setting
picked here has never seen the test suite. The base model is scored
on it too (`zero-shot`). The same command with more settings extends a finished sweep: only the new ones
are trained and scored, and the sweep is published again over all of them, so an ablation grows run by run.
With a larger `--n-val` every model is scored again on the larger validation set (which begins with the
smaller one; nothing is retrained, and the answers given before come from lm-eval's request cache).

`publish` writes the leaderboard of the validation rows (with a paired bootstrap of every setting against the
best one, Holm-adjusted over the sweep, and with `--baseline SETTING` against that setting too — an ablation's
control, say the contrastive trainer with both extra terms off, which is SFT — Holm-adjusted apart), the page, `sweep.json` (per setting: its flags, optimizer steps,
FLOPs, training minutes, last training loss, validation F1 per domain and on average with 95% CIs; the best
setting and the baseline) and `sweep.png`. The stages, markers and resuming are `study.experiment`'s.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from absence_tasks.io import atomic_write_bytes
from absence_tasks.schema import DOMAINS, atomic_write_text
from study.experiment import Study, launch, training_record
from study.plan import (MAX_TRAIN_SECONDS, METHODS, MIN_TRAIN_SECONDS, PLANNED_INSTANCES_PER_SECOND, StudyError,
                        default_backend, setting_flags, setting_name, setting_pair)
from study.plots import sweep_png

VALIDATION = "validation"
# Without a time budget to size it from, the train split holds this many instances per domain (a 40-minute run).
DEFAULT_N_TRAIN = 360
FAMILY = "sweep"
BASELINE_FAMILY = "baseline"


@dataclass
class SweepPlan:
    """What a sweep trains and scores; stored in plan.json at the first run, so a resumed sweep is the same."""
    method: str
    settings: tuple[tuple[tuple[str, str], ...], ...]  # each setting: (flag, value) pairs, in the order given
    train_seconds: float | None   # per setting: a training wall time ...
    budget_flops: float | None    # ... or a FLOP budget (one of the two)
    n_val: int                    # validation instances per domain (omission)
    n_train: int                  # train instances per domain (the length curriculum)
    backend: str
    seed: int
    train_domains: tuple[str, ...] = DOMAINS
    curve_instances_per_domain: int = 0  # the trainers' in-run curve is off: lm-eval scores every setting
    curve_every_steps: int = 0
    baseline: str | None = None  # a setting's name: every other setting is compared with it as well

    @property
    def names(self) -> list[str]:
        return [setting_name(setting) for setting in self.settings]


def parse_settings(grid: list[str], settings: list[str], method: str) -> tuple[tuple[tuple[str, str], ...], ...]:
    """The product of the `--grid` lists, then each `--setting`; every flag checked against the method's
    trainer options (a typo would otherwise train a whole run with the default)."""
    axes = []
    for item in grid:
        flag, values = setting_pair(item, "--grid", method)
        axes.append([(flag, value.strip()) for value in values.split(",") if value.strip()])
    if len({axis[0][0] for axis in axes}) != len(axes):
        raise StudyError("--grid: a flag is given twice")
    out = [tuple(combo) for combo in itertools.product(*axes)] if axes else []
    for text in settings:
        out.append(tuple(setting_pair(item, "--setting", method) for item in text.split()))
    if not out:
        raise StudyError("nothing to sweep: give --grid FLAG=V1,V2 or --setting \"FLAG=V ...\"")
    names = [setting_name(s) for s in out]
    if len(set(names)) != len(names):
        raise StudyError(f"setting {next(n for n in names if names.count(n) > 1)!r} is given twice")
    return tuple(out)


def baseline_name(text: str | None, settings: tuple[tuple[tuple[str, str], ...], ...], method: str) -> str | None:
    """The `--baseline` setting's name; it must be one of the settings swept."""
    if text is None:
        return None
    name = setting_name(tuple(setting_pair(item, "--baseline", method) for item in text.split()))
    if name not in [setting_name(s) for s in settings]:
        raise StudyError(f"--baseline {text!r} is not one of the settings swept; give it as a --setting too")
    return name


class Sweep(Study):
    """A `Study` whose trained models are one method under several settings, scored on the validation split."""
    program = "sweep"

    @property
    def first_trained(self) -> str:  # whose measured precision the other settings and the evaluation use
        return self.plan.names[0]

    @staticmethod
    def check_args(args: argparse.Namespace) -> None:
        settings_and_budget(args)

    def build_data(self) -> dict:
        from absence_tasks.generate import generate_instances
        from absence_tasks.schema import write_jsonl
        from trainers.data import load_training_instances

        data = self.out / "data"
        train = load_training_instances(self.plan.train_domains, ["omission"], self.plan.n_train, self.plan.seed,
                                        curriculum=True)
        write_jsonl(data / "train.jsonl", train)
        for domain in DOMAINS:
            instances = generate_instances(domain, "omission", self.plan.n_val, VALIDATION, self.plan.seed)
            write_jsonl(data / VALIDATION / f"{domain}_omission_{VALIDATION}.jsonl", instances)
        return {"train_instances": len(train), "validation_instances_per_domain": self.plan.n_val}

    def train_setting(self, setting: tuple[tuple[str, str], ...]) -> dict:
        budget = (["--max_train_seconds", str(self.plan.train_seconds)] if self.plan.train_seconds
                  else ["--compute_budget_flops", str(self.plan.budget_flops)])
        # The setting's flags come last, so they win over the shared extra flags given after `--`.
        return self.train(self.plan.method, setting_name(setting), run_args=["--num_train_epochs", "100", *budget],
                          flags=setting_flags(setting))

    def evaluate(self, name: str, model: Path | None = None, groups: tuple[str, ...] | None = None) -> dict:
        output = self.out / "eval" / name
        model = self.model if name == "zero-shot" else self.out / "models" / name
        settings = {"data_dir": str(self.out / "data" / VALIDATION), "split": VALIDATION}
        self.lm_eval(model, ("absencebench",), settings, output, cache=self.out / "eval" / f".cache-{name}")
        return {"output": str(output)}

    def row_name(self, name: str) -> str:
        return f"{self.model_label}-{name}" if name == "zero-shot" else f"{self.model_label}-{self.plan.method}-{name}"

    def publish(self) -> dict:
        board = self.out / "leaderboard.json"
        board.unlink(missing_ok=True)  # rebuilt from the evaluations every time
        lb = [sys.executable, "-m", "leaderboard"]
        for name in ("zero-shot", *self.plan.names):
            self.command(lb + ["publish", str(self.out / "eval" / name), "--out", str(board), "--method",
                               "zero-shot" if name == "zero-shot" else self.plan.method,
                               "--model-name", self.row_name(name)])
        rows = {row["model"]: row for row in json.loads(board.read_text())["rows"]}
        averages = {name: rows[self.row_name(name)]["average"]["value"] for name in self.plan.names}
        best = max(self.plan.names, key=lambda name: averages[name])  # ties: the first given
        for name in self.plan.names:
            if name != best:
                self.command(lb + ["compare", str(board), self.row_name(name), self.row_name(best), "--family", FAMILY])
        baseline = self.plan.baseline
        if baseline is not None and baseline != best:  # when it is the best, the comparisons above are these
            for name in self.plan.names:
                if name != baseline:
                    self.command(lb + ["compare", str(board), self.row_name(name), self.row_name(baseline),
                                       "--family", BASELINE_FAMILY])
        self.command(lb + ["render", str(board), "--out", str(self.out / "page"), "--screenshot"])
        summary = self.summary(json.loads(board.read_text()), best)
        atomic_write_text(self.out / "sweep.json", json.dumps(summary, indent=2) + "\n")
        atomic_write_bytes(self.out / "sweep.png", sweep_png(summary))
        self.log(f"best on validation: {best} ({100 * averages[best]:.1f} average F1)")
        return {"leaderboard": str(board), "sweep": str(self.out / "sweep.json"), "best": best}

    def summary(self, board: dict[str, Any], best: str) -> dict[str, Any]:
        rows = {row["model"]: row for row in board["rows"]}
        def against(name: str | None) -> dict[str, dict[str, Any]]:
            return {c["row_a"]["model"]: c for c in board.get("comparisons", [])
                    if name is not None and c["row_b"]["model"] == self.row_name(name) and c["task"] == "average"}

        def difference(comparison: dict[str, Any] | None) -> dict[str, Any] | None:
            return None if comparison is None else {
                key: round(100 * comparison[key], 2) for key in ("mean_difference", "ci_low", "ci_high")
            } | {"p_holm": comparison.get("p_holm")}

        against_best, against_baseline = against(best), against(self.plan.baseline)

        def scores(row: dict[str, Any]) -> dict[str, Any]:
            percent = {key: round(100 * row["average"][key], 2) for key in ("value", "ci_low", "ci_high")}
            return {"average": percent, "f1": {task.removeprefix("absence_"): round(100 * metrics["f1"]["value"], 2)
                                               for task, metrics in sorted(row["tasks"].items())}}

        out = []
        for setting, name in zip(self.plan.settings, self.plan.names):
            record = training_record(self.out / "models" / name)
            compute = record["compute"]
            state = json.loads((self.out / "models" / name / "trainer_state.json").read_text())
            losses = [entry["loss"] for entry in state.get("log_history", []) if "loss" in entry]
            out.append({"name": name, "flags": dict(setting), **scores(rows[self.row_name(name)]),
                        "optimizer_steps": record["global_step"],
                        "flops": compute["flops"], "train_minutes": round(compute["train_seconds"] / 60, 2),
                        "last_logged_loss": losses[-1] if losses else None,
                        "minus_best": difference(against_best.get(self.row_name(name))),
                        "minus_baseline": difference(against_baseline.get(self.row_name(name)))})
        return {"method": self.plan.method, "split": VALIDATION, "validation_instances_per_domain": self.plan.n_val,
                "budget": {"train_seconds": self.plan.train_seconds, "flops": self.plan.budget_flops},
                "zero_shot": scores(rows[self.row_name("zero-shot")]), "settings": out, "best": best,
                "baseline": self.plan.baseline}

    def stages(self) -> list[tuple[str, Any]]:
        trainings = [(f"train-{setting_name(s)}", lambda s=s: self.train_setting(s)) for s in self.plan.settings]
        evaluations = [(f"eval-{name}", lambda name=name: self.evaluate(name))
                       for name in ("zero-shot", *self.plan.names)]
        return [("model", self.prepare_model), ("data", self.build_data), *trainings, *evaluations,
                ("publish", self.publish)]


def settings_and_budget(args: argparse.Namespace) -> tuple[tuple[tuple[tuple[str, str], ...], ...], float | None]:
    """The settings and the time budget in seconds (None with a FLOP budget), or a StudyError."""
    if (args.train_minutes is None) == (args.compute_budget_flops is None):
        raise StudyError("give one budget per setting: --train-minutes M or --compute-budget-flops F")
    seconds = None if args.train_minutes is None else round(args.train_minutes * 60, 1)
    if seconds is not None and not MIN_TRAIN_SECONDS <= seconds <= MAX_TRAIN_SECONDS:
        raise StudyError(f"--train-minutes {args.train_minutes:g} is outside the bounds ({MIN_TRAIN_SECONDS} s to "
                         f"{MAX_TRAIN_SECONDS // 3600} h of training)")
    if args.compute_budget_flops is not None and args.compute_budget_flops <= 0:
        raise StudyError(f"--compute-budget-flops must be > 0, got {args.compute_budget_flops:g}")
    if args.n_val < 1 or (args.n_train is not None and args.n_train < 1):
        raise StudyError("--n-val and --n-train must be >= 1")
    settings = parse_settings(args.grid, args.setting, args.method)
    baseline_name(args.baseline, settings, args.method)
    return settings, seconds


def load_or_make_plan(out: Path, args: argparse.Namespace) -> SweepPlan:
    settings, seconds = settings_and_budget(args)
    domains = tuple(args.train_domains)
    n_train = args.n_train or (DEFAULT_N_TRAIN if seconds is None else
                               max(20, round(seconds * PLANNED_INSTANCES_PER_SECOND / len(domains))))
    asked = SweepPlan(args.method, settings, seconds,
                      args.compute_budget_flops, args.n_val, n_train, args.backend or default_backend(), args.seed,
                      domains, baseline=baseline_name(args.baseline, settings, args.method))
    path = out / "plan.json"
    if path.is_file() and any((out / "stages").glob("*.json")):
        stored = json.loads(path.read_text())
        plan = SweepPlan(**{**stored, "settings": tuple(tuple(tuple(p) for p in s) for s in stored["settings"]),
                            "train_domains": tuple(stored["train_domains"])})
        if asdict(plan) == asdict(asked):
            return plan
        extends = (asdict(dataclasses.replace(plan, settings=asked.settings, baseline=asked.baseline,
                                              n_val=asked.n_val)) == asdict(asked)
                   and set(plan.names) <= set(asked.names) and asked.n_val >= plan.n_val)
        if not extends:
            raise StudyError(f"{path}: this sweep was planned otherwise (method {plan.method}, settings "
                             f"{', '.join(plan.names)}, {plan.n_val} validation instances per domain); a sweep may "
                             f"gain settings and validation instances, nothing else: use another --out for a "
                             f"different sweep")
        # The finished settings keep their models and scores; publishing is redone over all of them.
        (out / "stages" / "publish.json").unlink(missing_ok=True)
        if asked.n_val > plan.n_val:
            # A larger validation set starts with the smaller one (generation is prefix-stable per seed): the data
            # stage and every evaluation run again, the models stay, and lm-eval's request cache answers the
            # instances scored before. The newest lm-eval results in an eval folder are the ones published.
            for marker in ["data", *(f"eval-{name}" for name in ("zero-shot", *plan.names))]:
                (out / "stages" / f"{marker}.json").unlink(missing_ok=True)
    atomic_write_text(path, json.dumps(asdict(asked), indent=2) + "\n")
    return asked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.sweep", description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=METHODS, default="sft", help="the trainer swept (default sft)")
    parser.add_argument("--grid", action="append", default=[], metavar="FLAG=V1,V2",
                        help="a trainer flag and its values; several --grid sweep their product")
    parser.add_argument("--setting", action="append", default=[], metavar="\"FLAG=V FLAG=V\"",
                        help="one more setting: trainer flags, space-separated (a list value: V1,V2)")
    parser.add_argument("--baseline", default=None, metavar="\"FLAG=V FLAG=V\"",
                        help="one of the settings: every other one is also paired against it (an ablation's control)")
    parser.add_argument("--train-minutes", type=float, default=None, help="training wall time per setting")
    parser.add_argument("--compute-budget-flops", type=float, default=None,
                        help="training FLOPs per setting instead (equal compute whatever else runs on the machine)")
    parser.add_argument("--n-val", type=int, default=30,
                        help="validation instances per domain that score each setting (default 30)")
    parser.add_argument("--n-train", type=int, default=None,
                        help="train instances per domain (default: sized to the time budget as the study does; "
                             f"{DEFAULT_N_TRAIN} with a FLOP budget)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="sweep folder (resumable)")
    parser.add_argument("--model", type=Path, default=None,
                        help="base checkpoint (default: the embedded SmolLM2-135M-Instruct, converted here)")
    parser.add_argument("--backend", choices=("vllm", "hf"), default=None,
                        help="lm-eval backend (default: vllm when installed, else hf)")
    parser.add_argument("--train-domains", nargs="+", choices=DOMAINS, default=list(DOMAINS),
                        help="domains of the train split (all three are always scored)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after `--`: flags for every setting's trainer, e.g. -- --precision bf16")
    return launch(parser.parse_args(argv), load_or_make_plan, Sweep)


if __name__ == "__main__":  # vLLM and the trainers run in child processes
    sys.exit(main())
