"""PR records: the embedded files, bad records, mining real git repositories, diff line labels."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from absence_tasks.schema import DataError
from absence_tasks.sources import prs

SHARED_PRS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "prs"
needs_shared = pytest.mark.skipif(not SHARED_PRS.is_dir(), reason=f"{SHARED_PRS} is absent")

SQL_BEFORE = [f"select {i} from t{i};" for i in range(20)]
SQL_BEFORE[3] = "-- old comment"


def git(repo: Path, *args: str, date: str = "2024-01-01T12:00:00+02:00") -> str:
    env = {**os.environ, "GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date}
    proc = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=Test", "-c", "user.email=test@example.com",
         "-c", "commit.gpgsign=false", "-c", "init.defaultBranch=main", *args],
        capture_output=True, check=True, env=env)
    return proc.stdout.decode("utf-8", "replace")


def commit(repo: Path, files: dict[str, bytes | str], subject: str, day: int) -> str:
    for name, content in files.items():
        data = content.encode("utf-8") if isinstance(content, str) else content
        (repo / name).write_bytes(data)
    git(repo, "add", *files)
    git(repo, "commit", "-q", "-m", subject, date=f"2024-01-{day:02d}T12:00:00+02:00")
    return git(repo, "rev-parse", "HEAD").strip()


def text(lines: list[str]) -> str:
    return "".join(line + "\n" for line in lines)


@pytest.fixture(autouse=True)
def no_parent_repo(monkeypatch, tmp_path):
    # A tmp folder must never be taken for part of some enclosing repository.
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    """A repository whose history holds one commit of every kind the miner keeps or skips."""
    repo = tmp_path_factory.mktemp("widgets")
    git(repo, "init", "-q")
    shas = {}
    shas["root"] = commit(repo, {"app.sql": text(SQL_BEFORE), "util.py": text([f"x{i} = {i}" for i in range(30)])},
                          "Initial import (#1)", 1)
    sql_after = [line for i, line in enumerate(SQL_BEFORE) if i not in (3, 5, 7, 9, 11)]
    sql_after[2:2] = [f"select {i} from helpers;" for i in range(100, 110)]
    shas["pr12"] = commit(repo, {"app.sql": text(sql_after)}, "Add query helpers (#12)", 2)
    shas["small"] = commit(repo, {"util.py": text([f"x{i} = {i}" for i in range(29)] + ["x29 = 0"])},
                           "Fix typo (#13)", 3)
    shas["binary"] = commit(repo, {"logo.png": bytes(range(256)) * 4, "notes.txt": text([f"n{i}" for i in range(12)])},
                            "Add logo (#14)", 4)
    shas["huge"] = commit(repo, {"table.csv": text([f"{i},{i * i}" for i in range(250)])}, "Regenerate table (#15)", 5)
    shas["tidy"] = commit(repo, {"tidy.py": text([f"def f{i}(): pass" for i in range(12)])}, "Tidy helpers", 6)
    shas["latin1"] = commit(repo, {"notes_fr.txt": b"".join(b"caf\xe9 %d\n" % i for i in range(12))},
                            "Latin-1 notes (#16)", 7)
    git(repo, "checkout", "-q", "-b", "side")
    shas["side"] = commit(repo, {"side.txt": text([f"side {i}" for i in range(12)])}, "Side work", 8)
    git(repo, "checkout", "-q", "main")
    shas["pr17"] = commit(repo, {"main.txt": text([f"main {i}" for i in range(11)])}, "Main work (#17)", 9)
    git(repo, "merge", "-q", "--no-ff", "side", "-m", "Merge side (#18)", date="2024-01-10T12:00:00+02:00")
    shas["merge"] = git(repo, "rev-parse", "HEAD").strip()
    return repo, shas


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def good_record(**changes) -> dict:
    record = {"repo": "acme/widgets", "pr_number": 7, "title": "Add a thing", "sha": "ab" * 20,
              "merged_at": "2024-01-02T12:00:00+02:00", "additions": 1, "deletions": 0,
              "diff": "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1,2 @@\n a\n+b\n"}
    record.update(changes)
    return record


# ---- the embedded records -----------------------------------------------------------------------

EMBEDDED_FILES = {"axum.jsonl.gz": ("tokio-rs/axum", "MIT", 400),
                  "click.jsonl.gz": ("pallets/click", "BSD-3-Clause", 48),
                  "cobra.jsonl.gz": ("spf13/cobra", "Apache-2.0", 192),
                  "lm-evaluation-harness.jsonl.gz": ("EleutherAI/lm-evaluation-harness", "MIT", 428),
                  "trl.jsonl.gz": ("huggingface/trl", "Apache-2.0", 800)}


def test_reads_the_embedded_files_with_repository_licence_and_commit():
    per_file = []
    for name, (repo, license, count) in EMBEDDED_FILES.items():
        records = prs.read_pr_records(prs.EMBEDDED_PRS / name)
        assert len(records) == count
        assert {(r["repo"], r["license"]) for r in records} == {(repo, license)}
        assert all(len(r["sha"]) == 40 and tuple(r) == (*prs.PR_FIELDS, "license") for r in records)
        per_file += records
    # The folder is read file by file in name order; it is the default source.
    assert prs.read_pr_records(prs.EMBEDDED_PRS) == per_file == prs.read_pr_records()
    notice = (prs.EMBEDDED_PRS / "NOTICE").read_text()
    for name, (repo, license, count) in EMBEDDED_FILES.items():
        licence_file = prs.EMBEDDED_PRS / "licenses" / f"{repo.replace('/', '__')}.txt"
        assert licence_file.is_file() and f"licenses/{licence_file.name}" in notice
        assert name in notice and repo in notice and license in notice


@pytest.mark.shared
@needs_shared
def test_the_embedded_records_are_the_shared_ones():
    """The package ships ../shared/data/prs unchanged but for the licence field (scripts/embed_prs.py)."""
    for name in EMBEDDED_FILES:
        shared = prs.read_pr_records(SHARED_PRS / name.removesuffix(".gz"))
        embedded = prs.read_pr_records(prs.EMBEDDED_PRS / name)
        assert [{k: v for k, v in r.items() if k != "license"} for r in embedded] == shared


def test_classified_line_counts_match_numstat_for_every_embedded_record():
    mismatched = []
    for record in prs.read_pr_records():
        lines = prs.diff_lines(record["diff"])
        kinds = prs.classify_diff_lines(lines)
        assert len(kinds) == len(lines) and set(kinds) <= set(prs.LINE_KINDS)
        for line, kind in zip(lines, kinds):
            if kind == "header":
                assert line.startswith(prs.HEADER_PREFIXES + (prs.NO_NEWLINE_MARKER,)), line
        if (kinds.count("added"), kinds.count("removed")) != (record["additions"], record["deletions"]):
            mismatched.append(f"{record['repo']}#{record['pr_number']}")
    assert mismatched == []


def test_pr_document_of_an_embedded_record():
    record = prs.read_pr_records(prs.EMBEDDED_PRS / "trl.jsonl.gz")[0]
    doc = prs.pr_document(record)
    assert doc.domain == "github_prs"
    assert doc.source_id == f"huggingface/trl#{record['pr_number']}"
    assert "\n".join(doc.lines) + "\n" == record["diff"]
    assert doc.provenance == {k: record[k] for k in ("repo", "pr_number", "sha", "title", "merged_at", "license")}


def test_gzip_records_round_trip_byte_identically(tmp_path):
    records = prs.read_pr_records(prs.EMBEDDED_PRS / "click.jsonl.gz")
    prs.write_pr_records(tmp_path / "a.jsonl.gz", records)
    prs.write_pr_records(tmp_path / "b.jsonl.gz", records)
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (prs.EMBEDDED_PRS / "click.jsonl.gz").read_bytes()
    assert prs.read_pr_records(tmp_path / "a.jsonl.gz") == records


def test_a_corrupt_gzip_file_is_one_error(tmp_path):
    data = (prs.EMBEDDED_PRS / "click.jsonl.gz").read_bytes()
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz: cannot decompress"):
        prs.read_pr_records(tmp_path / "cut.jsonl.gz")


def test_the_default_test_suite_asks_about_100_different_diffs_of_at_least_three_repositories():
    from absence_tasks.generate import generate_instances

    for variant in ("omission", "placeholder"):
        instances = generate_instances("github_prs", variant, 100, "test", seed=0, progress=False)
        assert len({i.metadata["source_id"] for i in instances}) == 100
        assert len({i.metadata["repo"] for i in instances}) >= 3
    for split in ("train", "validation"):
        assert len(generate_instances("github_prs", "omission", 20, split, seed=0, progress=False)) == 20


# ---- bad records ------------------------------------------------------------------------------

def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good_record()) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        prs.read_pr_records(path)


def test_non_utf8_line_names_file_and_line(tmp_path):
    path = tmp_path / "latin.jsonl"
    latin1_line = json.dumps(good_record(title="café"), ensure_ascii=False).encode("latin-1")
    path.write_bytes(json.dumps(good_record()).encode() + b"\n" + latin1_line + b"\n")
    with pytest.raises(DataError, match=r"latin\.jsonl:2: not UTF-8"):
        prs.read_pr_records(path)


def test_missing_field_names_the_field(tmp_path):
    record = good_record()
    del record["diff"]
    path = write_lines(tmp_path / "prs.jsonl", [json.dumps(good_record()), json.dumps(record)])
    with pytest.raises(DataError, match=r"prs\.jsonl:2: missing field 'diff'$"):
        prs.read_pr_records(path)


@pytest.mark.parametrize("field, value, problem", [
    ("pr_number", "7", "field 'pr_number' must be an integer, got str"),
    ("additions", True, "field 'additions' must be an integer, got bool"),
    ("deletions", -1, "field 'deletions' must be >= 0"),
    ("title", None, "field 'title' must be a string, got NoneType"),
])
def test_wrong_field_type(tmp_path, field, value, problem):
    path = write_lines(tmp_path / "prs.jsonl", [json.dumps(good_record(**{field: value}))])
    with pytest.raises(DataError, match=rf"prs\.jsonl:1: {problem}"):
        prs.read_pr_records(path)


@pytest.mark.parametrize("diff", [
    "diff --git a/run.sh b/run.sh\nold mode 100644\nnew mode 100755\n",   # a mode change only
    "--- a/x\n+++ b/x\n",                                                 # file headers, no hunk
    "diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n a\n b\n",     # context only
])
def test_record_without_changed_lines(tmp_path, diff):
    path = write_lines(tmp_path / "prs.jsonl", [json.dumps(good_record(diff=diff))])
    with pytest.raises(DataError, match=r"prs\.jsonl:1: PR record has no changed lines"):
        prs.read_pr_records(path)


def test_empty_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no \\*.jsonl files"):
        prs.read_pr_records(tmp_path / "empty")
    (tmp_path / "empty" / "a.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no PR records"):
        prs.read_pr_records(tmp_path / "empty")
    with pytest.raises(DataError, match="no such file or folder"):
        prs.read_pr_records(tmp_path / "missing.jsonl")


def test_folder_is_read_in_file_name_order(tmp_path):
    write_lines(tmp_path / "b.jsonl", [json.dumps(good_record(pr_number=2))])
    write_lines(tmp_path / "a.jsonl", [json.dumps(good_record(pr_number=1)), json.dumps(good_record(pr_number=3))])
    (tmp_path / "notes.txt").write_text("not a record\n", encoding="utf-8")
    assert [r["pr_number"] for r in prs.read_pr_records(tmp_path)] == [1, 3, 2]


def test_write_then_read_round_trip(tmp_path):
    records = [good_record(title="Ünïcode ✓", pr_number=1), good_record(pr_number=2)]
    path = tmp_path / "out" / "prs.jsonl"
    prs.write_pr_records(path, records)
    assert prs.read_pr_records(path) == records
    first_line = path.read_text(encoding="utf-8").splitlines()[0]
    assert "Ünïcode ✓" in first_line
    assert list(json.loads(first_line)) == list(prs.PR_FIELDS)


def test_write_with_a_bad_record_leaves_no_partial_file(tmp_path):
    path = tmp_path / "prs.jsonl"
    with pytest.raises(DataError, match=r"prs\.jsonl: record 2: missing field 'sha'"):
        prs.write_pr_records(path, [good_record(), {k: v for k, v in good_record().items() if k != "sha"}])
    assert list(tmp_path.iterdir()) == []


# ---- documents ----------------------------------------------------------------------------------

def test_pr_document_without_a_number_is_named_by_sha():
    doc = prs.pr_document(good_record(pr_number=0, sha="0123456789abcdef" * 2 + "01234567"))
    assert doc.source_id == "acme/widgets@0123456789ab"
    assert doc.lines == ("diff --git a/x b/x", "--- a/x", "+++ b/x", "@@ -1 +1,2 @@", " a", "+b")


def test_pr_document_keeps_carriage_returns_and_form_feeds_inside_lines():
    diff = "--- a/x\n+++ b/x\n@@ -1,2 +1,2 @@\n-a\r\n+b\r\n \x0c\n"
    doc = prs.pr_document(good_record(diff=diff))
    assert doc.lines == ("--- a/x", "+++ b/x", "@@ -1,2 +1,2 @@", "-a\r", "+b\r", " \x0c")
    assert prs.classify_diff_lines(doc.lines) == ["header"] * 3 + ["removed", "added", "context"]


# ---- classify_diff_lines -------------------------------------------------------------------------

def test_classify_is_hunk_aware():
    diff = [
        ("diff --git a/q.sql b/q.sql", "header"),
        ("index 1111111..2222222 100644", "header"),
        ("--- a/q.sql", "header"),
        ("+++ b/q.sql", "header"),
        ("@@ -1,4 +1,4 @@ -- queries", "header"),
        (" select 1;", "context"),
        ("--- comment", "removed"),          # the removed line "-- comment"
        ("+-- new comment", "added"),
        (" select 2;", "context"),
        ("-select 3;", "removed"),
        ("\\ No newline at end of file", "header"),
        ("+select 3;", "added"),
        ("\\ No newline at end of file", "header"),
        ("diff --git a/c.py b/c.py", "header"),
        ("new file mode 100644", "header"),
        ("index 0000000..3333333", "header"),
        ("--- /dev/null", "header"),
        ("+++ b/c.py", "header"),
        ("@@ -0,0 +1,2 @@", "header"),
        ("+++counter", "added"),             # the added line "++counter"
        ("+", "added"),
        ("diff --git a/old.txt b/new.txt", "header"),
        ("similarity index 90%", "header"),
        ("rename from old.txt", "header"),
        ("rename to new.txt", "header"),
        ("@@ -3 +3 @@", "header"),           # counts of one may be left out
        ("-x", "removed"),
        ("+y", "added"),
        ("--- a/after-the-hunk", "header"),
    ]
    assert prs.classify_diff_lines([line for line, _ in diff]) == [kind for _, kind in diff]


def test_classify_ends_a_hunk_that_a_line_cannot_continue():
    # An empty line is a context line whose trailing space was stripped; text that is no body line
    # (a truncated hunk) ends the hunk instead of being counted as a change.
    lines = ["@@ -1,3 +1,3 @@", "", "-a", "garbage", "+b"]
    assert prs.classify_diff_lines(lines) == ["header", "context", "removed", "header", "header"]


# ---- mining --------------------------------------------------------------------------------------

def test_mines_squash_merged_prs(history):
    repo, shas = history
    records = prs.mine_git_repo(repo)
    assert [r["pr_number"] for r in records] == [17, 12]
    pr12 = records[1]
    assert pr12 == {
        "repo": repo.name, "pr_number": 12, "title": "Add query helpers", "sha": shas["pr12"],
        "merged_at": "2024-01-02T12:00:00+02:00", "additions": 10, "deletions": 5,
        "diff": git(repo, "show", "--format=", "--patch", shas["pr12"]),
    }
    assert "\n--- old comment\n" in pr12["diff"]
    for record in records:
        assert prs.count_changed_lines(record["diff"]) == (record["additions"], record["deletions"])


def test_mining_skips_roots_merges_binaries_sizes_and_non_utf8(history):
    repo, shas = history
    mined = {r["sha"] for r in prs.mine_git_repo(repo, require_pr_number=False)}
    for skipped in ("root", "merge", "binary", "small", "huge", "latin1"):
        assert shas[skipped] not in mined, skipped
    # The same commits pass once their own limit is relaxed.
    assert shas["small"] in {r["sha"] for r in prs.mine_git_repo(repo, min_changed=1)}
    assert shas["huge"] in {r["sha"] for r in prs.mine_git_repo(repo, max_changed=300)}


def test_mining_without_pr_numbers(history):
    repo, shas = history
    records = prs.mine_git_repo(repo, require_pr_number=False)
    assert [(r["pr_number"], r["title"]) for r in records] == [
        (17, "Main work"), (0, "Side work"), (0, "Tidy helpers"), (12, "Add query helpers")]
    assert [prs.pr_document(r).source_id for r in records][1] == f"{repo.name}@{shas['side'][:12]}"
    assert [r["pr_number"] for r in prs.mine_git_repo(repo, require_pr_number=False, max_commits=1)] == [17]


def test_mined_records_round_trip_through_the_shared_format(history, tmp_path):
    repo, _ = history
    records = prs.mine_git_repo(repo, require_pr_number=False)
    prs.write_pr_records(tmp_path / "mined.jsonl", records)
    assert prs.read_pr_records(tmp_path / "mined.jsonl") == records
    assert prs.mine_git_repo(repo, require_pr_number=False) == records


def test_repo_name_comes_from_the_origin_remote(tmp_path):
    repo = tmp_path / "checkout"
    repo.mkdir()
    git(repo, "init", "-q")
    commit(repo, {"a.txt": "a\n"}, "Start", 1)
    commit(repo, {"a.txt": text([f"line {i}" for i in range(12)])}, "Grow a (#3)", 2)
    git(repo, "remote", "add", "origin", "git@github.com:acme/widgets.git")
    assert [r["repo"] for r in prs.mine_git_repo(repo)] == ["acme/widgets"]


@pytest.mark.parametrize("url, name", [
    ("https://github.com/huggingface/trl.git", "huggingface/trl"),
    ("https://github.com/EleutherAI/lm-evaluation-harness", "EleutherAI/lm-evaluation-harness"),
    ("https://user:token@github.com/acme/widgets/", "acme/widgets"),
    ("ssh://git@github.com/acme/widgets.git", "acme/widgets"),
    ("git@github.com:acme/widgets.git\n", "acme/widgets"),
    ("/srv/git/widgets.git", None),
    ("file:///srv/git/widgets.git", None),
    ("https://github.com/acme", None),
])
def test_repo_name_from_remote_url(url, name):
    assert prs.repo_name_from_remote_url(url) == name


def test_not_a_git_repository(tmp_path):
    with pytest.raises(DataError, match=r"not a git repository$"):
        prs.mine_git_repo(tmp_path)
    with pytest.raises(DataError, match=r"not a git repository$"):
        prs.mine_git_repo(tmp_path / "missing")


def test_a_repository_without_commits_has_no_records(tmp_path):
    git(tmp_path, "init", "-q")
    assert prs.mine_git_repo(tmp_path) == []
