"""Data efficiency: F1 against the number of training instances, SFT vs contrastive, in one command.

    python -m study.curve --sizes 8 16 32 --out runs/curve

Each point trains a fresh copy of the base model for one epoch over the first N instances of one fixed,
domain-balanced training pool (so the sets are nested: the 8 are among the 16), with SFT and with the
contrastive method, and scores it with lm-eval on the omission suite (`absencebench`); the base model
is the point at N = 0. Both methods see the same instances in the same order (same seed); contrastive
also runs forward-only passes over each instance's companions, so its FLOPs per instance are higher (the
leaderboard rows record both). The stages, markers, resuming and outputs are those of
`study.experiment`; `publish` adds a paired contrastive-vs-SFT test at every N and the page shows
`data_efficiency.png`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from absence_tasks.schema import DOMAINS, atomic_write_text
from study.experiment import Study, launch
from study.plan import METHODS, StudyError, default_backend

CURVE_TASK_GROUPS = ("absencebench",)  # omission only: the curve's question is the main task


@dataclass
class CurvePlan:
    """What a curve run trains and scores; stored in plan.json at the first run."""
    sizes: tuple[int, ...]   # training instances per point, ascending
    n_eval: int              # test instances per omission task
    backend: str
    seed: int
    learning_rate: float = 1e-4
    train_domains: tuple[str, ...] = DOMAINS
    curve_instances_per_domain: int = 0  # the trainers' learning curve: off (each point is scored by lm-eval)
    curve_every_steps: int = 0


def point_name(method: str, size: int) -> str:
    return f"{method}-n{size}"


class Curve(Study):
    """A `Study` whose training stages are one epoch over nested subsets instead of a time budget."""
    program = "curve"

    def build_data(self) -> dict:
        from absence_tasks.generate import generate_instances
        from absence_tasks.schema import write_jsonl

        data = self.out / "data"
        largest, domains = max(self.plan.sizes), self.plan.train_domains
        per_domain = [generate_instances(domain, "omission", -(-largest // len(domains)), "train", self.plan.seed)
                      for domain in domains]
        # Round-robin over the domains, so every prefix of the pool is as balanced as it can be.
        pool = [instance for group in zip(*per_domain) for instance in group]
        for size in self.plan.sizes:
            write_jsonl(data / f"train-n{size}.jsonl", pool[:size])
        for domain in DOMAINS:
            test = generate_instances(domain, "omission", self.plan.n_eval, "test", self.plan.seed)
            write_jsonl(data / "suite" / f"{domain}_omission_test.jsonl", test)
        return {"train_pool": len(pool), "sizes": list(self.plan.sizes),
                "test_instances_per_task": self.plan.n_eval}

    def train_point(self, method: str, size: int) -> dict:
        # One pass over the N instances, 2 per optimizer step: the smallest point still makes several
        # updates. A constant rate, no warm-up (a warm-up would spend the few steps there are at low rates).
        run_args = ["--num_train_epochs", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
                    "--learning_rate", str(self.plan.learning_rate), "--lr_scheduler_type", "constant"]
        return self.train(method, point_name(method, size), self.out / "data" / f"train-n{size}.jsonl", run_args)

    def publish(self) -> dict:
        board = self.out / "leaderboard.json"
        board.unlink(missing_ok=True)  # rebuilt from the evaluations every time
        lb = [sys.executable, "-m", "leaderboard"]
        points = ["zero-shot", *(point_name(m, n) for n in self.plan.sizes for m in METHODS)]
        for name in points:
            method = name.split("-n")[0] if name != "zero-shot" else name
            self.command(lb + ["publish", str(self.out / "eval" / name), "--out", str(board), "--method", method,
                               "--model-name", f"{self.model_label}-{name}"])
        for size in self.plan.sizes:
            self.command(lb + ["compare", str(board), f"{self.model_label}-{point_name('contrastive', size)}",
                               f"{self.model_label}-{point_name('sft', size)}"])
        self.command(lb + ["render", str(board), "--out", str(self.out / "page"), "--screenshot"])
        return {"leaderboard": str(board), "page": str(self.out / "page" / "index.html")}

    def stages(self) -> list[tuple[str, Any]]:
        trainings = [(f"train-{point_name(m, n)}", lambda m=m, n=n: self.train_point(m, n))
                     for n in self.plan.sizes for m in METHODS]
        evaluations = [(f"eval-{name}", lambda name=name: self.evaluate(name, groups=CURVE_TASK_GROUPS))
                       for name in ["zero-shot", *(point_name(m, n) for n in self.plan.sizes for m in METHODS)]]
        return [("model", self.prepare_model), ("data", self.build_data), *trainings, *evaluations,
                ("publish", self.publish)]


def load_or_make_plan(out: Path, args: argparse.Namespace) -> CurvePlan:
    path = out / "plan.json"
    asked = CurvePlan(tuple(sorted(set(args.sizes))), args.n_eval, args.backend or default_backend(), args.seed,
                      args.learning_rate, tuple(args.train_domains))
    if path.is_file():
        stored = json.loads(path.read_text())
        plan = CurvePlan(**{**stored, "sizes": tuple(stored["sizes"]),
                            "train_domains": tuple(stored["train_domains"])})
        if (plan.sizes, plan.n_eval, plan.seed) != (asked.sizes, asked.n_eval, asked.seed):
            raise StudyError(f"{path}: this curve was planned with sizes {list(plan.sizes)}, --n-eval "
                             f"{plan.n_eval}, --seed {plan.seed}; use another --out for a different curve")
        return plan
    atomic_write_text(path, json.dumps(asdict(asked), indent=2) + "\n")
    return asked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.curve", description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16, 32],
                        help="training instances per point (default: 8 16 32; about 40 s of training per "
                             "instance for both methods together on 2 CPU cores with SmolLM2-135M)")
    parser.add_argument("--out", type=Path, default=Path("runs/curve"), help="curve folder (resumable)")
    parser.add_argument("--model", type=Path, default=None,
                        help="base checkpoint (default: the embedded SmolLM2-135M-Instruct, converted here)")
    parser.add_argument("--backend", choices=("vllm", "hf"), default=None,
                        help="lm-eval backend (default: vllm when installed, else hf)")
    parser.add_argument("--n-eval", type=int, default=15, help="test instances per omission task (default 15)")
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--train-domains", nargs="+", choices=DOMAINS, default=list(DOMAINS),
                        help="domains of the training pool (all three are always evaluated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("train_args", nargs=argparse.REMAINDER,
                        help="after `--`: extra flags for both trainers, e.g. -- --lambda_gap 0.5")
    args = parser.parse_args(argv)
    if min(args.sizes) < 1 or args.n_eval < 1:
        parser.error("--sizes and --n-eval must be positive")
    return launch(args, load_or_make_plan, Curve)


if __name__ == "__main__":  # vLLM and the trainers run in child processes
    sys.exit(main())
