"""The studies' own figures, as PNG bytes (the leaderboard draws the rest): the trainers' learning curves side
by side, and a sweep's validation F1 per setting."""

from __future__ import annotations

import io
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=110)
    _pyplot().close(fig)
    return buffer.getvalue()


def learning_curve_png(curves: dict[str, list[dict[str, Any]]]) -> bytes:
    """Validation F1 per domain (and their average) against training minutes, one panel per method: the
    trainers' learning curves (trainers/learning_curve.py), so a reader sees whether and when each learns."""
    plt = _pyplot()
    methods = [m for m, points in curves.items() if points]
    fig, axes = plt.subplots(1, len(methods), figsize=(5.5 * len(methods), 3.6), sharey=True, squeeze=False)
    for ax, method in zip(axes[0], methods):
        points = curves[method]
        minutes = [p["train_seconds"] / 60 for p in points]
        for domain in sorted(points[-1]["f1"]):
            ax.plot(minutes, [p["f1"].get(domain, float("nan")) for p in points], marker="o", label=domain)
        ax.plot(minutes, [p["average"] for p in points], color="black", linewidth=2.5, label="average")
        n = points[-1]["n_per_domain"]
        ax.set_title(f"{method} (validation, {min(n.values())} per domain)")
        ax.set_xlabel("training minutes")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("F1 (greedy)")
    axes[0][-1].legend(loc="upper left", fontsize=8)
    return _png(fig)


def sweep_png(summary: dict[str, Any]) -> bytes:
    """Validation F1 per setting: the average with its 95% CI and each domain, the base model as a line."""
    plt = _pyplot()
    settings = summary["settings"]
    labels = [" ".join(f"{k}={v}" for k, v in s["flags"].items()) for s in settings]
    x = list(range(len(settings)))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(settings) + 2), 3.8))
    averages = [s["average"]["value"] for s in settings]
    errors = [[a - s["average"]["ci_low"] for a, s in zip(averages, settings)],
              [s["average"]["ci_high"] - a for a, s in zip(averages, settings)]]
    ax.errorbar(x, averages, yerr=errors, fmt="o", color="black", capsize=4, markersize=7, label="average (95% CI)")
    for domain, marker in zip(sorted(settings[0]["f1"]), ("^", "s", "D")):
        ax.plot(x, [s["f1"][domain] for s in settings], marker, alpha=0.7, label=domain)
    ax.axhline(summary["zero_shot"]["average"]["value"], color="grey", linestyle="--", label="zero-shot average")
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"F1 (validation, {summary['validation_instances_per_domain']} per domain)")
    baseline = f"; baseline: {summary['baseline']}" if summary.get("baseline") else ""
    ax.set_title(f"{summary['method']} sweep; best: {summary['best']}{baseline}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)
