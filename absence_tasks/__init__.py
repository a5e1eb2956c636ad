"""Reverse Needle: AbsenceBench-style omission tasks (data, prompts, exact scoring)."""

from absence_tasks.schema import DOMAINS, PLACEHOLDER, SPLITS, VARIANTS, DataError, Instance

__all__ = ["DOMAINS", "PLACEHOLDER", "SPLITS", "VARIANTS", "DataError", "Instance"]
