"""Merged pull requests as documents: read PR records (the embedded ones or any JSONL file), mine the
same records from a local git repository, and label the lines of a unified diff.

A PR record is one squash-merged commit, one JSON object per line::

    repo, pr_number, title, sha, merged_at, additions, deletions, diff [, license]

``diff`` is the full ``git show --format= --patch`` text; ``additions``/``deletions`` are the
``git show --numstat`` sums; ``license`` (optional) is the SPDX id of the repository's licence. The
document made from a record is its diff, one item per line.

The package ships 1,868 such records of five permissively licensed repositories (``EMBEDDED_PRS``,
gzip-compressed JSONL, one file per repository, with a NOTICE and each licence beside them): the
default PR source everywhere, so every machine generates the same suite.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from absence_tasks.io import atomic_write_bytes
from absence_tasks.schema import DataError, iter_json_records
from absence_tasks.sources import Document

PR_FIELDS = ("repo", "pr_number", "title", "sha", "merged_at", "additions", "deletions", "diff")
OPTIONAL_PR_FIELDS = ("license",)
EMBEDDED_PRS = Path(__file__).resolve().parent / "data" / "prs"
PR_FILE_SUFFIXES = (".jsonl", ".jsonl.gz")
_INT_FIELDS = frozenset({"pr_number", "additions", "deletions"})

# How the lines outside a hunk body begin in `git show` / `git diff` output (file headers, mode and
# rename/copy metadata, the hunk header itself, and the notice for a binary file).
HEADER_PREFIXES = ("diff --git", "index ", "--- ", "+++ ", "@@", "new file mode", "deleted file mode",
                   "similarity index", "dissimilarity index", "rename from", "rename to", "copy from",
                   "copy to", "old mode", "new mode", "Binary files")
# Git's marker after a line that has no final newline; it belongs to no side of the diff.
NO_NEWLINE_MARKER = "\\"

LINE_KINDS = ("header", "added", "removed", "context")
_HUNK_HEADER = re.compile(r"^@@ -\d+(?:,(\d+))? \+\d+(?:,(\d+))? @@")
_PR_SUFFIX = re.compile(r"^(.*?)\s*\(#(\d+)\)$")


# ---- diff lines -------------------------------------------------------------------------------

def diff_lines(diff: str) -> list[str]:
    """The lines of a diff. Split on "\\n" only: a diff is newline-delimited, and a changed line may
    itself hold a carriage return or form feed that `str.splitlines` would wrongly break at."""
    lines = diff.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def classify_diff_lines(lines: Sequence[str]) -> list[str]:
    """Label each line of a unified diff "header", "added", "removed" or "context".

    Hunk-aware: after an ``@@ -a,b +c,d @@`` line the next lines are body lines until b old and d new
    lines have been seen, so a removed line whose text starts with "--" (raw "--- x") is "removed",
    not a file header. Everything outside a hunk body, and git's "\\ No newline at end of file"
    marker, is "header". A line that cannot continue the hunk (a malformed diff) ends it.
    """
    kinds = []
    old_left = new_left = 0
    for line in lines:
        if old_left > 0 or new_left > 0:
            kind = _hunk_body_kind(line, old_left, new_left)
            if kind is not None:
                kinds.append(kind)
                old_left -= kind in ("removed", "context")
                new_left -= kind in ("added", "context")
                continue
            old_left = new_left = 0
        kinds.append("header")
        match = _HUNK_HEADER.match(line)
        if match:
            # An omitted count means one line.
            old_left = int(match.group(1) or 1)
            new_left = int(match.group(2) or 1)
    return kinds


def _hunk_body_kind(line: str, old_left: int, new_left: int) -> str | None:
    """The kind of a line inside a hunk body, or None if the line cannot belong to it."""
    if line.startswith(NO_NEWLINE_MARKER):
        return "header"
    # Git writes a context line as " text"; an empty line is one whose trailing space was stripped.
    if (line == "" or line.startswith(" ")) and old_left > 0 and new_left > 0:
        return "context"
    if line.startswith("-") and old_left > 0:
        return "removed"
    if line.startswith("+") and new_left > 0:
        return "added"
    return None


def count_changed_lines(diff: str) -> tuple[int, int]:
    """(added, removed) line counts of a unified diff."""
    kinds = classify_diff_lines(diff_lines(diff))
    return kinds.count("added"), kinds.count("removed")


# ---- records ----------------------------------------------------------------------------------

def check_pr_record(record: dict[str, Any]) -> dict[str, Any]:
    """The record's PR_FIELDS in order (other keys dropped); DataError names the first problem."""
    for name in PR_FIELDS:
        if name not in record:
            raise DataError(f"missing field {name!r}")
        value = record[name]
        if name in _INT_FIELDS:
            # bool is an int subclass in Python, but true/false in JSON is not a count.
            if not isinstance(value, int) or isinstance(value, bool):
                raise DataError(f"field {name!r} must be an integer, got {type(value).__name__}")
            if value < 0:
                raise DataError(f"field {name!r} must be >= 0, got {value}")
        elif not isinstance(value, str):
            raise DataError(f"field {name!r} must be a string, got {type(value).__name__}")
    for name in OPTIONAL_PR_FIELDS:
        if name in record and not isinstance(record[name], str):
            raise DataError(f"field {name!r} must be a string, got {type(record[name]).__name__}")
    added, removed = count_changed_lines(record["diff"])
    if added + removed == 0:
        raise DataError("PR record has no changed lines in its diff")
    return {name: record[name] for name in (*PR_FIELDS, *OPTIONAL_PR_FIELDS) if name in record}


