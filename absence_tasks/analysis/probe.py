"""Gap probe: can a linear read-out of the model's attention tell, at each line of the recitation,
whether one or more original lines are missing right before it? (Lookback-Lens style: Chuang et al.
2024 feed per-head "lookback ratios" to a logistic regression.)

The attention analysis asks whether the *answer* looks at the gap. This asks whether the information
is there at all while the model reads the recitation: if a probe finds gaps that the answers miss, the
failure is in the read-out, not in perception.

Rows: one per probed line of the recitation (the modified document) of every instance: each line
that has text of its own (blank lines have no tokens). Query: the line's first token, run on the
evaluation prompt inside the chat template exactly as lm-eval sends it (`attention.tokenize_prompt`).

Features at that query, per layer x head (`STATISTICS`):

* ``original``       – attention mass on the whole original document;
* ``matching``       – mass on the original line this recitation line is a copy of;
* ``expected_next``  – mass on the original line that should come next after the previous recitation
  line (the first missing line when there is a gap; the matching line itself when there is none);
* ``lookback_ratio`` – Lookback Lens' ratio: mean attention per original-document token over that plus
  the mean per token of the recitation so far (up to and including the query); 0.5 when both are 0.

``matching`` and ``expected_next`` are placed by the gold alignment, so they are not available to a
model reading a document cold, and where there is no gap they are the same tokens (equal values); the
``label_free`` feature set (``original`` and ``lookback_ratio`` only) needs no alignment and is
reported beside the full ``attention`` set. With ``--hidden-layer N [N ...]`` a set ``hidden_N`` per
layer is the residual stream after layer N at the same query; ``hidden_0`` (the embedding of the query
token alone, no context) is the control for what the line's own first token gives away. The
``position`` set (where the line sits: its index over the recitation's length, and the recitation
tokens so far) is the control for what a probe can find from position alone: a random model's
attention is mostly a function of position, and so is part of the label's structure.

Label: 1 when one or more original lines are missing right before the line (the line is the first
non-blank line after a gap; `attention.find_gaps`). A gap at the very end of the recitation has no
line after it and gives no positive row (counted in the summary). Placeholder variant: the gap is
visible, and the ``<missing line>`` line itself is the positive row (its matching line is the line
it stands for). Needle instances are skipped: their recitation has extra lines, none missing.

The probe: standardised features, scikit-learn ``LogisticRegression(class_weight="balanced")``,
out-of-fold scores from ``GroupKFold`` by instance (no instance in two folds); AUROC and average
precision with percentile bootstrap CIs over instances; transfer between domains (fit on one, test on
each other) and, with several ``--models``, between models (fit on model A's features of the training
folds, score model B's features of the held-out fold); the largest standardised coefficients of a probe
fitted on all rows (top heads).

Memory: one instance at a time; the prompt up to the last probed line is run in chunks, and a hook on
each layer's attention reduces the rows of the probed queries to their span masses at once, so only
one layer's attention over one chunk exists at a time.

Outputs (``--out DIR``, written only when everything has run): ``auroc.png`` (AUROC per domain and
model, with CIs), ``coefficients.png`` (the probe's coefficients as layer x head heatmaps) and
``summary.json`` (written last).
"""

from __future__ import annotations

import argparse
import bisect
import os
import platform
import shlex
import sys
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from absence_tasks.analysis.attention import (
    TokenizedPrompt, check_output_dir, find_gaps, gap_line_sources, json_ready, load_model, save_figure,
    select_instances, tokenize_prompt,
)
from absence_tasks.io import run_command
from absence_tasks.schema import DOMAINS, DataError, Instance, atomic_write_text

