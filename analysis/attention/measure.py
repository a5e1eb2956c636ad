"""The gap-attention ratio: baselines, the model run that reduces attention on the fly, the statistics
over instances; `run_analysis`, which writes summary.json and the figures, and `run_compare`, which
draws earlier runs side by side."""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from absence_tasks.schema import DOMAINS, DataError, atomic_write_text, iter_json_records
from analysis.attention.figures import heatmap_grid, safe_file_part, strip_figure
from analysis.attention.positions import GapPositions, gap_document_is_original, gap_positions
from analysis.common import CONFIDENCE_LEVEL, check_output_dir, json_ready, load_model, save_figure, select_instances
from leaderboard.stats import bootstrap_ci, paired_bootstrap

MEASURES = ("flank", "omitted")
MEASURE_DESCRIPTIONS = {
    "flank": "tokens flanking each gap in the document that lacks the line (placeholder variant: the "
             "placeholder's tokens); baseline drawn from that document",
    "omitted": "tokens of the missing line in the document that has it (needle: the inserted line in the "
               "modified document); baseline drawn from that document",
}
SUMMARY_NAME = "summary.json"


# ---- the ratio -----------------------------------------------------------------------------------

def draw_baseline_positions(region: np.ndarray, target: np.ndarray, n_draws: int,
                            rng: np.random.Generator) -> np.ndarray:
    """`n_draws` random sets of len(target) positions from `region` ([n_draws, k]), each without
    replacement. The target positions themselves are avoided while the region has enough others."""
    k = len(target)
    others = np.setdiff1d(region, target)
    pool = others if len(others) >= k else np.asarray(region)
    if k == 0 or len(pool) < k:
        return np.empty((n_draws, 0), dtype=np.int64)
    return np.stack([rng.choice(pool, size=k, replace=False) for _ in range(n_draws)]).astype(np.int64)


