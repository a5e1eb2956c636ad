"""The rendered leaderboard page in a real headless Chromium (Debian's chromium + chromedriver via selenium):
rows and values shown, measured and reported rows apart, sorting by a header click, the chart loaded; and
`render --screenshot`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from leaderboard.publish import add_reported
from leaderboard.render import CHROMIUM, headless_chromium, render
from leaderboard.schema import empty_leaderboard, load, save

pytestmark = pytest.mark.skipif(not CHROMIUM.is_file(),
                                reason=f"{CHROMIUM} is absent (scripts/install.sh installs Debian's chromium)")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _row(model: str, method: str, f1: dict[str, tuple[float, float, float]], average: tuple[float, float, float],
         training: dict | None = None) -> dict:
    def estimate(values):
        return dict(zip(("value", "ci_low", "ci_high"), values))

    return {
        "model": model, "checkpoint_sha256": "b" * 64, "method": method, "training": training,
        "tasks": {task: {"f1": estimate(v), "precision": estimate(v), "recall": estimate(v), "n_instances": 100}
                  for task, v in f1.items()},
        "average": estimate(average),
        "suite": {"id": "suite0000001", "sha256": "c" * 64, "description": "generated: n=100, seed=0"},
        "backend": "vllm", "lm_eval_version": "0.4.13", "date": "2026-11-23T10:00:00+00:00",
        "source": f"results/{model}/results.json",
        "per_instance": {task: {f"{task}-{k}": v[0] for k in range(100)} for task, v in f1.items()},
    }


@pytest.fixture
def board(tmp_path) -> Path:
    """Three measured rows with known scores, one paired comparison, and the paper's reported rows."""
    doc = empty_leaderboard()
    doc["rows"] = [
        _row("base", "zero-shot", {"absence_numerical": (0.131, 0.099, 0.164), "absence_poetry": (0.003, 0, 0.008),
                                   "absence_github_prs": (0.001, 0, 0.002)}, (0.045, 0.034, 0.056)),
        _row("tuned-sft", "sft", {"absence_numerical": (0.5, 0.4, 0.6), "absence_poetry": (0.2, 0.1, 0.3),
                                  "absence_github_prs": (0.05, 0.0, 0.1)}, (0.25, 0.2, 0.3),
             training={"tokens": 120_000, "flops": 9.7e13, "wall_seconds": 600.0}),
        _row("tuned-contrastive", "contrastive", {"absence_numerical": (0.7, 0.6, 0.8),
                                                  "absence_poetry": (0.4, 0.3, 0.5),
                                                  "absence_github_prs": (0.1, 0.0, 0.2)}, (0.4, 0.35, 0.45),
             training={"tokens": 100_000, "flops": 9.7e13, "wall_seconds": 700.0}),
    ]
    doc["comparisons"] = [{
        "row_a": {"model": "tuned-contrastive", "method": "contrastive", "suite_id": "suite0000001"},
        "row_b": {"model": "tuned-sft", "method": "sft", "suite_id": "suite0000001"}, "task": "average",
        "mean_difference": 0.15, "ci_low": 0.08, "ci_high": 0.22, "confidence": 0.95, "n_instances": 300,
        "p_value": 0.0, "n_resamples": 10000, "seed": 0, "date": "2026-11-23T11:00:00+00:00"}]
    path = tmp_path / "leaderboard.json"
    save(path, doc)
    add_reported(path)
    return path


def column_texts(driver, table_id: str, column: int) -> list[str]:
    return [row.find_elements("css selector", "td")[column].text
            for row in driver.find_elements("css selector", f"#{table_id} tbody tr")]


def test_page_shows_rows_sorts_on_click_and_loads_the_chart(board, tmp_path):
    out = tmp_path / "page"
    written = render(board, out)
    assert [p.name for p in written] == ["leaderboard.md", "index.html", "f1_by_domain.png"]
    page = (out / "index.html").read_text()
    assert "<script src" not in page and "http://" not in page and "https://" not in page  # self-contained
    with headless_chromium() as driver:
        driver.get((out / "index.html").as_uri())
        # Measured rows, best average first, values in % with their CIs.
        assert column_texts(driver, "measured", 1) == ["tuned-contrastive", "tuned-sft", "base"]
        base = driver.find_element("css selector", '#measured tr[data-row="base@zero-shot@suite0000001"]')
        cells = [td.text for td in base.find_elements("css selector", "td")]
        assert cells[3] == "13.1 [9.9, 16.4]" and cells[6] == "4.5 [3.4, 5.6]"
        assert "generated: n=100, seed=0" in cells[7]  # the row's note on its data suite
        assert "120,000 tokens, 9.7e+13 FLOPs, 10.0 min" in column_texts(driver, "measured", 8)
        # Reported rows only in their own table.
        reported = column_texts(driver, "reported", 0)
        assert len(reported) == 9 and reported[:2] == ["Gemini-2.5-flash*", "Claude-3.7-Sonnet*"]
        assert "69.6" in [td.text for td in driver.find_elements("css selector", "#reported tbody tr")[1]
                          .find_elements("css selector", "td")]
        assert not set(reported) & set(column_texts(driver, "measured", 1))
        assert column_texts(driver, "comparisons", 3) == ["+15.0 [+8.0, +22.0]"]

        model_header = driver.find_element("xpath", "//table[@id='measured']//th[text()='Model']")
        model_header.click()
        assert column_texts(driver, "measured", 1) == ["base", "tuned-contrastive", "tuned-sft"]
        assert model_header.get_attribute("aria-sort") == "ascending"
        model_header.click()
        assert column_texts(driver, "measured", 1) == ["tuned-sft", "tuned-contrastive", "base"]
        driver.find_element("xpath", "//table[@id='measured']//th[text()='Average F1']").click()
        assert column_texts(driver, "measured", 1) == ["base", "tuned-sft", "tuned-contrastive"]
        driver.find_element("xpath", "//table[@id='reported']//th[text()='Model']").click()
        assert column_texts(driver, "reported", 0)[0] == "Claude-3.7-Sonnet"

        chart = driver.find_element("id", "chart")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", chart) > 0
        shot = tmp_path / "page_in_chromium.png"
        assert driver.save_screenshot(str(shot))
    assert shot.read_bytes().startswith(PNG_MAGIC) and shot.stat().st_size > 10_000