PROGRAM = "probe"
SUMMARY_NAME = "summary.json"
CONFIDENCE_LEVEL = 0.95
STATISTICS = ("original", "matching", "expected_next", "lookback_ratio")
STATISTIC_DESCRIPTIONS = {
    "original": "attention mass on the whole original document",
    "matching": "attention mass on the original line this recitation line copies (gold alignment)",
    "expected_next": "attention mass on the original line that should come next after the previous recitation "
                     "line (gold alignment; equals 'matching' where no line is missing)",
    "lookback_ratio": "mean attention per original-document token / (that + mean attention per token of the "
                      "recitation so far); Lookback Lens' ratio",
}
LABEL_FREE_STATISTICS = ("original", "lookback_ratio")
FEATURE_SET_DESCRIPTIONS = {
    "attention": "all four statistics of every layer x head",
    "label_free": "original and lookback_ratio of every layer x head (no gold alignment needed)",
    "position": "control without the model: the line's index over the recitation's length, and the recitation "
                "tokens up to its first token",
}
HIDDEN_DESCRIPTION = "the hidden state after layer {layer} at the line's first token (0 = the token's embedding)"
# Span columns of `LineQueries.spans`; the first three are the statistics of the same name.
SPAN_COLUMNS = ("original", "matching", "expected_next", "recitation_so_far")


# ---- the rows: probed lines, their labels and the spans they are measured on -----------------------------

@dataclass(frozen=True)
class LineQueries:
    """The probed recitation lines of one instance (n of them)."""
    line_indices: np.ndarray   # [n] index into modified_lines
    positions: np.ndarray      # [n] token position of the line's first token (the query)
    labels: np.ndarray         # [n] bool: one or more original lines are missing right before the line
    spans: np.ndarray          # [n, 4, 2] token ranges [start, end) of the SPAN_COLUMNS, per query
    n_trailing_gaps: int       # gaps at the end of the recitation: no line follows them, no positive row


