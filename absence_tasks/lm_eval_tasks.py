"""What the lm-eval task YAMLs in `task_configs/` call: data loading, prompts, scoring, aggregation.

The YAMLs' `utils.py` only re-exports names from here, so the logic lives in the package (tested,
importable) and lm-eval's by-path import of `utils.py` stays trivial.

Which instances a task evaluates (its `--metadata` switches) is `absence_tasks.loading`'s part.

Generation budgets and context: lm-eval hands the tasks the model's `--model_args` too, so the
tokenizer of `tokenizer=` or `pretrained=` sizes each instance's `max_gen_toks` in real tokens (without
one, a UTF-8 byte counts as a token: no byte-level BPE or byte-fallback tokenizer makes more tokens
than bytes). A prompt that with its budget exceeds the model's context (`max_length`, vLLM's
`max_model_len`, else the tokenizer's `model_max_length`) would be cut on the left by lm-eval, losing
the instruction and the original: such prompts are counted, warned about once per task and recorded as
`prompts_over_context` in the task's metadata (the results file's `configs`, which the leaderboard row
reads). With `max_length` set they are skipped instead (`skipped_over_context`).
"""

from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Sequence
from typing import Any

from lm_eval.api.task import ConfigurableTask

from absence_tasks.loading import load_instances_for_task
from absence_tasks.prompts import render_answer, render_prompt, render_scratchpad, template_name
from absence_tasks.schema import (BUDGET_COLUMN, PLACEHOLDER, PROMPT_TOKENS, TASK_ROW_COLUMNS, DataError, Instance,
                                  from_hf_dataset, to_hf_dataset)
from absence_tasks.scoring import PASS50_F1, micro_f1, pass_at_ks, score_response

MIN_GEN_TOKS, MAX_GEN_TOKS, GEN_TOKS_STEP = 64, 4096, 64
# Per answer line beyond its own tokens: the newline, a bullet or number, a spare token where the line's
# edge tokenises differently in the answer than alone.
TOKENS_PER_LINE_DECORATION = 4
# A tokenizer's model_max_length above this is transformers' "no limit" placeholder, not a context size.
NO_CONTEXT_LIMIT = 10**9


class TokenCounter:
    """Token counts (and truncation) by a model's tokenizer; without one, UTF-8 bytes, an upper bound."""

    def __init__(self, tokenizer: Any = None) -> None:
        self.tokenizer = tokenizer

    def counts(self, texts: Sequence[str]) -> list[int]:
        if self.tokenizer is None:
            return [len(t.encode("utf-8")) for t in texts]
        if not texts:
            return []
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def truncate(self, text: str, n_tokens: int) -> str:
        """The longest prefix of `text` (in whole tokens) a model generating `n_tokens` could produce."""
        if self.tokenizer is None:
            return text.encode("utf-8")[:n_tokens].decode("utf-8", errors="ignore")
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= n_tokens else self.tokenizer.decode(ids[:n_tokens])

    @property
    def context(self) -> int | None:
        limit = getattr(self.tokenizer, "model_max_length", None)
        return int(limit) if isinstance(limit, int) and 0 < limit < NO_CONTEXT_LIMIT else None


BYTES = TokenCounter()


@functools.cache
def _load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")


def token_counter(model_args: dict[str, Any]) -> TokenCounter:
    """The counter for the model lm-eval evaluates: its `tokenizer=` or `pretrained=` tokenizer, else bytes.
    A tokenizer that does not load leaves the byte bound (safe, only a larger budget) and says so."""
    source = model_args.get("tokenizer") or model_args.get("pretrained")
    if not isinstance(source, (str, os.PathLike)) or not str(source):
        return BYTES
    try:
        return TokenCounter(_load_tokenizer(str(source)))
    except Exception as e:  # transformers raises OSError, ValueError, JSON errors, ... for a bad source
        print(f"absence tasks: warning: cannot load the tokenizer of {source} ({type(e).__name__}); generation "
              f"budgets count a UTF-8 byte as a token", file=sys.stderr)
        return BYTES


def generation_budget(instance: Instance, counter: TokenCounter = BYTES, scratchpad: bool = False) -> int:
    """max_gen_toks for one instance, from what the model itself can see: how many lines are missing
    (placeholders, or the length difference of the two documents) and, as their size, the longest in
    tokens of the lines that could be the answer, plus room for list decoration; rounded up to a multiple
    of `GEN_TOKS_STEP` so requests fall into a few groups that backends can batch (capped at
    `MAX_GEN_TOKS`). A perfect answer fits whenever the cap is not reached. Small models often never stop on their own, so this
    budget is most of an evaluation's cost. With `scratchpad` (a model trained to walk the document first,
    `render_scratchpad`), the walk's own tokens come on top: the walk is known from the documents alone."""
    if instance.variant == "placeholder":
        n_lines = sum(1 for x in instance.modified_lines if x == PLACEHOLDER)
    else:
        n_lines = abs(len(instance.original_lines) - len(instance.modified_lines))
    pool = instance.modified_lines if instance.variant == "needle" else instance.original_lines
    longest = sorted(counter.counts(pool), reverse=True)[:max(n_lines, 1)]
    bound = 16 + sum(tokens + TOKENS_PER_LINE_DECORATION for tokens in longest)
    if scratchpad:
        walk = render_scratchpad(instance).split("\n")
        bound += sum(tokens + 2 for tokens in counter.counts(walk))  # + its newline, + an edge token
    return min(MAX_GEN_TOKS, max(MIN_GEN_TOKS, GEN_TOKS_STEP * math.ceil(bound / GEN_TOKS_STEP)))


