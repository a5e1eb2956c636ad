"""lm-eval model classes the project registers, to prove the evaluation plumbing end to end.

* `absence-oracle` answers every AbsenceBench request with the difflib oracle (it reads the two
  documents of the request's own doc), cut to the request's `max_gen_toks` as a model's answer would
  be (tokens of `--model_args tokenizer=...`, else UTF-8 bytes, the bound the budgets then use): F1
  must be 1.0 on every task, which proves the budgets leave room for a perfect answer.
* `absence-empty` answers nothing: F1 must be 0 (or upstream's nothing-omitted rule where it applies).

Plain `lm_eval` looks up `--model` before it loads `--include_path` tasks, so these names are only
known to `absence-lm-eval` (the lm_eval CLI with this module imported first) and to the Python API
after `import absence_tasks.lm_eval_models`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lm_eval.models  # noqa: F401  -- fills the registry with lm-eval's own (lazy) models: hf, vllm, ...
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from absence_tasks.lm_eval_tasks import instance_from_doc, token_counter
from absence_tasks.schema import DataError
from absence_tasks.scoring import oracle_answer


class _AnswerOnlyLM(LM):
    """A model that only generates; likelihood requests make no sense for these tasks."""

    def __init__(self, **model_args) -> None:
        super().__init__()
        self.counter = token_counter(model_args)

    def answer(self, doc: dict) -> str:
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return [self.counter.truncate(self.answer(request.doc), int(request.args[1]["max_gen_toks"]))
                for request in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(f"{type(self).__name__} only answers generate_until tasks")

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError(f"{type(self).__name__} only answers generate_until tasks")


@register_model("absence-oracle")
class OracleLM(_AnswerOnlyLM):
    def answer(self, doc: dict) -> str:
        return oracle_answer(instance_from_doc(doc))


@register_model("absence-empty")
class EmptyLM(_AnswerOnlyLM):
    def answer(self, doc: dict) -> str:
        return ""


def _local_pretrained_paths(argv: list[str]) -> list[str]:
    """`pretrained=` values of `--model_args` that name a local path (hub ids are left to lm-eval)."""
    paths = []
    for flag, value in zip(argv, argv[1:]):
        if flag == "--model_args":
            for item in value.split(","):
                key, _, path = item.partition("=")
                if key.strip() == "pretrained" and (Path(path).exists() or path.startswith((".", "/", "~"))):
                    paths.append(path)
    return paths


def main() -> None:
    """`absence-lm-eval ...`: the lm_eval CLI with the models above registered, and one-line errors for
    a `pretrained=` path that is not a model or a bad data file."""
    from lm_eval.__main__ import cli_evaluate

    from absence_tasks.models import load_checkpoint_or_die

    sys.argv[0] = "absence-lm-eval"
    try:
        for path in _local_pretrained_paths(sys.argv[1:]):
            load_checkpoint_or_die(Path(path).expanduser())
        cli_evaluate()
    except (DataError, ValueError) as e:
        print(f"absence-lm-eval: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
