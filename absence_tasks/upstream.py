r"""Upstream AbsenceBench's JSONL format, in and out, and its Hugging Face dataset.

Upstream (github.com/harvey-fin/absence-bench; hub dataset `harveyfin/AbsenceBench`) keeps one JSONL
file per domain, one record per instance, under one of two namings:

* per domain, as upstream's generators write them (and as `write_upstream` writes them):

  ==========  ====================================================================================
  poetry      `id`, `original_poem`, `modified_poem` (texts), `omitted_line_indices`
  numerical   `id`, `original_sequence`, `user_sequence` (lists of elements), `omitted_mask` (one
              bool per original element, True where it was KEPT), `omitted_sequence`
  github_prs  `id` (upstream's own files: `issue_id`), `original_diff`, `modified_diff` (texts),
              `omitted_lines` (the omitted changed lines), `omitted_index`
  ==========  ====================================================================================

* generic, as the hub dataset names every domain: `original_context`, `modified_context` (texts),
  `omitted_context` (the omitted lines), `omitted_index`; the needle setting has `needles` (the
  inserted lines) instead. The field names do not tell the domain, so it must be passed in (or the
  record's `metadata.task_type` must name it, as upstream's numerical metadata and our needle files do).

Every record may carry a `metadata` object. A text is split into lines on "\n"; a list holds one
element per line. In placeholder files the modified text has the marker `PLACEHOLDER` in place of
each omitted line.

Reading checks that a record is what it claims (the omitted lines are the original's lines at the
indices; the modified text is the original without, or with markers for, exactly those lines; the
needles are inserted lines) and raises `DataError` naming file, line and problem otherwise. Texts are
split on "\n", as upstream's scorer splits them. What the reader does about upstream's own data:

1. Unrecorded deletions in diffs. Upstream's PR generator deletes, besides the changed lines it
   records, context lines (its context-deletion mode) and every line that occurs more than once in
   the diff, without recording either; and it splits with `str.splitlines()`, so a diff's final
   newline leaves no empty last line in the modified diff. So an original diff line missing from the
   modified diff without being listed is accepted when upstream could have deleted it that way: it
   occurs twice, or it is neither a `+`/`-` line nor a `diff --git`/`index `/`@@` header (the empty
   line after a final newline is such a line). These lines go to `metadata["dropped_context_indices"]`:
   deleted, not scored (the schema's convention). Other domains get no such leeway.
2. Other line breaks. Because upstream's PR generator indexes `str.splitlines()` lines, a diff holding
   "\r\n", form feeds or other characters `str.splitlines()` breaks at has indices and omitted texts
   that do not fit a split on "\n". A record that does not check out split on "\n" is retried split
   the generator's way; when that fits, the instance keeps those lines and its metadata records
   `"line_split": "splitlines"`.
3. Omitted lines no answer can list. Upstream's poetry generator may omit a blank line (upstream's
   scorer skips blank lines) or two copies of a repeated line (an answer is a set of lines: the text
   is one answer). Such a line (blank, or repeating an earlier omitted line) stays deleted but moves
   from the omitted lines to `metadata["dropped_context_indices"]`. A placeholder record cannot
   express that (its marker asks for the line), so there it is an error.

Numerical files are written with lists of strings, as upstream's generator writes lists: its scorer
iterates `original_sequence` element by element and would read a text as single characters.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from absence_tasks.schema import DOMAINS, PLACEHOLDER, VARIANTS, DataError, Instance, atomic_write_text, \
    distinct_ids, iter_json_records
from absence_tasks.scoring import normalize_line

HF_DATASET = "harveyfin/AbsenceBench"
# The hub dataset's one split; it is the benchmark's evaluation data, so its instances are labelled
# with our "test" split by default.
HF_SPLIT = "validation"
NEEDLES_FIELD = "needles"
# Metadata keys the reader adds; the writer leaves them out (the id goes back into `id`).
_READER_KEYS = ("upstream_id", "source_file")
# Lines upstream's PR generator tracks when deleted (+/-) or never deletes (its headers); every other
# line it may delete untracked in its context-deletion mode.
_PR_NOT_CONTEXT = ("+", "-", "diff --git", "index ", "@@")
_SHOWN_CHARS = 60


@dataclass(frozen=True)
class Naming:
    """Which record fields hold the two documents and the answer."""
    original: str
    modified: str
    indices: str | None      # indices of the omitted lines into the original's lines
    omitted: str | None      # the omitted lines' text (upstream's poetry files have none)
    mask: str | None = None  # numerical: one bool per original element, True where it was kept


PER_DOMAIN_NAMING = {
    "poetry": Naming("original_poem", "modified_poem", "omitted_line_indices", None),
    "numerical": Naming("original_sequence", "user_sequence", None, "omitted_sequence", mask="omitted_mask"),
    "github_prs": Naming("original_diff", "modified_diff", "omitted_index", "omitted_lines"),
}
GENERIC_NAMING = Naming("original_context", "modified_context", "omitted_index", "omitted_context")

Splitter = Callable[[str], list[str]]


def _split_on_newline(text: str) -> list[str]:
    return text.split("\n")


def _split_like_upstream_generator(text: str) -> list[str]:
    return text.splitlines()


# ---- reading ----------------------------------------------------------------------------------

def detect_naming(record: Mapping[str, Any]) -> tuple[str | None, Naming]:
    """(the domain the field names imply, or None for the generic naming; the naming)."""
    candidates = [*PER_DOMAIN_NAMING.items(), (None, GENERIC_NAMING)]
    found = [(domain, naming) for domain, naming in candidates if record.get(naming.original) is not None]
    if len(found) != 1:
        expected = ", ".join(naming.original for _, naming in candidates)
        got = ", ".join(naming.original for _, naming in found) or "none"
        raise DataError(f"expected exactly one of the upstream AbsenceBench fields {expected}; found {got}")
    return found[0]


def from_upstream_record(record: Mapping[str, Any], domain: str | None = None, variant: str | None = None, *,
                         split: str = "test", source_file: str | None = None,
                         position: int | None = None) -> Instance:
    """One upstream record as an `Instance`; DataError (without file name) if it does not check out.

    `domain`/`variant` override what the record's fields say; `position` (line or row number) is the
    id of a record that has none; `source_file` goes into the metadata."""
    if not isinstance(record, Mapping):
        raise DataError(f"expected a JSON object, got {type(record).__name__}")
    if variant is not None:
        _check_choice(variant, VARIANTS, "variant")
    named_domain, naming = detect_naming(record)
    domain = _record_domain(record, named_domain, domain)
    build = dict(record=record, domain=domain, naming=naming, variant=variant, split=split,
                 source_file=source_file, position=position)
    try:
        return _build_instance(**build, splitter=_split_on_newline)
    except DataError as on_newline:
        original = record.get(naming.original)
        if not isinstance(original, str) or original.splitlines() == original.split("\n"):
            raise
        try:
            return _build_instance(**build, splitter=_split_like_upstream_generator)
        except DataError:
            raise on_newline from None


def read_upstream(path: str | os.PathLike, domain: str | None = None, variant: str | None = None,
                  split: str = "test") -> list[Instance]:
    """Every record of an upstream AbsenceBench JSONL file, checked; all must share one domain."""
    if domain is not None:
        try:
            _check_choice(domain, DOMAINS, "domain")
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
    def numbered() -> Iterator[tuple[int, Instance]]:
        file_domain = domain
        for lineno, record in iter_json_records(path):
            try:
                inst = from_upstream_record(record, file_domain, variant, split=split,
                                            source_file=Path(path).name, position=lineno)
            except DataError as e:
                raise DataError(f"{path}:{lineno}: {e}") from None
            # The first record fixes the domain of the file; a later record of another domain is an error.
            file_domain = inst.domain
            yield lineno, inst

    instances = distinct_ids(path, numbered())
    if not instances:
        raise DataError(f"{path}: no records in file")
    return instances


def _check_choice(value: str, allowed: Sequence[str], what: str) -> None:
    if value not in allowed:
        raise DataError(f"unknown {what} {value!r} (expected one of {', '.join(allowed)})")


def _record_domain(record: Mapping[str, Any], named_domain: str | None, domain: str | None) -> str:
    if domain is not None:
        _check_choice(domain, DOMAINS, "domain")
        if named_domain is not None and named_domain != domain:
            raise DataError(f"a {named_domain} record (field {PER_DOMAIN_NAMING[named_domain].original}) "
                            f"where {domain} was expected")
        return domain
    if named_domain is not None:
        return named_domain
    metadata = record.get("metadata")
    hint = metadata.get("task_type") if isinstance(metadata, Mapping) else None
    if hint in DOMAINS:
        return hint
    raise DataError(f"cannot tell the domain: the generic upstream fields ({GENERIC_NAMING.original}, ...) do "
                    f"not name it, nor does metadata.task_type; pass it (one of {', '.join(DOMAINS)})")


def _build_instance(*, record: Mapping[str, Any], domain: str, naming: Naming, variant: str | None, split: str,
                    source_file: str | None, position: int | None, splitter: Splitter) -> Instance:
    original = _lines(record, naming.original, splitter)
    modified = _lines(record, naming.modified, splitter)
    if variant is None:
        variant = _infer_variant(record, modified)
    record_id = _record_id(record, position)
    used = {"id", "metadata", naming.original, naming.modified}
    if variant == "needle":
        if record.get(NEEDLES_FIELD) is None:
            raise DataError(f"a needle record needs a {NEEDLES_FIELD!r} field (the inserted lines)")
        inserted = needle_positions(original, modified, _elements(record, NEEDLES_FIELD))
        omitted: list[int] = []
        dropped = None
        used.add(NEEDLES_FIELD)
    else:
        listed = _listed_omissions(record, naming)
        _check_indices(listed, len(original), naming.mask or naming.indices)
        if naming.mask is not None and len(record[naming.mask]) != len(original):
            raise DataError(f"{naming.mask} has {len(record[naming.mask])} entries for "
                            f"{len(original)} original elements")
        if naming.omitted is not None and record.get(naming.omitted) is not None:
            _check_omitted_texts(_elements(record, naming.omitted), original, listed, naming.omitted)
        omitted, unscored = _split_scored(original, listed, variant)
        unrecorded = _unrecorded_drops(original, modified, listed, domain, marked=variant == "placeholder")
        dropped = sorted(unscored + unrecorded)
        inserted = []
        used |= {name for name in (naming.indices, naming.omitted, naming.mask) if name}
    metadata = _metadata(record, used, record_id, source_file, dropped)
    if splitter is _split_like_upstream_generator:
        metadata["line_split"] = "splitlines"
    return Instance(id=f"upstream-{domain}-{record_id}", domain=domain, variant=variant, split=split,
                    original_lines=original, modified_lines=modified, omitted_indices=omitted,
                    inserted_indices=inserted, metadata=metadata)


def _show(line: str) -> str:
    return repr(line if len(line) <= _SHOWN_CHARS else line[:_SHOWN_CHARS] + "...")


def _is_element(value: Any) -> bool:
    # Upstream's numerical files hold base-10 numbers as JSON integers; bool is not a number here.
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _elements(record: Mapping[str, Any], name: str) -> list[str]:
    """A list field of lines (strings, or integers upstream wrote for numbers) as strings."""
    value = record.get(name)
    if not isinstance(value, list) or not all(_is_element(x) for x in value):
        raise DataError(f"field {name!r} must be a list of strings, got {_describe(value)}")
    lines = [str(x) for x in value]
    if any("\n" in x for x in lines):
        raise DataError(f"field {name!r} holds an element with a newline; one element is one line")
    return lines


def _lines(record: Mapping[str, Any], name: str, splitter: Splitter) -> list[str]:
    value = record.get(name)
    if value is None:
        raise DataError(f"missing field {name!r}")
    if isinstance(value, str):
        return splitter(value)
    return _elements(record, name)


def _describe(value: Any) -> str:
    if isinstance(value, list):
        bad = next((x for x in value if not _is_element(x)), None)
        return f"a list holding {type(bad).__name__}"
    return "nothing" if value is None else type(value).__name__


def _record_id(record: Mapping[str, Any], position: int | None) -> str | int:
    for name in ("id", "issue_id"):
        value = record.get(name)
        if value is not None:
            if not _is_element(value):
                raise DataError(f"field {name!r} must be a string or an integer, got {type(value).__name__}")
            return value
    if position is None:
        raise DataError("the record has no 'id' (or 'issue_id')")
    return position


def _infer_variant(record: Mapping[str, Any], modified: Sequence[str]) -> str:
    if record.get(NEEDLES_FIELD) is not None:
        return "needle"
    if PLACEHOLDER in modified:
        return "placeholder"
    return "omission"


def _listed_omissions(record: Mapping[str, Any], naming: Naming) -> list[int]:
    """The omitted indices the record lists (not yet range-checked): from the mask for upstream's
    numerical naming (False = omitted), else from the indices field."""
    if naming.mask is not None:
        mask = record.get(naming.mask)
        if mask is None:
            raise DataError(f"missing field {naming.mask!r}")
        # JSON true/false, or 1/0 where a tool wrote the mask as integers.
        if not isinstance(mask, list) or not all(type(m) is bool or (type(m) is int and m in (0, 1)) for m in mask):
            raise DataError(f"field {naming.mask!r} must be a list of booleans")
        return [i for i, kept in enumerate(mask) if not kept]
    assert naming.indices is not None
    indices = record.get(naming.indices)
    if indices is None:
        raise DataError(f"missing field {naming.indices!r}")
    if not isinstance(indices, list) or not all(type(i) is int for i in indices):
        raise DataError(f"field {naming.indices!r} must be a list of integers")
    return indices


def _check_indices(indices: Sequence[int], n_lines: int, name: str | None) -> None:
    if list(indices) != sorted(set(indices)):
        raise DataError(f"field {name!r} must be strictly increasing")
    if indices and not (0 <= indices[0] and indices[-1] < n_lines):
        raise DataError(f"field {name!r} points outside the original's {n_lines} lines (0..{n_lines - 1})")


def _split_scored(original: Sequence[str], listed: Sequence[int], variant: str) -> tuple[list[int], list[int]]:
    """(scored, unscored) omitted indices. Quirk 3 of the module docstring: a blank omitted line, or
    one repeating an earlier omitted line, cannot be (another) answer line."""
    scored, unscored, seen = [], [], set()
    for i in listed:
        key = normalize_line(original[i])
        if key and key not in seen:
            scored.append(i)
            seen.add(key)
        else:
            unscored.append(i)
    if unscored and variant == "placeholder":
        i = unscored[0]
        raise DataError(f"omitted line {i} {_show(original[i])} is blank or repeats an earlier omitted line, so "
                        f"no answer can list it, and a placeholder record cannot leave a marked line unscored")
    return scored, unscored


def _check_omitted_texts(texts: Sequence[str], original: Sequence[str], listed: Sequence[int], name: str) -> None:
    if len(texts) != len(listed):
        raise DataError(f"field {name!r} lists {len(texts)} lines but {len(listed)} indices are omitted")
    for k, (text, i) in enumerate(zip(texts, listed)):
        if text != original[i]:
            raise DataError(f"{name}[{k}] is {_show(text)} but original line {i} is {_show(original[i])}")


def _unrecorded_drops(original: Sequence[str], modified: Sequence[str], listed: Sequence[int], domain: str,
                      marked: bool) -> list[int]:
    """Check that `modified` is `original` without the listed lines (`marked`: with the marker in their
    place) and, for diffs, without lines upstream's generator deletes unrecorded (quirk 1); return the
    indices of those unrecorded lines.

    Left-to-right matching is exact here: whether a line may go unrecorded depends only on its text,
    so equal lines are interchangeable."""
    expected = len(original) - (0 if marked else len(listed))
    if len(modified) > expected or (len(modified) < expected and domain != "github_prs"):
        kept = "with a marker for each omitted line" if marked else f"minus the {len(listed)} omitted"
        raise DataError(f"the modified text has {len(modified)} lines; the original's {len(original)} "
                        f"{kept} make {expected}")
    repeated = {line for line, n in Counter(original).items() if n > 1}
    gone = set(listed)
    dropped, k = [], 0
    for i, line in enumerate(original):
        found = f"modified line {k} is {_show(modified[k])}" if k < len(modified) else "the modified text ended"
        if i in gone:
            if not marked:
                continue
            if k < len(modified) and modified[k] == PLACEHOLDER:
                k += 1
                continue
            raise DataError(f"omitted line {i} has no marker {PLACEHOLDER!r} in the modified text ({found})")
        if k < len(modified) and modified[k] == line:
            k += 1
        elif domain == "github_prs" and (line in repeated or not line.startswith(_PR_NOT_CONTEXT)):
            dropped.append(i)
        else:
            raise DataError(f"original line {i} {_show(line)} is not listed as omitted but is missing from the "
                            f"modified text ({found})")
    if k < len(modified):
        raise DataError(f"modified line {k} {_show(modified[k])} is not a line of the original in order")
    return dropped


def needle_positions(original: Sequence[str], modified: Sequence[str], needles: Sequence[str]) -> list[int]:
    """Indices into `modified` of the needles, matched once each and in order; `modified` must be
    `original` with exactly the needles inserted. A line equal to both the next original line and the
    next needle is taken as the original line."""
    if len(modified) != len(original) + len(needles):
        raise DataError(f"the modified text has {len(modified)} lines; the original's {len(original)} plus "
                        f"{len(needles)} needles make {len(original) + len(needles)}")
    inserted, p, k = [], 0, 0
    for i, line in enumerate(modified):
        if p < len(original) and line == original[p]:
            p += 1
        elif k < len(needles) and line == needles[k]:
            inserted.append(i)
            k += 1
        else:
            raise DataError(f"modified line {i} {_show(line)} is neither the next original line nor the "
                            f"next needle")
    return inserted


def _metadata(record: Mapping[str, Any], used: set[str], record_id: str | int, source_file: str | None,
              dropped: Sequence[int] | None) -> dict[str, Any]:
    """Upstream's metadata, plus the record's other top-level fields (upstream files copy their
    source's fields, e.g. a PR's repo and title, to the top level), plus where the record came from,
    plus the deleted unscored lines found (None: a needle record, where none are looked for)."""
    upstream = record.get("metadata")
    if isinstance(upstream, str):
        # A `datasets` table keeps metadata whose keys vary from row to row as a JSON string
        # (`schema.to_hf_dataset` does so).
        try:
            upstream = json.loads(upstream)
        except json.JSONDecodeError as e:
            raise DataError(f"field 'metadata' is a string but not JSON ({e.msg})") from None
    if upstream is not None and not isinstance(upstream, Mapping):
        raise DataError(f"field 'metadata' must be an object, got {type(upstream).__name__}")
    others = {k: v for k, v in record.items() if k not in used and v is not None}
    metadata = {**others, **(upstream or {}), "upstream_id": record_id}
    if source_file is not None:
        metadata["source_file"] = source_file
    if dropped is not None:
        metadata.pop("dropped_context_indices", None)
    if dropped:
        metadata["dropped_context_indices"] = list(dropped)
    return metadata


# ---- writing ----------------------------------------------------------------------------------

def to_upstream_record(instance: Instance) -> dict[str, Any]:
    """An instance as an upstream record: per-domain naming; needle instances in upstream's generic
    needle naming (the per-domain naming has no needle fields), with metadata.task_type naming the
    domain so the file can be read back without one."""
    metadata = {k: v for k, v in instance.metadata.items() if k not in _READER_KEYS}
    record_id = instance.metadata.get("upstream_id", instance.id)
    original, modified = list(instance.original_lines), list(instance.modified_lines)
    omitted = _listed_in_upstream_record(instance)
    omitted_lines = [original[i] for i in omitted]
    if instance.variant == "needle":
        record = {"id": record_id, GENERIC_NAMING.original: "\n".join(original),
                  GENERIC_NAMING.modified: "\n".join(modified), NEEDLES_FIELD: instance.answer_lines,
                  "metadata": {**metadata, "task_type": instance.domain}}
    elif instance.domain == "numerical":
        gone = set(omitted)
        record = {"id": record_id, "original_sequence": original, "user_sequence": modified,
                  "omitted_mask": [i not in gone for i in range(len(original))],
                  "omitted_sequence": omitted_lines, "metadata": metadata}
    elif instance.domain == "poetry":
        record = {"id": record_id, "original_poem": "\n".join(original), "modified_poem": "\n".join(modified),
                  "omitted_line_indices": omitted, "metadata": metadata}
    else:
        record = {"id": record_id, "original_diff": "\n".join(original), "modified_diff": "\n".join(modified),
                  "omitted_lines": omitted_lines, "omitted_index": omitted, "metadata": metadata}
    # Nested keys sorted (top-level keys keep upstream's order), so equal instances give equal bytes.
    record["metadata"] = json.loads(json.dumps(record["metadata"], sort_keys=True))
    return record


def _listed_in_upstream_record(instance: Instance) -> list[int]:
    """The indices an upstream record lists as omitted. A diff's unscored deletions stay unlisted,
    as upstream's PR generator leaves them (quirk 1 of the module docstring); in the other domains an
    unscored deleted line (blank, or repeating an omitted line: quirk 3) can only be listed."""
    if instance.domain == "github_prs" or instance.variant == "needle":
        return list(instance.omitted_indices)
    return sorted([*instance.omitted_indices, *instance.metadata.get("dropped_context_indices", ())])


def dumps_upstream(instances: Iterable[Instance]) -> str:
    return "".join(json.dumps(to_upstream_record(i), ensure_ascii=False) + "\n" for i in instances)


def write_upstream(path: str | os.PathLike, instances: Iterable[Instance]) -> None:
    """Write instances of one domain as an upstream AbsenceBench JSONL file, all at once."""
    instances = list(instances)
    if not instances:
        raise DataError(f"{path}: no instances to write")
    domains = sorted({i.domain for i in instances})
    if len(domains) > 1:
        raise DataError(f"{path}: instances of {len(domains)} domains ({', '.join(domains)}); upstream "
                        "AbsenceBench files hold one domain each")
    atomic_write_text(path, dumps_upstream(instances))


# ---- the Hugging Face hub dataset ---------------------------------------------------------------

def instances_from_hf_rows(rows: Iterable[Mapping[str, Any]], domain: str, *, split: str = "test",
                           source: str = HF_DATASET) -> list[Instance]:
    """Rows of upstream's hub dataset (generic naming) as checked instances; errors name the row."""
    _check_choice(domain, DOMAINS, "domain")
    where = f"{source} ({domain})"
    instances = []
    for row_number, row in enumerate(rows):
        try:
            instances.append(from_upstream_record(dict(row), domain, split=split, source_file=where,
                                                  position=row_number))
        except DataError as e:
            raise DataError(f"{where} row {row_number}: {e}") from None
    if not instances:
        raise DataError(f"{where}: no rows")
    return instances


def load_hf_upstream(domain: str, *, revision: str | None = None, split: str = "test") -> list[Instance]:
    """The official AbsenceBench data of one domain from the Hugging Face hub (needs a network)."""
    _check_choice(domain, DOMAINS, "domain")
    import datasets

    rows = datasets.load_dataset(HF_DATASET, domain, split=HF_SPLIT, revision=revision)
    source = HF_DATASET if revision is None else f"{HF_DATASET}@{revision}"
    return instances_from_hf_rows(rows, domain, split=split, source=source)
