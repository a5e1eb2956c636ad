"""The probe against the model's own answers: does a gap that is readable in the model's attention also
get named in its answer, and do instances whose gaps are more readable get a higher F1?

Inputs: the probe's out-of-fold scores of one model (one per probed line, from `classifier`), and the
lm-eval samples that model logged on the same instances (`--log_samples`; `--answers LABEL=DIR`).

Per instance:

* ``readability`` – the AUROC of the probe's scores *within* the instance (its gap lines against its other
  lines); undefined when the instance has no probed gap line;
* ``f1`` – the sample's F1, as lm-eval logged it;
* per gap line, whether the probe *finds* it (its score is among the instance's top g, g = the number of
  gap lines of the instance: a threshold that needs no calibration) and whether the answer *names* it (it
  lists one of the lines missing right before it, matched as the task's scoring matches lines).

Summary per model: Spearman's rho of readability against F1 (over instances, and per domain) with a
percentile bootstrap CI over instances, and the four counts of found x named over gap lines; "found, not
named" is the read-out failure: the information is there, the answer does not use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from absence_tasks.schema import DOMAINS, DataError, Instance
from absence_tasks.scoring import normalize_line, score_response
from analysis.attention.positions import find_gaps
from analysis.common import CONFIDENCE_LEVEL
from analysis.probe.features import LineQueries


@dataclass(frozen=True)
class InstanceReadout:
    id: str
    domain: str
    f1: float                    # the logged sample's F1
    readability: float | None    # within-instance AUROC of the probe's scores; None without a gap line
    n_gap_lines: int
    found_named: int             # gap lines the probe finds and the answer names
    found_not_named: int
    named_not_found: int
    neither: int


# ---- the answers ---------------------------------------------------------------------------------

def read_answers(path: str | Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """instance id -> (file, lm-eval logged sample), from one samples_*.jsonl file or every one under a folder."""
    from leaderboard.publish import LeaderboardError, read_samples

    path = Path(path)
    if path.is_dir():
        files = sorted(path.rglob("samples_*.jsonl"))
        if not files:
            raise DataError(f"{path}: no lm-eval samples_*.jsonl under it (run lm-eval with --log_samples)")
    elif path.is_file():
        files = [path]
    else:
        raise DataError(f"{path}: no such file or folder")
    answers: dict[str, tuple[Path, dict[str, Any]]] = {}
    for file in files:
        try:
            samples = read_samples(file)
        except LeaderboardError as e:
            raise DataError(str(e)) from None
        for sample in samples:
            instance_id = sample["doc"]["id"]
            if instance_id in answers:
                raise DataError(f"{file}: instance {instance_id} is also in {answers[instance_id][0]}")
            answers[instance_id] = (file, sample)
    return answers


def _response(file: Path, sample: dict[str, Any]) -> str:
    """The answer lm-eval scored: the filtered response of a generate_until request."""
    responses = sample.get("filtered_resps")
    if isinstance(responses, list) and responses and isinstance(responses[0], list):
        responses = responses[0]   # lm-eval nests the responses of one request when it logs several filters
    if not isinstance(responses, list) or not responses or not isinstance(responses[0], str):
        raise DataError(f"{file}: sample {sample['doc']['id']} has no text response in filtered_resps")
    return responses[0]


def answers_of(instances: Sequence[Instance], answers_path: str) -> list[tuple[float, set[str]]]:
    """Per probed instance, (the logged F1, the normalised lines its answer got right), from the lm-eval
    samples at `answers_path`; DataError when an instance has no answer or the sample is of another instance."""
    answers = read_answers(answers_path)
    found = []
    for instance in instances:
        if instance.id not in answers:
            raise DataError(f"{answers_path}: no answer to instance {instance.id} (the samples must cover every "
                            f"probed instance)")
        file, sample = answers[instance.id]
        doc = sample["doc"]
        if doc.get("original_lines") != list(instance.original_lines) or doc.get("modified_lines") != list(
                instance.modified_lines):
            raise DataError(f"{file}: instance {instance.id} is not the probed instance of that id (its lines differ)")
        matched = score_response(instance, _response(file, sample)).matched_lines
        found.append((float(sample["f1"]), {normalize_line(line) for line in matched}))
    return found


# ---- per instance --------------------------------------------------------------------------------

def within_instance_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def instance_readout(instance: Instance, queries: LineQueries, scores: np.ndarray, f1: float,
                     matched: set[str]) -> InstanceReadout:
    """Readability, F1 and found x named of one instance; `scores` are its rows' out-of-fold probe scores."""
    positive_rows = np.flatnonzero(queries.labels)
    order = np.argsort(-scores, kind="stable")
    found_rows = set(order[:len(positive_rows)].tolist())
    # The missing lines right before each gap line: omission -> the line after the gap; placeholder -> the
    # placeholder lines themselves.
    missing_before: dict[int, tuple[int, ...]] = {}
    for gap in find_gaps(instance):
        for line in (gap.placeholders if instance.variant == "placeholder" else (gap.after,)):
            if line is not None:
                missing_before[line] = gap.absent
    counts = {"found_named": 0, "found_not_named": 0, "named_not_found": 0, "neither": 0}
    for row in positive_rows:
        absent = missing_before[int(queries.line_indices[row])]
        named = any(normalize_line(instance.original_lines[i]) in matched for i in absent)
        found = int(row) in found_rows
        key = ("found_named" if named else "found_not_named") if found else ("named_not_found" if named else "neither")
        counts[key] += 1
    return InstanceReadout(id=instance.id, domain=instance.domain, f1=f1,
                           readability=within_instance_auroc(queries.labels, scores),
                           n_gap_lines=int(len(positive_rows)), **counts)