def position_weights(n_keys: int, target: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """[n_keys, 2]: column 0 selects the target positions, column 1 is the mean selection of the draws,
    so (attention row @ weights) gives the target mass and the mean baseline mass in one product."""
    weights = np.zeros((n_keys, 2))
    weights[np.asarray(target, dtype=np.int64), 0] = 1.0
    if draws.size:
        np.add.at(weights[:, 1], draws.ravel(), 1.0 / len(draws))
    return weights


def ratio_of_masses(target_mass: np.ndarray, baseline_mass: np.ndarray) -> np.ndarray:
    """target / baseline, NaN where the baseline is zero (nothing to compare with)."""
    target_mass, baseline_mass = np.asarray(target_mass, dtype=np.float64), np.asarray(baseline_mass, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(baseline_mass > 0, target_mass / baseline_mass, np.nan)


def gap_attention_ratio(rows: np.ndarray, target: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The gap-attention ratio of attention rows [..., n_keys] (one value per row): mass on `target`
    over the mean mass on the `draws` (from `draw_baseline_positions`)."""
    rows = np.asarray(rows, dtype=np.float64)
    masses = rows @ position_weights(rows.shape[-1], target, draws)
    return ratio_of_masses(masses[..., 0], masses[..., 1])


# ---- running the model ---------------------------------------------------------------------------

@dataclass
class AnswerAttention:
    masses: np.ndarray             # [layers, heads, n_weight_columns], mean over answer-side queries
    n_queries: int
    generated: list[int]
    strip: np.ndarray | None       # [layers, len(strip_positions)], mean over heads and queries


def answer_attention(model: Any, input_ids: Sequence[int], weights: np.ndarray, *,
                     strip_positions: np.ndarray | None = None, max_new_tokens: int = 0,
                     eos_ids: Iterable[int] = (), prefill_chunk: int = 512) -> AnswerAttention:
    """Attention of the answer-side queries, reduced on the fly.

    `weights` [n_prompt, S] turns each attention row over the prompt into S masses. The prompt except
    its last token is prefilled in chunks (eager attention over a chunk is [heads, chunk, keys], and no
    attentions are returned); then the last prompt token and, up to `max_new_tokens`, each greedily
    generated token that emits another one are fed one at a time with `output_attentions=True`."""
    import torch

    ids = torch.tensor([list(input_ids)], dtype=torch.long)
    n_prompt = ids.shape[1]
    weight_matrix = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))
    strip_index = None if strip_positions is None else torch.from_numpy(np.asarray(strip_positions, dtype=np.int64))
    eos_ids = set(eos_ids)
    cache = None
    mass_sum = strip_sum = None
    generated: list[int] = []
    n_queries = 0
    with torch.inference_mode():
        for start in range(0, n_prompt - 1, prefill_chunk):
            out = model(input_ids=ids[:, start:min(start + prefill_chunk, n_prompt - 1)], past_key_values=cache,
                        use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
        step_input = ids[:, n_prompt - 1:]
        while True:
            out = model(input_ids=step_input, past_key_values=cache, use_cache=True, output_attentions=True)
            cache = out.past_key_values
            # Each layer: [batch 1, heads, 1 query, keys]; keys beyond the prompt (generated tokens) are not measured.
            rows = torch.stack([layer[0, :, -1, :n_prompt] for layer in out.attentions]).float()
            masses = rows @ weight_matrix
            mass_sum = masses if mass_sum is None else mass_sum + masses
            if strip_index is not None:
                over_document = rows[:, :, strip_index].mean(dim=1)
                strip_sum = over_document if strip_sum is None else strip_sum + over_document
            n_queries += 1
            if len(generated) == max_new_tokens:
                break
            token = int(out.logits[0, -1].argmax())
            generated.append(token)
            if token in eos_ids or len(generated) == max_new_tokens:
                break
            step_input = torch.tensor([[token]], dtype=torch.long)
    return AnswerAttention(
        masses=(mass_sum / n_queries).double().numpy(), n_queries=n_queries, generated=generated,
        strip=None if strip_sum is None else (strip_sum / n_queries).double().numpy())


def instance_rng(seed: int, instance_id: str) -> np.random.Generator:
    """A generator per instance, so an instance's baseline does not depend on which others are analysed."""
    return np.random.default_rng([seed, zlib.crc32(instance_id.encode("utf-8"))])


def measure_weights(positions: GapPositions, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """[n_prompt, 4]: flank target, flank baseline, omitted target, omitted baseline."""
    n_keys = len(positions.input_ids)
    flank_draws = draw_baseline_positions(positions.gap_region, positions.flank, n_draws, rng)
    omitted_draws = draw_baseline_positions(positions.present_region, positions.omitted, n_draws, rng)
    return np.hstack([position_weights(n_keys, positions.flank, flank_draws),
                      position_weights(n_keys, positions.omitted, omitted_draws)])


def ratios_from_masses(masses: np.ndarray) -> dict[str, np.ndarray]:
    """The two measures' ratio matrices from the [..., 4] masses of `measure_weights`."""
    return {"flank": ratio_of_masses(masses[..., 0], masses[..., 1]),
            "omitted": ratio_of_masses(masses[..., 2], masses[..., 3])}


# ---- statistics ----------------------------------------------------------------------------------

def finite_mean_ci(values: np.ndarray, rng: np.random.Generator, n_resamples: int = 1000,
                   level: float = CONFIDENCE_LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean over the finite values (None when there are none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    estimate = bootstrap_ci(values, n_resamples, level, seed=rng)
    return estimate.ci_low, estimate.ci_high


def _nanmean(values: np.ndarray, axis: Any = None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice is NaN, which is what we want
        return np.nanmean(values, axis=axis)


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Pearson and Spearman correlation over the pairs where both are finite (NaN below 3 pairs or for a
    constant variable, where scipy would only warn)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    both = np.isfinite(x) & np.isfinite(y)
    x, y = x[both], y[both]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": int(x.size), "pearson": math.nan, "spearman": math.nan}
    return {"n": int(x.size), "pearson": float(scipy.stats.pearsonr(x, y).statistic),
            "spearman": float(scipy.stats.spearmanr(x, y).statistic)}


def log_ratios(ratios: np.ndarray) -> np.ndarray:
    """log(ratio), NaN where the ratio is NaN or not positive. Ratios are averaged as logarithms (geometric
    means): a head or instance whose baseline got almost no attention has a ratio in the thousands, which
    would outweigh every other in an arithmetic mean."""
    ratios = np.asarray(ratios, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ratios > 0, np.log(ratios), np.nan)


def _exp_ci(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [math.exp(ci[0]), math.exp(ci[1])]


def summarize_measure(ratios: np.ndarray, rng: np.random.Generator, n_resamples: int) -> dict[str, Any]:
    """Aggregate one measure's per-instance [n, layers, heads] ratios: geometric means over instances per head
    (`mean_ratio`), the head with the highest, and over instances of each instance's geometric mean over heads
    (`mean_over_heads`), each with a bootstrap CI."""
    logs = log_ratios(ratios)
    mean_log = _nanmean(logs, axis=0)  # [layers, heads]
    per_instance = _nanmean(logs.reshape(len(logs), -1), axis=1)  # [n]
    best_head = None
    if np.isfinite(mean_log).any():
        layer, head = np.unravel_index(int(np.nanargmax(mean_log)), mean_log.shape)
        head_values = logs[:, layer, head]
        best_head = {"layer": int(layer), "head": int(head), "ratio": float(np.exp(mean_log[layer, head])),
                     "ci": _exp_ci(finite_mean_ci(head_values, rng, n_resamples)),
                     "n": int(np.isfinite(head_values).sum())}
    return {
        "mean_ratio": np.exp(mean_log).tolist(),
        "best_head": best_head,
        "mean_over_heads": {"ratio": float(np.exp(_nanmean(per_instance))),
                            "ci": _exp_ci(finite_mean_ci(per_instance, rng, n_resamples)),
                            "n": int(np.isfinite(per_instance).sum())},
    }


# ---- the analysis run ----------------------------------------------------------------------------

def read_f1_scores(paths: Sequence[str | os.PathLike]) -> dict[str, float]:
    """Per-instance F1 keyed by id, from JSONL files of `absence-bench score --out` ({id, f1, ...}) or of
    lm-eval's `--log_samples` ({doc: {id, ...}, f1, ...}; one file per task, so several may be given)."""
    scores: dict[str, float] = {}
    for path in paths:
        for lineno, record in iter_json_records(path):
            doc = record.get("doc")
            identifier = doc.get("id") if isinstance(doc, dict) else record.get("id")
            f1 = record.get("f1")
            if (not isinstance(identifier, (str, int)) or isinstance(f1, bool) or not isinstance(f1, (int, float))
                    or not math.isfinite(f1)):
                raise DataError(f"{path}:{lineno}: a score record needs an 'id' (or lm-eval's 'doc' with one) "
                                f"and a numeric 'f1'")
            if str(identifier) in scores:
                raise DataError(f"{path}:{lineno}: instance {identifier} already has a score")
            scores[str(identifier)] = float(f1)
    if not scores:
        raise DataError(f"{', '.join(map(str, paths))}: no score records")
    return scores


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = set(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {i for i in ids if i is not None}


@dataclass(frozen=True)
class AttentionOptions:
    """One attention analysis: which checkpoint on which data, and how (the CLI's flags, one field each)."""
    model: str
    data: str
    out: str
    n: int | None = None  # at most N instances per domain, in file order
    domain: str | None = None  # the domain of an upstream AbsenceBench file
    generate: bool = False  # also measure (and score) the greedily generated answer tokens
    max_new_tokens: int = 64
    label: str | None = None  # the checkpoint's name in figures (default: its folder's name)
    no_chat_template: bool = False
    scores: Sequence[str] | None = None  # per-instance score files to correlate the ratios with
    seed: int = 0
    baseline_draws: int = 32
    bootstrap: int = 1000
    strips: int = 2
    prefill_chunk: int = 512

    def __post_init__(self) -> None:
        checks = [(self.n is None or self.n >= 1, "--n must be at least 1"),
                  (self.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
                  (self.baseline_draws >= 1, "--baseline-draws must be at least 1"),
                  (self.bootstrap >= 10, "--bootstrap must be at least 10"),
                  (self.strips >= 0, "--strips must not be negative"),
                  (self.prefill_chunk >= 1, "--prefill-chunk must be at least 1")]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def run_analysis(args: AttentionOptions) -> dict[str, Any]:
    from tqdm import tqdm

    from absence_tasks.loading import load_instances
    from absence_tasks.scoring import score_response

    out = Path(args.out)
    check_output_dir(out)
    instances = select_instances(load_instances(args.data, args.domain), args.n)
    f1_by_id: dict[str, float] = {}
    f1_source = None
    if args.scores:
        f1_by_id = read_f1_scores(args.scores)
        if not {i.id for i in instances} & set(f1_by_id):
            raise DataError(f"{', '.join(args.scores)}: none of their ids is among the {len(instances)} analysed "
                            f"instances of {args.data}")
        f1_source = f"scores {', '.join(args.scores)}"
    elif args.generate:
        f1_source = f"greedy generation here (max {args.max_new_tokens} new tokens)"

    model, tokenizer = load_model(args.model)
    use_chat_template = not args.no_chat_template and bool(getattr(tokenizer, "chat_template", None))
    if not args.no_chat_template and not use_chat_template:
        print(f"note: {args.model} has no chat template; using the raw prompt", file=sys.stderr)
    max_new_tokens = args.max_new_tokens if args.generate else 0
    # Locate everything before the slow part, so bad input fails at once.
    positions = [gap_positions(instance, tokenizer, use_chat_template) for instance in instances]
    max_positions = getattr(model.config, "max_position_embeddings", None)
    for instance, where in zip(instances, positions):
        needed = len(where.input_ids) + max_new_tokens
        if max_positions is not None and needed > max_positions:
            raise ValueError(f"{args.data}: instance {instance.id} needs {needed} positions, more than the "
                             f"{max_positions} of {args.model}")

    eos_ids = _eos_ids(model, tokenizer)
    records, ratio_stack, strips = [], {m: [] for m in MEASURES}, []
    strips_per_domain: Counter = Counter()
    for instance, where in tqdm(list(zip(instances, positions)), desc="attention", unit="instance", file=sys.stderr):
        weights = measure_weights(where, args.baseline_draws, instance_rng(args.seed, instance.id))
        wants_strip = strips_per_domain[instance.domain] < args.strips
        strips_per_domain[instance.domain] += wants_strip
        result = answer_attention(model, where.input_ids, weights,
                                  strip_positions=where.gap_region if wants_strip else None,
                                  max_new_tokens=max_new_tokens, eos_ids=eos_ids, prefill_chunk=args.prefill_chunk)
        ratios = ratios_from_masses(result.masses)
        for measure in MEASURES:
            ratio_stack[measure].append(ratios[measure])
        record = {
            "id": instance.id, "domain": instance.domain, "variant": instance.variant,
            "n_tokens": len(where.input_ids), "n_queries": result.n_queries, "n_gaps": where.n_gaps,
            "n_flank_tokens": int(where.flank.size), "n_omitted_tokens": int(where.omitted.size),
            **{f"ratio_{m}": float(np.exp(_nanmean(log_ratios(ratios[m])))) for m in MEASURES},  # geometric
            "mass_flank": float(result.masses[..., 0].mean()), "mass_omitted": float(result.masses[..., 2].mean()),
        }
        if args.generate:
            record["response"] = tokenizer.decode(result.generated, skip_special_tokens=True)
            if not args.scores:
                f1_by_id[instance.id] = score_response(instance, record["response"]).f1
        record["f1"] = f1_by_id.get(instance.id)
        records.append(record)
        if result.strip is not None:
            strips.append((instance, where, result.strip))

    stacked = {m: np.stack(v) for m, v in ratio_stack.items()}
    n_layers, n_heads = stacked["flank"].shape[1:]
    groups = {"overall": np.arange(len(instances))}
    for domain in DOMAINS:
        members = np.array([i for i, inst in enumerate(instances) if inst.domain == domain], dtype=np.int64)
        if members.size:
            groups[domain] = members
    group_summaries = {}
    for name, members in groups.items():
        summary: dict[str, Any] = {
            "n_instances": int(members.size),
            "variants": dict(sorted(Counter(instances[i].variant for i in members).items())),
        }
        for measure in MEASURES:
            rng = np.random.default_rng([args.seed, zlib.crc32(f"bootstrap/{name}/{measure}".encode())])
            summary[measure] = summarize_measure(stacked[measure][members], rng, args.bootstrap)
        if f1_source is not None:
            f1 = [math.nan if records[i]["f1"] is None else records[i]["f1"] for i in members]
            summary["f1_correlation"] = {measure: correlation(log_ratios([records[i][f"ratio_{measure}"]
                                                                          for i in members]), f1)
                                         for measure in MEASURES}
        group_summaries[name] = summary

    label = args.label or Path(args.model).name
    result_summary = {
        "label": label, "model": str(args.model), "data": str(args.data), "n_instances": len(instances),
        "n_layers": int(n_layers), "n_heads": int(n_heads),
        "settings": {"chat_template": use_chat_template, "generate": bool(args.generate),
                     "answer_queries": "the last prompt token" + (" and each generated token that emits another"
                                                                   if args.generate else ""),
                     "max_new_tokens": max_new_tokens, "n_per_domain": args.n, "seed": args.seed,
                     "baseline_draws": args.baseline_draws, "bootstrap_resamples": args.bootstrap,
                     "confidence_level": CONFIDENCE_LEVEL},
        "measures": MEASURE_DESCRIPTIONS, "f1_source": f1_source,
        "groups": group_summaries, "instances": records,
    }

    out.mkdir(parents=True, exist_ok=True)
    for name, summary in group_summaries.items():
        if name == "overall":
            continue
        cells = [[(f"{measure} (n={summary[measure]['mean_over_heads']['n']})", summary[measure]["mean_ratio"])
                  for measure in MEASURES]]
        save_figure(heatmap_grid(cells, f"{label}: gap-attention ratio, {name}"), out / f"heatmap_{name}.png")
    for instance, where, strip in strips:
        flank_columns = np.searchsorted(where.gap_region, where.flank)
        gap_columns = np.searchsorted(where.gap_region, where.gap_starts) - 0.5
        document = "original" if gap_document_is_original(instance) else "modified"
        title = f"{label}: {instance.id} ({instance.variant}; attention over the {document} document)"
        save_figure(strip_figure(strip, flank_columns, gap_columns, title),
                     out / f"strip_{safe_file_part(instance.id)}.png")
    atomic_write_text(out / SUMMARY_NAME, json.dumps(json_ready(result_summary), indent=2, ensure_ascii=False,
                                                     allow_nan=False) + "\n")
    return result_summary


# ---- comparing runs --------------------------------------------------------------------------------

def read_summary(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / SUMMARY_NAME
    if not path.is_file():
        raise DataError(f"{path}: no such file (not an output directory of this analysis)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("groups"), dict) or "label" not in summary:
        raise DataError(f"{path}: not a summary of this analysis (no 'label' or 'groups')")
    for name, group in summary["groups"].items():
        if not all(isinstance(group, dict) and isinstance(group.get(m), dict) and "mean_ratio" in group[m]
                   and "mean_over_heads" in group[m] for m in MEASURES):
            raise DataError(f"{path}: group {name!r} lacks the {' and '.join(MEASURES)} statistics")
    return summary


def run_compare(directories: Sequence[str], out_dir: str | os.PathLike) -> dict[str, Any]:
    """comparison.png: one row per group (overall, then each domain), a pair of columns (flank, omitted)
    per run, all on one colour scale; comparison.json: per run and group the mean-over-heads ratios, best
    heads and F1 correlations, and for every run after the first how many times the first run's ratio its
    ratio is, paired over the instances both analysed (does training move it?)."""
    out = Path(out_dir)
    check_output_dir(out)
    summaries = [read_summary(d) for d in directories]
    present = {name for s in summaries for name in s["groups"]}
    group_names = [name for name in ("overall", *DOMAINS) if name in present]
    cells = [[(f"{summary['label']}\n{name} / {measure}",
               None if summary["groups"].get(name) is None else summary["groups"][name][measure]["mean_ratio"])
              for summary in summaries for measure in MEASURES]
             for name in group_names]
    runs = []
    for index, (summary, directory) in enumerate(zip(summaries, directories)):
        groups = {}
        for name, group in summary["groups"].items():
            groups[name] = {measure: group[measure]["mean_over_heads"] | {"best_head": group[measure]["best_head"]}
                            for measure in MEASURES}
            if "f1_correlation" in group:
                groups[name]["f1_correlation"] = group["f1_correlation"]
            if index:
                groups[name]["difference_from_first"] = {
                    measure: paired_ratio_difference(summaries[0], summary, name, measure) for measure in MEASURES}
        runs.append({"label": summary["label"], "model": summary.get("model"), "directory": str(directory),
                     "groups": groups})
    table = {"runs": runs}
    out.mkdir(parents=True, exist_ok=True)
    save_figure(heatmap_grid(cells, "gap-attention ratio by checkpoint"), out / "comparison.png")
    atomic_write_text(out / "comparison.json", json.dumps(json_ready(table), indent=2, ensure_ascii=False) + "\n")
    return table


def paired_ratio_difference(first: dict[str, Any], other: dict[str, Any], group: str, measure: str,
                            n_resamples: int = 10_000) -> dict[str, Any] | None:
    """How many times the first run's ratio the other's is, over the instances of `group` both measured: the
    mean of log(other) - log(first) per instance (each one's geometric mean over heads), paired bootstrap CI
    and p-value, reported as factors (1.0 = unchanged); None when they share no instance."""
    def logs(summary: dict[str, Any]) -> dict[str, float]:
        values = {str(r["id"]): r.get(f"ratio_{measure}") for r in summary.get("instances", [])
                  if group == "overall" or r.get("domain") == group}
        return {i: math.log(v) for i, v in values.items()
                if isinstance(v, (int, float)) and math.isfinite(v) and v > 0}
    a, b = logs(other), logs(first)
    if not set(a) & set(b):
        return None
    difference = paired_bootstrap(a, b, n_resamples, seed=zlib.crc32(f"compare/{group}/{measure}".encode()))
    return {"n": difference.n, "factor": math.exp(difference.mean_difference),
            "ci": [math.exp(difference.ci_low), math.exp(difference.ci_high)], "p_value": difference.p_value}
