"""Bootstrap statistics for the leaderboard (and the analysis): pure functions, each with its own seeded
numpy Generator; scipy.stats.bootstrap draws the resamples.

* `bootstrap_ci`      – percentile CI of a mean (one task's per-instance scores);
* `average_ci`        – CI of the average of several task means (upstream's "Average" over domains),
                        resampling within each task so every task keeps its own size;
* `paired_bootstrap`  – difference of two rows on the instances both scored, resampled in pairs, with a
                        two-sided p-value-like share of resamples on the far side of zero;
  `paired_bootstrap_average` – the same for the average over tasks (pairs resampled within each task);
  both also give `minimum_detectable_difference` (80% power at the test's level, from the bootstrap SE);
* `holm_adjusted`     – Holm's step-down adjustment of a family's p-values (several variants tested against
                        one baseline), which controls the family-wise error rate without independence.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import scipy.stats

# Resamples are drawn in batches of at most this many entries, so a large task cannot exhaust memory
# (10,000 resamples × 1,000 instances would otherwise be 80 MB at once).
MAX_CHUNK_ENTRIES = 2_000_000
# The power at which a paired comparison states the smallest difference it could detect.
POWER = 0.8


@dataclass(frozen=True)
class Estimate:
    value: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class PairedDifference:
    """Mean of (a - b) over n shared instances, its percentile CI, a two-sided bootstrap p-value and the
    smallest true difference these n pairs would detect with `POWER` at the test's level."""

    mean_difference: float
    ci_low: float
    ci_high: float
    n: int
    p_value: float
    minimum_detectable_difference: float


def holm_adjusted(p_values: Sequence[float]) -> list[float]:
    """Holm (1979): sort the m p-values ascending, multiply the i-th smallest (from 0) by m - i, carry the
    running maximum so the order is kept, cap at 1; returned in the input's order."""
    p = np.asarray(p_values, dtype=float)
    if p.ndim != 1 or np.any((p < 0) | (p > 1)) or not np.all(np.isfinite(p)):
        raise ValueError("p-values must be a list of numbers in [0, 1]")
    order = np.argsort(p, kind="stable")
    scaled = np.maximum.accumulate(p[order] * (len(p) - np.arange(len(p))))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(scaled, 1.0)
    return adjusted.tolist()


def _as_scores(values: Sequence[float], what: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what}: need a non-empty list of numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what}: scores must be finite numbers")
    return array


def _check_settings(n_resamples: int, confidence: float) -> None:
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")


