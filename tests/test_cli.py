"""`absence-bench` end to end as a user runs it: outputs, byte-identical reruns, one-line errors."""

import gzip
import json
import subprocess
from pathlib import Path

import pytest


def cli(*args, cwd, check=True):
    proc = subprocess.run(["absence-bench", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("absence-bench: error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_generate_suite_is_byte_identical_and_the_oracle_solves_it(tmp_path):
    for run in ("a", "b"):
        cli("generate-suite", "--out-dir", str(tmp_path / run), "--n", "20", "--seed", "5", cwd=tmp_path)
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert len(files) == 9
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        report = json.loads(cli("oracle", "--data", str(tmp_path / "a" / name), cwd=tmp_path).stdout)
        assert [r["f1"] for r in report.values()] == [1.0]


def test_generate_oracle_score_round_trip(tmp_path):
    data = tmp_path / "poetry.jsonl"
    cli("generate", "--domain", "poetry", "--variant", "placeholder", "--n", "6", "--out", str(data), cwd=tmp_path)
    responses = tmp_path / "oracle.jsonl"
    cli("oracle", "--data", str(data), "--responses-out", str(responses), cwd=tmp_path)
    per_instance = tmp_path / "scores.jsonl"
    report = json.loads(cli("score", "--data", str(data), "--responses", str(responses),
                            "--out", str(per_instance), cwd=tmp_path).stdout)
    assert report["poetry/placeholder"]["f1"] == 1.0 and report["poetry/placeholder"]["n"] == 6
    rows = [json.loads(x) for x in per_instance.read_text().splitlines()]
    assert len(rows) == 6 and all(r["fn"] == 0 for r in rows)
    # A response that lists nothing scores 0 on its instance.
    lines = responses.read_text().splitlines()
    first = json.loads(lines[0])
    lines[0] = json.dumps({"id": first["id"], "response": ""})
    responses.write_text("\n".join(lines) + "\n")
    report = json.loads(cli("score", "--data", str(data), "--responses", str(responses), cwd=tmp_path).stdout)
    assert report["poetry/placeholder"]["f1"] == pytest.approx(5 / 6)


def test_number_system_and_exact_count_flags(tmp_path):
    out = tmp_path / "roman.jsonl"
    cli("generate", "--domain", "numerical", "--n", "5", "--number-system", "roman", "--n-omitted", "1",
        "--out", str(out), cwd=tmp_path)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert all(len(r["omitted_indices"]) == 1 and r["metadata"]["number_system"] == "roman" for r in rows)
    assert all(set(r["original_lines"][0]) <= set("IVXLCDM") for r in rows)


def test_mine_prs_from_a_git_repository(tmp_path):
    repo = tmp_path / "repo"
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "a.txt").write_text("".join(f"line {i}\n" for i in range(30)))
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "Add a (#7)"], check=True)
    out = tmp_path / "prs.jsonl"
    # The root commit has no parent to diff against; mining needs single-parent commits.
    assert_one_line_error(cli("mine-prs", "--repo", str(repo), "--out", str(out), cwd=tmp_path, check=False),
                          "no commits match")
    assert not out.exists()
    (repo / "a.txt").write_text("".join(f"line {i} changed\n" if i % 2 else f"line {i}\n" for i in range(30)))
    subprocess.run(git + ["commit", "-qam", "Change odd lines (#8)"], check=True)
    cli("mine-prs", "--repo", str(repo), "--out", str(out), cwd=tmp_path)
    (record,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert (record["pr_number"], record["title"], record["additions"], record["deletions"]) == (8, "Change odd lines", 15, 15)
    # The embedded records' format, licence included, compressed on request; generation reads it back.
    packed = tmp_path / "prs.jsonl.gz"
    cli("mine-prs", "--repo", str(repo), "--out", str(packed), "--license", "MIT", cwd=tmp_path)
    assert gzip.decompress(packed.read_bytes()).decode() == json.dumps({**record, "license": "MIT"}) + "\n"
    cli("generate", "--domain", "github_prs", "--split", "train", "--n", "2", "--prs", str(packed), "--min-lines", "5",
        "--out", str(tmp_path / "mined.jsonl"), cwd=tmp_path)


def test_task_path_prints_the_installed_task_folder(tmp_path):
    folder = Path(cli("task-path", cwd=tmp_path).stdout.strip())
    assert (folder / "_absence_default.yaml").is_file() and (folder / "utils.py").is_file()
    assert len(list(folder.glob("absence*.yaml"))) == 16


@pytest.mark.parametrize("content, fragments", [
    (b'{"id": "x", "domain": "poetry"}\nnot json\n', ["bad.jsonl:1", "missing field"]),
    (b'{"id": "x", "domain": "poetry", "variant": "omission", "split": "test", "original_lines": ["a", "b"], '
     b'"modified_lines": ["a"], "omitted_indices": [1]}\n{oops\n', ["bad.jsonl:2", "malformed JSON"]),
    (b"\xff\xfe\n", ["bad.jsonl:1", "not UTF-8"]),
    (b'{"id": "x", "domain": "poetry", "variant": "omission", "split": "test", "original_lines": ["only"], '
     b'"modified_lines": [], "omitted_indices": [0]}\n', ["bad.jsonl:1", "at least 2 are needed"]),
])
def test_bad_data_files_give_one_line_and_no_output(tmp_path, content, fragments):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    out = tmp_path / "converted.jsonl"
    assert_one_line_error(cli("convert", "--data", str(bad), "--to", "ours", "--out", str(out), cwd=tmp_path,
                              check=False), *fragments)
    assert not out.exists()


def test_generation_errors_leave_no_file(tmp_path):
    out = tmp_path / "x.jsonl"
    proc = cli("generate", "--domain", "numerical", "--n", "5", "--max-lines", "99999999", "--out", str(out),
               cwd=tmp_path, check=False)
    assert_one_line_error(proc, "absurd")
    proc = cli("generate", "--domain", "github_prs", "--n", "5", "--git-repo", str(tmp_path), "--out", str(out),
               cwd=tmp_path, check=False)
    assert_one_line_error(proc, str(tmp_path), "not a git repository")
    proc = cli("generate", "--domain", "poetry", "--n", "5", "--poems", str(tmp_path / "missing.txt"),
               "--out", str(out), cwd=tmp_path, check=False)
    assert_one_line_error(proc, "missing.txt", "no such file")
    assert not out.exists() and not list(tmp_path.glob(".x.jsonl*"))


def test_score_rejects_responses_for_unknown_ids(tmp_path):
    data = tmp_path / "n.jsonl"
    cli("generate", "--domain", "numerical", "--n", "2", "--out", str(data), cwd=tmp_path)
    responses = tmp_path / "r.jsonl"
    responses.write_text('{"id": "nope", "response": "1"}\n')
    assert_one_line_error(cli("score", "--data", str(data), "--responses", str(responses), cwd=tmp_path, check=False),
                          "not in")


def test_missing_responses_are_scored_empty_only_when_asked_and_counted(tmp_path):
    data = tmp_path / "numbers.jsonl"
    cli("generate", "--domain", "numerical", "--n", "4", "--out", str(data), cwd=tmp_path)
    responses = tmp_path / "oracle.jsonl"
    cli("oracle", "--data", str(data), "--responses-out", str(responses), cwd=tmp_path)
    half = tmp_path / "half.jsonl"
    half.write_text("".join(responses.read_text().splitlines(keepends=True)[:2]))
    assert_one_line_error(cli("score", "--data", str(data), "--responses", str(half), cwd=tmp_path, check=False),
                          "no response for 2 of the 4 instances", "--missing-as-empty")
    proc = cli("score", "--data", str(data), "--responses", str(half), "--missing-as-empty", cwd=tmp_path)
    assert "2 of 4 instances have no response; scored as empty" in proc.stderr
    assert json.loads(proc.stdout)["numerical/omission"]["f1"] == 0.5
