"""A study's plan: what it trains and scores, fixed at its first run in `plan.json` so a resumed study is the
same study, and the command-line checks that need no model."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

from absence_tasks.schema import DOMAINS, atomic_write_text

TASK_GROUPS = ("absencebench", "absencebench_placeholder")
# The methods a study trains from the base model; SFT's wall time is the budget the others get in FLOPs.
METHODS = ("sft", "contrastive")
# Flags a study or a sweep sets itself for every run it trains: a setting that changed them would change what is
# compared.
RESERVED_FLAGS = {"output_dir", "model_name_or_path", "train_file", "max_train_seconds", "compute_budget_flops",
                  "resume_from_checkpoint", "num_train_epochs", "max_steps", "config"}

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
# A contrastive arm trains for the FLOPs SFT counted (equal compute) or for SFT's wall time (equal time).
BUDGETS = ("flops", "time")
PASS_AT_K_SAMPLES = 8  # answers per instance of the absencebench_pass_at_k tasks (their `repeats`)
HF_INSTANCES_PER_SECOND = 0.03


Setting = tuple[tuple[str, str], ...]  # a run's own trainer flags: (flag, value) pairs, in the order given


class Arm(NamedTuple):
    """A contrastive arm of a study: its name (folder, stage and row), its own trainer flags and its budget."""
    name: str
    setting: Setting
    budget: str


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
    contrastive_settings: tuple[Setting, ...] = ((),)  # one contrastive arm per setting (): the trainer's defaults
    contrastive_budgets: tuple[str, ...] = ("flops",)  # ... at SFT's FLOPs, at its wall time, or both (two arms)

    @property
    def arms(self) -> list[Arm]:
        """The contrastive arms: `contrastive` is the trainer's defaults at SFT's FLOPs; a setting adds its flags
        to the name (`contrastive-lambda_seq-1+lambda_gap-0`), SFT's wall time adds `-equal-time`."""
        if "contrastive" not in self.methods:
            return []
        return [Arm("contrastive" + (f"-{setting_name(setting)}" if setting else "")
                    + ("-equal-time" if budget == "time" else ""), setting, budget)
                for setting in self.contrastive_settings for budget in self.contrastive_budgets]

    @property
    def trained(self) -> tuple[str, ...]:
        """The trained models' names (folders under models/, rows of the leaderboard)."""
        return ("sft", *(arm.name for arm in self.arms), *(("rl", "sft-continued") if self.rl_seconds else ()))

    def method_of(self, name: str) -> str:
        """The leaderboard method of models/<name> (SFT continued is SFT; every arm is contrastive)."""
        return "contrastive" if name in {arm.name for arm in self.arms} else "sft" if name == "sft-continued" else name

    @property
    def task_groups(self) -> tuple[str, ...]:
        return TASK_GROUPS if self.n_eval_placeholder else TASK_GROUPS[:1]

    @property
    def paired(self) -> list[tuple[str, str, bool]]:
        """The paired tests `publish` runs on the test suite and on each held-out file: (row A, row B, whether the
        test is one of several arms against SFT, Holm-adjusted together)."""
        several = len(self.arms) > 1
        return [("sft", "zero-shot", False), *[(arm.name, "sft", several) for arm in self.arms],
                *([("rl", "sft-continued", False)] if self.rl_seconds else [])]

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
        return ((1 + len(self.arms)) * self.train_seconds + 2 * self.rl_seconds
                + (1 + len(self.trained)) * (start + instances / rate + heldout) + pass_at_k)


def make_plan(train_seconds: float, backend: str, seed: int, n_eval: int = 100, n_eval_placeholder: int = 30,
              train_domains: tuple[str, ...] = DOMAINS, rl_seconds: float = 0.0, rl_config: str | None = None,
              methods: tuple[str, ...] = METHODS, pass_at_k_instances_per_domain: int = 10,
              heldout: tuple[tuple[str, str], ...] = (), contrastive_settings: tuple[Setting, ...] = ((),),
              contrastive_budgets: tuple[str, ...] = ("flops",)) -> Plan:
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
    if not contrastive_budgets or not set(contrastive_budgets) <= set(BUDGETS):
        raise StudyError(f"--contrastive-budget: expected one or both of {', '.join(BUDGETS)}")
    contrastive_budgets = tuple(b for b in BUDGETS if b in contrastive_budgets)
    names = [setting_name(setting) for setting in contrastive_settings]
    if len(set(names)) != len(names):
        raise StudyError(f"--contrastive-setting {next(n for n in names if names.count(n) > 1)!r} is given twice")
    if contrastive_settings != ((),) and "contrastive" not in methods:
        raise StudyError("--contrastive-setting needs the contrastive method (--methods sft contrastive)")
    n_train = max(20, min(5000, round(train_seconds * PLANNED_INSTANCES_PER_SECOND / len(train_domains))))
    # The learning curve costs evaluation time (≈ 7 s per validation instance on 2 cores, on top of the training
    # budget): a 30-minute run (≈ 400 steps) gets four points on 6 instances per domain, a shorter one fewer
    # instances, and a run under 10 minutes none — its two points on 3 instances per domain (±25 F1 each) cost
    # 2.3 of the main job's 23.5 minutes per method and said nothing (measured on the 3-minute main job).
    curve = 6 if train_seconds >= 20 * 60 else 3 if train_seconds >= 10 * 60 else 0
    return Plan(round(train_seconds, 1), backend, n_eval, n_eval_placeholder, n_train, seed, tuple(train_domains),
                curve_instances_per_domain=curve, curve_every_steps=150, rl_seconds=round(rl_seconds, 1),
                rl_config=rl_config, methods=methods, pass_at_k_instances_per_domain=pass_at_k_instances_per_domain,
                heldout=tuple(heldout), contrastive_settings=tuple(contrastive_settings),
                contrastive_budgets=contrastive_budgets)


