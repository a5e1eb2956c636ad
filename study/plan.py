"""A study's plan: what it trains and scores, fixed at its first run in `plan.json` so a resumed study is the
same study, and the command-line checks that need no model."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from absence_tasks.schema import DOMAINS, atomic_write_text

TASK_GROUPS = ("absencebench", "absencebench_placeholder")
# The methods a study trains from the base model; SFT's wall time is the budget the others get in FLOPs.
METHODS = ("sft", "contrastive")

# A study trains each method for a fixed time (`--train-minutes`; contrastive gets the FLOPs SFT used) and then
# evaluates on top of it, so a bigger test set never eats the training. The bounds: below ten seconds there is no
# run to speak of (tests use a few seconds); beyond a day is not a study for this machine.
MIN_TRAIN_SECONDS = 10
MAX_TRAIN_SECONDS = 24 * 3600
# Trained instances per second of training, measured with the recipe (bf16 autocast, curriculum) on the 2-core
# machine: about 0.3. The train split is generated with half again as many (the curriculum draws each instance
# once before any repeats, so a run that is faster than planned still sees new documents).
PLANNED_INSTANCES_PER_SECOND = 0.45
# vLLM on 2 cores (the recipe's engine settings): an engine start about 1.5 minutes, then about 1 instance/s
# on the omission suite (results/study-30m: 300 instances scored in 388-511 s a model, start included). Only
# for the estimate the study prints before it starts (evaluation is never cut to fit it).
VLLM_START_SECONDS = 90
VLLM_INSTANCES_PER_SECOND = 1.0
PASS_AT_K_SAMPLES = 8  # answers per instance of the absencebench_pass_at_k tasks (their `repeats`)
HF_INSTANCES_PER_SECOND = 0.03


@dataclass
class Plan:
    """What a study runs; stored in plan.json at the first run, so a resumed study is the same study."""
    train_seconds: float     # SFT's training wall time; contrastive trains for the FLOPs SFT used
    backend: str
    n_eval: int              # test instances per omission task (3 domains)
    n_eval_placeholder: int  # per placeholder task (0: the placeholder tasks are not evaluated)
    n_train: int             # train instances per domain (a length curriculum)
    seed: int
    train_domains: tuple[str, ...] = DOMAINS  # fewer: cross-domain transfer to the left-out ones
    curve_instances_per_domain: int = 6      # the trainers' learning curve (validation split)
    curve_every_steps: int = 150
    rl_seconds: float = 0.0  # RL from the SFT checkpoint for this wall time, against SFT continued (0: no RL)
    rl_config: str | None = None  # a trainers.rl YAML config (TRL's --config) for the RL stage
    methods: tuple[str, ...] = METHODS  # the methods trained from the base model (SFT always: it sets the budget)
    pass_at_k_instances_per_domain: int = 10  # RL's before/after pass@k (validation split, lm-eval, 8 samples)
    heldout: tuple[tuple[str, str], ...] = ()  # (domain, absolute path of a data file): transfer rows

    @property
    def trained(self) -> tuple[str, ...]:
        """The trained models' names (folders under models/, rows of the leaderboard)."""
        return (*self.methods, *(("rl", "sft-continued") if self.rl_seconds else ()))

    @property
    def task_groups(self) -> tuple[str, ...]:
        return TASK_GROUPS if self.n_eval_placeholder else TASK_GROUPS[:1]

    @property
    def paired(self) -> list[tuple[str, str]]:
        """The paired tests `publish` runs (row A minus row B), on the test suite and on each held-out file."""
        return [("sft", "zero-shot"), *([("contrastive", "sft")] if "contrastive" in self.methods else []),
                *([("rl", "sft-continued")] if self.rl_seconds else [])]

    def estimated_seconds(self) -> float:
        """Training plus an estimate of the models' evaluation (for the log only); RL's continued SFT takes
        about as long as RL."""
        rate, start = ((VLLM_INSTANCES_PER_SECOND, VLLM_START_SECONDS) if self.backend == "vllm"
                       else (HF_INSTANCES_PER_SECOND, 20))
        instances = len(DOMAINS) * (self.n_eval + self.n_eval_placeholder)
        pass_at_k = 2 * (start + PASS_AT_K_SAMPLES * len(DOMAINS) * self.pass_at_k_instances_per_domain / rate
                         ) if self.rl_seconds else 0.0
        from absence_tasks.loading import load_instances

        heldout = sum(start + len(load_instances(path, domain)) / rate for domain, path in self.heldout)
        return (len(self.methods) * self.train_seconds + 2 * self.rl_seconds
                + (1 + len(self.trained)) * (start + instances / rate + heldout) + pass_at_k)


