"""The reinforcement trainer's pure pieces (no model, no trainer): the reward — the task's own line F1 of a
sampled answer —, the per-sample advantages of its three modes. (pass@k, the measure RL is judged by, is a metric:
`absence_tasks.scoring.pass_at_k`.)

Reward. `line_f1_reward` has TRL's reward-function signature (the completions, plus every dataset column as
a keyword list): each sampled answer is cut at the tasks' stop sequence, as lm-eval's `until` cuts it, and
scored by `absence_tasks.scoring.score_response` against the instance it answers — the function the lm-eval
tasks' `process_results` calls, so a reward of 1 is an lm-eval F1 of 1.

Advantages, per sample, from the rewards of its group (the `num_generations` answers to one instance):
* grpo: (r - group mean) / (group std + 1e-4), the std with Bessel's correction — GRPO's group normalisation,
  the formula TRL applies with `scale_rewards="group"`.
* nsr, negative sample reinforcement (Zhu et al. 2025, "The Surprising Effectiveness of Negative
  Reinforcement in LLM Reasoning"): the paper's verifier gives +1 to a correct sample and -1 to a wrong one,
  and NSR keeps only the -1 part — it lowers the likelihood of wrong samples and leaves correct ones alone.
  Our reward is an F1, so "correct" is F1 >= `threshold` (default 1.0: exactly the missing lines, the paper's
  binary verdict); advantage -1 below the threshold, 0 at or above it. As in the paper there is no group
  baseline: a sample's advantage does not depend on the rest of its group.
* w_reinforce, the paper's Weighted-REINFORCE: lambda * PSR + NSR, i.e. +lambda for a correct sample and -1
  for a wrong one (lambda = `positive_weight`, 0.1 by default: the paper's value).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from absence_tasks.schema import Instance
from absence_tasks.scoring import score_response
from trainers.learning_curve import UNTIL

RL_MODES = ("grpo", "nsr", "w_reinforce")
# TRL's epsilon in the group normalisation (GRPOTrainer: advantages / (std_rewards + 1e-4)).
GRPO_EPSILON = 1e-4


# ---- reward ---------------------------------------------------------------------------------------

def instance_column(instance: Instance) -> str:
    """An instance as the dataset column the reward reads (JSON: Arrow needs one type per column)."""
    return json.dumps(instance.to_dict(), sort_keys=True)


def completion_text(completion: str | Sequence[dict[str, Any]]) -> str:
    """The text of a sampled answer: a plain completion is a string, a conversational one a list of messages
    (the answer is the last one's content)."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def answer_reward(instance: Instance, answer: str) -> float:
    """The task's F1 of `answer`, cut at the tasks' stop sequence as lm-eval cuts a generation."""
    return score_response(instance, answer.split(UNTIL, 1)[0]).f1


def line_f1_reward(completions: Sequence[Any], instance: Sequence[str], **kwargs: Any) -> list[float]:
    """TRL reward function: the F1 of each completion against the instance it answers (`instance`: the
    dataset's column of `instance_column` strings, one per completion)."""
    return [answer_reward(Instance.from_dict(json.loads(record)), completion_text(completion))
            for completion, record in zip(completions, instance, strict=True)]


# ---- advantages -------------------------------------------------------------------------------------

def grpo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """rewards (..., G), one group per row -> (r - mean) / (std + GRPO_EPSILON) within each group."""
    if rewards.size(-1) < 2:
        raise ValueError("group normalisation needs at least 2 samples per group")
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True)  # Bessel-corrected, as TRL's nanstd
    return (rewards - mean) / (std + GRPO_EPSILON)


def nsr_advantages(rewards: torch.Tensor, threshold: float = 1.0) -> torch.Tensor:
    """-1 for a sample whose reward is below `threshold` (not correct), 0 for the others."""
    return torch.where(rewards >= threshold, torch.zeros_like(rewards), -torch.ones_like(rewards))


def w_reinforce_advantages(rewards: torch.Tensor, threshold: float = 1.0, positive_weight: float = 0.1
                           ) -> torch.Tensor:
    """+positive_weight for a correct sample (reward >= `threshold`), -1 for the others."""
    return torch.where(rewards >= threshold, torch.full_like(rewards, positive_weight), -torch.ones_like(rewards))


def group_advantages(rewards: torch.Tensor, group_size: int, mode: str, threshold: float = 1.0,
                     positive_weight: float = 0.1) -> torch.Tensor:
    """Advantages (N,) of N rewards that come in consecutive groups of `group_size` (TRL's order: each
    instance's samples side by side), by `mode` (one of RL_MODES)."""
    if mode not in RL_MODES:
        raise ValueError(f"unknown rl mode {mode!r} (expected one of {', '.join(RL_MODES)})")
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"{tuple(rewards.shape)} rewards do not make groups of {group_size}")
    if mode == "grpo":
        return grpo_advantages(rewards.view(-1, group_size)).flatten()
    if mode == "nsr":
        return nsr_advantages(rewards, threshold)
    return w_reinforce_advantages(rewards, threshold, positive_weight)
