"""Reinforcement from the task's own F1: `python -m trainers.rl [--config run.yaml] [--flags]`.

    python -m trainers.rl --model_name_or_path runs/sft --max_train_seconds 1800 --output_dir runs/rl
    python -m trainers.rl --rl_mode nsr --n_train 8 --max_steps 4 --curve_instances_per_domain 0 \\
        --pass_at_k_instances_per_domain 1 --output_dir /tmp/rl

TRL's GRPOTrainer on the train split's prompts (the lm-eval tasks' own, through `trainers.data`): for each
instance it samples `--num_generations` answers (4; temperature 1.0, at most `--max_completion_length` 128
tokens), scores each with the task's exact line F1 against the instance's missing lines
(`trainers.rewards.line_f1_reward`, the scorer lm-eval uses), turns a group's rewards into advantages by
`--rl_mode` and takes a policy-gradient step (TRL's loss, `--loss_type dapo` by default, no KL term:
`--beta 0`).

Modes (`trainers/rewards.py`): `grpo` (group-normalised), `nsr` (only the negative side: -1 for every answer
that is not correct, F1 < `--pass_threshold`, default 1.0) and `w_reinforce` (the default: NSR plus
+`--positive_weight`, 0.1, for the correct answers; Zhu et al. 2025). The advantages replace TRL's at the one
place it computes them, right after the rewards (`_generate_and_score_completions`).

Documents are short by default (the length curriculum's first stage: numerical and poetry up to 8 lines, PR
diffs up to 33), so a CPU run makes enough updates to measure; TRL's sampler draws instances at random, so
there is no curriculum (`--curriculum true` is refused).

Before training and at its end, pass@k (k = 1, 4, 8 of `--pass_at_k_samples` 8 answers sampled at
temperature 1, a pass being F1 >= `--pass_threshold`) on `--pass_at_k_instances_per_domain` validation
instances (5 per domain; 0 switches it off), with the tasks' own prompts, budgets and stop; the same seed at
both ends, so both draw the same random numbers. It goes into the model card and `training_record.json`, and
its time is not training time. RL helps where the starting model sometimes solves the task (Model-Task
Alignment Drives Distinct RL Outcomes), so start from an SFT checkpoint and read pass@k first.

The rest is what every trainer here shares (`trainers.run.RecipeMixin`): precision measured at start-up, a
learning-rate schedule over a FLOP/time budget, the learning curve, resume (`--resume_from_checkpoint last`)
with counts that carry on, and one plain checkpoint with a model card, written atomically. Compute: each
sampled answer costs 2·N FLOPs per token of its prompt and of the answer (the sampler's prefill and one
decoding step per token; a finished row's padding is not counted), counted as forward-only tokens, plus
another forward-only pass when TRL computes old or reference log-probabilities; the policy-gradient pass
costs 6·N per prompt + answer token (trained tokens).

Generation: transformers' `generate` by default. TRL's `--use_vllm true --vllm_mode colocate` was tried on
CPU with the installed vLLM (0.32, newer than the 0.31 TRL 1.16 supports): the engine starts, then TRL's
first weight sync fails inside vLLM's loader (`'Parameter' object has no attribute 'weight_loader'`, also
with `--vllm_model_impl transformers`), so it is refused on CPU with one error line; on a GPU it and
`--vllm_mode server` pass through to TRL untouched.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from absence_tasks.schema import Instance
from trainers.config import RLConfig, RLScriptArguments
from trainers.data import prompt_completion
from trainers.learning_curve import ScheduledEvaluation, answers, evaluating, validation_instances
from absence_tasks.scoring import PASS_AT_K, pass_at_ks
from trainers.rewards import answer_reward, group_advantages, instance_column, line_f1_reward
from trainers.run import RecipeMixin, main_for

def _import_grpo_trainer():
    """TRL's GRPOTrainer, imported quietly: the import loads TRL's vLLM backend and vLLM itself, whose version
    check and platform notes (a vLLM newer than TRL supports, Triton without a CPU backend) go to stderr even
    when generation does not use vLLM — they would break the one-line errors. With --use_vllm, TRL checks the
    version again when it starts vLLM, and warns then."""
    vllm_logger = logging.getLogger("vllm")
    level = vllm_logger.level
    vllm_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
            from trl import GRPOTrainer
    finally:
        vllm_logger.setLevel(level)
    return GRPOTrainer


GRPOTrainer = _import_grpo_trainer()

# Log entries that are an evaluation's, not an optimizer step's (see AbsenceGRPOTrainer.log).
EVALUATION_LOG_PREFIXES = ("curve/", "pass@k/")


# ---- pass@k of a checkpoint -------------------------------------------------------------------------

def evaluate_pass_at_k(model, tokenizer, instances: Sequence[Instance], chat: bool, bf16: bool, n: int,
                       threshold: float, seed: int) -> dict[str, Any]:
    """pass@k (k in PASS_AT_K up to n) per domain and on average, in percent, from `n` answers per instance
    sampled at temperature 1 (instance i draws from torch's generator seeded with seed + i, forked so the
    training's random state is left alone), a pass being F1 >= threshold; with the samples' mean F1."""
    from absence_tasks.lm_eval_tasks import TokenCounter

    counter = TokenCounter(tokenizer)
    ks = [k for k in PASS_AT_K if k <= n]
    started = time.perf_counter()
    passes: dict[str, list[list[float]]] = defaultdict(list)
    f1s: dict[str, list[float]] = defaultdict(list)
    decoded = 0
    device = next(model.parameters()).device
    with evaluating(model, bf16):
        for index, instance in enumerate(tqdm(instances, desc=f"pass@k ({n} samples)", leave=False)):
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(seed + index)
                sampled, tokens = answers(model, tokenizer, instance, chat, counter, n=n, sample=True)
            decoded += tokens
            scores = [answer_reward(instance, answer) for answer in sampled]
            passes[instance.domain].append(list(pass_at_ks(scores, threshold, ks).values()))
            f1s[instance.domain].append(sum(scores) / n)
    by_domain = {domain: {f"pass@{k}": 100 * sum(column) / len(column) for k, column in zip(ks, zip(*rows))}
                 for domain, rows in passes.items()}
    mean_f1 = {domain: 100 * sum(values) / len(values) for domain, values in f1s.items()}
    by_domain["average"] = {f"pass@{k}": sum(d[f"pass@{k}"] for d in by_domain.values()) / len(passes) for k in ks}
    mean_f1["average"] = sum(mean_f1.values()) / len(f1s)
    return {"ks": ks, "n_samples": n, "threshold": threshold, "temperature": 1.0, "pass_at_k": by_domain,
            "mean_f1": mean_f1, "n_per_domain": {domain: len(rows) for domain, rows in passes.items()},
            "decoded_tokens": decoded, "eval_seconds": round(time.perf_counter() - started, 1)}


class PassAtK(ScheduledEvaluation):
    """pass@k of the model when training starts and when it ends (`evaluate_pass_at_k`); kept in
    trainer_state.json, so a resumed run keeps its starting point."""

    def __init__(self, instances: Sequence[Instance] = (), tokenizer=None, chat: bool = True, every_steps: int = 0,
                 points: list[dict[str, Any]] | None = None, samples: int = 8, threshold: float = 1.0, seed: int = 0):
        super().__init__(instances, tokenizer, chat, every_steps, points)
        self.samples, self.threshold, self.seed = samples, threshold, seed

    def evaluate(self, model, bf16: bool) -> dict[str, Any]:
        return evaluate_pass_at_k(model, self.tokenizer, self.instances, self.chat, bf16, self.samples,
                                  self.threshold, self.seed)

    def log_entries(self, point: dict[str, Any]) -> dict[str, float]:
        return {**{f"pass@k/{domain}_{key}": value for domain, values in point["pass_at_k"].items()
                   for key, value in values.items()},
                "pass@k/eval_seconds": point["eval_seconds"]}


# ---- the trainer --------------------------------------------------------------------------------------

class AbsenceGRPOTrainer(RecipeMixin, GRPOTrainer):
    """`trl.GRPOTrainer` with the advantages of `--rl_mode`, the project's compute accounting (generation
    included) and its recipe (`RecipeMixin`)."""

    def __init__(self, *args, document_lines: int | dict[str, int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.document_lines = document_lines
        self._rewards = None
        self.attach_callbacks()

    def _get_train_sampler(self, dataset=None):
        # TRL's sampler (each instance num_generations times, batches repeated) draws from --seed; the recipe's
        # --data_seed, when given, seeds the Trainer's data order instead.
        sampler = super()._get_train_sampler(dataset)
        if self.args.data_seed is not None and getattr(sampler, "shuffle", False):
            sampler.generator.manual_seed(self.args.data_seed)
        return sampler

    def _generate(self, prompts: list):
        generated = super()._generate(prompts)
        if self.model.training:
            prompt_ids, completion_ids = generated[0], generated[1]
            self.count(0, 0, sum(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids, strict=True)))
        return generated

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        # Every process's rewards (TRL gathers them), kept for the advantages below.
        self._rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        return self._rewards

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        training = self.model.training
        group = self.num_generations if training else self.num_generations_eval
        rewards = (self._rewards * self.reward_weights.to(self._rewards.device)).nansum(dim=1)
        advantages = group_advantages(rewards, group, self.args.rl_mode, self.args.pass_threshold,
                                      self.args.positive_weight)
        start = self.accelerator.process_index * len(inputs)
        output["advantages"] = advantages[start:start + len(inputs)].to(output["advantages"])
        # TRL's completions log holds the advantages of this generation batch alone: show ours there.
        self._logs["advantages"].clear()
        self._logs["advantages"].extend(advantages.tolist())
        mode = "train" if training else "eval"
        self._metrics[mode]["correct_fraction"].append((rewards >= self.args.pass_threshold).float().mean().item())
        if training:
            self.accountant().add(0, 0, rewards.numel() // group)  # instances: the rewards are every process's
            extra_passes = ("old_per_token_logps" in output) + ("ref_per_token_logps" in output)
            if extra_passes:
                self.count(0, 0, extra_passes * int(output["prompt_mask"].sum() + output["completion_mask"].sum()))
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.model.training:
            self.count(0, inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
        return loss

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        # GRPOTrainer.log attaches (and clears) the metrics gathered since the last log — rewards, lengths —
        # to whatever is logged; an evaluation's entry between two steps' logs must leave them to the step's.
        if not any(key.startswith(EVALUATION_LOG_PREFIXES) for key in logs):
            return super().log(logs, *args, **kwargs)
        metrics = self._metrics
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        try:
            super().log(logs, *args, **kwargs)
        finally:
            self._metrics = metrics

    def extra_record(self) -> dict[str, Any]:
        args = self.args
        generation = f"vllm ({args.vllm_mode})" if args.use_vllm else "transformers generate"
        return {"rl": {"mode": args.rl_mode, "positive_weight": args.positive_weight,
                       "pass_threshold": args.pass_threshold, "num_generations": args.num_generations,
                       "max_completion_length": args.max_completion_length, "temperature": args.temperature,
                       "generation": generation, "document_lines": self.document_lines},
                "pass_at_k": next((cb.points for cb in self.callback_handler.callbacks if isinstance(cb, PassAtK)),
                                  [])}


# ---- the run --------------------------------------------------------------------------------------------

RL_DESCRIPTION = ("reinforcement from the task's own line F1 (TRL's GRPOTrainer; advantages by --rl_mode: grpo, "
                  "nsr or w_reinforce), sampled answers scored against the missing lines. See trainers/rl.py.")


def rl_dataset(instances: Sequence[Instance], chat: bool):
    """One row per instance: the prompt as `trainers.data.prompt_completion` makes it, and the instance itself
    (`rewards.instance_column`), which the reward function receives."""
    import datasets

    return datasets.Dataset.from_list([{"prompt": prompt_completion(i, chat)["prompt"], "instance": instance_column(i)}
                                       for i in instances])


def build_rl_trainer(script_args: RLScriptArguments, training_args: RLConfig):
    def build(model, tokenizer, instances, peft_config, callbacks, **curriculum):
        # `curriculum` (stages, ramp) is unused: RLScriptArguments refuses --curriculum true.
        n = training_args.pass_at_k_instances_per_domain
        if n > 0:
            data_seed = 0 if training_args.data_seed is None else training_args.data_seed
            callbacks = [*callbacks, PassAtK(validation_instances(script_args.domains, n, data_seed), tokenizer,
                                             script_args.chat_template, samples=training_args.pass_at_k_samples,
                                             threshold=training_args.pass_threshold, seed=training_args.seed)]
        return AbsenceGRPOTrainer(model=model, reward_funcs=[line_f1_reward], args=training_args,
                                  train_dataset=rl_dataset(instances, script_args.chat_template),
                                  processing_class=tokenizer, callbacks=callbacks, peft_config=peft_config,
                                  document_lines=script_args.document_lines())
    return build


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("rl", RL_DESCRIPTION, RLConfig, build_rl_trainer, argv, script_class=RLScriptArguments)


if __name__ == "__main__":
    sys.exit(main())
