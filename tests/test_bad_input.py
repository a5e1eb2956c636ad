"""Bad input, tried the way a user would: every case must end with exit code 2 (130 for Ctrl-C), exactly one
`PROGRAM: error: ...` line on stderr, no traceback, every input file byte-for-byte as it was and no temp file
left. The module ends by printing the tally ("N bad inputs tried, ..."). Also here: concurrent publishers, a
writer killed mid-write, Ctrl-C, and the permissions of what is written."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from absence_tasks.generate import generate_instances
from absence_tasks.schema import write_jsonl

ROOT = Path(__file__).resolve().parent.parent
BENCH = ["absence-bench"]
LEADERBOARD = [sys.executable, "-m", "leaderboard"]
EXPERIMENT = [sys.executable, "-m", "study.experiment"]
LM_EVAL = ["absence-lm-eval", "--include_path", str(ROOT / "task_configs"), "--model", "absence-oracle"]
PROGRAMS = {"absence-bench": BENCH, "leaderboard": LEADERBOARD, "experiment": EXPERIMENT,
            "absence-lm-eval": LM_EVAL}


@dataclass
class Tally:
    tried: int = 0
    one_line: int = 0
    tracebacks: int = 0
    files_lost: int = 0
    failures: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def tally(request):
    counts = Tally()
    yield counts
    line = (f"{counts.tried} bad inputs tried, {counts.one_line} handled with one line, {counts.tracebacks} "
            f"tracebacks, {counts.files_lost} files lost")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
            reporter.write_line("\n" + line)


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "REVERSE_NEEDLE_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder nothing can be created in. Root passes every permission check, so for root: /sys."""
    if os.geteuid() == 0:
        return Path("/sys/reverse-needle-test")
    folder = tmp_path / "read-only"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    return folder


# ---- the cases -----------------------------------------------------------------------------------

