"""Compute accounting shared by every trainer: the tokens a run processes, its training FLOPs (6·N per
trained token, 2·N per forward-only token) and the wall time of its optimizer steps; FLOP and time budgets
that stop a run; and how far a run is through its binding budget (`ComputeAccountant.progress`), which the
learning-rate schedule and the length curriculum follow.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from trainers.losses import step_flops



def matmul_parameter_count(model: torch.nn.Module) -> int:
    """N in 6·N·tokens: every parameter a token's compute goes through. The input embedding is a lookup,
    not a matmul, so it counts only when tied to the output projection (then it IS that projection)."""
    total = sum(p.numel() for p in model.parameters())
    input_embeddings, output_embeddings = model.get_input_embeddings(), model.get_output_embeddings()
    if output_embeddings is None or input_embeddings.weight is not output_embeddings.weight:
        total -= input_embeddings.weight.numel()
    return total


class ComputeAccountant(TrainerCallback, ExportableState):
    """Tokens and FLOPs of a run, summed over all processes, and the wall seconds spent in its optimizer
    steps (each from the step's start to its end: forward, backward, update — not start-up, logging or
    checkpoint saving); stops training at `budget_flops` or `budget_seconds`, whichever comes first.

    Its counts live in trainer_state.json (`stateful_callbacks`), so a resumed run continues them (the
    steps after the last checkpoint are done again, and counted again: their first attempt was lost)."""

    # What on_train_begin takes back from a checkpoint: the counts, not the stop flags of an earlier session.
    COUNTS = ("instances_trained", "tokens_trained", "tokens_forward_only", "flops", "train_seconds")

    def __init__(self, n_params: int = 0, budget_flops: float | None = None, budget_seconds: float | None = None):
        self.n_params = n_params
        self.budget_flops = budget_flops
        self.budget_seconds = budget_seconds
        self.instances_trained = 0
        self.tokens_trained = 0
        self.tokens_forward_only = 0
        self.flops = 0
        self.train_seconds = 0.0
        self.stopped_by_budget = False
        self.stopped_by_time = False
        self._step_started = time.perf_counter()

    def add(self, trained_tokens: int, forward_only_tokens: int = 0, instances: int = 0) -> None:
        self.instances_trained += instances
        self.tokens_trained += trained_tokens
        self.tokens_forward_only += forward_only_tokens
        self.flops += step_flops(self.n_params, trained_tokens, forward_only_tokens)

    def progress(self, step: int = 0, max_steps: int = 0) -> float:
        """How much of the run is done, 0..1: the largest of the FLOP budget's, the time budget's and the
        step limit's used fractions (whichever ends the run first is the one that counts)."""
        used = [step / max_steps if max_steps > 0 else 0.0,
                self.flops / self.budget_flops if self.budget_flops else 0.0,
                self.train_seconds / self.budget_seconds if self.budget_seconds else 0.0]
        return min(1.0, max(used))

    def stopped_by(self) -> list[str]:
        """The budgets (their flag names) that ended the run; empty when it ran to its step/epoch limit."""
        return [name for name, hit in (("compute_budget_flops", self.stopped_by_budget),
                                       ("max_train_seconds", self.stopped_by_time)) if hit]

    def summary(self) -> dict[str, Any]:
        return {"n_params": self.n_params, "instances_trained": self.instances_trained,
                "tokens_trained": self.tokens_trained,
                "tokens_forward_only": self.tokens_forward_only, "flops": self.flops,
                "train_seconds": round(self.train_seconds, 3), "budget_flops": self.budget_flops,
                "budget_seconds": self.budget_seconds, "stopped_by_budget": self.stopped_by_budget,
                "stopped_by_time": self.stopped_by_time, "stopped_by": self.stopped_by()}

    def state(self) -> dict[str, Any]:
        return {"args": {"n_params": self.n_params, "budget_flops": self.budget_flops,
                         "budget_seconds": self.budget_seconds},
                "attributes": {"instances_trained": self.instances_trained, "tokens_trained": self.tokens_trained,
                               "tokens_forward_only": self.tokens_forward_only,
                               "flops": self.flops, "train_seconds": self.train_seconds,
                               "stopped_by_budget": self.stopped_by_budget, "stopped_by_time": self.stopped_by_time}}

    def on_train_begin(self, args, state, control, **kwargs):
        # transformers restores callback state only with restore_callback_states_from_checkpoint; the counts
        # must survive a resume whatever that flag says, so take them from the loaded state ourselves.
        saved = state.stateful_callbacks.get(type(self).__name__)
        if state.global_step > 0 and self.tokens_trained == 0 and isinstance(saved, dict):
            attributes = saved.get("attributes", {})
            for name in self.COUNTS:
                if name in attributes:
                    setattr(self, name, attributes[name])
        self._step_started = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        self.train_seconds += _slowest_process(now - self._step_started, args.device)
        # Should a step's on_step_begin be skipped, its time still counts: from the previous step's end.
        self._step_started = now
        self.stopped_by_budget = self.budget_flops is not None and self.flops >= self.budget_flops
        self.stopped_by_time = self.budget_seconds is not None and self.train_seconds >= self.budget_seconds
        if self.stopped_by_budget or self.stopped_by_time:
            control.should_training_stop = True
        return control


def _slowest_process(seconds: float, device: torch.device) -> float:
    """The longest of the processes' `seconds` (a multi-process step ends when its slowest process does).
    Every process then adds the same time, so all of them stop at the same step: a process stopping
    alone would leave the others waiting for it forever."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return seconds
    longest = torch.tensor([seconds], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(longest, op=torch.distributed.ReduceOp.MAX)
    return float(longest.item())