def parse_contrastive_settings(items: list[str]) -> tuple[Setting, ...]:
    """`--contrastive-setting "FLAG=V FLAG=V"` values as settings, each flag one the contrastive trainer has;
    none: one arm with the trainer's defaults."""
    settings = tuple(tuple(setting_pair(pair, "--contrastive-setting", "contrastive") for pair in item.split())
                     for item in items)
    if any(not setting for setting in settings):
        raise StudyError("--contrastive-setting: expected \"FLAG=V ...\", got an empty setting")
    return settings or ((),)


def setting_flags(setting: Setting) -> list[str]:
    """A setting as trainer command-line flags (a list value `V1,V2` as separate tokens)."""
    return [token for flag, value in setting for token in (f"--{flag}", *value.split(","))]


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


def setting_name(setting: tuple[tuple[str, str], ...]) -> str:
    """A setting's folder and row name: `learning_rate-0.0003+lambda_seq-0`. Only characters that survive
    lm-eval's `--model_args` (no comma, no `=`) and a file system."""
    return "+".join(f"{flag}-{re.sub(r'[^A-Za-z0-9_.-]', '-', value)}" for flag, value in setting)


def setting_pair(text: str, where: str, method: str) -> tuple[str, str]:
    """`FLAG=VALUE` as (flag, value), the flag one the method's trainer has and the study or sweep does not set
    itself (a typo would otherwise train a whole run with the default)."""
    flag, sep, value = text.partition("=")
    flag = flag.strip().removeprefix("--")
    if not sep or not flag or not value.strip():
        raise StudyError(f"{where} {text!r}: expected FLAG=VALUE")
    if flag in RESERVED_FLAGS:
        raise StudyError(f"{where} {text!r}: --{flag} is set for every run by the command itself")
    if flag not in trainer_flags(method):
        raise StudyError(f"{where} {text!r}: python -m trainers.{method} has no option --{flag}")
    return flag, value.strip()


def trainer_flags(method: str) -> set[str]:
    """Every option of `python -m trainers.<method>` (its TrlParser's dataclasses)."""
    from trainers.config import AbsenceModelConfig, AbsenceSFTConfig, ContrastiveConfig, ScriptArguments

    config = ContrastiveConfig if method == "contrastive" else AbsenceSFTConfig
    return {f.name for cls in (AbsenceModelConfig, ScriptArguments, config) for f in dataclasses.fields(cls)}


def default_backend() -> str:
    return "vllm" if importlib.util.find_spec("vllm") is not None else "hf"


class StudyError(RuntimeError):
    pass


def load_or_make_plan(out: Path, args: argparse.Namespace) -> Plan:
    path = out / "plan.json"
    asked = make_plan(args.train_minutes * 60, args.backend or default_backend(), args.seed, args.n_eval,
                      args.n_eval_placeholder, tuple(args.train_domains), args.rl_minutes * 60,
                      str(args.rl_config.resolve()) if args.rl_config else None, tuple(args.methods),
                      args.pass_at_k_instances, parse_heldout(args.heldout),
                      parse_contrastive_settings(args.contrastive_setting), tuple(args.contrastive_budget))
    # A plan whose study never finished a stage binds nothing yet: a corrected command replaces it.
    if path.is_file() and any((out / "stages").glob("*.json")):
        stored = json.loads(path.read_text())
        if "train_seconds" not in stored:
            raise StudyError(f"{path}: a study planned by an older version (a whole-study budget); use another --out")
        plan = Plan(**{**stored, "train_domains": tuple(stored["train_domains"]),
                       "methods": tuple(stored.get("methods", METHODS)),
                       "heldout": tuple(tuple(pair) for pair in stored.get("heldout", ())),
                       "contrastive_settings": tuple(tuple(tuple(pair) for pair in setting)
                                                     for setting in stored.get("contrastive_settings", [[]])),
                       "contrastive_budgets": tuple(stored.get("contrastive_budgets", ("flops",)))})
        bound = ("train_seconds", "n_eval", "n_eval_placeholder", "rl_seconds", "methods", "contrastive_settings",
                 "contrastive_budgets")
        if any(getattr(plan, field) != getattr(asked, field) for field in bound):
            arms = "".join(f" --contrastive-setting \"{' '.join(f'{k}={v}' for k, v in setting)}\""
                           for setting in plan.contrastive_settings if setting)
            raise StudyError(f"{path}: this study was planned for --train-minutes {plan.train_seconds / 60:g} "
                             f"--n-eval {plan.n_eval} --n-eval-placeholder {plan.n_eval_placeholder} --rl-minutes "
                             f"{plan.rl_seconds / 60:g} --methods {' '.join(plan.methods)}{arms} --contrastive-budget "
                             f"{' '.join(plan.contrastive_budgets)}; use another --out for a different plan")
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
