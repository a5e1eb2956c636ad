"""Reverse Needle: AbsenceBench-style omission tasks (data, prompts, exact scoring)."""

import importlib.util
from pathlib import Path

from absence_tasks.schema import DOMAINS, PLACEHOLDER, SPLITS, VARIANTS, DataError, Instance

__all__ = ["DOMAINS", "PLACEHOLDER", "SPLITS", "VARIANTS", "DataError", "Instance", "task_config_dir"]


def task_config_dir() -> Path:
    """The lm-eval task folder installed with the package (`task_configs`), found without importing it:
    what `--include_path` needs."""
    spec = importlib.util.find_spec("task_configs")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the lm-eval task folder (package task_configs) is not installed; reinstall reverse-needle")
    return Path(next(iter(spec.submodule_search_locations)))