def _token_range(positions: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) of a run of token positions (a line's or a document's tokens are contiguous)."""
    return (int(positions[0]), int(positions[-1]) + 1) if positions.size else (0, 0)


def line_queries(instance: Instance, tokenized: TokenizedPrompt) -> LineQueries:
    """Rows, labels and spans of an omission or placeholder instance (see the module docstring)."""
    if instance.variant == "needle":
        raise ValueError(f"instance {instance.id}: needle instances have no missing lines to probe")
    original_tokens = tokenized.line_tokens(instance.original_lines, tokenized.original_span[0])
    recitation_tokens = tokenized.line_tokens(instance.modified_lines, tokenized.modified_span[0])
    original_range = _token_range(tokenized.tokens(tokenized.original_span))
    recitation_start = _token_range(tokenized.tokens(tokenized.modified_span))[0]
    sources = gap_line_sources(instance)  # recitation line -> its original line
    dropped = set(instance.metadata.get("dropped_context_indices", ()))
    # Original lines a recitation line could be expected to continue with: with text, not dropped context.
    readable = [i for i, tokens in enumerate(original_tokens) if tokens.size and i not in dropped]

    gaps = find_gaps(instance)
    if instance.variant == "placeholder":
        positive = {k for gap in gaps for k in gap.placeholders}
        n_trailing = 0
    else:
        positive = {gap.after for gap in gaps if gap.after is not None}
        n_trailing = sum(gap.after is None for gap in gaps)

    line_indices, positions, labels, spans = [], [], [], []
    previous_source = -1
    for k, tokens in enumerate(recitation_tokens):
        if not tokens.size:
            continue
        query = int(tokens[0])
        after_previous = bisect.bisect_right(readable, previous_source)
        expected = readable[after_previous] if after_previous < len(readable) else sources[k]
        line_indices.append(k)
        positions.append(query)
        labels.append(k in positive)
        spans.append([original_range, _token_range(original_tokens[sources[k]]),
                      _token_range(original_tokens[expected]), (recitation_start, query + 1)])
        previous_source = sources[k]
    return LineQueries(line_indices=np.array(line_indices, dtype=np.int64),
                       positions=np.array(positions, dtype=np.int64), labels=np.array(labels, dtype=bool),
                       spans=np.array(spans, dtype=np.int64).reshape(-1, len(SPAN_COLUMNS), 2),
                       n_trailing_gaps=n_trailing)


# ---- running the model ---------------------------------------------------------------------------------

def span_masses(rows: Any, spans: Any) -> Any:
    """Attention mass of each query row on each of its spans.

    rows: torch [heads, r, keys] attention rows of r queries; spans: torch long [r, S, 2] ranges
    [start, end) into keys. Returns [r, heads, S] (float64), by differences of a running sum."""
    import torch

    heads, r, _ = rows.shape
    running = torch.nn.functional.pad(torch.cumsum(rows.double(), dim=-1), (1, 0))   # [heads, r, keys + 1]
    flat = spans.reshape(r, -1).unsqueeze(0).expand(heads, r, spans.shape[1] * 2)      # [heads, r, 2S]
    ends = running.gather(2, flat).reshape(heads, r, spans.shape[1], 2)
    return (ends[..., 1] - ends[..., 0]).permute(1, 0, 2)


@dataclass
class LineFeatures:
    masses: np.ndarray              # [n, layers, heads, 4] attention mass on the SPAN_COLUMNS
    hidden: dict[int, np.ndarray]   # layer -> [n, hidden size], the residual stream after that layer


def _attention_modules(model: Any) -> list[Any]:
    return [layer.self_attn for layer in model.get_decoder().layers]


def line_features(model: Any, input_ids: Sequence[int], queries: LineQueries, *,
                  hidden_layers: Sequence[int] = (), prefill_chunk: int = 256) -> LineFeatures:
    """One prefill (no generation) up to the last probed line; per layer, the probed queries' attention
    rows are reduced to span masses inside a forward hook, so no attention tensor outlives its layer."""
    import torch

    n = len(queries.positions)
    modules = _attention_modules(model)
    masses = torch.zeros(n, len(modules), model.config.num_attention_heads, len(SPAN_COLUMNS), dtype=torch.float64)
    hidden = {layer: torch.zeros(n, model.config.hidden_size, dtype=torch.float64) for layer in hidden_layers}
    spans = torch.from_numpy(queries.spans)
    positions = torch.from_numpy(queries.positions)
    chunk_rows = chunk_lines = None  # the current chunk's probed queries: rows within the chunk, row numbers

    def reduce(layer: int):
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError("the attention layers return no weights; load the model with eager attention")
            if chunk_rows.numel():
                rows = weights[0][:, chunk_rows, :]                                   # [heads, r, keys]
                masses[chunk_lines, layer] = span_masses(rows, spans[chunk_lines])
        return hook

    handles = [module.register_forward_hook(reduce(layer)) for layer, module in enumerate(modules)]
    ids = torch.tensor([list(input_ids)[:int(queries.positions.max()) + 1]], dtype=torch.long)
    cache = None
    try:
        with torch.inference_mode():
            for start in range(0, ids.shape[1], prefill_chunk):
                end = min(start + prefill_chunk, ids.shape[1])
                chunk_lines = torch.nonzero((positions >= start) & (positions < end)).flatten()
                chunk_rows = positions[chunk_lines] - start
                out = model(input_ids=ids[:, start:end], past_key_values=cache, use_cache=True, logits_to_keep=1,
                            output_hidden_states=bool(hidden_layers))
                cache = out.past_key_values
                for layer, states in hidden.items():
                    states[chunk_lines] = out.hidden_states[layer][0, chunk_rows].double()   # [r, hidden size]
    finally:
        for handle in handles:
            handle.remove()
    return LineFeatures(masses=masses.numpy(), hidden={layer: states.numpy() for layer, states in hidden.items()})


def statistics_from_masses(masses: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """[n, layers, heads, 4] masses on the SPAN_COLUMNS -> [n, layers, heads, 4] STATISTICS."""
    lengths = (spans[:, :, 1] - spans[:, :, 0]).astype(np.float64)          # [n, 4] tokens per span
    per_token_original = masses[..., 0] / lengths[:, 0, None, None]
    per_token_recitation = masses[..., 3] / lengths[:, 3, None, None]
    total = per_token_original + per_token_recitation
    with np.errstate(divide="ignore", invalid="ignore"):
        lookback = np.where(total > 0, per_token_original / total, 0.5)
    return np.stack([masses[..., 0], masses[..., 1], masses[..., 2], lookback], axis=-1)


# ---- the probe -----------------------------------------------------------------------------------------

@dataclass
class Rows:
    """The probe's rows for one model (all instances concatenated)."""
    statistics: np.ndarray           # [n_rows, layers, heads, 4]
    hidden: dict[int, np.ndarray]    # layer -> [n_rows, hidden size]
    position: np.ndarray             # [n_rows, 2] the position control (`position_features`)
    labels: np.ndarray            # [n_rows] bool
    groups: np.ndarray            # [n_rows] instance number
    domains: np.ndarray           # [n_rows] domain name

    def features(self, feature_set: str) -> np.ndarray:
        """[n_rows, n_features] of one of FEATURE_SET_DESCRIPTIONS."""
        if feature_set == "attention":
            return self.statistics.reshape(len(self.labels), -1)
        if feature_set == "label_free":
            columns = [STATISTICS.index(s) for s in LABEL_FREE_STATISTICS]
            return self.statistics[..., columns].reshape(len(self.labels), -1)
        if feature_set == "position":
            return self.position
        if feature_set.startswith("hidden_") and int(feature_set.removeprefix("hidden_")) in self.hidden:
            return self.hidden[int(feature_set.removeprefix("hidden_"))]
        raise ValueError(f"no {feature_set!r} features")


