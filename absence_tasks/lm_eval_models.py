"""`absence-lm-eval`, the lm_eval CLI with the project's plugins, and the lm-eval model classes it registers.

* `absence-oracle` answers every AbsenceBench request with the difflib oracle (it reads the two
  documents of the request's own doc), cut to the request's `max_gen_toks` as a model's answer would
  be (tokens of `--model_args tokenizer=...`, else UTF-8 bytes, the bound the budgets then use): F1
  must be 1.0 on every task, which proves the budgets leave room for a perfect answer.
* `absence-empty` answers nothing: F1 must be 0 (or upstream's nothing-omitted rule where it applies).

Plain `lm_eval` looks up `--model` before it loads `--include_path` tasks, so these names are only
known to `absence-lm-eval` (the lm_eval CLI with this module imported first) and to the Python API
after `import absence_tasks.lm_eval_models`.

lm-eval 0.4.13 has no task plugins either. `absence-lm-eval` adds them the way lm-eval's open
proposal would: every installed package declared under the `lm_eval.tasks` entry-point group (this
project's `task_configs` among them) is indexed after lm-eval's own tasks and before any
`--include_path`, so the AbsenceBench tasks need no `--include_path` and a user's folder still wins
on a name clash. A run of this project's tasks alone leaves lm-eval's own out of the index, which
saves ~6 s of every start-up.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

import lm_eval.models  # noqa: F401  -- fills the registry with lm-eval's own (lazy) models: hf, vllm, ...
import lm_eval.tasks
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from absence_tasks import task_config_dir
from absence_tasks.io import run_command
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
    """lm-eval's TaskManager that also indexes `plugin_task_dirs()`, before any `include_path`; lm-eval's own
    tasks only while `index_builtin_tasks` is true (`main` clears it for a run of this project's tasks alone)."""

    index_builtin_tasks = True

    def __init__(self, *args, include_path=None, include_defaults=True, **kwargs) -> None:
        given = [] if include_path is None else include_path if isinstance(include_path, (list, tuple)) else [include_path]
        plugins = plugin_task_dirs()
        given = [p for p in given if Path(p).resolve() not in plugins]
        super().__init__(*args, include_path=[*plugins, *given],
                         include_defaults=include_defaults and PluginTaskManager.index_builtin_tasks, **kwargs)


def only_project_tasks(names: list[str] | None) -> bool:
    """True when every name asked for is a task, group or tag of this project's task folder. Their YAMLs name
    no lm-eval task, so such a run needs no index of lm-eval's own ~15,000, which costs ~6 s of every start-up
    (measured on the 2-core machine: 6.4 s against 0.01 s for this folder alone)."""
    if not names:  # a --config file's tasks, or a subcommand without tasks (ls, validate)
        return False
    own = lm_eval.tasks.TaskManager(include_defaults=False, include_path=str(task_config_dir()))
    return set(names) <= set(own.all_tasks)


def _model_args(argv: list[str]) -> dict[str, str]:
    """The `--model_args k=v,...` of an lm_eval command line, as a dict."""
    args: dict[str, str] = {}
    for flag, value in zip(argv, argv[1:]):
        if flag == "--model_args":
            for item in value.split(","):
                key, _, val = item.partition("=")
                args[key.strip()] = val.strip()
    return args


def _local_pretrained_path(model_args: dict[str, str]) -> Path | None:
    """A `pretrained=` value that names a local path (hub ids are left to lm-eval)."""
    path = model_args.get("pretrained")
    if path and (Path(path).exists() or path.startswith((".", "/", "~"))):
        return Path(path).expanduser()
    return None


def check_api_server(base_url: str, model: str, auth_token: str | None = None, timeout: float = 60.0) -> None:
    """One 1-token request to an OpenAI-compatible `base_url` before any work: a server that is down
    or answers something other than a (chat) completion is a DataError, not minutes of retries that
    end in a traceback or, worse, in empty answers lm-eval scores as 0."""
    import requests

    chat = base_url.rstrip("/").endswith("chat/completions")
    payload = {"model": model, "max_tokens": 1, "temperature": 0,
               **({"messages": [{"role": "user", "content": "Reply with OK."}]} if chat else {"prompt": "OK"})}
    key = auth_token or os.environ.get("OPENAI_API_KEY")  # as lm-eval's local-*-completions send it
    try:
        response = requests.post(base_url, json=payload, timeout=timeout,
                                 headers={"Authorization": f"Bearer {key}"} if key else {})
    except requests.RequestException as e:
        raise DataError(f"the API server at {base_url} does not answer ({type(e).__name__})") from None
    if not response.ok:
        raise DataError(f"the API server at {base_url} answered HTTP {response.status_code}: "
                        f"{' '.join(response.text.split())[:200]}")
    try:
        choice = response.json()["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
    except (ValueError, KeyError, IndexError, TypeError):
        text = None
    if not isinstance(text, str):
        raise DataError(f"the API server at {base_url} answered something that is not a "
                        f"{'chat ' if chat else ''}completion: {' '.join(response.text.split())[:200]!r}")


def vllm_cpu_every_core() -> dict[str, str]:
    """The environment that binds vLLM's CPU engine to every core this process may run on. By default the
    engine keeps one core in reserve (on 2 cores: one computing core); measured on the 2-core machine (issue
    12), binding both generated the same 20 poetry answers in 33 s instead of 47 s. Start a `vllm serve` with it
    too, or its answers come from another thread count than absence-lm-eval's own vLLM backend's."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cores:
        return {}
    contiguous = cores == list(range(cores[0], cores[-1] + 1))
    return {"VLLM_CPU_OMP_THREADS_BIND": f"{cores[0]}-{cores[-1]}" if contiguous else ",".join(map(str, cores)),
            "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


def vllm_cpu_model_args(dtype: str = "bfloat16") -> str:
    """lm-eval's `--model_args` for the vLLM backend on CPU (after `pretrained=...`), as the studies and the
    README use them: the KV cache is CPU RAM there (0.35 of it), 8,192 tokens hold the longest default-suite
    prompt with its answer, and eager mode skips a graph capture that CPU start-up would pay for nothing."""
    return f"dtype={dtype},gpu_memory_utilization=0.35,max_model_len=8192,enforce_eager=True"


def use_every_core_for_vllm_cpu() -> None:
    """absence-lm-eval's default: `vllm_cpu_every_core`, unless the user set those variables."""
    for name, value in vllm_cpu_every_core().items():
        os.environ.setdefault(name, value)


def main() -> None:
    """`absence-lm-eval ...`: the lm_eval CLI with the models above registered and the plugin tasks
    indexed, and one-line errors for a `pretrained=` path that is not a model, an API server that is
    down or answers garbage, or a bad data file."""
    import requests
    from lm_eval._cli.harness import HarnessCLI
    from lm_eval.utils import setup_logging

    from absence_tasks.models import load_checkpoint_or_die

    sys.argv[0] = "absence-lm-eval"
    use_every_core_for_vllm_cpu()
    # Every lm-eval subcommand (run, ls, validate) looks the class up here when it builds its index.
    lm_eval.tasks.TaskManager = PluginTaskManager
    model_args = _model_args(sys.argv[1:])

    def run() -> None:
        if (path := _local_pretrained_path(model_args)) is not None:
            load_checkpoint_or_die(path)
        if "base_url" in model_args:
            check_api_server(model_args["base_url"], model_args.get("model", ""), model_args.get("auth_token"))
        try:  # what lm_eval.__main__.cli_evaluate does, with the tasks known before the index is built
            setup_logging()
            parser = HarnessCLI()
            args = parser.parse_args()
            PluginTaskManager.index_builtin_tasks = not only_project_tasks(getattr(args, "tasks", None))
            parser.execute(args)
        except requests.RequestException as e:  # the server went away during the run
            raise DataError(f"the API server stopped answering ({type(e).__name__})") from None

    sys.exit(run_command("absence-lm-eval", run))


if __name__ == "__main__":
    main()
