"""The probe's figures: AUROC per domain and model, and the coefficients as layer x head heatmaps."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from analysis.common import label_layer_head_axes
from analysis.probe.features import STATISTICS


def auroc_figure(results: dict[str, dict[str, Any]], feature_sets: Sequence[str]) -> Any:
    """One panel per feature set (three to a row): AUROC (95% CI) of the pooled probe, overall and per
    domain, one bar per model."""
    from matplotlib.figure import Figure

    n_columns = min(3, len(feature_sets))
    n_rows = -(-len(feature_sets) // n_columns)
    figure = Figure(figsize=(4.2 * n_columns + 0.6, 3.2 * n_rows + 0.5), layout="constrained")
    axes = figure.subplots(n_rows, n_columns, squeeze=False).ravel()
    for unused in axes[len(feature_sets):]:
        unused.set_axis_off()
    labels = list(results)
    for ax, feature_set in zip(axes, feature_sets):
        first = results[labels[0]]["feature_sets"][feature_set]
        groups = ["overall", *first["per_domain"]]
        width = 0.8 / len(labels)
        for m, label in enumerate(labels):
            found = results[label]["feature_sets"][feature_set]
            cells = [found["overall"], *(found["per_domain"][d] for d in groups[1:])]
            x = np.arange(len(groups)) + (m - (len(labels) - 1) / 2) * width
            values = np.array([np.nan if c["auroc"] is None else c["auroc"] for c in cells])
            low = np.array([v - c["auroc_ci"][0] if c["auroc_ci"] else 0 for v, c in zip(values, cells)])
            high = np.array([c["auroc_ci"][1] - v if c["auroc_ci"] else 0 for v, c in zip(values, cells)])
            ax.bar(x, values, width, yerr=[low, high], capsize=3, label=label)
        ax.axhline(0.5, color="0.4", linestyle="--", linewidth=0.8)
        ax.set_xticks(np.arange(len(groups)), groups, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{feature_set} features", fontsize=9)
        ax.set_ylabel("AUROC (95% CI over instances)", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    figure.suptitle("gap probe: is a missing line readable at the next line's first token? (one probe for all "
                    "domains, out-of-fold scores)", fontsize=10)
    return figure


def coefficient_figure(coefficients: dict[str, np.ndarray]) -> Any:
    """One row per model, one layer x head heatmap per statistic, on one symmetric colour scale."""
    import matplotlib
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    limit = max(float(np.abs(c).max()) for c in coefficients.values()) or 1.0
    norm = Normalize(vmin=-limit, vmax=limit)
    cmap = matplotlib.colormaps["RdBu_r"]
    n_layers = next(iter(coefficients.values())).shape[0]
    figure = Figure(figsize=(2.6 * len(STATISTICS) + 1.4, max(2.4, 0.08 * n_layers + 1.4) * len(coefficients) + 0.6),
                    layout="constrained")
    axes = figure.subplots(len(coefficients), len(STATISTICS), squeeze=False)
    for row, (label, matrix) in enumerate(coefficients.items()):
        for column, statistic in enumerate(STATISTICS):
            ax = axes[row][column]
            ax.imshow(matrix[..., column], cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
            label_layer_head_axes(ax, f"{label}: {statistic}")
    figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.8,
                    label="standardised coefficient\n(> 0: more likely a gap)")
    figure.suptitle("gap probe coefficients (attention features, fitted on all rows)", fontsize=10)
    return figure


def readout_figure(readouts: dict[str, dict[str, Any]]) -> Any:
    """One panel per model: each instance's readability (within-instance AUROC of the probe) against the F1
    of its answer, coloured by domain, with Spearman's rho and its CI in the title."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * len(readouts) + 0.6, 3.8), layout="constrained")
    axes = figure.subplots(1, len(readouts), squeeze=False)[0]
    for ax, (label, found) in zip(axes, readouts.items()):
        rows = [r for r in found["per_instance"] if r["readability"] is not None]
        for domain in dict.fromkeys(r["domain"] for r in rows):
            mine = [r for r in rows if r["domain"] == domain]
            ax.scatter([r["readability"] for r in mine], [100 * r["f1"] for r in mine], s=14, alpha=0.75,
                       label=domain)
        rho = found["readability_vs_f1"]["overall"]
        ci = rho["spearman_rho_ci"]
        text = "n/a" if rho["spearman_rho"] is None else (
            f"{rho['spearman_rho']:.2f}" + ("" if ci is None else f" [{ci[0]:.2f}, {ci[1]:.2f}]"))
        ax.set_title(f"{label}: Spearman rho {text}", fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(-3, 103)
        ax.set_xlabel(f"readability (within-instance AUROC, {found['feature_set']} probe)", fontsize=8)
        ax.set_ylabel("F1 of the answer", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    figure.suptitle("does an instance whose gaps the probe reads better get a better answer?", fontsize=10)
    return figure