def read_pr_records(path: str | os.PathLike = EMBEDDED_PRS) -> list[dict[str, Any]]:
    """PR records from a JSONL file (``.jsonl`` or ``.jsonl.gz``), or from every such file of a folder
    (by file name); by default the embedded records."""
    path = Path(path)
    if path.is_dir():
        files = sorted(f for f in path.iterdir() if f.name.endswith(PR_FILE_SUFFIXES))
        if not files:
            raise DataError(f"{path}: no *.jsonl files (nor *.jsonl.gz) in folder")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path}: no such file or folder")
    records = []
    for file in files:
        for lineno, obj in iter_json_records(file):
            try:
                records.append(check_pr_record(obj))
            except DataError as e:
                raise DataError(f"{file}:{lineno}: {e}") from None
    if not records:
        raise DataError(f"{path}: no PR records")
    return records


def write_pr_records(path: str | os.PathLike, records: Iterable[dict[str, Any]],
                     license: str | None = None) -> None:
    """Write records as JSONL (gzip-compressed when the name ends in ".gz", with no timestamp, so the same
    records give the same bytes), all at once: no partial file on a bad record. `license` (an SPDX id)
    is recorded in every record that does not name one."""
    out = []
    for i, record in enumerate(records, start=1):
        if license is not None:
            record = {**record, "license": record.get("license", license)}
        try:
            out.append(json.dumps(check_pr_record(record), ensure_ascii=False) + "\n")
        except DataError as e:
            raise DataError(f"{path}: record {i}: {e}") from None
    data = "".join(out).encode("utf-8")
    if str(path).endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    atomic_write_bytes(path, data)


def pr_document(record: dict[str, Any]) -> Document:
    """The diff of a PR as a github_prs document. Without a PR number the short sha names it."""
    repo, number, sha = record["repo"], record["pr_number"], record["sha"]
    return Document(
        domain="github_prs",
        source_id=f"{repo}#{number}" if number else f"{repo}@{sha[:12]}",
        lines=diff_lines(record["diff"]),
        provenance={"repo": repo, "pr_number": number, "sha": sha, "title": record["title"],
                    "merged_at": record["merged_at"],
                    **{name: record[name] for name in OPTIONAL_PR_FIELDS if name in record}},
    )


# ---- mining a local git repository ------------------------------------------------------------

# Settings that would change the bytes of `git log` / `git show` output, pinned so that the same
# history gives the same records whatever the user's git config says (colour, external diff tools
# and rename detection are pinned by command-line options instead).
_GIT_CONFIG = ("diff.noprefix=false", "diff.mnemonicPrefix=false", "diff.relative=false",
               "log.showSignature=false", "core.quotePath=true")
# Starts each commit's header line in the numstat listing; numstat lines start with a digit or "-".
_COMMIT_MARK = "\x1e"
_FIELD_SEP = "\x1f"
_SHOW_PROGRESS_FROM = 200


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = ["git", "-C", str(repo)]
    for setting in _GIT_CONFIG:
        cmd += ["-c", setting]
    try:
        return subprocess.run([*cmd, *args], capture_output=True, check=False)
    except FileNotFoundError:
        raise DataError("git: command not found; install git to mine a repository") from None


def _git_stdout(repo: Path, *args: str) -> bytes:
    proc = _git(repo, *args)
    if proc.returncode != 0:
        message = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise DataError(f"{repo}: git {args[0]} failed: {message[-1] if message else proc.returncode}")
    return proc.stdout


def repo_name_from_remote_url(url: str) -> str | None:
    """owner/name from a hosted remote URL (https, ssh:// or scp-like git@host:owner/name.git);
    None for a local path or a URL with fewer than two path parts."""
    url = url.strip()
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https", "ssh", "git", "git+ssh") and parsed.netloc:
        repo_path = parsed.path
    else:
        scp_like = re.match(r"^(?:[^@/]+@)?[^:/]+:(?!/)(.+)$", url)
        if scp_like is None:
            return None
        repo_path = scp_like.group(1)
    parts = [p for p in repo_path.split("/") if p]
    if len(parts) < 2:
        return None
    return f"{parts[-2]}/{parts[-1].removesuffix('.git')}"


