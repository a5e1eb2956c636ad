"""Leaderboard file → `leaderboard.md`, a static `index.html` (sortable tables, vanilla JS, no network) and
`f1_by_domain.png` (per-domain F1 of the measured rows with CI whiskers); when the leaderboard holds a
data-efficiency series (one method trained on two or more numbers of instances, as `python -m
study.curve` publishes), `data_efficiency.png` and its table; optionally `screenshot.png` of the page
taken with headless Chromium.

Measured rows and the paper's reported rows are never mixed: reported rows get a table of their own, and
every measured row says which data suite it was scored on.

The page and the Markdown come from the jinja2 templates in `templates/` (the page autoescaped); each
table's columns are defined once here (`Table`) and both templates render them.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import jinja2

from absence_tasks.io import atomic_write_bytes, atomic_write_text, check_output_folder
from leaderboard.reported import PAPER_COLUMNS, PAPER_SUITE
from leaderboard.schema import METHODS, OMISSION_TASKS, TRAINED_METHODS, LeaderboardError, format_key, load, row_key

MARKDOWN_NAME, HTML_NAME, CHART_NAME, CURVE_NAME, SCREENSHOT_NAME = \
    "leaderboard.md", "index.html", "f1_by_domain.png", "data_efficiency.png", "screenshot.png"
# One colour family per method, so the chart groups a method's rows by colour.
METHOD_COLORMAPS = {"oracle": "Greys", "zero-shot": "Blues", "sft": "Oranges", "contrastive": "Greens"}
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
PAGE_WIDTH = 1400
NO_VALUE = "—"
TEMPLATE_DIR = Path(__file__).parent / "templates"
MARKDOWN_TEMPLATE, PAGE_TEMPLATE = "leaderboard.md.jinja", "page.html.jinja"


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
    if "optimizer_steps" in training:
        text = f"{training['optimizer_steps']:,} steps, " + text
    if training["wall_seconds"] is not None:
        text += f", {training['wall_seconds'] / 60:.1f} min"
    if (start := training.get("started_from")) is not None:
        before = start["training"]
        steps = f"{before['optimizer_steps']:,}-step " if "optimizer_steps" in before else ""
        text += f"; from a {steps}{start['method'] or 'trained'} checkpoint"
    return text


def format_difference(comparison: dict[str, Any]) -> str:
    """A paired difference in F1 points with its CI, e.g. `+12.5 [8.1, 16.9]`."""
    value, low, high = (100 * comparison[k] for k in ("mean_difference", "ci_low", "ci_high"))
    return f"{value:+.1f} [{low:+.1f}, {high:+.1f}]"


def format_p(comparison: dict[str, Any], key: str = "p_value") -> str:
    # Zero resamples crossing 0 means p < 1/n_resamples, not p = 0 (Holm's adjustment keeps a 0 at 0).
    if comparison[key] == 0:
        return f"< {1 / comparison['n_resamples']:.0e}"
    return f"{comparison[key]:.3g}"


def holm_cell(comparison: dict[str, Any]) -> Cell:
    """The p-value adjusted over the comparison's family, and the family (none: tested alone)."""
    if "p_holm" not in comparison:
        return Cell("—", None)
    return Cell(f"{format_p(comparison, 'p_holm')} ({comparison['family']})", comparison["p_holm"])


def detectable_cell(comparison: dict[str, Any]) -> Cell:
    """The smallest difference the comparison could detect (comparisons stored before 1.4 have none)."""
    value = comparison.get("minimum_detectable_difference")
    if value is None:
        return Cell("—", None)
    return Cell(f"{100 * value:.1f} (power {comparison['power']:.0%})", value)


def comparison_label(comparison: dict[str, Any], side: str) -> str:
    return format_key(tuple(comparison[side][k] for k in ("model", "method", "suite_id")))


# ---- data efficiency ---------------------------------------------------------------------------