def resampled_means(rng: np.random.Generator, values: np.ndarray, n_resamples: int) -> np.ndarray:
    """Means of `n_resamples` samples drawn with replacement from `values`, each as large as `values`
    (scipy.stats.bootstrap's distribution; the interval is taken from it by `_interval`)."""
    if values.size == 1:  # scipy wants two observations; every resample of one value is that value
        return np.full(n_resamples, float(values[0]))
    result = scipy.stats.bootstrap((values,), np.mean, n_resamples=n_resamples, method="percentile",
                                   batch=max(1, MAX_CHUNK_ENTRIES // values.size), vectorized=True, axis=-1,
                                   rng=rng)
    return result.bootstrap_distribution


def _interval(resampled: np.ndarray, confidence: float, lowest: float, highest: float) -> tuple[float, float]:
    """Percentile interval, clipped to the range the statistic can take: a mean never leaves
    [min, max] of its values, but summing floats can drift by an ulp (constant data must give a zero-width CI)."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return float(np.clip(low, lowest, highest)), float(np.clip(high, lowest, highest))


def bootstrap_ci(values: Sequence[float], n_resamples: int = 10_000, confidence: float = 0.95,
                 seed: int | np.random.Generator = 0) -> Estimate:
    """Mean of `values` with a percentile bootstrap CI. `seed` may be a Generator, which then draws on
    from where it is (the attention analysis takes several intervals from one stream)."""
    _check_settings(n_resamples, confidence)
    scores = _as_scores(values, "bootstrap_ci")
    lowest, highest = float(scores.min()), float(scores.max())
    means = resampled_means(np.random.default_rng(seed), scores, n_resamples)
    low, high = _interval(means, confidence, lowest, highest)
    return Estimate(float(np.clip(scores.mean(), lowest, highest)), low, high)


def average_ci(values_by_task: Sequence[Sequence[float]], n_resamples: int = 10_000, confidence: float = 0.95,
               seed: int = 0) -> Estimate:
    """Average of the task means, with a CI from resampling each task's instances separately and
    averaging the resampled task means (tasks are fixed, instances are the sample)."""
    _check_settings(n_resamples, confidence)
    if not values_by_task:
        raise ValueError("average_ci: no tasks")
    tasks = [_as_scores(values, f"average_ci task {i}") for i, values in enumerate(values_by_task)]
    rng = np.random.default_rng(seed)
    averages = np.mean([resampled_means(rng, scores, n_resamples) for scores in tasks], axis=0)
    lowest = float(np.mean([scores.min() for scores in tasks]))
    highest = float(np.mean([scores.max() for scores in tasks]))
    value = float(np.clip(np.mean([scores.mean() for scores in tasks]), lowest, highest))
    low, high = _interval(averages, confidence, lowest, highest)
    return Estimate(value, low, high)


def _shared_differences(a: Mapping[str, float], b: Mapping[str, float], what: str) -> np.ndarray:
    shared = sorted(set(a) & set(b))  # sorted: the same pairs in the same order on every run
    if not shared:
        raise ValueError(f"{what}: the two rows share no instances")
    return _as_scores([a[i] for i in shared], what) - _as_scores([b[i] for i in shared], what)


def _paired_result(resampled: np.ndarray, observed: float, lowest: float, highest: float, n: int,
                   confidence: float) -> PairedDifference:
    low, high = _interval(resampled, confidence, lowest, highest)
    # Two-sided: twice the smaller share of resamples at or beyond zero on either side, at most 1.
    p_value = min(1.0, 2 * min(float(np.mean(resampled <= 0)), float(np.mean(resampled >= 0))))
    return PairedDifference(float(np.clip(observed, lowest, highest)), low, high, n, p_value,
                            minimum_detectable_difference(resampled, confidence))


def minimum_detectable_difference(resampled: np.ndarray, confidence: float = 0.95, power: float = POWER) -> float:
    """The smallest true mean difference a two-sided test at level 1 - confidence detects with `power`,
    from the bootstrap standard error of the observed difference (normal approximation):
    (z_{1 - alpha/2} + z_power) · SE. With n pairs it shrinks as 1/sqrt(n), so a null result says how
    null it is: a difference below it could well have been missed."""
    norm = scipy.stats.norm
    return float((norm.ppf(1 - (1 - confidence) / 2) + norm.ppf(power)) * np.std(resampled))


def paired_bootstrap(a: Mapping[str, float], b: Mapping[str, float], n_resamples: int = 10_000,
                     confidence: float = 0.95, seed: int = 0) -> PairedDifference:
    """Mean of a[i] - b[i] over the instance ids both rows have, resampling the pairs."""
    _check_settings(n_resamples, confidence)
    differences = _shared_differences(a, b, "paired_bootstrap")
    resampled = resampled_means(np.random.default_rng(seed), differences, n_resamples)
    return _paired_result(resampled, float(differences.mean()), float(differences.min()),
                          float(differences.max()), differences.size, confidence)


def paired_bootstrap_average(a_by_task: Mapping[str, Mapping[str, float]],
                             b_by_task: Mapping[str, Mapping[str, float]], n_resamples: int = 10_000,
                             confidence: float = 0.95, seed: int = 0) -> PairedDifference:
    """Difference of the averages over the tasks both rows have (each task's mean difference over its
    shared instances, averaged), resampling pairs within each task."""
    _check_settings(n_resamples, confidence)
    tasks = sorted(set(a_by_task) & set(b_by_task))
    if not tasks:
        raise ValueError("paired_bootstrap_average: the two rows share no tasks")
    differences = [_shared_differences(a_by_task[t], b_by_task[t], f"paired_bootstrap_average {t}") for t in tasks]
    rng = np.random.default_rng(seed)
    resampled = np.mean([resampled_means(rng, d, n_resamples) for d in differences], axis=0)
    return _paired_result(resampled, float(np.mean([d.mean() for d in differences])),
                          float(np.mean([d.min() for d in differences])),
                          float(np.mean([d.max() for d in differences])),
                          sum(d.size for d in differences), confidence)
