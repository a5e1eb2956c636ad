"""Paired comparisons between two rows of a leaderboard: a paired bootstrap of row A minus row B over
the instances both scored (one task, or the average over the omission tasks), stored in the file's
`comparisons` (publishing a row again drops the comparisons made with its old version). Comparisons given
one `family` (the variants of an ablation against one baseline, added run by run) get Holm-adjusted
p-values, recomputed over the whole family each time one is added."""

from __future__ import annotations

import os
from typing import Any

from absence_tasks.io import check_output, locked
from leaderboard.schema import (OMISSION_TASKS, LeaderboardError, format_key, key_dict, load, now_timestamp,
                                row_key, save)
from leaderboard.stats import POWER, holm_adjusted, paired_bootstrap, paired_bootstrap_average


def select_row(doc: dict[str, Any], selector: str, where: str, *, need_per_instance: bool = True) -> dict[str, Any]:
    """A row by `model`, `model@method` or `model@method@suite_id`; must be exactly one (and, for a paired
    test, have per-instance scores)."""
    parts = selector.split("@")
    if not 1 <= len(parts) <= 3 or not all(parts):
        raise LeaderboardError(f"{where}: bad row selector {selector!r} (model, model@method or model@method@suite)")
    matches = [r for r in doc["rows"] if list(row_key(r)[:len(parts)]) == parts]
    if not matches:
        raise LeaderboardError(f"{where}: no row {selector!r}")
    if len(matches) > 1:
        names = ", ".join(format_key(row_key(r)) for r in matches)
        raise LeaderboardError(f"{where}: {selector!r} matches {len(matches)} rows ({names}); name one as "
                               f"model@method@suite")
    row = matches[0]
    if need_per_instance and "per_instance" not in row:
        what = "a reported row" if row["method"] == "reported" else "published without samples"
        raise LeaderboardError(f"{where}: row {format_key(row_key(row))} has no per-instance scores ({what})")
    return row


def compare(leaderboard_path: str | os.PathLike, selector_a: str, selector_b: str, *, task: str | None = None,
            n_resamples: int = 10_000, confidence: float = 0.95, seed: int = 0,
            family: str | None = None) -> dict[str, Any]:
    """Paired bootstrap of row A minus row B (one task, or the average over the omission tasks both have);
    the result is stored in the leaderboard's `comparisons` (replacing an earlier one of the same pair). With
    `family`, every comparison of that family gets `p_holm`, its p-value adjusted over the family."""
    if family is not None and not family.strip():
        raise LeaderboardError(f"{leaderboard_path}: --family must be a non-empty name")
    check_output(leaderboard_path)
    with locked(leaderboard_path):
        return _compare_locked(leaderboard_path, selector_a, selector_b, task=task, n_resamples=n_resamples,
                               confidence=confidence, seed=seed, family=family)


def _compare_locked(leaderboard_path: str | os.PathLike, selector_a: str, selector_b: str, *, task: str | None,
                    n_resamples: int, confidence: float, seed: int, family: str | None) -> dict[str, Any]:
    where = str(leaderboard_path)
    doc = load(leaderboard_path)
    a, b = select_row(doc, selector_a, where), select_row(doc, selector_b, where)
    if row_key(a) == row_key(b):
        raise LeaderboardError(f"{where}: {selector_a!r} and {selector_b!r} are the same row")
    try:
        if task is None:
            tasks = [t for t in OMISSION_TASKS if t in a["per_instance"] and t in b["per_instance"]]
            if not tasks:
                raise ValueError("the two rows share no omission task")
            result = paired_bootstrap_average({t: a["per_instance"][t] for t in tasks},
                                              {t: b["per_instance"][t] for t in tasks},
                                              n_resamples=n_resamples, confidence=confidence, seed=seed)
        else:
            for row in (a, b):
                if task not in row["per_instance"]:
                    raise ValueError(f"row {format_key(row_key(row))} has no task {task}")
            result = paired_bootstrap(a["per_instance"][task], b["per_instance"][task],
                                      n_resamples=n_resamples, confidence=confidence, seed=seed)
    except ValueError as e:
        raise LeaderboardError(f"{where}: cannot compare {selector_a!r} with {selector_b!r}: {e}") from None
    record = {
        "row_a": key_dict(row_key(a)), "row_b": key_dict(row_key(b)), "task": task or "average",
        "mean_difference": result.mean_difference, "ci_low": result.ci_low, "ci_high": result.ci_high,
        "confidence": confidence, "n_instances": result.n, "p_value": result.p_value,
        "minimum_detectable_difference": result.minimum_detectable_difference, "power": POWER,
        "n_resamples": n_resamples, "seed": seed, "date": now_timestamp(),
        **({"family": family} if family is not None else {}),
    }
    same = (record["row_a"], record["row_b"], record["task"])
    kept = [c for c in doc.get("comparisons", []) if (c["row_a"], c["row_b"], c["task"]) != same]
    comparisons = adjust_families(kept + [record])
    save(leaderboard_path, {**doc, "comparisons": comparisons})
    return comparisons[-1]


def adjust_families(comparisons: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each family's p-values Holm-adjusted over the family as it stands (`p_holm`); the rest unchanged."""
    families: dict[str, list[int]] = {}
    for index, c in enumerate(comparisons):
        if "family" in c:
            families.setdefault(c["family"], []).append(index)
    adjusted = list(comparisons)
    for members in families.values():
        for index, p in zip(members, holm_adjusted([comparisons[i]["p_value"] for i in members])):
            adjusted[index] = {**comparisons[index], "p_holm": p}
    return adjusted