def efficiency_series(doc: dict[str, Any]) -> dict[str, dict[str, list[tuple[int, dict[str, Any]]]]]:
    """suite id -> method -> [(training instances, row)] by instances, for each suite on which a trained
    method has rows at two or more numbers of training instances (older rows without the count are left
    out; so are runs started from a trained checkpoint, whose counts are not from the base model, and runs
    a FLOP or time budget stopped, whose counts say where the budget fell, not how much data they had). The
    suite's zero-shot row, when it has exactly one, is every series' point at 0."""
    series: dict[str, dict[str, list[tuple[int, dict[str, Any]]]]] = {}
    for suite in dict.fromkeys(row["suite"]["id"] for row in measured_rows(doc)):
        rows = [row for row in measured_rows(doc) if row["suite"]["id"] == suite]
        by_method = {}
        for method in TRAINED_METHODS:
            points = sorted(((row["training"]["instances"], row) for row in rows if row["method"] == method
                             and row["training"] is not None and "instances" in row["training"]
                             and "started_from" not in row["training"] and not row["training"].get("stopped_by")),
                            key=lambda point: point[0])
            if len({n for n, _ in points}) >= 2:
                by_method[method] = points
        base = [row for row in rows if row["method"] == "zero-shot"]
        if by_method and len(base) == 1:
            by_method = {method: [(0, base[0]), *points] for method, points in by_method.items()}
        if by_method:
            series[suite] = by_method
    return series


# ---- tables: one column definition for the page and the Markdown ------------------------------

@dataclass(frozen=True)
class Cell:
    text: str
    sort: str | float | None = None  # the page sorts by this; None sorts last
    code: bool = False  # set in code in the Markdown (suite ids)
    notes: tuple[str, ...] = ()  # the page only, as small lines under the text (the Markdown lists them below)


@dataclass(frozen=True)
class Column:
    label: str
    cell: Callable[[Any], Cell]  # the cell of one item (a row, a comparison, ...)
    numeric: bool  # sorted as numbers (and its header right-aligned)
    left_aligned: bool  # the cells, which are text even where the column sorts by a number
    initial_sort: str | None = None  # the page's first sort ("descending"), shown on the header


def text_column(label: str, text: Callable[[Any], str]) -> Column:
    return Column(label, lambda item: Cell(text(item), text(item)), numeric=False, left_aligned=True)


def number_column(label: str, cell: Callable[[Any], Cell], *, left_aligned: bool = False,
                  initial_sort: str | None = None) -> Column:
    return Column(label, cell, numeric=True, left_aligned=left_aligned, initial_sort=initial_sort)


@dataclass(frozen=True)
class TableRow:
    cells: tuple[Cell, ...]
    key: str | None = None  # the page's data-row: model@method@suite
    css_class: str | None = None


@dataclass(frozen=True)
class Table:
    id: str
    columns: list[Column]
    rows: list[TableRow]


def make_table(table_id: str, columns: list[Column], items: Iterable[Any],
               key: Callable[[Any], str] | None = None, css_class: str | None = None) -> Table:
    return Table(table_id, columns, [TableRow(tuple(c.cell(item) for c in columns), key and key(item), css_class)
                                     for item in items])


def _estimate_cell(estimate: dict[str, Any] | None) -> Cell:
    return Cell(format_estimate(estimate), None if estimate is None else estimate["value"])


def _f1_column(label: str, task: str) -> Column:
    return number_column(f"{label} F1", lambda row: _estimate_cell(_f1(row, task)))


def _average_column() -> Column:
    return number_column("Average F1", lambda row: _estimate_cell(row["average"]), initial_sort="descending")


def _training_cell(training: dict[str, Any] | None) -> Cell:
    return Cell(format_training(training), None if training is None else training["flops"])


def _probe_cell(probe: dict[str, Any] | None) -> Cell:
    """`0.76 [0.72, 0.80]` (an AUROC, 0.5 = chance) with the feature set and gap base rate under it."""
    if probe is None:
        return Cell(NO_VALUE)
    auroc = probe["auroc"]
    text = f"{auroc['value']:.2f}"
    if auroc["ci_low"] is not None and auroc["ci_high"] is not None:
        text += f" [{auroc['ci_low']:.2f}, {auroc['ci_high']:.2f}]"
    note = (f"{probe['feature_set']} features, {probe['n_instances']} instances, "
            f"gaps {100 * probe['base_rate']:.1f}% of lines")
    return Cell(text, auroc["value"], notes=(note,))


