"""The probe itself: feature sets of the rows, a class-balanced logistic regression, out-of-fold
scores by instance, AUROC / average precision with bootstrap CIs over instances, domain transfer and
the largest coefficients."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from absence_tasks.schema import DOMAINS, DataError, Instance
from analysis.common import CONFIDENCE_LEVEL
from analysis.probe.features import STATISTICS, LineQueries
from analysis.probe.options import ProbeOptions

LABEL_FREE_STATISTICS = ("original", "lookback_ratio")
FEATURE_SET_DESCRIPTIONS = {
    "attention": "all four statistics of every layer x head",
    "label_free": "original and lookback_ratio of every layer x head (no gold alignment needed)",
    "position": "control without the model: the line's index over the modified copy's length, and the modified copy "
                "tokens up to its first token",
}
HIDDEN_DESCRIPTION = "the hidden state after layer {layer} at the line's first token (0 = the token's embedding)"


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
    """[n, 2]: each probed line's index over the modified copy's length, and the modified copy tokens so far."""
    modified_tokens = queries.spans[:, 3, 1] - queries.spans[:, 3, 0]
    return np.stack([queries.line_indices / len(instance.modified_lines), modified_tokens], axis=1).astype(np.float64)


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


def paired_auroc_difference(labels: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, groups: np.ndarray,
                            rng: np.random.Generator, n_resamples: int) -> dict[str, Any]:
    """AUROC(b) - AUROC(a) on the same rows (two models' probes of the same lines), with a percentile
    bootstrap CI that resamples instances once for both sides: the paired test of "more readable"."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return {"difference": None, "ci": None, "bootstrap_resamples_used": 0}
    rows_of = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    resampled = []
    for _ in range(n_resamples):
        rows = np.concatenate([rows_of[i] for i in rng.integers(0, len(rows_of), size=len(rows_of))])
        if len(np.unique(labels[rows])) == 2:
            resampled.append(roc_auc_score(labels[rows], scores_b[rows]) - roc_auc_score(labels[rows], scores_a[rows]))
    tail = (1 - CONFIDENCE_LEVEL) / 2
    resampled = np.array(resampled)
    return {"difference": float(roc_auc_score(labels, scores_b) - roc_auc_score(labels, scores_a)),
            "ci": [float(v) for v in np.quantile(resampled, [tail, 1 - tail])] if resampled.size else None,
            # The share of resamples on the other side of zero, doubled: a two-sided bootstrap p-value.
            "p_value": float(min(1.0, 2 * min((resampled <= 0).mean(), (resampled >= 0).mean())))
            if resampled.size else None,
            "bootstrap_resamples_used": int(resampled.size)}


def comparison_rng(seed: int, *names: str) -> np.random.Generator:
    """A generator per named comparison, so one result's CI does not depend on which others were computed."""
    return np.random.default_rng([seed, zlib.crc32("/".join(names).encode("utf-8"))])


def evaluate_feature_set(rows: Rows, feature_set: str, folds: list[tuple[np.ndarray, np.ndarray]],
                         options: ProbeOptions, label: str, scores: np.ndarray | None = None) -> dict[str, Any]:
    """Pooled grouped cross-validation (overall and per domain) and the domain transfer matrix; `scores`:
    the out-of-fold scores of these folds when the caller has them already."""
    features = rows.features(feature_set)
    if scores is None:
        scores = out_of_fold_scores(features, features, rows.labels, folds, options.C)

    def metrics(mask: np.ndarray, row_scores: np.ndarray, *names: str) -> dict[str, Any]:
        return bootstrap_metrics(rows.labels[mask], row_scores[mask], rows.groups[mask],
                                 comparison_rng(options.seed, label, feature_set, *names), options.bootstrap)

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
            local_folds = [(within[a], within[b]) for a, b in grouped_folds(rows.groups[within], options.folds)]
            within_scores = out_of_fold_scores(features, features, rows.labels, local_folds, options.C)
            # Off the diagonal every training row is of another domain, so one probe on all of them serves.
            across_scores = fit_probe(features[train], rows.labels[train], options.C).decision_function(features)
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
