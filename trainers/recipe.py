"""The training recipe both trainers share: the precision measured on the machine at hand, a learning-rate
schedule over the *budget* (not over a step count the budget never reaches), and a length curriculum.

* `measure_precision`: a few forward + backward passes of the real model in float32 and under bfloat16
  autocast; the faster one trains (machines here differ: bf16 matmul is 3x fp32 on one CPU and half of it on
  another).
* `budget_lr_factor`: warm-up over the first `warmup` fraction of the run, then a cosine (or linear, or
  constant) decay to `min_lr_ratio` at its end, where "the run" is the fraction of the binding budget spent
  (the larger of FLOPs / FLOP budget, seconds / time budget, steps / max_steps), so a 15-minute run and a
  60-minute run both get a whole schedule.
* `curriculum_stages` / `CurriculumSampler`: the training split comes in length stages (documents of a few
  lines first, the test suite's lengths last); the sampler draws from the stage the run's progress has
  reached, domains interleaved, each instance once before any repeats.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

PRECISIONS = ("auto", "fp32", "bf16")
# bf16 must win by this much to be chosen: a small gain is within the measurement's noise, and fp32 is exact.
BF16_MIN_SPEEDUP = 1.05
SCHEDULE_SHAPES = ("cosine", "linear", "constant")


# ---- precision ---------------------------------------------------------------------------------------

def measure_precision(model: torch.nn.Module, tokens: int = 256, repeats: int = 2, answer_tokens: int = 32,
                      seed: int = 0) -> dict[str, float]:
    """Trained tokens/s of `model` (on its device) in float32 and under bfloat16 autocast: one warm-up and
    `repeats` timed forward + backward passes of a `tokens`-long random sequence each, the loss on the last
    `answer_tokens` positions as the trainers compute it. Gradients are cleared afterwards; the weights are
    not touched."""
    device = next(model.parameters()).device
    vocab = model.get_input_embeddings().weight.size(0)
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(vocab, (1, tokens), generator=generator).to(device)
    targets = ids[:, -answer_tokens:]
    was_training = model.training
    model.train()
    rates = {}
    for name in ("fp32", "bf16"):
        def context():
            return torch.autocast(device.type, dtype=torch.bfloat16) if name == "bf16" else nullcontext()
        best = math.inf
        for attempt in range(repeats + 1):
            started = time.perf_counter()
            with context():
                logits = model(input_ids=ids, logits_to_keep=answer_tokens + 1).logits[:, :-1]
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
            loss.backward()
            if attempt:  # the first pass of each precision warms caches and kernels up
                best = min(best, time.perf_counter() - started)
        rates[name] = tokens / best
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return rates


def choose_precision(requested: str, rates: dict[str, float] | None) -> str:
    """fp32 or bf16: what was asked for, or for `auto` the measured faster one (bf16 only when at least
    `BF16_MIN_SPEEDUP` times faster)."""
    if requested not in PRECISIONS:
        raise ValueError(f"unknown --precision {requested!r} (expected one of {', '.join(PRECISIONS)})")
    if requested != "auto":
        return requested
    if not rates:
        raise ValueError("--precision auto needs a measurement")
    return "bf16" if rates["bf16"] >= BF16_MIN_SPEEDUP * rates["fp32"] else "fp32"


# ---- the learning-rate schedule over the budget ------------------------------------------------------

def budget_lr_factor(progress: float, warmup: float, shape: str = "cosine", min_lr_ratio: float = 0.0) -> float:
    """The learning-rate multiplier when `progress` (0..1) of the run is done: linear warm-up from 0 over the
    first `warmup` fraction, then `shape` from 1 down to `min_lr_ratio` at progress 1 (and after)."""
    if shape not in SCHEDULE_SHAPES:
        raise ValueError(f"unknown schedule shape {shape!r} (expected one of {', '.join(SCHEDULE_SHAPES)})")
    progress = min(max(progress, 0.0), 1.0)
    if progress < warmup:
        return progress / warmup
    if shape == "constant":
        return 1.0
    decayed = (progress - warmup) / (1.0 - warmup) if warmup < 1 else 1.0
    falling = 0.5 * (1.0 + math.cos(math.pi * decayed)) if shape == "cosine" else 1.0 - decayed
    return min_lr_ratio + (1.0 - min_lr_ratio) * falling


def budget_scheduler(optimizer: torch.optim.Optimizer, progress: Callable[[], float], warmup: float, shape: str,
                     min_lr_ratio: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose factor follows `budget_lr_factor(progress())`; the step number it is given is
    ignored — the budget, not the step count, says how far the run is."""
    budget_lr_factor(0.0, warmup, shape, min_lr_ratio)  # check the shape now, not at the first step
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda _step: budget_lr_factor(progress(), warmup, shape, min_lr_ratio))


