"""Leaderboard file → `leaderboard.md`, a static `index.html` (sortable tables, vanilla JS, no network) and
`f1_by_domain.png` (per-domain F1 of the measured rows with CI whiskers); when the leaderboard holds a
data-efficiency series (one method trained on two or more numbers of instances, as `python -m
leaderboard.curve` publishes), `data_efficiency.png` and its table; optionally `screenshot.png` of the page
taken with headless Chromium.

Measured rows and the paper's reported rows are never mixed: reported rows get a table of their own, and
every measured row says which data suite it was scored on.
"""

from __future__ import annotations

import html
import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from absence_tasks.io import atomic_write_bytes, atomic_write_text, check_output_folder
from leaderboard.reported import PAPER_COLUMNS, PAPER_SUITE
from leaderboard.schema import OMISSION_TASKS, LeaderboardError, format_key, load, row_key

MARKDOWN_NAME, HTML_NAME, CHART_NAME, CURVE_NAME, SCREENSHOT_NAME = \
    "leaderboard.md", "index.html", "f1_by_domain.png", "data_efficiency.png", "screenshot.png"
TRAINED_METHODS = ("sft", "contrastive")
METHOD_ORDER = ("oracle", "zero-shot", "sft", "contrastive")
# One colour family per method, so the chart groups a method's rows by colour.
METHOD_COLORMAPS = {"oracle": "Greys", "zero-shot": "Blues", "sft": "Oranges", "contrastive": "Greens"}
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PAGE_WIDTH = 1400
NO_VALUE = "—"


# ---- choosing and formatting -------------------------------------------------------------------