def make_plan(train_seconds: float, backend: str, seed: int, n_eval: int = 100, n_eval_placeholder: int = 30,
              train_domains: tuple[str, ...] = DOMAINS, rl_seconds: float = 0.0, rl_config: str | None = None,
              methods: tuple[str, ...] = METHODS, pass_at_k_instances_per_domain: int = 10,
              heldout: tuple[tuple[str, str], ...] = ()) -> Plan:
    """The study's plan: SFT trains for `train_seconds` (contrastive for the same FLOPs), on a curriculum train
    split sized to what that time gets through, and the three models are scored on n_eval instances per
    omission task (n_eval_placeholder per placeholder task)."""
    if not MIN_TRAIN_SECONDS <= train_seconds <= MAX_TRAIN_SECONDS:
        raise StudyError(f"--train-minutes {train_seconds / 60:g} is outside the bounds ({MIN_TRAIN_SECONDS} s to "
                         f"{MAX_TRAIN_SECONDS // 3600} h of training)")
    if n_eval < 1 or n_eval_placeholder < 0:
        raise StudyError("--n-eval must be >= 1 and --n-eval-placeholder >= 0")
    if pass_at_k_instances_per_domain < 1:
        raise StudyError("--pass-at-k-instances must be >= 1")
    if rl_seconds and not MIN_TRAIN_SECONDS <= rl_seconds <= MAX_TRAIN_SECONDS:
        raise StudyError(f"--rl-minutes {rl_seconds / 60:g} is outside the bounds (0, or {MIN_TRAIN_SECONDS} s to "
                         f"{MAX_TRAIN_SECONDS // 3600} h)")
    check_methods(methods)
    methods = tuple(m for m in METHODS if m in methods)  # the stages' order, each once
    n_train = max(20, min(5000, round(train_seconds * PLANNED_INSTANCES_PER_SECOND / len(train_domains))))
    # The learning curve costs evaluation time (≈ 7 s per validation instance on 2 cores, on top of the training
    # budget): a 30-minute run (≈ 400 steps) gets four points on 6 instances per domain, a shorter one fewer
    # instances, and a run under 10 minutes none — its two points on 3 instances per domain (±25 F1 each) cost
    # 2.3 of the main job's 23.5 minutes per method and said nothing (measured on the 3-minute main job).
    curve = 6 if train_seconds >= 20 * 60 else 3 if train_seconds >= 10 * 60 else 0
    return Plan(round(train_seconds, 1), backend, n_eval, n_eval_placeholder, n_train, seed, tuple(train_domains),
                curve_instances_per_domain=curve, curve_every_steps=150, rl_seconds=round(rl_seconds, 1),
                rl_config=rl_config, methods=methods, pass_at_k_instances_per_domain=pass_at_k_instances_per_domain,
                heldout=tuple(heldout))


def check_methods(methods) -> None:
    if "sft" not in methods:
        raise StudyError("--methods must include sft: the other methods train for the FLOPs SFT used")


def parse_heldout(items: list[str]) -> tuple[tuple[str, str], ...]:
    """`--heldout DOMAIN=FILE` as (domain, absolute path) pairs, one file per domain, each read now: it must hold
    omission instances of its domain (ours or upstream AbsenceBench's JSONL), so a bad file stops the study
    before anything is trained."""
    from absence_tasks.loading import load_instances_for_task

    pairs: dict[str, str] = {}
    for item in items:
        domain, sep, path = item.partition("=")
        if not sep or domain not in DOMAINS or not path:
            raise StudyError(f"--heldout {item!r}: expected DOMAIN=FILE, DOMAIN one of {', '.join(DOMAINS)}")
        if domain in pairs:
            raise StudyError(f"--heldout: two files for {domain} (one per domain)")
        if not Path(path).is_file():
            raise StudyError(f"{path}: no such file (--heldout)")
        load_instances_for_task(domain, "omission", data_file=path)  # a DataError names the file and the problem
        pairs[domain] = str(Path(path).resolve())
    return tuple(pairs.items())


def default_backend() -> str:
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


class StudyError(RuntimeError):
    pass


def load_or_make_plan(out: Path, args: argparse.Namespace) -> Plan:
    path = out / "plan.json"
    asked = make_plan(args.train_minutes * 60, args.backend or default_backend(), args.seed, args.n_eval,
                      args.n_eval_placeholder, tuple(args.train_domains), args.rl_minutes * 60,
                      str(args.rl_config.resolve()) if args.rl_config else None, tuple(args.methods),
                      args.pass_at_k_instances, parse_heldout(args.heldout))
    # A plan whose study never finished a stage binds nothing yet: a corrected command replaces it.
    if path.is_file() and any((out / "stages").glob("*.json")):
        stored = json.loads(path.read_text())
        if "train_seconds" not in stored:
            raise StudyError(f"{path}: a study planned by an older version (a whole-study budget); use another --out")
        plan = Plan(**{**stored, "train_domains": tuple(stored["train_domains"]),
                       "methods": tuple(stored.get("methods", METHODS)),
                       "heldout": tuple(tuple(pair) for pair in stored.get("heldout", ()))})
        if (plan.train_seconds, plan.n_eval, plan.n_eval_placeholder, plan.rl_seconds, plan.methods) != (
                asked.train_seconds, asked.n_eval, asked.n_eval_placeholder, asked.rl_seconds, asked.methods):
            raise StudyError(f"{path}: this study was planned for --train-minutes {plan.train_seconds / 60:g} "
                             f"--n-eval {plan.n_eval} --n-eval-placeholder {plan.n_eval_placeholder} --rl-minutes "
                             f"{plan.rl_seconds / 60:g} --methods {' '.join(plan.methods)}; use another --out for a "
                             f"different plan")
        if plan.heldout != asked.heldout:
            # Held-out files only add evaluations after training: a study may gain them, never change one.
            if changed := [d for d, p in plan.heldout if dict(asked.heldout).get(d) != p]:
                raise StudyError(f"{path}: this study scores {changed[0]} on {dict(plan.heldout)[changed[0]]} "
                                 f"(--heldout); give that file again, or use another --out for a different one")
            plan = dataclasses.replace(plan, heldout=asked.heldout)
            atomic_write_text(path, json.dumps(asdict(plan), indent=2) + "\n")
            (out / "stages" / "publish.json").unlink(missing_ok=True)  # published again with the new rows
        return plan
    atomic_write_text(path, json.dumps(asdict(asked), indent=2) + "\n")
    return asked
