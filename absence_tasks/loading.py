"""Reading instances: one JSONL file (ours or upstream AbsenceBench's), or the set an lm-eval task's
`--metadata` chooses.

Data for a task comes from, in order of precedence (all set with lm-eval's `--metadata` JSON):
* `data_file`: one local JSONL — ours, or upstream AbsenceBench's (e.g. a held-out set);
* `data_dir`:  a folder of `{domain}_{variant}_{split}.jsonl` files as `absence-bench generate-suite` writes;
* `source: "hub"`: the official AbsenceBench data from the HF hub (needs a network);
* otherwise a seeded test set generated from the embedded sources (`n`, `seed`, `split`, `preset`,
  `prs`, `git_repo`, `poems` tune it), cached on disk after first use.

This module does not import lm-eval: the leaderboard reads the same switches, with the same defaults
(`DataSettings`), from a results file's recorded metadata to describe the data a run was scored on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from absence_tasks.schema import DataError, Instance, iter_json_records, read_jsonl, write_jsonl
from absence_tasks.sources.prs import EMBEDDED_PRS

PACKAGE_DIR = Path(__file__).resolve().parent


def load_instances(path: str | Path, domain: str | None = None) -> list[Instance]:
    """Our JSONL, or any upstream AbsenceBench JSONL (detected from the first record's fields)."""
    first = next(iter_json_records(path), None)
    if first is None:
        raise DataError(f"{path}: no records in file")
    if {"original_lines", "modified_lines", "domain", "variant"} & set(first[1]):
        return read_jsonl(path)
    from absence_tasks import upstream

    return upstream.read_upstream(path, domain=domain)


@dataclass(frozen=True)
class DataSettings:
    """The `--metadata` keys that choose a task's data, with their defaults (see the module docstring)."""

    data_file: str | None = None
    data_dir: str | None = None
    source: str = "generated"
    n: int = 100
    seed: int = 0
    split: str = "test"
    preset: str = "cpu"
    prs: str | None = None
    git_repo: str | None = None
    poems: str | None = None

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> DataSettings:
        """lm-eval's metadata also holds the model's arguments and its own keys: only ours are taken."""
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in metadata.items() if key in names})


def cache_dir() -> Path:
    base = os.environ.get("REVERSE_NEEDLE_CACHE") or Path.home() / ".cache" / "reverse-needle"
    return Path(base) / "datasets"


def _generator_fingerprint() -> str:
    """Hash of the code and embedded data that make instances, so a cached test set is rebuilt when either
    changes."""
    h = hashlib.sha256()
    for path in sorted([PACKAGE_DIR / "generate.py", PACKAGE_DIR / "schema.py", PACKAGE_DIR / "scoring.py",
                        *(PACKAGE_DIR / "sources").glob("*.py"), *EMBEDDED_PRS.glob("*.jsonl.gz")]):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _check_kind(instances: list[Instance], domain: str, variant: str, where: str) -> list[Instance]:
    wrong = [i for i in instances if (i.domain, i.variant) != (domain, variant)]
    if wrong:
        raise DataError(f"{where} holds {wrong[0].domain}/{wrong[0].variant} instances; "
                        f"this task expects {domain}/{variant}")
    return instances


def _load_file(path: str | Path, domain: str, variant: str) -> list[Instance]:
    return _check_kind(load_instances(path, domain), domain, variant, str(path))


def _generated(domain: str, variant: str, *, n: int, seed: int, split: str, preset: str,
               prs: str | None, git_repo: str | None, poems: str | None) -> list[Instance]:
    from absence_tasks.generate import generate_instances

    key = json.dumps({"domain": domain, "variant": variant, "n": n, "seed": seed, "split": split,
                      "preset": preset, "prs": prs, "git_repo": git_repo, "poems": poems,
                      "code": _generator_fingerprint()}, sort_keys=True)
    path = cache_dir() / f"{domain}_{variant}_{split}_n{n}_s{seed}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsonl"
    if path.is_file():
        return read_jsonl(path)
    instances = generate_instances(domain, variant, n, split, seed, preset=preset, prs_path=prs,
                                   git_repo=git_repo, poems_path=poems)
    write_jsonl(path, instances)
    return instances


def load_instances_for_task(domain: str, variant: str, **metadata: Any) -> list[Instance]:
    """The instances one task evaluates, chosen by the `DataSettings` keys among lm-eval's `metadata`."""
    settings = DataSettings.from_metadata(metadata)
    if settings.data_file:
        return _load_file(settings.data_file, domain, variant)
    if settings.data_dir:
        return _load_file(Path(settings.data_dir) / f"{domain}_{variant}_{settings.split}.jsonl", domain, variant)
    if settings.source == "hub":
        from absence_tasks.upstream import load_hf_upstream

        if variant != "omission":
            raise DataError(f"the hub's AbsenceBench data has no {variant} variant for {domain}; "
                            "use a data_file for it")
        return load_hf_upstream(domain)
    if settings.source != "generated":
        raise DataError(f"unknown data source {settings.source!r} (expected 'generated' or 'hub')")
    return _generated(domain, variant, n=int(settings.n), seed=int(settings.seed), split=settings.split,
                      preset=settings.preset, prs=settings.prs, git_repo=settings.git_repo,
                      poems=settings.poems)