# ---- the length curriculum -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage:
    """Documents of `min_lines`..`max_lines` lines (numbers, poem lines, diff lines)."""
    min_lines: int
    max_lines: int


def curriculum_stages(start_lines: int, min_lines: int, max_lines: int, n_stages: int) -> list[Stage]:
    """`n_stages` length ranges on a geometric ladder from `start_lines` up to `max_lines`, the last one the
    generator preset's own range (`min_lines`..`max_lines`), so the run ends on the lengths the test suite
    has; a range repeating the one before it is dropped."""
    if n_stages < 1:
        raise ValueError(f"--curriculum_stages must be >= 1, got {n_stages}")
    start = max(2, min(start_lines, max_lines))
    edges = [max(2, round(start * (max_lines / start) ** (k / n_stages))) for k in range(n_stages + 1)]
    stages = [Stage(lo, hi) for lo, hi in zip(edges[:-2], edges[1:-1])] + [Stage(min_lines, max_lines)]
    return [stage for k, stage in enumerate(stages) if k == 0 or stage != stages[k - 1]]


def stage_counts(n: int, n_stages: int) -> list[int]:
    """`n` instances shared out over the stages as evenly as possible (earlier stages get the remainder)."""
    return [n // n_stages + (1 if k < n % n_stages else 0) for k in range(n_stages)]


class CurriculumSampler(torch.utils.data.Sampler[int]):
    """Indices into a dataset whose rows carry a curriculum stage (0 = shortest documents).

    Each draw looks at `progress()` (0..1 of the run): stage s = floor(progress / ramp * n_stages) (the
    last stage from `ramp` onwards) is open, and the draw is a seeded-random row of that stage not yet
    given, else of any open earlier stage, else of any stage; once every row has been given the pool
    starts again. So domains are interleaved, nothing repeats before everything was seen, and the run
    reaches the test suite's lengths at `ramp` of its budget however fast the machine is."""

    def __init__(self, stages: Sequence[int], progress: Callable[[], float], seed: int, ramp: float = 0.7):
        if not stages:
            raise ValueError("the curriculum has no training rows")
        if not 0 < ramp <= 1:
            raise ValueError(f"curriculum ramp must lie in (0, 1], got {ramp}")
        self.stages = list(stages)
        self.n_stages = max(self.stages) + 1
        self.progress = progress
        self.ramp = ramp
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn = 0  # draws so far, over all epochs (a resumed run's sampler is rebuilt; see trainers.run)

    def open_stage(self) -> int:
        return min(self.n_stages - 1, int(self.progress() / self.ramp * self.n_stages))

    def __len__(self) -> int:
        return len(self.stages)

    def __iter__(self) -> Iterator[int]:
        unseen = [[i for i, s in enumerate(self.stages) if s == stage] for stage in range(self.n_stages)]
        for _ in range(len(self.stages)):
            opened = self.open_stage()
            pool = next((unseen[s] for s in [opened, *range(opened - 1, -1, -1), *range(opened + 1, self.n_stages)]
                         if unseen[s]))
            pick = int(torch.randint(len(pool), (1,), generator=self.generator))
            self.drawn += 1
            yield pool.pop(pick)
