"""The leaderboard file: its JSON Schema (`schema.json`, versioned), validation, loading and atomic saving.

Every write goes through `save`, which validates first and then replaces the file in one rename, so a
leaderboard on disk is always a complete, valid document.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from absence_tasks.schema import atomic_write_text

SCHEMA_PATH = Path(__file__).with_name("schema.json")
SCHEMA_VERSION = "1.7"  # what `save` writes; schema.json also reads the older versions it lists
# The tasks whose mean F1 is a row's `average` (upstream's "Average"; lm-eval's `absencebench` group).
OMISSION_TASKS = ("absence_numerical", "absence_poetry", "absence_github_prs")
# The methods a measured row can have, in the page's order: the trained ones are the trainers' names.
TRAINED_METHODS = ("sft", "contrastive", "rl")
METHODS = ("oracle", "zero-shot", *TRAINED_METHODS)
# How long a schema message may get in a one-line error (an offending value can be a whole row).
MAX_MESSAGE_CHARS = 240


class LeaderboardError(ValueError):
    """Bad input for the leaderboard. The message names the file (or place) and the problem in one line."""


@cache
def _validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def document_path(parts) -> str:
    """`rows[0].tasks.absence_poetry` from jsonschema's path items."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document)"


def row_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """A row's identity: publishing the same model, method and suite again replaces it."""
    return row["model"], row["method"], row["suite"]["id"]


def key_dict(key: tuple[str, str, str]) -> dict[str, str]:
    return dict(zip(("model", "method", "suite_id"), key))


def format_key(key: tuple[str, str, str]) -> str:
    return "@".join(key)


def validate(doc: Any) -> None:
    """Raise one LeaderboardError (where in the document + what is wrong) unless `doc` is a valid leaderboard:
    the JSON Schema, plus what a schema cannot say: row keys are unique and comparisons name existing rows."""
    error = best_match(_validator().iter_errors(doc))
    if error is not None:
        # `{"not": {}}` is how the schema forbids a field; jsonschema's own words for it name no rule.
        forbidden = error.validator == "not" and error.validator_value == {}
        message = "not allowed here" if forbidden else error.message
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[:MAX_MESSAGE_CHARS] + "…"
        raise LeaderboardError(f"{document_path(error.absolute_path)}: {message}")
    seen: set[tuple[str, str, str]] = set()
    for index, row in enumerate(doc["rows"]):
        key = row_key(row)
        if key in seen:
            raise LeaderboardError(f"rows[{index}]: a second row for {format_key(key)} (model@method@suite)")
        seen.add(key)
    for index, comparison in enumerate(doc.get("comparisons", [])):
        for side in ("row_a", "row_b"):
            key = tuple(comparison[side][k] for k in ("model", "method", "suite_id"))
            if key not in seen:
                raise LeaderboardError(f"comparisons[{index}].{side}: no row {format_key(key)}")


def now_timestamp() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def empty_leaderboard() -> dict[str, Any]:
    return {"schema_version": SCHEMA_VERSION, "updated": now_timestamp(), "rows": [], "comparisons": []}


def load(path: str | os.PathLike, *, missing_ok: bool = False) -> dict[str, Any]:
    """Read and validate a leaderboard file; with missing_ok, a file that does not exist yet is empty."""
    path = Path(path)
    if not path.is_file():
        if missing_ok and not path.exists():
            return empty_leaderboard()
        raise LeaderboardError(f"{path}: no such file")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise LeaderboardError(f"{path}: not UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise LeaderboardError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    try:
        validate(doc)
    except LeaderboardError as e:
        raise LeaderboardError(f"{path}: not a valid leaderboard: {e}") from None
    return doc


def save(path: str | os.PathLike, doc: dict[str, Any]) -> None:
    """Validate, stamp `updated` and the schema version, and write atomically (the old file stays as it was
    if anything fails)."""
    doc = {**doc, "schema_version": SCHEMA_VERSION, "updated": now_timestamp()}
    try:
        validate(doc)
    except LeaderboardError as e:
        raise LeaderboardError(f"{path}: refusing to write an invalid leaderboard: {e}") from None
    atomic_write_text(path, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