def position_features(instance: Instance, queries: LineQueries) -> np.ndarray:
    """[n, 2]: each probed line's index over the recitation's length, and the recitation tokens so far."""
    recitation_tokens = queries.spans[:, 3, 1] - queries.spans[:, 3, 0]
    return np.stack([queries.line_indices / len(instance.modified_lines), recitation_tokens], axis=1).astype(np.float64)


def fit_probe(features: np.ndarray, labels: np.ndarray, c: float) -> Any:
    """Standardised features -> class-balanced logistic regression (lbfgs: deterministic)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(labels)) < 2:
        raise DataError(f"a probe's training rows are all {'gaps' if labels.all() else 'non-gaps'}; "
                        f"more instances are needed")
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000)).fit(
        features, labels)


def grouped_folds(groups: np.ndarray, n_folds: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train rows, test rows) per fold; every instance's rows fall in exactly one test fold."""
    from sklearn.model_selection import GroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise DataError(f"the grouped split needs at least 2 instances, got {n_groups}")
    splitter = GroupKFold(n_splits=min(n_folds, n_groups))
    return list(splitter.split(np.zeros(len(groups)), groups=groups))


def out_of_fold_scores(train_features: np.ndarray, test_features: np.ndarray, labels: np.ndarray,
                       folds: list[tuple[np.ndarray, np.ndarray]], c: float) -> np.ndarray:
    """Per row, the decision score of a probe fitted on `train_features` of the other folds and applied
    to `test_features` of the row's fold (the same array for ordinary cross-validation; another
    model's features of the same rows for transfer between models)."""
    scores = np.full(len(labels), np.nan)
    for train, test in folds:
        scores[test] = fit_probe(train_features[train], labels[train], c).decision_function(test_features[test])
    return scores


def bootstrap_metrics(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, rng: np.random.Generator,
                      n_resamples: int) -> dict[str, Any]:
    """AUROC and average precision, with percentile bootstrap CIs that resample instances (groups)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    result: dict[str, Any] = {"n_rows": int(len(labels)), "n_instances": int(len(np.unique(groups))),
                              "n_gaps": int(labels.sum()), "base_rate": float(labels.mean()) if len(labels) else None}
    if len(np.unique(labels)) < 2:
        return result | {"auroc": None, "auroc_ci": None, "average_precision": None, "average_precision_ci": None}
    rows_of = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    resampled = {"auroc": [], "average_precision": []}
    for _ in range(n_resamples):
        rows = np.concatenate([rows_of[i] for i in rng.integers(0, len(rows_of), size=len(rows_of))])
        if len(np.unique(labels[rows])) < 2:
            continue  # a resample without both classes has no AUROC; it is left out
        resampled["auroc"].append(roc_auc_score(labels[rows], scores[rows]))
        resampled["average_precision"].append(average_precision_score(labels[rows], scores[rows]))
    tail = (1 - CONFIDENCE_LEVEL) / 2
    for name, metric in (("auroc", roc_auc_score), ("average_precision", average_precision_score)):
        result[name] = float(metric(labels, scores))
        values = resampled[name]
        result[f"{name}_ci"] = [float(v) for v in np.quantile(values, [tail, 1 - tail])] if values else None
    result["bootstrap_resamples_used"] = len(resampled["auroc"])
    return result


def _rng(seed: int, *names: str) -> np.random.Generator:
    """A generator per named comparison, so one result's CI does not depend on which others were computed."""
    return np.random.default_rng([seed, zlib.crc32("/".join(names).encode("utf-8"))])