def _repo_name(repo: Path) -> str:
    """owner/name of the origin remote, else the name of the repository's folder."""
    origin = _git(repo, "config", "--get", "remote.origin.url")
    if origin.returncode == 0:
        name = repo_name_from_remote_url(origin.stdout.decode("utf-8", "replace"))
        if name:
            return name
    toplevel = _git(repo, "rev-parse", "--show-toplevel")
    if toplevel.returncode == 0 and toplevel.stdout.strip():
        return Path(toplevel.stdout.decode("utf-8", "surrogateescape").strip()).name
    # A bare repository has no work tree; its folder is conventionally "name.git".
    git_dir = _git_stdout(repo, "rev-parse", "--absolute-git-dir").decode("utf-8", "surrogateescape").strip()
    return Path(git_dir).name.removesuffix(".git")


def _list_commits(repo: Path, max_commits: int | None) -> list[dict[str, Any]]:
    """Every non-merge commit reachable from HEAD, newest first, with its numstat sums.

    One `git log` call: a header line per commit (sha, parents, commit date, subject) followed by its
    numstat lines ("added<TAB>deleted<TAB>path", or "-<TAB>-<TAB>path" for a binary file)."""
    fmt = _COMMIT_MARK + _FIELD_SEP.join(("%H", "%P", "%cI", "%s"))
    args = ["log", "--no-merges", "--numstat", "--no-color", "--no-ext-diff", "-M", f"--format={fmt}"]
    if max_commits is not None:
        args.append(f"--max-count={max_commits}")
    out = _git_stdout(repo, *args).decode("utf-8", "surrogateescape")
    commits: list[dict[str, Any]] = []
    for line in out.split("\n"):
        if line.startswith(_COMMIT_MARK):
            sha, parents, date, subject = line[1:].split(_FIELD_SEP, 3)
            commits.append({"sha": sha, "n_parents": len(parents.split()), "merged_at": date,
                            "subject": subject, "additions": 0, "deletions": 0, "binary": False})
        elif line and commits:
            added, deleted, _path = line.split("\t", 2)
            if added == "-" or deleted == "-":
                commits[-1]["binary"] = True
            else:
                commits[-1]["additions"] += int(added)
                commits[-1]["deletions"] += int(deleted)
    return commits


def _is_utf8(text: str) -> bool:
    # Text decoded with surrogateescape holds lone surrogates exactly where the bytes were not UTF-8.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _title_and_number(subject: str, require_pr_number: bool) -> tuple[str, int] | None:
    match = _PR_SUFFIX.match(subject)
    if match:
        return match.group(1), int(match.group(2))
    return None if require_pr_number else (subject, 0)


def mine_git_repo(repo_path: str | os.PathLike, *, require_pr_number: bool = True, min_changed: int = 10,
                  max_changed: int = 200, max_commits: int | None = None) -> list[dict[str, Any]]:
    """PR records mined from the history of HEAD of a local git repository (newest first).

    Kept: commits with exactly one parent, no binary file, min_changed <= additions + deletions <=
    max_changed (and at least one changed line), a UTF-8 subject and diff. With `require_pr_number`
    only subjects ending in "(#N)" are kept (title = subject without it, pr_number = N); without it
    other commits are kept too, with pr_number 0 and the whole subject as title. `max_commits` limits
    how many of the newest non-merge commits are examined.
    """
    repo = Path(repo_path)
    if not repo.is_dir() or _git(repo, "rev-parse", "--git-dir").returncode != 0:
        raise DataError(f"{repo_path}: not a git repository")
    if _git(repo, "rev-parse", "--verify", "--quiet", "HEAD").returncode != 0:
        return []  # a fresh repository: no history to mine
    repo_name = _repo_name(repo)
    kept = []
    for commit in _list_commits(repo, max_commits):
        changed = commit["additions"] + commit["deletions"]
        named = _title_and_number(commit["subject"], require_pr_number)
        if (commit["n_parents"] == 1 and not commit["binary"] and named is not None
                and max(min_changed, 1) <= changed <= max_changed and _is_utf8(commit["subject"])):
            kept.append((commit, named))
    records = []
    for commit, (title, number) in tqdm(kept, desc=f"git show {repo_name}", unit="commit",
                                        disable=len(kept) < _SHOW_PROGRESS_FROM):
        raw = _git_stdout(repo, "show", "--format=", "--patch", "--no-color", "--no-ext-diff", "-M",
                          commit["sha"])
        try:
            diff = raw.decode("utf-8")
        except UnicodeDecodeError:
            continue
        records.append({"repo": repo_name, "pr_number": number, "title": title, "sha": commit["sha"],
                        "merged_at": commit["merged_at"], "additions": commit["additions"],
                        "deletions": commit["deletions"], "diff": diff})
    return records
