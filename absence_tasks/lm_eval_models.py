"""`absence-lm-eval`, the lm_eval CLI with the project's plugins, and the lm-eval model classes it registers.

* `absence-oracle` answers every AbsenceBench request with the difflib oracle (it reads the two
  documents of the request's own doc): F1 must be 1.0 on every task.
* `absence-empty` answers nothing: F1 must be 0 (or upstream's nothing-omitted rule where it applies).

Plain `lm_eval` looks up `--model` before it loads `--include_path` tasks, so these names are only
known to `absence-lm-eval` (the lm_eval CLI with this module imported first) and to the Python API
after `import absence_tasks.lm_eval_models`.

lm-eval 0.4.13 has no task plugins either. `absence-lm-eval` adds them the way lm-eval's open
proposal would: every installed package declared under the `lm_eval.tasks` entry-point group (this
project's `task_configs` among them) is indexed after lm-eval's own tasks and before any
`--include_path`, so the AbsenceBench tasks need no `--include_path` and a user's folder still wins
on a name clash.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from pathlib import Path

import lm_eval.models  # noqa: F401  -- fills the registry with lm-eval's own (lazy) models: hf, vllm, ...
import lm_eval.tasks
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from absence_tasks import task_config_dir

from absence_tasks.lm_eval_tasks import instance_from_doc
from absence_tasks.schema import DataError
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


TASK_PLUGIN_GROUP = "lm_eval.tasks"


def plugin_task_dirs() -> list[Path]:
    """Task folders of the packages declared under `TASK_PLUGIN_GROUP` (each names the package whose
    folder holds its YAMLs), and this project's own even where it is run without being installed."""
    dirs = [task_config_dir()]
    for entry in sorted(importlib.metadata.entry_points(group=TASK_PLUGIN_GROUP), key=lambda e: e.name):
        spec = importlib.util.find_spec(entry.value)
        if spec is not None and spec.submodule_search_locations:
            dirs.append(Path(next(iter(spec.submodule_search_locations))))
    return list(dict.fromkeys(d.resolve() for d in dirs))


class PluginTaskManager(lm_eval.tasks.TaskManager):
    """lm-eval's TaskManager that also indexes `plugin_task_dirs()`, before any `include_path`."""

    def __init__(self, *args, include_path=None, **kwargs) -> None:
        given = [] if include_path is None else include_path if isinstance(include_path, (list, tuple)) else [include_path]
        plugins = plugin_task_dirs()
        given = [p for p in given if Path(p).resolve() not in plugins]
        super().__init__(*args, include_path=[*plugins, *given], **kwargs)


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
    """`absence-lm-eval ...`: the lm_eval CLI with the models above registered and the plugin tasks
    indexed, and one-line errors for a `pretrained=` path that is not a model or a bad data file."""
    from lm_eval.__main__ import cli_evaluate

    from absence_tasks.models import load_checkpoint_or_die

    sys.argv[0] = "absence-lm-eval"
    # Every lm-eval subcommand (run, ls, validate) looks the class up here when it builds its index.
    lm_eval.tasks.TaskManager = PluginTaskManager
    try:
        for path in _local_pretrained_paths(sys.argv[1:]):
            load_checkpoint_or_die(Path(path).expanduser())
        cli_evaluate()
    except (DataError, ValueError) as e:
        print(f"absence-lm-eval: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