def data_file(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "data.jsonl"
    if not path.exists():
        write_jsonl(path, generate_instances("numerical", "omission", n, "test", seed=3, progress=False))
    return path


def responses_file(tmp_path: Path, keep: int | None = None, duplicate: bool = False) -> Path:
    from absence_tasks.schema import read_jsonl
    from absence_tasks.scoring import oracle_answer

    instances = read_jsonl(data_file(tmp_path))[:keep]
    records = [{"id": i.id, "response": oracle_answer(i)} for i in instances]
    if duplicate:
        records.append(records[0])
    path = tmp_path / "responses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def record_with(tmp_path: Path, **changes) -> Path:
    """The data file with its first record's fields changed (a field set to ... is removed)."""
    lines = data_file(tmp_path).read_text().splitlines()
    record = json.loads(lines[0])
    for key, value in changes.items():
        if value is ...:
            record.pop(key)
        else:
            record[key] = value
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    return path


def duplicate_ids(tmp_path: Path) -> Path:
    lines = data_file(tmp_path).read_text().splitlines()
    path = tmp_path / "twice.jsonl"
    path.write_text("\n".join([*lines, lines[0]]) + "\n")
    return path


def a_file(tmp_path: Path, name: str = "plain.txt") -> Path:
    path = tmp_path / name
    path.write_text("not a folder\n")
    return path


def a_folder(tmp_path: Path, name: str = "folder") -> Path:
    path = tmp_path / name
    path.mkdir(exist_ok=True)
    return path


def a_symlink_to_data(tmp_path: Path) -> Path:
    link = tmp_path / "link.jsonl"
    link.symlink_to(data_file(tmp_path))
    return link


def poems_file(tmp_path: Path) -> Path:
    path = tmp_path / "poems.txt"
    path.write_text("\n".join(f"line {i} of a poem that is long enough" for i in range(80)) + "\n")
    return path


def a_leaderboard(tmp_path: Path) -> Path:
    from leaderboard.publish import add_reported

    path = tmp_path / "board.json"
    add_reported(path)
    return path


def lm_eval_results(tmp_path: Path) -> Path:
    """Something to publish: a results file whose checks fail late (only its name looks right)."""
    path = tmp_path / "run" / "results_2026-01-01T00-00-00.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"accuracy": 0.9}))
    return path


def generate(out) -> list[str]:
    return ["generate", "--domain", "numerical", "--n", "3", "--out", str(out)]


Case = Callable[[Path], tuple[str, list[str], str]]
# name -> (tmp_path -> (program, arguments, a fragment the error line must hold))
CASES: dict[str, Case] = {
    # outputs that are inputs
    "score --out is --data": lambda t: ("absence-bench", ["score", "--data", str(data_file(t)), "--responses",
                                        str(responses_file(t)), "--out", str(data_file(t))], "is the input"),
    "score --out is --responses": lambda t: ("absence-bench", ["score", "--data", str(data_file(t)), "--responses",
                                             str(responses_file(t)), "--out", str(responses_file(t))],
                                             "is the input"),
    "oracle --responses-out is --data": lambda t: ("absence-bench", ["oracle", "--data", str(data_file(t)),
                                                   "--responses-out", str(data_file(t))], "is the input"),
    "convert --out is a symlink to --data": lambda t: ("absence-bench", ["convert", "--data", str(data_file(t)),
                                                       "--to", "upstream", "--out", str(a_symlink_to_data(t))],
                                                       "is the input"),
    "generate --out is --poems": lambda t: ("absence-bench", ["generate", "--domain", "poetry", "--poems",
                                            str(poems_file(t)), "--out", str(poems_file(t))], "is the input"),
    "publish --out is the results file": lambda t: ("leaderboard", ["publish", str(lm_eval_results(t)), "--out",
                                                    str(lm_eval_results(t))], "is the input"),
    # responses that do not match the data
    "score with missing responses": lambda t: ("absence-bench", ["score", "--data", str(data_file(t)),
                                               "--responses", str(responses_file(t, keep=1))],
                                               "no response for 3 of the 4 instances"),
    "score with a duplicate response id": lambda t: ("absence-bench", ["score", "--data", str(data_file(t)),
                                                     "--responses", str(responses_file(t, duplicate=True))],
                                                     "responses.jsonl:5: a second response"),
    # wrong types and duplicate ids in our schema
    "original_lines is a string": lambda t: ("absence-bench", ["oracle", "--data", str(record_with(
        t, original_lines="abcde"))], "bad.jsonl:1: field 'original_lines' must be a list of strings, got a string"),
    "omitted_indices is null": lambda t: ("absence-bench", ["oracle", "--data", str(record_with(
        t, omitted_indices=None))], "bad.jsonl:1: field 'omitted_indices' must be a list of integers, got null"),
    "omitted_indices is 3": lambda t: ("absence-bench", ["oracle", "--data", str(record_with(
        t, omitted_indices=3))], "field 'omitted_indices' must be a list of integers, got an integer"),
    "metadata is a list": lambda t: ("absence-bench", ["oracle", "--data", str(record_with(
        t, metadata=[1, 2]))], "bad.jsonl:1: field 'metadata' must be an object, got a list"),
    "id is null": lambda t: ("absence-bench", ["oracle", "--data", str(record_with(t, id=None))],
                             "field 'id' must be a string or an integer, got null"),
    "duplicate instance ids": lambda t: ("absence-bench", ["oracle", "--data", str(duplicate_ids(t))],
                                         "twice.jsonl:5: field 'id'"),
    "lm-eval data_file: original_lines is a string": lambda t: ("absence-lm-eval", [
        "--tasks", "absence_numerical", "--metadata", json.dumps({"data_file": str(record_with(
            t, original_lines="abcde"))})], "bad.jsonl:1: field 'original_lines' must be a list of strings"),
    "lm-eval data_file: omitted_indices is null": lambda t: ("absence-lm-eval", [
        "--tasks", "absence_numerical", "--metadata", json.dumps({"data_file": str(record_with(
            t, omitted_indices=None))})], "bad.jsonl:1: field 'omitted_indices'"),
    # outputs that cannot be written, checked before the work
    "generate into an unwritable folder": lambda t: ("absence-bench", generate(unwritable_folder(t) / "x.jsonl"),
                                                     "cannot write in"),
    "generate --out is a folder": lambda t: ("absence-bench", generate(a_folder(t)), "is a folder"),
    "generate --out under a file": lambda t: ("absence-bench", generate(a_file(t) / "x.jsonl"), "is not a folder"),
    "generate-suite into an unwritable folder": lambda t: ("absence-bench", [
        "generate-suite", "--out-dir", str(unwritable_folder(t) / "suite"), "--n", "2"], "cannot write in"),
    "generate-suite --out-dir is a file": lambda t: ("absence-bench", [
        "generate-suite", "--out-dir", str(a_file(t)), "--n", "2"], "not a folder"),
    "score --out into an unwritable folder": lambda t: ("absence-bench", [
        "score", "--data", str(data_file(t)), "--responses", str(responses_file(t)), "--out",
        str(unwritable_folder(t) / "scores.jsonl")], "cannot write in"),
    "oracle --responses-out is a folder": lambda t: ("absence-bench", [
        "oracle", "--data", str(data_file(t)), "--responses-out", str(a_folder(t))], "is a folder"),
    "convert into an unwritable folder": lambda t: ("absence-bench", [
        "convert", "--data", str(data_file(t)), "--to", "upstream", "--out", str(unwritable_folder(t) / "u.jsonl")],
        "cannot write in"),
    "mine-prs into an unwritable folder": lambda t: ("absence-bench", [
        "mine-prs", "--repo", str(ROOT), "--out", str(unwritable_folder(t) / "prs.jsonl")], "cannot write in"),
    "publish into an unwritable folder": lambda t: ("leaderboard", [
        "publish", str(lm_eval_results(t)), "--out", str(unwritable_folder(t) / "board.json")], "cannot write in"),
    "publish --out is a folder": lambda t: ("leaderboard", ["publish", str(lm_eval_results(t)), "--out",
                                            str(a_folder(t))], "is a folder"),
    "render into an unwritable folder": lambda t: ("leaderboard", [
        "render", str(a_leaderboard(t)), "--out", str(unwritable_folder(t) / "page")], "cannot write in"),
    "render --out is a file": lambda t: ("leaderboard", ["render", str(a_leaderboard(t)), "--out", str(a_file(t))],
                                         "not a folder"),
    "experiment --out is a file": lambda t: ("experiment", ["--out", str(a_file(t)), "--train-minutes", "15"],
                                             "not a folder"),
    "experiment --out under an unwritable folder": lambda t: ("experiment", [
        "--out", str(unwritable_folder(t) / "study"), "--train-minutes", "15"], "cannot write in"),
    # absurd values
    "experiment --train-minutes 0": lambda t: ("experiment", ["--out", str(t / "s0"), "--train-minutes", "0"],
                                               "--train-minutes 0 is outside the bounds (10 s to 24 h of training)"),
    "experiment --train-minutes 0.1": lambda t: ("experiment", ["--out", str(t / "s1"), "--train-minutes", "0.1"],
                                                 "--train-minutes 0.1 is outside"),
    "experiment --train-minutes 99999": lambda t: ("experiment", ["--out", str(t / "s2"), "--train-minutes",
                                                                  "99999"], "--train-minutes 99999 is outside"),
    "experiment --n-eval 0": lambda t: ("experiment", ["--out", str(t / "s3"), "--n-eval", "0"],
                                        "--n-eval must be >= 1"),
    "experiment --pass-at-k-instances 0": lambda t: ("experiment", ["--out", str(t / "s3"), "--pass-at-k-instances",
                                                                    "0"], "--pass-at-k-instances must be >= 1"),
    "generate --n-omitted 1000": lambda t: ("absence-bench", [*generate(t / "n.jsonl"), "--n-omitted", "1000"],
                                            "n_omitted must lie in 1..79"),
    # already handled before: a representative set
    "malformed JSON line": lambda t: ("absence-bench", ["oracle", "--data", str(a_file(t, "broken.jsonl"))],
                                      "broken.jsonl:1: malformed JSON"),
    "not UTF-8": lambda t: ("absence-bench", ["oracle", "--data", str(latin1_file(t))], "not UTF-8"),
    "missing data file": lambda t: ("absence-bench", ["oracle", "--data", str(t / "nowhere.jsonl")], "no such file"),
    "one-line document": lambda t: ("absence-bench", ["oracle", "--data", str(record_with(
        t, original_lines=["1"], modified_lines=[], omitted_indices=[0]))], "at least 2 are needed"),
    "unknown field": lambda t: ("absence-bench", ["oracle", "--data", str(record_with(t, colour="red"))],
                                "unknown field(s) colour"),
    "response ids not in the data": lambda t: ("absence-bench", [
        "score", "--data", str(data_file(t)), "--responses", str(foreign_responses(t))], "not in"),
    "publish a file that is not lm-eval output": lambda t: ("leaderboard", [
        "publish", str(lm_eval_results(t)), "--out", str(t / "new.json")], "not an lm-eval results file"),
    "publish onto a corrupt leaderboard": lambda t: ("leaderboard", [
        "publish", str(lm_eval_results(t)), "--out", str(a_file(t, "corrupt.json"))], "malformed JSON"),
    "validate a missing leaderboard": lambda t: ("leaderboard", ["validate", str(t / "none.json")], "no such file"),
}


def latin1_file(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"id": "caf\xe9"}\n'.encode("latin-1"))
    return path


def foreign_responses(tmp_path: Path) -> Path:
    path = tmp_path / "foreign_responses.jsonl"
    path.write_text(json.dumps({"id": "someone-else", "response": ""}) + "\n")
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and "cache" not in p.parts}


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*.tmp")]


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_loses_nothing(name, tmp_path, env, tally):
    program, args, fragment = CASES[name](tmp_path)
    before = snapshot(tmp_path)
    proc = subprocess.run(PROGRAMS[program] + args, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    after = snapshot(tmp_path)
    error_lines = [x for x in proc.stderr.splitlines() if x.startswith(f"{program}: error:")]
    lost = [p for p, content in before.items() if after.get(p) != content]
    tally.tried += 1
    tally.one_line += proc.returncode == 2 and len(error_lines) == 1 and fragment in error_lines[0]
    tally.tracebacks += "Traceback" in proc.stderr
    tally.files_lost += len(lost)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(error_lines) == 1 and fragment in error_lines[0], proc.stderr[-3000:]
    assert not lost and not temp_files(tmp_path)
    if program in ("absence-bench", "leaderboard"):  # these print nothing else on bad input
        assert proc.stderr.strip().splitlines()[-1] == error_lines[0]


# ---- Ctrl-C and SIGKILL ------------------------------------------------------------------------

def test_ctrl_c_during_generate_suite_exits_130_with_one_line_and_no_temp_files(tmp_path, env, tally):
    out = tmp_path / "suite"
    # SIGINT back to its default in the child: a job started in the background (`cmd &`) inherits it ignored,
    # and Python then never turns it into KeyboardInterrupt.
    proc = subprocess.Popen(BENCH + ["generate-suite", "--out-dir", str(out), "--domains", "numerical",
                                     "--n", "200000"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # Interrupt once generation is under way (its progress bar has started).
    seen = ""
    while "numerical/omission/test" not in seen:
        chunk = proc.stderr.read(1)
        assert chunk, "generate-suite ended before it was interrupted"
        seen += chunk
    proc.send_signal(signal.SIGINT)
    stderr = seen + proc.stderr.read()
    proc.wait(timeout=60)
    tally.tried += 1
    error_lines = [x for x in stderr.splitlines() if x.startswith("absence-bench: error:")]
    tally.one_line += proc.returncode == 130 and error_lines == ["absence-bench: error: interrupted"]
    tally.tracebacks += "Traceback" in stderr
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
    assert error_lines == ["absence-bench: error: interrupted"]
    assert not temp_files(tmp_path)


KILLED_WRITER = """
import sys, time
from absence_tasks.io import atomic_write_text

def pieces():
    yield "half of the new content"
    print("writing", flush=True)
    time.sleep(600)
    yield "the rest"

atomic_write_text(sys.argv[1], pieces())
"""


def test_a_writer_killed_mid_write_leaves_the_old_file_and_the_next_run_sweeps_its_temp_file(tmp_path, env):
    target = tmp_path / "data.jsonl"
    subprocess.run(BENCH + generate(target), cwd=tmp_path, env=env, check=True, capture_output=True)
    old = target.read_bytes()
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "writing"
    (temp,) = temp_files(tmp_path)
    assert temp.name.startswith(f".data.jsonl.{writer.pid}-")
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    assert target.read_bytes() == old and temp.exists()
    subprocess.run(BENCH + [*generate(target), "--seed", "1"], cwd=tmp_path, env=env, check=True,
                   capture_output=True)
    assert not temp_files(tmp_path) and target.read_bytes() != old


def test_a_temp_file_of_a_live_writer_is_not_swept(tmp_path, env):
    from absence_tasks.io import sweep_stale_temp_files

    target = tmp_path / "data.jsonl"
    live = tmp_path / f".data.jsonl.{os.getppid()}-abc123.tmp"  # the test runner's parent: alive
    dead = tmp_path / ".data.jsonl.999999999-abc123.tmp"      # beyond pid_max: never a process
    for path in (live, dead):
        path.write_text("partial")
    assert sweep_stale_temp_files(target) == [dead]
    assert live.exists()


# ---- concurrent writers --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    """One real lm-eval run of the oracle (3 omission tasks, 2 instances each) to publish."""
    base = tmp_path_factory.mktemp("oracle-run")
    env = {**os.environ, "REVERSE_NEEDLE_CACHE": str(base / "cache"), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    data = base / "suite"
    for domain in ("numerical", "poetry"):
        write_jsonl(data / f"{domain}_omission_test.jsonl",
                    generate_instances(domain, "omission", 2, "test", seed=0, progress=False))
    proc = subprocess.run(LM_EVAL + ["--tasks", "absence_numerical", "absence_poetry", "--metadata",
                                     json.dumps({"data_dir": str(data)}), "--output_path", str(base / "out"),
                                     "--log_samples"], cwd=base, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "out"


def test_concurrent_publishers_keep_every_row(oracle_run, tmp_path):
    board = tmp_path / "leaderboard.json"
    n = 6
    publishers = [subprocess.Popen(LEADERBOARD + ["publish", str(oracle_run), "--out", str(board),
                                                  "--model-name", f"model-{k}"],
                                   cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for k in range(n)]
    for proc in publishers:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    rows = json.loads(board.read_text())["rows"]
    assert sorted(r["model"] for r in rows) == [f"model-{k}" for k in range(n)]
    assert not temp_files(tmp_path)


# ---- permissions ---------------------------------------------------------------------------------

def test_outputs_follow_the_umask_and_a_rewrite_keeps_the_files_mode(oracle_run, tmp_path, env):
    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    def run(cmd: list[str]) -> None:
        subprocess.run(cmd, cwd=tmp_path, env=env, check=True, capture_output=True,
                       preexec_fn=lambda: os.umask(0o022))

    data = tmp_path / "data.jsonl"
    run(BENCH + generate(data))
    assert mode(data) == 0o644
    data.chmod(0o640)
    run(BENCH + [*generate(data), "--seed", "2"])
    assert mode(data) == 0o640
    board = tmp_path / "leaderboard.json"
    run(LEADERBOARD + ["publish", str(oracle_run), "--out", str(board)])
    run(LEADERBOARD + ["render", str(board), "--out", str(tmp_path / "page")])
    assert mode(board) == 0o644
    assert {p.name: mode(p) for p in (tmp_path / "page").iterdir()} == {
        "leaderboard.md": 0o644, "index.html": 0o644, "f1_by_domain.png": 0o644}