def test_a_data_efficiency_series_gets_its_table_and_curve(board, tmp_path):
    doc = load(board)
    out = tmp_path / "page"
    render(board, out)
    assert not (out / "data_efficiency.png").exists()  # one row per method: no series
    scores = {"absence_numerical": (0.3, 0.2, 0.4), "absence_poetry": (0.1, 0.0, 0.2),
              "absence_github_prs": (0.0, 0.0, 0.0)}
    for instances, average in ((8, (0.12, 0.1, 0.14)), (32, (0.2, 0.15, 0.25))):
        for method in ("sft", "contrastive"):
            doc["rows"].append(_row(f"base-{method}-n{instances}", method, scores, average, training={
                "instances": instances, "tokens": 1000 * instances, "flops": 1e12 * instances, "wall_seconds": 60.0}))
    # A contrastive variant that a FLOP budget stopped after 20 instances: 20 is where the budget fell, not a
    # data size, so it is no point of the series either (one row per variant at equal FLOPs is no curve).
    doc["rows"].append(_row("base-contrastive-gap-only", "contrastive", scores, (0.05, 0.0, 0.1), training={
        "instances": 20, "tokens": 20000, "flops": 2e13, "wall_seconds": 60.0, "stopped_by": ["compute_budget_flops"]}))
    # SFT continued from a trained checkpoint: its 16 instances are on top of that checkpoint's, not from the
    # base model, so it is no point of the series.
    doc["rows"].append(_row("base-sft-continued", "sft", scores, (0.3, 0.2, 0.4), training={
        "optimizer_steps": 16, "instances": 16, "tokens": 16000, "flops": 1.6e13, "wall_seconds": 60.0,
        "started_from": {"model": "models/base-sft-n32", "method": "sft", "training": {
            "optimizer_steps": 32, "instances": 32, "tokens": 32000, "flops": 3.2e13, "wall_seconds": 60.0}}}))
    save(board, doc)
    written = render(board, out)
    assert (out / "data_efficiency.png") in written
    with headless_chromium() as driver:
        driver.get((out / "index.html").as_uri())
        assert column_texts(driver, "data-efficiency", 0) == ["0", "8", "32"]
        # The suite's zero-shot row is the point at 0 of both series; the older rows without an
        # instance count (tuned-sft, tuned-contrastive) are left out.
        assert column_texts(driver, "data-efficiency", 1) == ["4.5 [3.4, 5.6]", "12.0 [10.0, 14.0]",
                                                              "20.0 [15.0, 25.0]"]
        assert "8 instances, 8,000 tokens" in " ".join(column_texts(driver, "measured", 8))
        assert ("16 steps, 16 instances, 16,000 tokens, 1.6e+13 FLOPs, 1.0 min; from a 32-step sft checkpoint"
                in column_texts(driver, "measured", 8))
        curve = driver.find_element("id", "curve")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", curve) > 0
    assert "| 32 | 20.0 [15.0, 25.0] | 20.0 [15.0, 25.0] |" in (out / "leaderboard.md").read_text()

    doc["rows"] = [row for row in doc["rows"] if "-n" not in row["model"]]
    save(board, doc)
    render(board, out)
    assert not (out / "data_efficiency.png").exists()  # a curve from an earlier render is not left behind


def test_markdown_keeps_reported_rows_apart_and_shows_cis(board, tmp_path):
    render(board, tmp_path / "page")
    text = (tmp_path / "page" / "leaderboard.md").read_text()
    measured, reported = text.split("## Reported by the AbsenceBench paper")
    assert "| 3 | base | zero-shot | 13.1 [9.9, 16.4] | 0.3 [0.0, 0.8] | 0.1 [0.0, 0.2] | 4.5 [3.4, 5.6] |" in measured
    assert measured.index("tuned-contrastive") < measured.index("tuned-sft") < measured.index("| base |")
    assert "`suite0000001`: generated: n=100, seed=0" in measured
    assert "Claude" not in measured
    assert "| Claude-3.7-Sonnet* | 96.0 | 72.7 | 40.0 | 69.6 |" in reported
    assert "numerical (Sequences)" in reported


def test_render_cli_takes_a_screenshot_and_refuses_a_bad_leaderboard(board, tmp_path):
    out = tmp_path / "page"
    proc = subprocess.run([sys.executable, "-m", "leaderboard", "render", str(board), "--out", str(out),
                           "--screenshot"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    screenshot = out / "screenshot.png"
    assert screenshot.read_bytes().startswith(PNG_MAGIC) and screenshot.stat().st_size > 10_000
    assert (out / "f1_by_domain.png").read_bytes().startswith(PNG_MAGIC)

    bad = tmp_path / "bad.json"
    doc = load(board)
    doc["rows"][0]["tasks"]["absence_poetry"]["f1"]["value"] = 7
    bad.write_text(json.dumps(doc))
    proc = subprocess.run([sys.executable, "-m", "leaderboard", "render", str(bad), "--out", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"leaderboard: error: {bad}: not a valid leaderboard: rows[0].tasks.absence_poetry")
    assert not (tmp_path / "none").exists()
