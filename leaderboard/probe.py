"""A gap probe's readability on a leaderboard row: `python -m analysis.probe` writes a summary.json (per model
and feature set: AUROC and average precision of a linear probe that reads "a line is missing right before
here" from the model's attention or hidden states); `add-probe` stores one model's overall AUROC from it in a
row's `probe`, and the page shows it as a column. The summary is read as data (no import of the analysis).

A row published again keeps its probe while its checkpoint is the same (`carry_probe`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from absence_tasks.io import check_output, locked
from leaderboard.compare import select_row
from leaderboard.schema import LeaderboardError, format_key, load, row_key, save

# The probe's feature set without the gold alignment of recitation lines to original lines: what a model's
# attention alone makes readable (the aligned `attention` set reads the gap off the alignment itself).
DEFAULT_FEATURE_SET = "label_free"


def _estimate(value: Any, ci: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise LeaderboardError(f"{where}: expected a number in [0, 1], got {value!r}")
    if ci is None:
        return {"value": value, "ci_low": None, "ci_high": None}
    if not (isinstance(ci, list) and len(ci) == 2 and all(isinstance(x, (int, float)) and 0 <= x <= 1 for x in ci)):
        raise LeaderboardError(f"{where}_ci: expected [low, high] in [0, 1], got {ci!r}")
    return {"value": value, "ci_low": ci[0], "ci_high": ci[1]}


def probe_entry(summary_path: str | os.PathLike, probe_model: str | None = None,
                feature_set: str = DEFAULT_FEATURE_SET) -> dict[str, Any]:
    """The `probe` object of a row, from a probe summary.json: one model (the only one, or `probe_model`) and
    one feature set; LeaderboardError naming the file and what is missing otherwise."""
    path = Path(summary_path)
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LeaderboardError(f"{path}: no such file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LeaderboardError(f"{path}: not a JSON probe summary ({e})") from None
    results = summary.get("results") if isinstance(summary, dict) else None
    if not isinstance(results, dict) or not results:
        raise LeaderboardError(f"{path}: no 'results' by model (not a summary.json of python -m analysis.probe)")
    if probe_model is None:
        if len(results) > 1:
            raise LeaderboardError(f"{path}: results for {len(results)} models ({', '.join(results)}); "
                                   f"name one with --probe-model")
        probe_model = next(iter(results))
    if probe_model not in results:
        raise LeaderboardError(f"{path}: no model {probe_model!r} (it has {', '.join(results)})")
    sets = results[probe_model].get("feature_sets", {})
    if feature_set not in sets:
        raise LeaderboardError(f"{path}: model {probe_model!r} has no feature set {feature_set!r} "
                               f"(it has {', '.join(sets) or 'none'})")
    where = f"{path}: results.{probe_model}.feature_sets.{feature_set}"
    try:
        overall, per_domain = sets[feature_set]["overall"], sets[feature_set]["per_domain"]
        entry = {
            "feature_set": feature_set,
            "description": summary.get("feature_sets", {}).get(feature_set, feature_set),
            "probe_model": probe_model,
            "auroc": _estimate(overall["auroc"], overall.get("auroc_ci"), f"{where}.overall.auroc"),
            "average_precision": _estimate(overall["average_precision"], overall.get("average_precision_ci"),
                                           f"{where}.overall.average_precision"),
            "base_rate": overall["base_rate"],
            "n_instances": overall["n_instances"],
            "per_domain_auroc": {domain: scores["auroc"] for domain, scores in per_domain.items()},
            "source": str(path),
        }
    except (KeyError, TypeError) as e:
        raise LeaderboardError(f"{where}: missing {e}") from None
    if summary.get("command"):
        entry["command"] = summary["command"]
    return entry


def add_probe(leaderboard_path: str | os.PathLike, row_selector: str, summary_path: str | os.PathLike, *,
              probe_model: str | None = None, feature_set: str = DEFAULT_FEATURE_SET) -> dict[str, Any]:
    """Store the probe's result in one row of the leaderboard (replacing an earlier probe); returns the row."""
    check_output(leaderboard_path, [summary_path])
    entry = probe_entry(summary_path, probe_model, feature_set)
    with locked(leaderboard_path):
        doc = load(leaderboard_path)
        row = select_row(doc, row_selector, str(leaderboard_path), need_per_instance=False)
        rows = [{**r, "probe": entry} if row_key(r) == row_key(row) else r for r in doc["rows"]]
        save(leaderboard_path, {**doc, "rows": rows})
    return {**row, "probe": entry}


def carry_probe(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new` (a republished row) with `old`'s probe when both scored the same checkpoint (same weight hash)."""
    same_weights = old.get("checkpoint_sha256") is not None and old.get("checkpoint_sha256") == new.get(
        "checkpoint_sha256")
    if "probe" in old and "probe" not in new and same_weights:
        return {**new, "probe": old["probe"]}
    return new


def describe(row: dict[str, Any]) -> str:
    probe = row["probe"]
    auroc = probe["auroc"]
    ci = "" if auroc["ci_low"] is None else f" [{auroc['ci_low']:.2f}, {auroc['ci_high']:.2f}]"
    return (f"{format_key(row_key(row))}: gap probe AUROC {auroc['value']:.2f}{ci} ({probe['feature_set']}, "
            f"{probe['n_instances']} instances, gap base rate {probe['base_rate']:.1%})")
