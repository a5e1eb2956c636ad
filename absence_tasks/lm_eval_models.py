"""lm-eval model classes the project registers, to prove the evaluation plumbing end to end.

* `absence-oracle` answers every AbsenceBench request with the difflib oracle (it reads the two
  documents of the request's own doc): F1 must be 1.0 on every task.
* `absence-empty` answers nothing: F1 must be 0 (or upstream's nothing-omitted rule where it applies).

Plain `lm_eval` looks up `--model` before it loads `--include_path` tasks, so these names are only
known to `absence-lm-eval` (the lm_eval CLI with this module imported first) and to the Python API
after `import absence_tasks.lm_eval_models`.
"""

from __future__ import annotations

import sys

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from absence_tasks.lm_eval_tasks import instance_from_doc
from absence_tasks.scoring import oracle_answer


class _AnswerOnlyLM(LM):
    """A model that only generates; likelihood requests make no sense for these tasks."""

    def __init__(self, **_model_args) -> None:
        super().__init__()

    def answer(self, doc: dict) -> str:
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        return [self.answer(request.doc) for request in requests]

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


def main() -> None:
    """`absence-lm-eval ...`: the lm_eval CLI, with the models above registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv[0] = "absence-lm-eval"
    cli_evaluate()


if __name__ == "__main__":
    main()