def _by_average(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best average F1 first, rows without an average last, ties by model name."""
    return sorted(rows, key=lambda r: (r["average"] is None, -r["average"]["value"] if r["average"] else 0,
                                       r["model"]))


def measured_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return _by_average([r for r in doc["rows"] if r["method"] != "reported"])


def paper_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return _by_average([r for r in doc["rows"] if r["method"] == "reported"])


def task_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The omission tasks in their fixed order, then any other task (control variants) by name."""
    present = {task for row in rows for task in row["tasks"]}
    return [t for t in OMISSION_TASKS if t in present] + sorted(present - set(OMISSION_TASKS))


def task_label(task: str) -> str:
    return task.removeprefix("absence_")


def paper_task_label(task: str) -> str:
    """Our task name, with the paper's column name where it differs (numerical = the paper's Sequences)."""
    ours, theirs = task_label(task), PAPER_COLUMNS[task]
    return ours if ours == theirs.lower() else f"{ours} ({theirs})"


def percent(value: float) -> str:
    return f"{100 * value:.1f}"


def format_estimate(estimate: dict[str, Any] | None) -> str:
    """`13.1 [9.9, 16.4]` (F1 in %, with its CI), `13.1` without a CI, `—` for nothing."""
    if estimate is None:
        return NO_VALUE
    if estimate["ci_low"] is None or estimate["ci_high"] is None:
        return percent(estimate["value"])
    return f"{percent(estimate['value'])} [{percent(estimate['ci_low'])}, {percent(estimate['ci_high'])}]"


def _f1(row: dict[str, Any], task: str) -> dict[str, Any] | None:
    return row["tasks"][task]["f1"] if task in row["tasks"] else None


def format_training(training: dict[str, Any] | None) -> str:
    if training is None:
        return NO_VALUE
    text = f"{training['tokens']:,} tokens, {training['flops']:.3g} FLOPs"
    if "instances" in training:
        text = f"{training['instances']:,} instances, " + text
    if training["wall_seconds"] is not None:
        text += f", {training['wall_seconds'] / 60:.1f} min"
    return text


def format_difference(comparison: dict[str, Any]) -> str:
    """A paired difference in F1 points with its CI, e.g. `+12.5 [8.1, 16.9]`."""
    value, low, high = (100 * comparison[k] for k in ("mean_difference", "ci_low", "ci_high"))
    return f"{value:+.1f} [{low:+.1f}, {high:+.1f}]"


def format_p(comparison: dict[str, Any]) -> str:
    # Zero resamples crossing 0 means p < 1/n_resamples, not p = 0.
    if comparison["p_value"] == 0:
        return f"< {1 / comparison['n_resamples']:.0e}"
    return f"{comparison['p_value']:.3g}"


def comparison_label(comparison: dict[str, Any], side: str) -> str:
    return format_key(tuple(comparison[side][k] for k in ("model", "method", "suite_id")))


# ---- data efficiency ---------------------------------------------------------------------------

def efficiency_series(doc: dict[str, Any]) -> dict[str, dict[str, list[tuple[int, dict[str, Any]]]]]:
    """suite id -> method -> [(training instances, row)] by instances, for each suite on which a trained
    method has rows at two or more numbers of training instances (older rows without the count are left
    out). The suite's zero-shot row, when it has exactly one, is every series' point at 0."""
    series: dict[str, dict[str, list[tuple[int, dict[str, Any]]]]] = {}
    for suite in dict.fromkeys(row["suite"]["id"] for row in measured_rows(doc)):
        rows = [row for row in measured_rows(doc) if row["suite"]["id"] == suite]
        by_method = {}
        for method in TRAINED_METHODS:
            points = sorted(((row["training"]["instances"], row) for row in rows if row["method"] == method
                             and row["training"] is not None and "instances" in row["training"]),
                            key=lambda point: point[0])
            if len({n for n, _ in points}) >= 2:
                by_method[method] = points
        base = [row for row in rows if row["method"] == "zero-shot"]
        if by_method and len(base) == 1:
            by_method = {method: [(0, base[0]), *points] for method, points in by_method.items()}
        if by_method:
            series[suite] = by_method
    return series


def efficiency_table(series: dict[str, list[tuple[int, dict[str, Any]]]]) -> tuple[list[str], list[list[str]]]:
    """Header and body: one line per number of training instances, the average F1 of each method."""
    methods = list(series)
    sizes = sorted({n for points in series.values() for n, _ in points})
    cell = {(method, n): format_estimate(row["average"]) for method, points in series.items() for n, row in points}
    return (["training instances", *(f"{m} average F1" for m in methods)],
            [[str(n), *(cell.get((m, n), NO_VALUE) for m in methods)] for n in sizes])


# ---- Markdown ----------------------------------------------------------------------------------

def _markdown_table(header: list[str], body: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    return [line(header), "|" + "|".join("---" for _ in header) + "|", *(line(r) for r in body)]


def markdown(doc: dict[str, Any]) -> str:
    measured, reported = measured_rows(doc), paper_rows(doc)
    lines = ["# Reverse Needle leaderboard", "",
             f"Updated {doc['updated']}. F1 in % (mean of per-instance F1) with 95% percentile-bootstrap CIs; "
             f"average = mean F1 of the omission tasks present ({', '.join(map(task_label, OMISSION_TASKS))}).",
             "", "## Measured", ""]
    if measured:
        tasks = task_columns(measured)
        header = ["#", "model", "method", *map(task_label, tasks), "average", "suite", "training", "backend"]
        body = [[str(rank), row["model"], row["method"], *(format_estimate(_f1(row, t)) for t in tasks),
                 format_estimate(row["average"]), f"`{row['suite']['id']}`", format_training(row["training"]),
                 row["backend"]] for rank, row in enumerate(measured, 1)]
        lines += _markdown_table(header, body)
        suites = {row["suite"]["id"]: row["suite"] for row in measured}
        lines += ["", "Suites (the data each row was scored on; the same id means the same instances):", ""]
        lines += [f"- `{sid}`: {suite['description']}" for sid, suite in sorted(suites.items())]
        notes = [f"- {row['model']} ({row['method']}): {note}" for row in measured for note in row.get("notes", [])]
        if notes:
            lines += ["", "Notes:", "", *notes]
    else:
        lines.append("No measured rows yet.")
    for suite, series in efficiency_series(doc).items():
        lines += ["", f"## Data efficiency (suite `{suite}`)", "",
                  "Average F1 against the training instances each model saw; 0 is the untrained base model.", ""]
        lines += _markdown_table(*efficiency_table(series))
    if doc.get("comparisons"):
        lines += ["", "## Paired comparisons", "",
                  "Paired bootstrap over the instances both rows scored: A − B in F1 points, 95% CI, "
                  "two-sided p from the share of resamples crossing 0.", ""]
        lines += _markdown_table(
            ["A", "B", "task", "A − B [CI]", "n", "p"],
            [[comparison_label(c, "row_a"), comparison_label(c, "row_b"), c["task"], format_difference(c),
              str(c["n_instances"]), format_p(c)] for c in doc["comparisons"]])
    if reported:
        lines += ["", "## Reported by the AbsenceBench paper", "",
                  f"Not measured here: copied from the paper, scored on {PAPER_SUITE['description']}, not on "
                  f"our suites, so not comparable with the rows above. F1 in %; * = reasoning mode.", ""]
        tasks = [t for t in OMISSION_TASKS if t in PAPER_COLUMNS]
        lines += _markdown_table(
            ["model", *map(paper_task_label, tasks), "average"],
            [[row["model"], *(format_estimate(_f1(row, t)) for t in tasks), format_estimate(row["average"])]
             for row in reported])
        lines += ["", f"Source: {reported[0]['source']}."]
    return "\n".join(lines) + "\n"


# ---- HTML --------------------------------------------------------------------------------------

PAGE_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: right; vertical-align: top;
         white-space: nowrap; }
td.text, th.text { text-align: left; white-space: normal; }
th { background: #f0f0f0; cursor: pointer; user-select: none; white-space: nowrap; }
th[aria-sort="ascending"]::after { content: " ▲"; }
th[aria-sort="descending"]::after { content: " ▼"; }
td small { color: #666; display: block; max-width: 28rem; text-align: left; }
.reported { background: #fbf7ec; }
figure img { max-width: 100%; border: 1px solid #ddd; }
"""

SORT_SCRIPT = """
function sortTable(table, header, column) {
  const ascending = header.getAttribute("aria-sort") !== "ascending";
  table.querySelectorAll("th").forEach(h => h.removeAttribute("aria-sort"));
  header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  const numeric = header.dataset.type === "number";
  const body = table.tBodies[0];
  const rows = Array.from(body.rows);
  rows.sort((a, b) => {
    const x = a.cells[column].dataset.sort, y = b.cells[column].dataset.sort;
    if (x === "" || y === "") return (x === "") - (y === "");  // rows without a value stay last
    const order = numeric ? Number(x) - Number(y) : x.localeCompare(y);
    return ascending ? order : -order;
  });
  rows.forEach(row => body.appendChild(row));
}
document.querySelectorAll("table.sortable").forEach(table => {
  table.querySelectorAll("th").forEach((header, column) => {
    header.tabIndex = 0;
    header.title = "click to sort";
    header.addEventListener("click", () => sortTable(table, header, column));
    header.addEventListener("keydown", e => { if (e.key === "Enter") sortTable(table, header, column); });
  });
});
"""


def _cell(text: str, sort_key: str | float | None, *, is_text: bool = False, extra: str = "") -> str:
    key = "" if sort_key is None else str(sort_key)
    css = ' class="text"' if is_text else ""
    return f'<td{css} data-sort="{html.escape(key)}">{html.escape(text)}{extra}</td>'


def _header(label: str, *, numeric: bool, sort: str | None = None) -> str:
    css = "" if numeric else ' class="text"'
    aria = f' aria-sort="{sort}"' if sort else ""
    return f'<th{css} data-type="{"number" if numeric else "text"}"{aria}>{html.escape(label)}</th>'


def _value(estimate: dict[str, Any] | None) -> float | None:
    return None if estimate is None else estimate["value"]


def _measured_table(rows: list[dict[str, Any]]) -> str:
    tasks = task_columns(rows)
    headers = [_header("#", numeric=True), _header("Model", numeric=False), _header("Method", numeric=False),
               *(_header(f"{task_label(t)} F1", numeric=True) for t in tasks),
               _header("Average F1", numeric=True, sort="descending"), _header("Data suite", numeric=False),
               _header("Training", numeric=True), _header("Backend", numeric=False)]
    body = []
    for rank, row in enumerate(rows, 1):
        suite = row["suite"]
        notes = "".join(f"<small>{html.escape(n)}</small>" for n in row.get("notes", []))
        suite_note = f"<small>{html.escape(suite['description'])}</small>{notes}"
        training = row["training"]
        cells = [_cell(str(rank), rank), _cell(row["model"], row["model"], is_text=True),
                 _cell(row["method"], row["method"], is_text=True),
                 *(_cell(format_estimate(_f1(row, t)), _value(_f1(row, t))) for t in tasks),
                 _cell(format_estimate(row["average"]), _value(row["average"])),
                 _cell(suite["id"], suite["id"], is_text=True, extra=suite_note),
                 _cell(format_training(training), None if training is None else training["flops"], is_text=True),
                 _cell(row["backend"], row["backend"], is_text=True)]
        body.append(f'<tr data-row="{html.escape(format_key(row_key(row)))}">{"".join(cells)}</tr>')
    return (f'<table id="measured" class="sortable"><thead><tr>{"".join(headers)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _reported_table(rows: list[dict[str, Any]]) -> str:
    tasks = [t for t in OMISSION_TASKS if t in PAPER_COLUMNS]
    headers = [_header("Model", numeric=False), *(_header(f"{paper_task_label(t)} F1", numeric=True) for t in tasks),
               _header("Average F1", numeric=True, sort="descending")]
    body = [f'<tr class="reported" data-row="{html.escape(format_key(row_key(row)))}">'
            + _cell(row["model"], row["model"], is_text=True)
            + "".join(_cell(format_estimate(_f1(row, t)), _value(_f1(row, t))) for t in tasks)
            + _cell(format_estimate(row["average"]), _value(row["average"])) + "</tr>" for row in rows]
    return (f'<table id="reported" class="sortable"><thead><tr>{"".join(headers)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _comparisons_table(comparisons: list[dict[str, Any]]) -> str:
    headers = [_header("A", numeric=False), _header("B", numeric=False), _header("Task", numeric=False),
               _header("A − B, F1 points [95% CI]", numeric=True), _header("n", numeric=True),
               _header("p", numeric=True)]
    body = ["<tr>" + _cell(comparison_label(c, "row_a"), comparison_label(c, "row_a"), is_text=True)
            + _cell(comparison_label(c, "row_b"), comparison_label(c, "row_b"), is_text=True)
            + _cell(c["task"], c["task"], is_text=True) + _cell(format_difference(c), c["mean_difference"])
            + _cell(str(c["n_instances"]), c["n_instances"]) + _cell(format_p(c), c["p_value"]) + "</tr>"
            for c in comparisons]
    return (f'<table id="comparisons" class="sortable"><thead><tr>{"".join(headers)}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def html_page(doc: dict[str, Any]) -> str:
    measured, reported = measured_rows(doc), paper_rows(doc)
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>Reverse Needle leaderboard</title>", f"<style>{PAGE_STYLE}</style></head><body>",
             "<h1>Reverse Needle leaderboard</h1>",
             f"<p>Updated {html.escape(doc['updated'])}. F1 in % (mean of per-instance F1) with 95% "
             f"percentile-bootstrap CIs; average = mean F1 of the omission tasks present. Click a column header "
             f"to sort. Rows with different data suites were scored on different instances.</p>",
             "<h2>Measured</h2>"]
    if measured:
        parts.append(_measured_table(measured))
    else:
        parts.append("<p>No measured rows yet.</p>")
    parts.append(f'<figure><img id="chart" src="{CHART_NAME}" alt="F1 by domain with 95% CIs, measured rows '
                 f'grouped by method"><figcaption>F1 by domain, measured rows grouped by method; whiskers are '
                 f'95% bootstrap CIs.</figcaption></figure>')
    for suite, series in efficiency_series(doc).items():
        header, body = efficiency_table(series)
        parts += [f"<h2>Data efficiency (suite {html.escape(suite)})</h2>",
                  "<p>Average F1 against the training instances each model saw; 0 is the untrained base "
                  "model.</p>",
                  '<table id="data-efficiency" class="sortable"><thead><tr>'
                  + "".join(_header(h, numeric=True) for h in header) + "</tr></thead><tbody>"
                  + "".join("<tr>" + "".join(_cell(c, c.split(" ")[0] if c != NO_VALUE else None) for c in line)
                            + "</tr>" for line in body) + "</tbody></table>"]
    if efficiency_series(doc):
        parts.append(f'<figure><img id="curve" src="{CURVE_NAME}" alt="average F1 against training instances, '
                     f'SFT and contrastive"><figcaption>Data efficiency: average F1 against training instances; '
                     f'whiskers are 95% bootstrap CIs.</figcaption></figure>')
    if doc.get("comparisons"):
        parts += ["<h2>Paired comparisons</h2>",
                  "<p>Paired bootstrap over the instances both rows scored (A − B); p is the two-sided share of "
                  "resamples crossing 0.</p>", _comparisons_table(doc["comparisons"])]
    if reported:
        parts += ["<h2>Reported by the AbsenceBench paper</h2>",
                  f"<p>Not measured here: copied from the paper and scored on "
                  f"{html.escape(PAPER_SUITE['description'])}, not on our suites, so not comparable with the "
                  f"measured rows. * = reasoning mode. Source: {html.escape(reported[0]['source'])}.</p>",
                  _reported_table(reported)]
    parts += [f"<script>{SORT_SCRIPT}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


# ---- chart -------------------------------------------------------------------------------------

def _method_rank(method: str) -> int:
    return METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)


def chart_png(doc: dict[str, Any]) -> bytes:
    """Grouped bars: one group per omission domain (+ the average), one bar per measured row, rows ordered
    and coloured by method, whiskers from the CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = sorted(measured_rows(doc), key=lambda r: _method_rank(r["method"]))
    groups = [t for t in OMISSION_TASKS if any(t in r["tasks"] for r in rows)]
    labels = [task_label(t) for t in groups] + ["average"]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.5 + len(labels) * (0.4 * len(rows) + 0.8)), 4.5), dpi=110)
    if not rows:
        ax.text(0.5, 0.5, "no measured rows yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
    else:
        several_suites = len({r["suite"]["id"] for r in rows}) > 1
        width = 0.8 / len(rows)
        per_method = {m: [r for r in rows if r["method"] == m] for m in dict.fromkeys(r["method"] for r in rows)}
        for index, row in enumerate(rows):
            estimates = [_f1(row, t) for t in groups] + [row["average"]]
            values = np.array([np.nan if e is None else 100 * e["value"] for e in estimates])
            errors = np.array([[0, 0] if e is None or e["ci_low"] is None else
                               [100 * (e["value"] - e["ci_low"]), 100 * (e["ci_high"] - e["value"])]
                               for e in estimates]).T
            family = per_method[row["method"]]
            cmap = plt.get_cmap(METHOD_COLORMAPS.get(row["method"], "Purples"))
            color = cmap(0.75 - 0.4 * family.index(row) / max(1, len(family)))
            label = f"{row['model']} ({row['method']})" + (f" · {row['suite']['id']}" if several_suites else "")
            x = np.arange(len(labels)) - 0.4 + width * (index + 0.5)
            ax.bar(x, values, width, color=color, edgecolor="black", linewidth=0.4, label=label,
                   yerr=errors, capsize=3, error_kw={"elinewidth": 0.9})
        ax.set_xticks(np.arange(len(labels)), labels)
        ax.set_ylim(0, 105)
        ax.set_ylabel("F1 (%)")
        ax.set_title("F1 by domain, measured rows (95% bootstrap CI)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def curve_png(doc: dict[str, Any]) -> bytes | None:
    """Average F1 (with CI whiskers) against training instances, one line per method and suite; None when
    the leaderboard holds no data-efficiency series."""
    all_series = efficiency_series(doc)
    if not all_series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.5), dpi=110)
    markers = iter("osD^v<>")
    lines = [(suite, method, points) for suite, series in all_series.items() for method, points in series.items()]
    sizes = sorted({n for _, _, points in lines for n, _ in points})
    # Lines side by side by a hair, so that whiskers at the same size do not hide each other.
    dodge = 0.012 * max(sizes)
    for suite, series in all_series.items():
        marker = next(markers, "o")
        for method, points in series.items():
            index = lines.index((suite, method, points))
            xs = [n + dodge * (index - (len(lines) - 1) / 2) for n, _ in points]
            estimates = [row["average"] for _, row in points]
            ys = [100 * e["value"] for e in estimates]
            errors = [[0 if e["ci_low"] is None else 100 * (e["value"] - e["ci_low"]) for e in estimates],
                      [0 if e["ci_high"] is None else 100 * (e["ci_high"] - e["value"]) for e in estimates]]
            label = method + (f" · {suite}" if len(all_series) > 1 else "")
            color = plt.get_cmap(METHOD_COLORMAPS.get(method, "Purples"))(0.7)
            ax.errorbar(xs, ys, yerr=errors, marker=marker, color=color, capsize=3, label=label)
    ax.set_xticks(sizes)
    ax.set_xlabel("training instances seen")
    ax.set_ylabel("average F1 (%)")
    ax.set_title("Data efficiency (95% bootstrap CI)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


# ---- writing -----------------------------------------------------------------------------------

def check_chromium() -> None:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        raise LeaderboardError(f"{CHROMIUM} / {CHROMEDRIVER} not found: a screenshot needs Debian's chromium "
                               f"and chromium-driver (scripts/install.sh installs them)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise LeaderboardError("selenium is not installed (pip install -e '.[dev]')") from None


@contextmanager
def headless_chromium(width: int = PAGE_WIDTH, height: int = 1000) -> Iterator[Any]:
    """A selenium WebDriver on the system's headless Chromium (no download of any browser or driver)."""
    check_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def take_screenshot(page: Path, out: Path) -> None:
    """The whole page as a PNG: the window is grown to the page's height first (`get` returns after the
    load event, so the chart image is in)."""
    with headless_chromium() as driver:
        driver.get(page.resolve().as_uri())
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(PAGE_WIDTH, int(height) + 120)
        png = driver.get_screenshot_as_png()
    atomic_write_bytes(out, png)


def render(leaderboard_path: str | os.PathLike, out_dir: str | os.PathLike, *,
           screenshot: bool = False) -> list[Path]:
    """Write leaderboard.md, index.html, f1_by_domain.png, data_efficiency.png when there is a series (and
    screenshot.png) into out_dir.
    Everything is built before anything is written; each file is replaced atomically."""
    doc = load(leaderboard_path)
    if screenshot:
        check_chromium()
    out = Path(out_dir)
    check_output_folder(out, [leaderboard_path], [MARKDOWN_NAME, HTML_NAME, CHART_NAME, CURVE_NAME, SCREENSHOT_NAME])
    text, page, chart, curve = markdown(doc), html_page(doc), chart_png(doc), curve_png(doc)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / MARKDOWN_NAME, out / HTML_NAME, out / CHART_NAME]
    atomic_write_text(written[0], text)
    atomic_write_bytes(written[2], chart)
    if curve is not None:
        atomic_write_bytes(out / CURVE_NAME, curve)
        written.append(out / CURVE_NAME)
    else:
        (out / CURVE_NAME).unlink(missing_ok=True)  # from an earlier render of a leaderboard that had one
    atomic_write_text(written[1], page)
    if screenshot:
        take_screenshot(written[1], out / SCREENSHOT_NAME)
        written.append(out / SCREENSHOT_NAME)
    return written