def evaluate_feature_set(rows: Rows, feature_set: str, folds: list[tuple[np.ndarray, np.ndarray]],
                         args: argparse.Namespace, label: str) -> dict[str, Any]:
    """Pooled grouped cross-validation (overall and per domain) and the domain transfer matrix."""
    features = rows.features(feature_set)
    scores = out_of_fold_scores(features, features, rows.labels, folds, args.C)

    def metrics(mask: np.ndarray, row_scores: np.ndarray, *names: str) -> dict[str, Any]:
        return bootstrap_metrics(rows.labels[mask], row_scores[mask], rows.groups[mask],
                                 _rng(args.seed, label, feature_set, *names), args.bootstrap)

    everything = np.ones(len(rows.labels), dtype=bool)
    present = [d for d in DOMAINS if (rows.domains == d).any()]
    result: dict[str, Any] = {"n_features": int(features.shape[1]),
                              "overall": metrics(everything, scores, "overall"),
                              "per_domain": {d: metrics(rows.domains == d, scores, "domain", d) for d in present}}
    # Transfer: rows are the training domain, columns the test domain; the diagonal is cross-validated
    # within the domain alone.
    if len(present) > 1:
        matrix: dict[str, dict[str, Any]] = {}
        for train_domain in present:
            train = rows.domains == train_domain
            within = np.flatnonzero(train)
            local_folds = [(within[a], within[b]) for a, b in grouped_folds(rows.groups[within], args.folds)]
            within_scores = out_of_fold_scores(features, features, rows.labels, local_folds, args.C)
            # Off the diagonal every training row is of another domain, so one probe on all of them serves.
            across_scores = fit_probe(features[train], rows.labels[train], args.C).decision_function(features)
            matrix[train_domain] = {}
            for test_domain in present:
                test = rows.domains == test_domain
                transfer_scores = within_scores if test_domain == train_domain else across_scores
                matrix[train_domain][test_domain] = metrics(test, transfer_scores, "transfer", train_domain, test_domain)
        result["domain_transfer"] = matrix
    return result


def top_heads(coefficients: np.ndarray, k: int, rows: Rows | None = None) -> list[dict[str, Any]]:
    """The k largest |standardised coefficients| of a [layers, heads, statistics] array; with `rows`,
    also the raw statistic's mean on the lines after a gap and on the others (what the head does)."""
    order = np.argsort(-np.abs(coefficients).ravel(), kind="stable")[:k]
    heads = []
    for flat in order:
        layer, head, statistic = np.unravel_index(int(flat), coefficients.shape)
        entry = {"layer": int(layer), "head": int(head), "statistic": STATISTICS[statistic],
                 "coefficient": float(coefficients[layer, head, statistic])}
        if rows is not None:
            values = rows.statistics[:, layer, head, statistic]
            entry |= {"mean_after_gap": float(values[rows.labels].mean()),
                      "mean_elsewhere": float(values[~rows.labels].mean())}
        heads.append(entry)
    return heads


# ---- figures -------------------------------------------------------------------------------------------

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
    from matplotlib.ticker import MaxNLocator

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
            ax.set_title(f"{label}: {statistic}", fontsize=8)
            ax.set_xlabel("head", fontsize=8)
            ax.set_ylabel("layer", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
    figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.8,
                    label="standardised coefficient\n(> 0: more likely a gap)")
    figure.suptitle("gap probe coefficients (attention features, fitted on all rows)", fontsize=10)
    return figure