# ---- over instances ------------------------------------------------------------------------------

def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman's rho (average ranks for ties); None when either side is constant or has < 3 values."""
    from scipy.stats import rankdata

    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(rankdata(x), rankdata(y))[0, 1])


def spearman_with_ci(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, n_resamples: int) -> dict[str, Any]:
    """rho and a percentile bootstrap CI over instances (resamples with a constant side are left out)."""
    rho = spearman(x, y)
    resampled = []
    if rho is not None:
        for _ in range(n_resamples):
            pick = rng.integers(0, len(x), size=len(x))
            value = spearman(x[pick], y[pick])
            if value is not None:
                resampled.append(value)
    tail = (1 - CONFIDENCE_LEVEL) / 2
    ci = [float(v) for v in np.quantile(resampled, [tail, 1 - tail])] if resampled else None
    return {"n_instances": int(len(x)), "spearman_rho": rho, "spearman_rho_ci": ci,
            "bootstrap_resamples_used": len(resampled)}


def fraction_with_ci(numerators: np.ndarray, denominators: np.ndarray, rng: np.random.Generator,
                     n_resamples: int) -> dict[str, Any]:
    """sum(numerators) / sum(denominators) over instances, with a percentile bootstrap CI over instances."""
    total = denominators.sum()
    if total == 0:
        return {"value": None, "ci": None}
    resampled = []
    for _ in range(n_resamples):
        pick = rng.integers(0, len(numerators), size=len(numerators))
        if denominators[pick].sum():
            resampled.append(numerators[pick].sum() / denominators[pick].sum())
    tail = (1 - CONFIDENCE_LEVEL) / 2
    return {"value": float(numerators.sum() / total),
            "ci": [float(v) for v in np.quantile(resampled, [tail, 1 - tail])] if resampled else None}


def summarize_readout(readouts: Sequence[InstanceReadout], rng_for: Any, n_resamples: int) -> dict[str, Any]:
    """Readability vs F1 (overall and per domain) and the found x named counts; `rng_for(*names)` gives the
    generator of each named statistic."""
    scored = [r for r in readouts if r.readability is not None]

    def correlation(selected: Sequence[InstanceReadout], *names: str) -> dict[str, Any]:
        return spearman_with_ci(np.array([r.readability for r in selected]), np.array([r.f1 for r in selected]),
                                rng_for("spearman", *names), n_resamples)

    cells = ("found_named", "found_not_named", "named_not_found", "neither")
    totals = {cell: int(sum(getattr(r, cell) for r in readouts)) for cell in cells}
    gap_lines = np.array([r.n_gap_lines for r in readouts])
    found = np.array([r.found_named + r.found_not_named for r in readouts])

    def share(numerators: np.ndarray, denominators: np.ndarray, name: str) -> dict[str, Any]:
        return fraction_with_ci(numerators, denominators, rng_for("fraction", name), n_resamples)

    return {
        "n_instances": len(readouts),
        "n_instances_with_readability": len(scored),
        "mean_readability": float(np.mean([r.readability for r in scored])) if scored else None,
        "mean_f1": float(np.mean([r.f1 for r in readouts])) if readouts else None,
        "readability_vs_f1": {
            "overall": correlation(scored, "overall"),
            "per_domain": {d: correlation([r for r in scored if r.domain == d], "domain", d)
                           for d in DOMAINS if any(r.domain == d for r in scored)},
        },
        "gap_lines": {
            "n": int(gap_lines.sum()), **totals,
            "found_fraction": share(found, gap_lines, "found"),
            "named_fraction": share(np.array([r.found_named + r.named_not_found for r in readouts]), gap_lines,
                                    "named"),
            # Of the gap lines the probe finds, how many the answer leaves out: the read-out failure.
            "not_named_among_found": share(np.array([r.found_not_named for r in readouts]), found,
                                           "not_named_among_found"),
        },
        "per_instance": [asdict(r) for r in readouts],
    }


def readout(instances: Sequence[Instance], queries: Sequence[LineQueries], scores: np.ndarray, groups: np.ndarray,
            answers: Sequence[tuple[float, set[str]]], rng_for: Any, n_resamples: int) -> dict[str, Any]:
    """The read-out comparison of one model: its probe scores (all rows; `groups`: the instance number of
    each row) against its answers (`answers_of`)."""
    readouts = [instance_readout(instance, where, scores[groups == number], f1, matched)
                for number, (instance, where, (f1, matched)) in enumerate(zip(instances, queries, answers))]
    return summarize_readout(readouts, rng_for, n_resamples)
