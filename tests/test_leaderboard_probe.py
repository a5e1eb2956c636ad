"""A gap probe's AUROC on the leaderboard: read from the committed probe summary of the base SmolLM2, stored
in a row, shown as a page column, kept when the same checkpoint is published again, and bad summaries refused
with one line and the leaderboard untouched."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from leaderboard.probe import add_probe, probe_entry
from leaderboard.publish import merge_rows
from leaderboard.render import markdown
from leaderboard.schema import empty_leaderboard, load, save, validate

ROOT = Path(__file__).resolve().parent.parent
SUMMARY = ROOT / "results" / "probe" / "smollm2-135m-base" / "summary.json"


def _estimate(value):
    return {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1}


def _row(model: str, method: str, sha: str | None) -> dict:
    return {"model": model, "checkpoint_sha256": sha, "method": method, "training": None,
            "tasks": {"absence_poetry": {"f1": _estimate(0.5), "precision": _estimate(0.5),
                                         "recall": _estimate(0.5), "n_instances": 2}},
            "average": _estimate(0.5), "suite": {"id": "s1", "sha256": "a" * 64, "description": "two poems"},
            "backend": "hf", "lm_eval_version": "0.4.13", "date": "2026-12-02T07:00:00+00:00",
            "source": "r.json", "per_instance": {"absence_poetry": {"p-0": 0.4, "p-1": 0.6}}}


@pytest.fixture
def board(tmp_path) -> Path:
    path = tmp_path / "leaderboard.json"
    save(path, {**empty_leaderboard(), "rows": [_row("base", "zero-shot", "b" * 64), _row("tuned", "sft", None)]})
    return path


def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "leaderboard", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_the_committed_summary_gives_its_overall_auroc_and_per_domain_values():
    summary = json.loads(SUMMARY.read_text())
    (label,) = summary["results"]
    expected = summary["results"][label]["feature_sets"]["label_free"]
    entry = probe_entry(SUMMARY)
    assert (entry["feature_set"], entry["probe_model"]) == ("label_free", label)
    assert entry["auroc"] == {"value": expected["overall"]["auroc"], "ci_low": expected["overall"]["auroc_ci"][0],
                              "ci_high": expected["overall"]["auroc_ci"][1]}
    assert entry["per_domain_auroc"] == {d: s["auroc"] for d, s in expected["per_domain"].items()}
    assert entry["n_instances"] == expected["overall"]["n_instances"] == 90
    aligned = probe_entry(SUMMARY, feature_set="attention")
    assert aligned["auroc"]["value"] == summary["results"][label]["feature_sets"]["attention"]["overall"]["auroc"]
    assert aligned["auroc"]["value"] != entry["auroc"]["value"]


def test_add_probe_stores_it_in_one_row_and_the_page_shows_a_column(board, tmp_path):
    proc = cli("add-probe", board, "base@zero-shot", SUMMARY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    auroc = probe_entry(SUMMARY)["auroc"]
    assert f"gap probe AUROC {auroc['value']:.2f} [{auroc['ci_low']:.2f}, {auroc['ci_high']:.2f}]" in proc.stdout
    doc = load(board)
    rows = {row["model"]: row for row in doc["rows"]}
    assert rows["base"]["probe"] == probe_entry(SUMMARY) and "probe" not in rows["tuned"]
    assert doc["schema_version"] == "1.7"
    table = markdown(doc)
    header = next(line for line in table.splitlines() if line.startswith("| #"))
    assert "Gap probe AUROC" in header
    base_line = next(line for line in table.splitlines() if "| base |" in line)
    assert f"{auroc['value']:.2f} [{auroc['ci_low']:.2f}, {auroc['ci_high']:.2f}]" in base_line
    # Without any probe, no column.
    assert "Gap probe AUROC" not in markdown({**doc, "rows": [rows["tuned"]]})


def test_republishing_the_same_checkpoint_keeps_the_probe_and_another_checkpoint_drops_it(board):
    add_probe(board, "base", SUMMARY)
    doc = load(board)
    same = merge_rows(doc, [_row("base", "zero-shot", "b" * 64)])
    assert next(r for r in same["rows"] if r["model"] == "base")["probe"] == probe_entry(SUMMARY)
    other = merge_rows(doc, [_row("base", "zero-shot", "c" * 64)])
    assert "probe" not in next(r for r in other["rows"] if r["model"] == "base")
    validate(same)
    validate(other)


def test_a_reported_row_cannot_carry_a_probe(board):
    doc = load(board)
    reported = {**_row("paper", "reported", None), "backend": None}
    reported.pop("per_instance")
    reported["probe"] = probe_entry(SUMMARY)
    with pytest.raises(Exception, match=r"rows\[2\]\.probe: not allowed here"):
        validate({**doc, "rows": [*doc["rows"], reported]})


def test_bad_summaries_are_one_line_exit_2_and_the_leaderboard_is_untouched(board, tmp_path):
    before = board.read_bytes()
    not_json = tmp_path / "broken.json"
    not_json.write_text("{")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"accuracy": 0.9}))
    cases = [
        (("base", tmp_path / "nowhere.json"), "nowhere.json: no such file"),
        (("base", not_json), "not a JSON probe summary"),
        (("base", foreign), "no 'results' by model"),
        (("base", SUMMARY, "--feature-set", "magic"), "no feature set 'magic'"),
        (("base", SUMMARY, "--probe-model", "other"), "no model 'other'"),
        (("nobody", SUMMARY), "no row 'nobody'"),
    ]
    for args, fragment in cases:
        proc = cli("add-probe", board, *args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("leaderboard: error: ") and fragment in lines[0], proc.stderr
        assert board.read_bytes() == before