# ---- the run -------------------------------------------------------------------------------------------

def parse_models(args: argparse.Namespace) -> dict[str, str]:
    """label -> checkpoint path, from --model PATH or --models LABEL=PATH ..."""
    if args.model:
        return {args.label or Path(args.model).name: args.model}
    models: dict[str, str] = {}
    for item in args.models:
        label, separator, path = item.partition("=")
        if not separator or not label or not path:
            raise ValueError(f"--models takes LABEL=PATH items, got {item!r}")
        if label in models:
            raise ValueError(f"--models: label {label!r} given twice")
        models[label] = path
    return models


def _check_options(args: argparse.Namespace) -> None:
    checks = [(args.n is None or args.n >= 1, "--n must be at least 1"),
              (args.folds >= 2, "--folds must be at least 2"),
              (args.bootstrap >= 10, "--bootstrap must be at least 10"),
              (args.C > 0, "--C must be positive"),
              (args.top_heads >= 1, "--top-heads must be at least 1"),
              (all(layer >= 0 for layer in args.hidden_layer), "--hidden-layer must not be negative"),
              (len(set(args.hidden_layer)) == len(args.hidden_layer), "--hidden-layer lists a layer twice"),
              (args.prefill_chunk >= 1, "--prefill-chunk must be at least 1")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _model_shape(config: Any) -> dict[str, int]:
    return {"n_layers": int(config.num_hidden_layers), "n_heads": int(config.num_attention_heads),
            "hidden_size": int(config.hidden_size)}


def extract_rows(path: str, instances: Sequence[Instance], args: argparse.Namespace, label: str
                 ) -> tuple[Rows, list[LineQueries], bool]:
    """Run one checkpoint over every instance: the probe's rows, each instance's queries, and whether the
    chat template was used."""
    from tqdm import tqdm

    model, tokenizer = load_model(path)
    use_chat_template = not args.no_chat_template and bool(getattr(tokenizer, "chat_template", None))
    if not args.no_chat_template and not use_chat_template:
        print(f"note: {path} has no chat template; using the raw prompt", file=sys.stderr)
    # Locate everything before the slow part, so bad input fails at once.
    tokenized = [tokenize_prompt(instance, tokenizer, use_chat_template) for instance in instances]
    queries = [line_queries(instance, t) for instance, t in zip(instances, tokenized)]
    max_positions = getattr(model.config, "max_position_embeddings", None)
    for instance, where in zip(instances, queries):
        if max_positions is not None and where.positions.size and where.positions.max() >= max_positions:
            raise ValueError(f"instance {instance.id} needs {int(where.positions.max()) + 1} positions, more than "
                             f"the {max_positions} of {path}")
    statistics, hidden = [], []
    for instance, t, where in tqdm(list(zip(instances, tokenized, queries)), desc=f"probe features ({label})",
                                   unit="instance", file=sys.stderr):
        found = line_features(model, t.input_ids, where, hidden_layers=args.hidden_layer,
                              prefill_chunk=args.prefill_chunk)
        statistics.append(statistics_from_masses(found.masses, where.spans))
        hidden.append(found.hidden)
    rows = Rows(statistics=np.concatenate(statistics),
                hidden={layer: np.concatenate([h[layer] for h in hidden]) for layer in args.hidden_layer},
                position=np.concatenate([position_features(inst, q) for inst, q in zip(instances, queries)]),
                labels=np.concatenate([q.labels for q in queries]),
                groups=np.concatenate([np.full(len(q.labels), i) for i, q in enumerate(queries)]),
                domains=np.concatenate([np.full(len(q.labels), inst.domain) for inst, q in zip(instances, queries)]))
    return rows, queries, use_chat_template


def _versions() -> dict[str, str]:
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("reverse-needle", "torch", "transformers", "scikit-learn", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def run_probe(args: argparse.Namespace, argv: Sequence[str]) -> dict[str, Any]:
    from absence_tasks.loading import load_instances
    from absence_tasks.models import load_checkpoint_or_die

    _check_options(args)
    out = Path(args.out)
    check_output_dir(out)
    models = parse_models(args)
    loaded = select_instances(load_instances(args.data, args.domain), args.n)
    instances = [i for i in loaded if i.variant != "needle"]
    if not instances:
        raise DataError(f"{args.data}: no omission or placeholder instances to probe (needle instances are skipped)")
    # Every checkpoint is checked before the first slow run, and they must share one layer x head grid.
    shapes = {label: _model_shape(load_checkpoint_or_die(path)) for label, path in models.items()}
    if len({tuple(s.values()) for s in shapes.values()}) > 1:
        raise ValueError(f"the models differ in shape ({shapes}); transfer needs one architecture")
    shape = next(iter(shapes.values()))
    if any(layer > shape["n_layers"] for layer in args.hidden_layer):
        raise ValueError(f"--hidden-layer {max(args.hidden_layer)}: the models have {shape['n_layers']} layers")

    started = time.perf_counter()
    rows_by_model: dict[str, Rows] = {}
    chat_template = None
    reference_queries = None
    for label, path in models.items():
        rows, queries, chat_template = extract_rows(path, instances, args, label)
        if reference_queries is not None and any(not np.array_equal(a.positions, b.positions)
                                                 for a, b in zip(reference_queries, queries)):
            raise ValueError(f"{path}: its tokenizer puts the recitation lines at other positions than the first "
                             f"model's; the models must share a tokenizer")
        reference_queries = queries
        rows_by_model[label] = rows
    extraction_seconds = time.perf_counter() - started

    first = next(iter(rows_by_model.values()))
    if not first.labels.any():
        raise DataError(f"{args.data}: no recitation line follows a gap; nothing to probe")
    folds = grouped_folds(first.groups, args.folds)
    feature_sets = ["attention", "label_free", *(f"hidden_{layer}" for layer in args.hidden_layer), "position"]
    results: dict[str, dict[str, Any]] = {}
    coefficients: dict[str, np.ndarray] = {}
    for label, rows in rows_by_model.items():
        results[label] = {"path": models[label], "feature_sets": {}}
        for feature_set in feature_sets:
            results[label]["feature_sets"][feature_set] = evaluate_feature_set(rows, feature_set, folds, args, label)
        probe = fit_probe(rows.features("attention"), rows.labels, args.C)
        coefficients[label] = probe[-1].coef_[0].reshape(shape["n_layers"], shape["n_heads"], len(STATISTICS))
        results[label]["top_heads"] = top_heads(coefficients[label], args.top_heads, rows)

    # Transfer between models: the same instance folds, trained on one model's features, scored on another's.
    model_transfer = None
    if len(rows_by_model) > 1:
        model_transfer = {}
        labels = first.labels
        for feature_set in feature_sets:
            model_transfer[feature_set] = {}
            for train_label in rows_by_model:
                model_transfer[feature_set][train_label] = {}
                for test_label in rows_by_model:
                    scores = out_of_fold_scores(rows_by_model[train_label].features(feature_set),
                                                rows_by_model[test_label].features(feature_set), labels, folds, args.C)
                    model_transfer[feature_set][train_label][test_label] = bootstrap_metrics(
                        labels, scores, first.groups, _rng(args.seed, "models", feature_set, train_label, test_label),
                        args.bootstrap)

    n_rows_by_domain = Counter(first.domains.tolist())
    gaps_by_domain = Counter(first.domains[first.labels].tolist())
    summary = {
        "command": shlex.join(["python", "-m", "absence_tasks.analysis.probe", *argv]),
        "versions": _versions(),
        "data": str(args.data),
        "models": {label: {"path": path, **shapes[label]} for label, path in models.items()},
        "settings": {"chat_template": chat_template, "n_per_domain": args.n, "seed": args.seed, "folds": len(folds),
                     "C": args.C, "bootstrap_resamples": args.bootstrap, "confidence_level": CONFIDENCE_LEVEL,
                     "hidden_layers": args.hidden_layer, "prefill_chunk": args.prefill_chunk,
                     "query": "the first token of each recitation line that has text"},
        "statistics": STATISTIC_DESCRIPTIONS,
        "feature_sets": {fs: FEATURE_SET_DESCRIPTIONS.get(fs) or HIDDEN_DESCRIPTION.format(layer=fs.split("_")[1])
                         for fs in feature_sets},
        "label": "1 when one or more original lines are missing right before the line (placeholder variant: the "
                 "placeholder line itself); needle instances skipped",
        "n_instances": len(instances),
        "n_needle_instances_skipped": len(loaded) - len(instances),
        "variants": dict(sorted(Counter(i.variant for i in instances).items())),
        "n_rows": int(len(first.labels)),
        "n_gaps": int(first.labels.sum()),
        "base_rate": float(first.labels.mean()),
        "n_trailing_gaps_unlabelled": int(sum(q.n_trailing_gaps for q in reference_queries)),
        "per_domain_counts": {d: {"n_instances": sum(i.domain == d for i in instances), "n_rows": n_rows_by_domain[d],
                                  "n_gaps": gaps_by_domain[d], "base_rate": gaps_by_domain[d] / n_rows_by_domain[d]}
                              for d in DOMAINS if n_rows_by_domain[d]},
        "results": results,
        "model_transfer": model_transfer,
    }

    out.mkdir(parents=True, exist_ok=True)
    save_figure(auroc_figure(results, feature_sets), out / "auroc.png")
    save_figure(coefficient_figure(coefficients), out / "coefficients.png")
    atomic_write_text(out / SUMMARY_NAME, json_dumps(summary))
    print(f"{PROGRAM}: feature extraction took {extraction_seconds:.0f} s", file=sys.stderr)
    return summary


def json_dumps(summary: dict[str, Any]) -> str:
    import json

    return json.dumps(json_ready(summary), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# ---- command line --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m absence_tasks.analysis.probe",
        description="Fit a linear probe that reads, from a checkpoint's attention at each recitation line, whether "
                    "original lines are missing right before it (AUROC, AP, transfer, top heads).")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="local Hugging Face checkpoint directory")
    which.add_argument("--models", nargs="+", metavar="LABEL=PATH",
                       help="several checkpoints of one architecture (adds the transfer matrix between them)")
    parser.add_argument("--data", required=True, help="instances JSONL (ours or upstream AbsenceBench)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--n", type=int, help="at most N instances per domain, in file order (default: all)")
    parser.add_argument("--domain", choices=DOMAINS, help="domain of an upstream AbsenceBench file")
    parser.add_argument("--label", help="with --model: its name in the outputs (default: the folder's name)")
    parser.add_argument("--hidden-layer", type=int, nargs="+", default=[], metavar="N",
                        help="also probe the hidden state after layer N (0 = the query token's embedding; "
                             "several layers may be given)")
    parser.add_argument("--no-chat-template", action="store_true", help="feed the raw prompt, no chat template")
    parser.add_argument("--folds", type=int, default=5, help="grouped cross-validation folds (by instance)")
    parser.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    parser.add_argument("--top-heads", type=int, default=10, help="how many of the largest coefficients to list")
    parser.add_argument("--prefill-chunk", type=int, default=256,
                        help="prompt tokens per forward step (bounds the eager attention memory)")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    def run() -> None:
        started = time.perf_counter()
        summary = run_probe(args, argv)
        for label, result in summary["results"].items():
            overall = result["feature_sets"]["attention"]["overall"]
            print(f"{Path(args.out) / SUMMARY_NAME}: {label}: {summary['n_instances']} instances, "
                  f"{summary['n_rows']} lines, base rate {summary['base_rate']:.3f}; attention probe AUROC "
                  f"{overall['auroc']}, AP {overall['average_precision']} ({time.perf_counter() - started:.0f} s)")

    return run_command(PROGRAM, run)


if __name__ == "__main__":
    sys.exit(main())