def measured_table(rows: list[dict[str, Any]]) -> Table:
    rank = {row_key(row): k for k, row in enumerate(rows, 1)}  # a row's key is unique in a leaderboard

    def suite_cell(row: dict[str, Any]) -> Cell:
        suite = row["suite"]
        return Cell(suite["id"], suite["id"], code=True, notes=(suite["description"], *row.get("notes", [])))

    columns = [
        number_column("#", lambda row: Cell(str(rank[row_key(row)]), rank[row_key(row)])),
        text_column("Model", lambda row: row["model"]),
        text_column("Method", lambda row: row["method"]),
        *(_f1_column(task_label(t), t) for t in task_columns(rows)),
        _average_column(),
        Column("Data suite", suite_cell, numeric=False, left_aligned=True),
        number_column("Training", lambda row: _training_cell(row["training"]), left_aligned=True),
        text_column("Backend", lambda row: row["backend"]),
    ]
    if any("probe" in row for row in rows):  # attached by add-probe
        columns.insert(len(columns) - 3, number_column("Gap probe AUROC", lambda row: _probe_cell(row.get("probe"))))
    return make_table("measured", columns, rows, key=lambda row: format_key(row_key(row)))


def reported_table(rows: list[dict[str, Any]]) -> Table:
    columns = [text_column("Model", lambda row: row["model"]),
               *(_f1_column(paper_task_label(t), t) for t in OMISSION_TASKS if t in PAPER_COLUMNS),
               _average_column()]
    return make_table("reported", columns, rows, key=lambda row: format_key(row_key(row)), css_class="reported")


def comparisons_table(comparisons: list[dict[str, Any]]) -> Table:
    columns = [text_column("A", lambda c: comparison_label(c, "row_a")),
               text_column("B", lambda c: comparison_label(c, "row_b")),
               text_column("Task", lambda c: c["task"]),
               number_column("A − B, F1 points [95% CI]", lambda c: Cell(format_difference(c), c["mean_difference"])),
               number_column("n", lambda c: Cell(str(c["n_instances"]), c["n_instances"])),
               number_column("p", lambda c: Cell(format_p(c), c["p_value"])),
               *([number_column("p, Holm over the family", holm_cell)] if any("p_holm" in c for c in comparisons)
                 else []),
               number_column("detectable at 80% power, F1 points", lambda c: detectable_cell(c))]
    return make_table("comparisons", columns, comparisons)


def efficiency_table(series: dict[str, list[tuple[int, dict[str, Any]]]]) -> Table:
    """One line per number of training instances, the average F1 of each method."""
    averages = {(method, n): row["average"] for method, points in series.items() for n, row in points}

    def method_column(method: str) -> Column:
        return number_column(f"{method} average F1", lambda n: _estimate_cell(averages.get((method, n))))

    columns = [number_column("training instances", lambda n: Cell(str(n), n)), *map(method_column, series)]
    return make_table("data-efficiency", columns, sorted({n for points in series.values() for n, _ in points}))


# ---- Markdown and HTML, from the templates -----------------------------------------------------

def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


@cache
def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), undefined=jinja2.StrictUndefined,
                                     autoescape=lambda name: name is not None and name.endswith(".html.jinja"),
                                     trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    environment.filters["md_cell"] = _markdown_cell
    return environment


def _context(doc: dict[str, Any]) -> dict[str, Any]:
    """What both templates show: the tables (None when there is nothing to show) and the texts around them."""
    measured, reported = measured_rows(doc), paper_rows(doc)
    return {
        "updated": doc["updated"],
        "omission_tasks": [task_label(t) for t in OMISSION_TASKS],
        "measured": measured_table(measured) if measured else None,
        "suites": [suite for _, suite in sorted({row["suite"]["id"]: row["suite"] for row in measured}.items())],
        "notes": [(row["model"], row["method"], note) for row in measured for note in row.get("notes", [])],
        "efficiency_tables": [(suite, efficiency_table(series)) for suite, series in efficiency_series(doc).items()],
        "comparisons": comparisons_table(doc["comparisons"]) if doc.get("comparisons") else None,
        "reported": reported_table(reported) if reported else None,
        "reported_source": reported[0]["source"] if reported else None,
        "paper_suite": PAPER_SUITE["description"],
        "chart_name": CHART_NAME, "curve_name": CURVE_NAME,
    }


def markdown(doc: dict[str, Any]) -> str:
    return _templates().get_template(MARKDOWN_TEMPLATE).render(_context(doc))


def html_page(doc: dict[str, Any]) -> str:
    return _templates().get_template(PAGE_TEMPLATE).render(_context(doc))


# ---- chart -------------------------------------------------------------------------------------

def _method_rank(method: str) -> int:
    return METHODS.index(method) if method in METHODS else len(METHODS)


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
