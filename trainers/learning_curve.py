"""A learning curve in every run: every `--curve_every_steps` optimizer steps and at the end, greedy answers
on a fixed validation set, scored by the task's own F1, logged (`curve/...` in trainer_state.json's
log_history) and kept for the model card.

The validation set is what the lm-eval tasks load with `--metadata '{"split": "validation", "n": K}'`
(`absence_tasks.lm_eval_tasks.load_instances_for_task`: its own sources, none in the train or test split);
each prompt is the one lm-eval's HF backend sends with `--apply_chat_template`, its `max_gen_toks` the
task's per-instance budget (`generation_budget`, in the model's tokens), its stop the task's `until`, and
its score `absence_tasks.scoring.score_response` — no second implementation of any of them. One addition:
decoding stops once a line has been given `REPEATS_TO_STOP` times (the scorer counts a repeated line once,
so only a later new line could have counted). It can change a score, a little: replayed on the study-30m
answers (`benchmarks/degenerate_stop.py`), k = 3 cuts 73 of SFT's 300 and changes the F1 of 25 (mean
15.69 -> 15.49), k = 5 changes 4 (15.71) — noise beside a curve's CI, for 17 % of the decoding saved.

The time spent here is not training: the accountant's step clock restarts at the next step, and the
curve records its own seconds. `ScheduledEvaluation` is the schedule and the bookkeeping, which the RL
trainer's pass@k (`trainers.rl.PassAtK`) shares; `answers` samples too.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList, TrainerCallback
from transformers.trainer_callback import ExportableState

from absence_tasks.schema import Instance
from absence_tasks.scoring import score_response, strip_reasoning
from trainers.data import encode

REPEATS_TO_STOP = 3


def task_stop_sequence() -> str:
    """The tasks' stop sequence, read from their shared YAML (generation_kwargs.until), so the two cannot drift."""
    import yaml

    from absence_tasks import task_config_dir

    class TaskLoader(yaml.SafeLoader):  # lm-eval's `!function` tags name Python callables: not needed here
        pass

    TaskLoader.add_constructor("!function", lambda loader, node: None)
    config = yaml.load((task_config_dir() / "_absence_default.yaml").read_text(encoding="utf-8"), Loader=TaskLoader)
    (until,) = config["generation_kwargs"]["until"]
    return until


UNTIL = task_stop_sequence()


def repeated_line_count(text: str) -> int:
    """How often the most repeated complete, non-blank line of the answer part of `text` occurs (a line still
    being written, after the last newline, is not counted). A scratchpad is not the answer: inside an open
    `<think>` nothing counts (a walk may name a refrain many times), after `</think>` only what follows."""
    if "<think>" in text and "</think>" not in text:
        return 0
    lines = [line.strip() for line in strip_reasoning(text).split("\n")[:-1] if line.strip()]
    if not lines:
        return 0
    return max(lines.count(line) for line in set(lines))


