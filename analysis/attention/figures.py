"""The attention analysis's figures: layer x head heatmaps of the ratio (of one run, or of several side
by side on one colour scale) and attention strips over a gap document."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from analysis.common import label_layer_head_axes


# ---- figures -------------------------------------------------------------------------------------

def heatmap_grid(cells: Sequence[Sequence[tuple[str, Any]]], title: str) -> Any:
    """A grid of layer x head heatmaps of log2(ratio) on one symmetric colour scale (white = no
    preference). A cell is (title, ratio matrix or None for 'not available')."""
    import matplotlib
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    def log2(matrix: Any) -> np.ndarray:
        values = np.array(matrix, dtype=np.float64)  # None -> nan
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, np.log2(values), np.nan)

    logged = [[(name, None if matrix is None else log2(matrix)) for name, matrix in row] for row in cells]
    finite = [np.abs(m[np.isfinite(m)]) for row in logged for _, m in row if m is not None]
    limit = max([float(v.max()) for v in finite if v.size] + [0.1])
    norm = Normalize(vmin=-limit, vmax=limit)
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.75")
    n_rows, n_cols = len(cells), max(len(row) for row in cells)
    n_layers = max([m.shape[0] for row in logged for _, m in row if m is not None] + [1])
    figure = Figure(figsize=(2.6 * n_cols + 1.4, max(2.4, 0.08 * n_layers + 1.4) * n_rows + 0.6), layout="constrained")
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for r, row in enumerate(logged):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(row) or row[c][1] is None:
                ax.set_axis_off()
                if c < len(row):
                    ax.set_title(row[c][0], fontsize=8)
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
                continue
            name, matrix = row[c]
            ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
            if np.isfinite(matrix).any():
                layer, head = np.unravel_index(int(np.nanargmax(matrix)), matrix.shape)
                ax.plot(head, layer, marker="s", markersize=9, markerfacecolor="none", markeredgecolor="black")
            label_layer_head_axes(ax, name)
    figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.8,
                    label="log2(gap-attention ratio)\n0 = no preference")
    figure.suptitle(title, fontsize=10)
    return figure


def strip_figure(strip: np.ndarray, flank_columns: np.ndarray, gap_columns: np.ndarray, title: str) -> Any:
    """Attention of the answer-side queries over the tokens of the gap document: one row per layer (mean
    over heads), and below it the mean over layers; dashed lines where lines are missing, red marks on
    the measured flank tokens."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])
    positive = strip[strip > 0]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size and positive.min() < positive.max() else None
    image = top.imshow(strip, aspect="auto", interpolation="nearest", cmap="viridis", norm=norm)
    figure.colorbar(image, ax=top, label="attention (mean over heads)")
    top.set_ylabel("layer")
    top.yaxis.set_major_locator(MaxNLocator(integer=True))
    mean_over_layers = strip.mean(axis=0)
    bottom.plot(np.arange(strip.shape[1]), mean_over_layers, color="0.2", linewidth=0.8)
    bottom.plot(flank_columns, mean_over_layers[flank_columns], linestyle="none", marker="v", color="red",
                markersize=4, label="measured gap tokens")
    for column in gap_columns:
        top.axvline(column, color="white", linestyle="--", linewidth=0.8)
        bottom.axvline(column, color="red", linestyle="--", linewidth=0.8)
    bottom.set_xlabel("token of the document with the gap(s)")
    bottom.set_ylabel("mean")
    if len(flank_columns):
        bottom.legend(loc="upper right", fontsize=7)
    figure.suptitle(title, fontsize=9)
    return figure


def safe_file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:120]