def scratchpad_model(metadata: dict[str, Any]) -> bool:
    """`--metadata '{"scratchpad": true}'`: the model walks the document in <think>…</think> before it answers
    (trained with `--scratchpad true`), so its budgets include the walk."""
    value = metadata.get("scratchpad", False)
    if not isinstance(value, bool):
        raise DataError(f"metadata scratchpad must be true or false, got {value!r}")
    return value


def context_limit(model_args: dict[str, Any], counter: TokenCounter) -> int | None:
    for key in ("max_length", "max_model_len"):
        value = model_args.get(key)
        if value is not None:
            try:
                return int(value)
            except (TypeError, ValueError):
                raise DataError(f"{key} must be an integer number of tokens, got {value!r}") from None
    return counter.context


def dataset_loader(domain: str, variant: str):
    """A `custom_dataset` callable for one task: lm-eval calls it with the `--metadata` keys."""
    template_name(domain, variant)  # an unknown domain or variant fails here, when utils.py is read
    def load(**metadata: Any):
        instances = load_instances_for_task(domain, variant, **metadata)
        counter = token_counter(metadata)
        scratchpad = scratchpad_model(metadata)
        budgets = [generation_budget(i, counter, scratchpad) for i in instances]
        prompt_tokens = counter.counts([render_prompt(i) for i in instances])
        dataset = to_hf_dataset(instances).add_column(BUDGET_COLUMN, budgets)
        return {"test": dataset.add_column(PROMPT_TOKENS, prompt_tokens)}

    load.__name__ = f"{domain}_{variant}"
    return load


def instance_from_doc(doc: dict[str, Any]) -> Instance:
    return from_hf_dataset([{k: v for k, v in doc.items() if k not in TASK_ROW_COLUMNS}])[0]


def doc_to_text(doc: dict[str, Any]) -> str:
    return render_prompt(instance_from_doc(doc))


def doc_to_target(doc: dict[str, Any]) -> str:
    return render_answer(instance_from_doc(doc))


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """Per-instance metrics. The `micro_f1` item carries the instance's counts (summed by
    `micro_f1_aggregation`) and the parsed lines, so `--log_samples` shows why it scored what it did."""
    score = score_response(instance_from_doc(doc), results[0])
    return {
        "f1": score.f1,
        "precision": score.precision,
        "recall": score.recall,
        "micro_f1": {
            "tp": score.tp, "fp": score.fp, "fn": score.fn,
            "parsed_lines": score.predicted_lines,
            "matched_lines": score.matched_lines,
            "false_positive_lines": score.false_positive_lines,
            "missed_lines": score.missed_lines,
            "unmatched_lines": score.unmatched_lines,
        },
    }


def process_results_pass_at_k(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """Per-instance pass@k (k = 1, 4, 8) of the task's repeated sampled answers, a pass being F1 1.0,
    pass50@k (a pass being F1 >= 0.5) and the samples' mean F1. `results` holds one item, the list the
    `take_first_k` filter kept."""
    (answers,) = results
    instance = instance_from_doc(doc)
    f1s = [score_response(instance, answer).f1 for answer in answers]
    return {
        **{f"pass_at_{k}": value for k, value in pass_at_ks(f1s).items()},
        **{f"pass50_at_{k}": value for k, value in pass_at_ks(f1s, PASS50_F1).items()},
        "sampled_f1": sum(f1s) / len(f1s),
    }


def micro_f1_aggregation(items: list[dict[str, Any]]) -> float:
    return micro_f1(items)


class AbsenceTask(ConfigurableTask):
    """A generate_until task whose generation budget is set per instance (`generation_budget`)."""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        # lm-eval hands the YAML's `class:` key to the task config, which does not know it.
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"}, **kwargs)

    def download(self, dataset_kwargs: dict[str, Any] | None = None) -> None:
        super().download(dataset_kwargs)
        # Our own copy: lm-eval may hand every task the same metadata dict, and the counts are per task.
        metadata = self.config.metadata = dict(self.config.metadata or {})
        limit = context_limit(metadata, token_counter(metadata))
        if limit is None:
            return
        docs = self.dataset["test"]
        over = [k for k, (prompt, budget) in enumerate(zip(docs[PROMPT_TOKENS], docs[BUDGET_COLUMN]))
                if prompt + budget > limit]
        task = self.config.task
        if metadata.get("max_length") is not None:
            self.dataset["test"] = docs.select([k for k in range(len(docs)) if k not in set(over)])
            metadata["skipped_over_context"] = len(over)
            if over:
                print(f"{task}: skipped {len(over)} of {len(docs)} instances whose prompt and answer budget "
                      f"exceed max_length {limit} tokens", file=sys.stderr)
            if len(over) == len(docs):
                raise DataError(f"{task}: every instance's prompt and answer budget exceed max_length {limit}")
            return
        metadata["prompts_over_context"] = len(over)
        if over:
            print(f"{task}: warning: {len(over)} of {len(docs)} prompts with their answer budget exceed the "
                  f"model's {limit}-token context; lm-eval cuts such a prompt on the left (the instruction and "
                  f"the original). Pass --metadata '{{\"max_length\": {limit}}}' to skip them instead",
                  file=sys.stderr)

    def construct_requests(self, doc, ctx, **kwargs):
        requests = super().construct_requests(doc, ctx, **kwargs)
        for request in requests if isinstance(requests, list) else [requests]:
            request.arguments[1]["max_gen_toks"] = int(doc[BUDGET_COLUMN])
        return requests