class StopOnRepeatedLine(StoppingCriteria):
    """Stops each answer of a generation (the rows of one prompt) once it has given one line `repeats` times,
    or reached the tasks' stop sequence."""

    def __init__(self, tokenizer, prompt_length: int, repeats: int = REPEATS_TO_STOP):
        self.tokenizer, self.prompt_length, self.repeats = tokenizer, prompt_length, repeats

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length:], skip_special_tokens=True)
        done = [UNTIL in text or repeated_line_count(text) >= self.repeats for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def answers(model, tokenizer, instance: Instance, chat: bool, counter, n: int = 1, sample: bool = False,
            scratchpad: bool = False) -> tuple[list[str], int]:
    """The model's answer to one instance as lm-eval would ask for it — greedy, or with `sample` `n` answers
    sampled at temperature 1 (no top-k or top-p cut; from torch's global generator: seed it, or fork it, around
    the call) — and the tokens decoded (all rows, a finished row's padding included). With `scratchpad`, the
    budget includes the walk (a model trained with --scratchpad true)."""
    from absence_tasks.lm_eval_tasks import generation_budget

    prompt_ids = encode(tokenizer, instance, chat, with_answer=False).input_ids
    input_ids = torch.tensor([prompt_ids], device=next(model.parameters()).device)
    if not sample and n != 1:
        raise ValueError("greedy decoding gives one answer")
    sampling = ({"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0, "num_return_sequences": n}
                if sample else {"do_sample": False})
    output = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **sampling,
                            max_new_tokens=generation_budget(instance, counter, scratchpad),
                            stopping_criteria=StoppingCriteriaList([StopOnRepeatedLine(tokenizer, len(prompt_ids))]),
                            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    new_tokens = output[:, len(prompt_ids):]
    texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return [text.split(UNTIL, 1)[0] for text in texts], int(new_tokens.numel())


def greedy_answer(model, tokenizer, instance: Instance, chat: bool, counter, scratchpad: bool = False
                  ) -> tuple[str, int]:
    """The model's greedy answer to one instance as lm-eval would ask for it, and its decoded token count."""
    (answer,), decoded = answers(model, tokenizer, instance, chat, counter, scratchpad=scratchpad)
    return answer, decoded


@contextmanager
def evaluating(model, bf16: bool):
    """Evaluation mode, no gradients and the run's precision (bf16 autocast or not) for the block; the model's
    training mode comes back after it."""
    was_training = model.training
    model.eval()
    autocast = torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16) if bf16 else nullcontext()
    try:
        with torch.no_grad(), autocast:
            yield
    finally:
        model.train(was_training)


def evaluate_f1(model, tokenizer, instances: Sequence[Instance], chat: bool, bf16: bool, scratchpad: bool = False
                ) -> dict[str, Any]:
    """Mean F1 per domain (and their mean, `average`) of the greedy answers, with the decode cost."""
    from absence_tasks.lm_eval_tasks import TokenCounter

    counter = TokenCounter(tokenizer)
    started = time.perf_counter()
    by_domain: dict[str, list[float]] = {}
    decoded = 0
    with evaluating(model, bf16):
        for instance in tqdm(instances, desc="learning curve (greedy F1)", leave=False):
            answer, n_tokens = greedy_answer(model, tokenizer, instance, chat, counter, scratchpad)
            decoded += n_tokens
            by_domain.setdefault(instance.domain, []).append(score_response(instance, answer).f1)
    f1 = {domain: 100 * sum(values) / len(values) for domain, values in by_domain.items()}
    return {"f1": f1, "average": sum(f1.values()) / len(f1), "n_per_domain": {d: len(v) for d, v in by_domain.items()},
            "decoded_tokens": decoded, "eval_seconds": round(time.perf_counter() - started, 1)}


def validation_instances(domains: Sequence[str], n_per_domain: int, seed: int) -> list[Instance]:
    """The fixed validation set: what the omission tasks load with split=validation, n=n_per_domain."""
    from absence_tasks.lm_eval_tasks import load_instances_for_task

    return [instance for domain in domains
            for instance in load_instances_for_task(domain, "omission", n=n_per_domain, seed=seed, split="validation")]


class ScheduledEvaluation(TrainerCallback, ExportableState):
    """Evaluates the starting model, then every `every_steps` optimizer steps (0: only at the end) and once
    more when training stops; the points live in trainer_state.json (`stateful_callbacks`), so a resumed run keeps its curve.
    What a point measures and logs is a subclass's `evaluate` and `log_entries`."""

    def __init__(self, instances: Sequence[Instance] = (), tokenizer=None, chat: bool = True, every_steps: int = 0,
                 points: list[dict[str, Any]] | None = None, scratchpad: bool = False):
        self.instances, self.tokenizer, self.chat, self.every_steps = list(instances), tokenizer, chat, every_steps
        self.scratchpad = scratchpad  # the model walks the document first: budgets include the walk
        self.points: list[dict[str, Any]] = list(points or [])
        self.trainer = None  # set by the trainer that owns it (for the accountant's counts and logging)

    def state(self) -> dict[str, Any]:
        return {"args": {"every_steps": self.every_steps}, "attributes": {"points": self.points}}

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__)
        if state.global_step > 0 and not self.points and isinstance(saved, dict):
            self.points = list(saved.get("attributes", {}).get("points", []))
        if state.global_step == 0:  # the starting model: where the curve begins
            self.measure(args, state)

    def on_step_end(self, args, state, control, **kwargs):
        due = self.every_steps > 0 and state.global_step % self.every_steps == 0
        if due or control.should_training_stop:
            # Logging from here goes through the callbacks' on_log, which clears should_log: keep the step's
            # own (loss) log, which the Trainer writes after this event.
            should_log = control.should_log
            self.measure(args, state)
            control.should_log = should_log
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.measure(args, state)

    def measure(self, args, state) -> None:
        if not self.instances or (self.points and self.points[-1]["step"] == state.global_step):
            return
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        result = self.evaluate(model, bf16=bool(args.bf16))
        accountant = self.trainer.accountant()
        point = {"step": state.global_step, "train_seconds": round(accountant.train_seconds, 1),
                 "flops": accountant.flops, "instances_trained": accountant.instances_trained, **result}
        self.points.append(point)
        self.trainer.log(self.log_entries(point))

    def evaluate(self, model, bf16: bool) -> dict[str, Any]:
        raise NotImplementedError

    def log_entries(self, point: dict[str, Any]) -> dict[str, float]:
        raise NotImplementedError


class LearningCurve(ScheduledEvaluation):
    """The learning curve: greedy F1 per domain on the validation instances (`evaluate_f1`)."""

    def evaluate(self, model, bf16: bool) -> dict[str, Any]:
        return evaluate_f1(model, self.tokenizer, self.instances, self.chat, bf16=bf16, scratchpad=self.scratchpad)

    def log_entries(self, point: dict[str, Any]) -> dict[str, float]:
        return {"curve/average_f1": point["average"],
                **{f"curve/f1_{domain}": value for domain, value in point["f1"].items()},
                "curve/eval_seconds": point["eval_seconds"]}
