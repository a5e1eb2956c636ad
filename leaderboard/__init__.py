"""Reverse Needle's leaderboard: lm-eval outputs → a validated JSON leaderboard → Markdown, HTML and a chart.

`python -m leaderboard --help` lists the commands. The Python API:

* `publish(results_paths, leaderboard_path, method=..., model_name=...)` – add or replace measured rows;
* `add_reported(leaderboard_path)` – the AbsenceBench paper's rows (kept apart from measured ones);
* `compare(leaderboard_path, row_a, row_b, task=None)` – paired bootstrap, stored in the file;
* `add_probe(leaderboard_path, row, summary_path)` – a gap probe's AUROC on a row (a page column);
* `render(leaderboard_path, out_dir, screenshot=False)` – leaderboard.md, index.html, f1_by_domain.png.
"""

from leaderboard.compare import compare
from leaderboard.probe import add_probe
from leaderboard.publish import add_reported, publish
from leaderboard.render import render
from leaderboard.schema import LeaderboardError, load, validate

__all__ = ["LeaderboardError", "add_probe", "add_reported", "compare", "load", "publish", "render", "validate"]
