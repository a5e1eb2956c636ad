"""The one data schema: an omission instance, its validation, and its JSONL / `datasets` I/O.

An instance pairs an original document with a modified copy:

* ``omission``    – lines at ``omitted_indices`` (into ``original_lines``) are deleted;
* ``placeholder`` – the same lines are replaced by the visible marker ``PLACEHOLDER``;
* ``needle``      – nothing is deleted; lines are inserted at ``inserted_indices`` (into
  ``modified_lines``), the presence control: the model must list the inserted lines back.

The gold answer is derived from these indices (``Instance.answer_lines``) and never stored twice.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from absence_tasks.io import DataError, atomic_write_text

DOMAINS = ("numerical", "poetry", "github_prs")
VARIANTS = ("omission", "placeholder", "needle")
SPLITS = ("train", "validation", "test")
# Upstream AbsenceBench's marker for a deleted line in its placeholder setting.
PLACEHOLDER = "<missing line>"
# A document longer than this is almost certainly a mistake (the paper's longest inputs are ~1,200 lines).
MAX_DOCUMENT_LINES = 20_000

FIELDS = ("id", "domain", "variant", "split", "original_lines", "modified_lines",
          "omitted_indices", "inserted_indices", "metadata")


@dataclass(frozen=True)
class Instance:
    id: str
    domain: str
    variant: str
    split: str
    original_lines: tuple[str, ...]
    modified_lines: tuple[str, ...]
    omitted_indices: tuple[int, ...] = ()
    inserted_indices: tuple[int, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        # Normalise lists (from JSON) to tuples so instances are hashable-ish and immutable.
        for name in ("original_lines", "modified_lines", "omitted_indices", "inserted_indices"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        validate(self)

    # ---- derived views -------------------------------------------------------------------
    @property
    def answer_lines(self) -> list[str]:
        """The lines a perfect answer lists, in document order."""
        if self.variant == "needle":
            return [self.modified_lines[i] for i in self.inserted_indices]
        return [self.original_lines[i] for i in self.omitted_indices]

    @property
    def original_text(self) -> str:
        return "\n".join(self.original_lines)

    @property
    def modified_text(self) -> str:
        return "\n".join(self.modified_lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "domain": self.domain,
            "variant": self.variant,
            "split": self.split,
            "original_lines": list(self.original_lines),
            "modified_lines": list(self.modified_lines),
            "omitted_indices": list(self.omitted_indices),
            "inserted_indices": list(self.inserted_indices),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Instance":
        if not isinstance(record, dict):
            raise DataError(f"expected a JSON object, got {type(record).__name__}")
        missing = [k for k in ("id", "domain", "variant", "split", "original_lines", "modified_lines")
                   if k not in record]
        if missing:
            raise DataError(f"missing field(s) {', '.join(missing)}")
        unknown = sorted(set(record) - set(FIELDS))
        if unknown:
            raise DataError(f"unknown field(s) {', '.join(unknown)}")
        check_field_types(record)
        return cls(
            id=str(record["id"]),
            domain=record["domain"],
            variant=record["variant"],
            split=record["split"],
            original_lines=record["original_lines"],
            modified_lines=record["modified_lines"],
            omitted_indices=record.get("omitted_indices", ()),
            inserted_indices=record.get("inserted_indices", ()),
            metadata=record.get("metadata", {}),
        )


def _json_type(value: Any) -> str:
    return {type(None): "null", bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_field_types(record: dict[str, Any]) -> None:
    """The JSON types of a record's fields, before anything is built from them: a string where a list of
    lines belongs would otherwise become one line per character."""
    def expect(name: str, ok: bool, wanted: str) -> None:
        if not ok:
            raise DataError(f"field {name!r} must be {wanted}, got {_json_type(record[name])}")

    expect("id", isinstance(record["id"], str) or _is_int(record["id"]), "a string or an integer")
    for name in ("domain", "variant", "split"):
        expect(name, isinstance(record[name], str), "a string")
    for name in ("original_lines", "modified_lines"):
        value = record[name]
        expect(name, isinstance(value, list), "a list of strings")
        bad = next((x for x in value if not isinstance(x, str)), None)
        if bad is not None:
            raise DataError(f"field {name!r} must be a list of strings, it holds {_json_type(bad)}")
    for name in ("omitted_indices", "inserted_indices"):
        if name in record:
            value = record[name]
            expect(name, isinstance(value, list), "a list of integers")
            bad = next((x for x in value if not _is_int(x)), None)
            if bad is not None:
                raise DataError(f"field {name!r} must be a list of integers, it holds {_json_type(bad)}")
    if "metadata" in record:
        expect("metadata", isinstance(record["metadata"], dict), "an object")


def validate(inst: Instance) -> None:
    """Raise DataError unless the instance is internally consistent."""
    if inst.domain not in DOMAINS:
        raise DataError(f"unknown domain {inst.domain!r} (expected one of {', '.join(DOMAINS)})")
    if inst.variant not in VARIANTS:
        raise DataError(f"unknown variant {inst.variant!r} (expected one of {', '.join(VARIANTS)})")
    if inst.split not in SPLITS:
        raise DataError(f"unknown split {inst.split!r} (expected one of {', '.join(SPLITS)})")
    for name in ("original_lines", "modified_lines"):
        lines = getattr(inst, name)
        if not all(isinstance(x, str) for x in lines):
            raise DataError(f"{name} must be a list of strings")
        if any("\n" in x for x in lines):
            raise DataError(f"{name} contains a string with a newline; one list item is one line")
    if len(inst.original_lines) < 2:
        raise DataError(f"instance {inst.id}: the original document has {len(inst.original_lines)} line(s); "
                        "at least 2 are needed")
    if len(inst.original_lines) > MAX_DOCUMENT_LINES or len(inst.modified_lines) > MAX_DOCUMENT_LINES:
        raise DataError(f"instance {inst.id}: document longer than {MAX_DOCUMENT_LINES} lines")
    for name, bound in (("omitted_indices", len(inst.original_lines)),
                        ("inserted_indices", len(inst.modified_lines))):
        idx = getattr(inst, name)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in idx):
            raise DataError(f"instance {inst.id}: {name} must be integers")
        if list(idx) != sorted(set(idx)):
            raise DataError(f"instance {inst.id}: {name} must be strictly increasing")
        if idx and not (0 <= idx[0] and idx[-1] < bound):
            raise DataError(f"instance {inst.id}: {name} out of range (0..{bound - 1})")
    if inst.variant == "needle":
        if inst.omitted_indices:
            raise DataError(f"instance {inst.id}: a needle instance omits nothing")
        if len(inst.modified_lines) != len(inst.original_lines) + len(inst.inserted_indices):
            raise DataError(f"instance {inst.id}: modified_lines must be original_lines plus the inserted lines")
    else:
        if inst.inserted_indices:
            raise DataError(f"instance {inst.id}: only needle instances have inserted_indices")
        # Diffs may also lose unscored lines outright (upstream's context-deletion mode; upstream files
        # also drop repeated lines): they are listed in metadata["dropped_context_indices"].
        dropped = len(inst.metadata.get("dropped_context_indices", ()))
        expected = len(inst.original_lines) - dropped - (len(inst.omitted_indices) if inst.variant == "omission" else 0)
        if len(inst.modified_lines) != expected:
            raise DataError(f"instance {inst.id}: modified_lines has {len(inst.modified_lines)} lines, "
                            f"expected {expected} for the {inst.variant} variant")


# ---- JSONL ------------------------------------------------------------------------------------

def dumps_jsonl(records: Iterable[dict[str, Any]]) -> str:
    # sort_keys + ensure_ascii=False: stable bytes for the same records, readable non-ASCII poetry.
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records)


def write_jsonl(path: str | os.PathLike, instances: Iterable[Instance]) -> None:
    atomic_write_text(path, dumps_jsonl(i.to_dict() for i in instances))


def iter_json_records(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) from a JSONL file, gzip-compressed when its name ends in ".gz";
    errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        for lineno, raw in enumerate(_lines_or_die(f, path), start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def _lines_or_die(f, path: Path) -> Iterator[bytes]:
    try:
        yield from f
    except (OSError, EOFError) as e:  # a truncated or corrupt .gz file
        raise DataError(f"{path}: cannot decompress ({e})") from None


def distinct_ids(path: str | os.PathLike, numbered: Iterable[tuple[int, Instance]]) -> list[Instance]:
    """The instances of (line number, instance) pairs; DataError at the second use of an id (scores,
    responses and paired tests are keyed by id)."""
    instances = []
    first_line_of: dict[str, int] = {}
    for lineno, instance in numbered:
        if instance.id in first_line_of:
            raise DataError(f"{path}:{lineno}: field 'id': {instance.id!r} is already the id of line "
                            f"{first_line_of[instance.id]}")
        first_line_of[instance.id] = lineno
        instances.append(instance)
    return instances


def read_jsonl(path: str | os.PathLike) -> list[Instance]:
    def numbered() -> Iterator[tuple[int, Instance]]:
        for lineno, obj in iter_json_records(path):
            try:
                yield lineno, Instance.from_dict(obj)
            except DataError as e:
                raise DataError(f"{path}:{lineno}: {e}") from None

    instances = distinct_ids(path, numbered())
    if not instances:
        raise DataError(f"{path}: no instances in file")
    return instances


# ---- datasets ---------------------------------------------------------------------------------

# Columns an lm-eval task row carries beside the instance's own fields (absence_tasks.lm_eval_tasks): the
# generation budget and the prompt's length, in the tokens of the model being scored (and a budget that grows
# for a scratchpad model), so they say nothing about the data: a suite's identity leaves them out.
BUDGET_COLUMN = "max_gen_toks"  # named as lm-eval's generation argument, which the task sets from it
PROMPT_TOKENS = "prompt_tokens"  # the rendered prompt's length, without a chat template's few tokens
TASK_ROW_COLUMNS = (BUDGET_COLUMN, PROMPT_TOKENS)

def to_hf_dataset(instances: Iterable[Instance]):
    """A `datasets.Dataset` with one row per instance; metadata is kept as a JSON string because its
    keys differ between domains (Arrow needs one struct type per column)."""
    import datasets

    rows = [dict(i.to_dict(), metadata=json.dumps(i.metadata, sort_keys=True)) for i in instances]
    return datasets.Dataset.from_list(rows)


def from_hf_dataset(dataset) -> list[Instance]:
    out = []
    for row in dataset:
        row = dict(row)
        if isinstance(row.get("metadata"), str):
            row["metadata"] = json.loads(row["metadata"])
        out.append(Instance.from_dict(row))
    return out
