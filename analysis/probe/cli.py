"""`python -m analysis.probe`: extract every checkpoint's rows, fit and evaluate the probes, write
auroc.png, coefficients.png and summary.json (last)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from absence_tasks.io import run_command
from absence_tasks.schema import DOMAINS, DataError, Instance, atomic_write_text
from analysis.attention.positions import tokenize_prompt
from analysis.common import CONFIDENCE_LEVEL, check_output_dir, json_ready, load_model, save_figure, select_instances
from analysis.probe.classifier import (FEATURE_SET_DESCRIPTIONS, HIDDEN_DESCRIPTION, Rows, bootstrap_metrics,
                                       comparison_rng, evaluate_feature_set, fit_probe, grouped_folds,
                                       out_of_fold_scores, paired_auroc_difference, position_features, top_heads)
from analysis.probe.features import (STATISTIC_DESCRIPTIONS, STATISTICS, LineQueries, line_features, line_queries,
                                     statistics_from_masses)
from analysis.probe.figures import auroc_figure, coefficient_figure, readout_figure
from analysis.probe.options import ProbeOptions
from analysis.probe.readout import answers_of, readout

PROGRAM = "probe"
SUMMARY_NAME = "summary.json"


# ---- the run -------------------------------------------------------------------------------------

def parse_labelled_paths(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    """label -> path, from LABEL=PATH items of `flag`."""
    paths: dict[str, str] = {}
    for item in items or ():
        name, separator, path = item.partition("=")
        if not separator or not name or not path:
            raise ValueError(f"{flag} takes LABEL=PATH items, got {item!r}")
        if name in paths:
            raise ValueError(f"{flag}: label {name!r} given twice")
        paths[name] = path
    return paths


def parse_models(model: str | None, label: str | None, items: Sequence[str] | None) -> dict[str, str]:
    """label -> checkpoint path, from --model PATH [--label L] or --models LABEL=PATH ..."""
    if model:
        return {label or Path(model).name: model}
    return parse_labelled_paths(items, "--models")


def _model_shape(config: Any) -> dict[str, int]:
    return {"n_layers": int(config.num_hidden_layers), "n_heads": int(config.num_attention_heads),
            "hidden_size": int(config.hidden_size)}


def extract_rows(path: str, instances: Sequence[Instance], args: ProbeOptions, label: str
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


def run_probe(args: ProbeOptions, argv: Sequence[str]) -> dict[str, Any]:
    """Probe every checkpoint of `args.models` on `args.data`; `argv` is the command recorded in the summary."""
    from absence_tasks.loading import load_instances
    from absence_tasks.models import load_checkpoint_or_die

    out = Path(args.out)
    check_output_dir(out)
    models = args.models
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
    answers = {label: answers_of(instances, path) for label, path in args.answers.items()}

    started = time.perf_counter()
    rows_by_model: dict[str, Rows] = {}
    chat_template = None
    reference_queries = None
    for label, path in models.items():
        rows, queries, chat_template = extract_rows(path, instances, args, label)
        if reference_queries is not None and any(not np.array_equal(a.positions, b.positions)
                                                 for a, b in zip(reference_queries, queries)):
            raise ValueError(f"{path}: its tokenizer puts the modified copy lines at other positions than the first "
                             f"model's; the models must share a tokenizer")
        reference_queries = queries
        rows_by_model[label] = rows
    extraction_seconds = time.perf_counter() - started

    first = next(iter(rows_by_model.values()))
    if not first.labels.any():
        raise DataError(f"{args.data}: no modified copy line follows a gap; nothing to probe")
    folds = grouped_folds(first.groups, args.folds)
    feature_sets = ["attention", "label_free", *(f"hidden_{layer}" for layer in args.hidden_layer), "position"]
    results: dict[str, dict[str, Any]] = {}
    coefficients: dict[str, np.ndarray] = {}
    scores: dict[str, dict[str, np.ndarray]] = {}   # model -> feature set -> out-of-fold score per row
    for label, rows in rows_by_model.items():
        results[label] = {"path": models[label], "feature_sets": {}}
        scores[label] = {}
        for feature_set in feature_sets:
            features = rows.features(feature_set)
            scores[label][feature_set] = out_of_fold_scores(features, features, rows.labels, folds, args.C)
            results[label]["feature_sets"][feature_set] = evaluate_feature_set(rows, feature_set, folds, args, label,
                                                                               scores[label][feature_set])
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
                    transfer_scores = scores[train_label][feature_set] if train_label == test_label else \
                        out_of_fold_scores(rows_by_model[train_label].features(feature_set),
                                           rows_by_model[test_label].features(feature_set), labels, folds, args.C)
                    model_transfer[feature_set][train_label][test_label] = bootstrap_metrics(
                        labels, transfer_scores, first.groups,
                        comparison_rng(args.seed, "models", feature_set, train_label, test_label),
                        args.bootstrap)

    # More readable after training? Each later model against the first, on the same rows and instances.
    first_label = next(iter(rows_by_model))
    model_differences = {
        feature_set: {label: paired_auroc_difference(first.labels, scores[first_label][feature_set],
                                                     scores[label][feature_set], first.groups,
                                                     comparison_rng(args.seed, "difference", feature_set, label),
                                                     args.bootstrap)
                      for label in list(rows_by_model)[1:]}
        for feature_set in feature_sets} if len(rows_by_model) > 1 else None

    readouts = {label: {"answers": args.answers[label], "feature_set": args.readout_features,
                        **readout(instances, reference_queries, scores[label][args.readout_features], first.groups,
                                  answers[label], lambda *names, label=label: comparison_rng(args.seed, "readout",
                                                                                             label, *names),
                                  args.bootstrap)}
                for label in args.answers}

    n_rows_by_domain = Counter(first.domains.tolist())
    gaps_by_domain = Counter(first.domains[first.labels].tolist())
    summary = {
        "command": shlex.join(["python", "-m", "analysis.probe", *argv]),
        "versions": _versions(),
        "data": str(args.data),
        "models": {label: {"path": path, **shapes[label]} for label, path in models.items()},
        "settings": {"chat_template": chat_template, "n_per_domain": args.n, "seed": args.seed, "folds": len(folds),
                     "C": args.C, "bootstrap_resamples": args.bootstrap, "confidence_level": CONFIDENCE_LEVEL,
                     "hidden_layers": list(args.hidden_layer), "prefill_chunk": args.prefill_chunk,
                     "query": "the first token of each modified copy line that has text"},
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
        "model_differences": model_differences,
        "readout": readouts or None,
    }

    out.mkdir(parents=True, exist_ok=True)
    save_figure(auroc_figure(results, feature_sets), out / "auroc.png")
    save_figure(coefficient_figure(coefficients), out / "coefficients.png")
    if readouts:
        save_figure(readout_figure(readouts), out / "readout.png")
    atomic_write_text(out / SUMMARY_NAME, json_dumps(summary))
    print(f"{PROGRAM}: feature extraction took {extraction_seconds:.0f} s", file=sys.stderr)
    return summary


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _interval(ci: Sequence[float] | None) -> str:
    return "[n/a]" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def json_dumps(summary: dict[str, Any]) -> str:
    return json.dumps(json_ready(summary), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# ---- command line --------------------------------------------------------------------------------

# The defaults live in ProbeOptions; the flags show them.
DEFAULTS = ProbeOptions(models={"": ""}, data="", out="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.probe",
        description="Fit a linear probe that reads, from a checkpoint's attention at each modified copy line, whether "
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
    parser.add_argument("--folds", type=int, default=DEFAULTS.folds, help="grouped cross-validation folds (by instance)")
    parser.add_argument("--C", type=float, default=DEFAULTS.C, help="inverse L2 strength of the logistic regression")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the bootstrap")
    parser.add_argument("--bootstrap", type=int, default=DEFAULTS.bootstrap, help="bootstrap resamples for the CIs")
    parser.add_argument("--top-heads", type=int, default=DEFAULTS.top_heads, help="how many of the largest coefficients to list")
    parser.add_argument("--prefill-chunk", type=int, default=DEFAULTS.prefill_chunk,
                        help="prompt tokens per forward step (bounds the eager attention memory)")
    parser.add_argument("--answers", nargs="+", metavar="LABEL=PATH", default=[],
                        help="lm-eval --log_samples output (folder or samples_*.jsonl) of a probed model on the same "
                             "instances: adds readability vs per-instance F1 and gaps found by the probe vs named in "
                             "the answer (LABEL as in --models, or --label / the folder's name with --model)")
    parser.add_argument("--readout-features", default=DEFAULTS.readout_features,
                        help="the feature set whose probe scores --answers is compared with (default: attention)")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    def run() -> None:
        started = time.perf_counter()
        options = ProbeOptions(
            models=parse_models(args.model, args.label, args.models), data=args.data, out=args.out, n=args.n,
            domain=args.domain, hidden_layer=tuple(args.hidden_layer), no_chat_template=args.no_chat_template,
            folds=args.folds, C=args.C, seed=args.seed, bootstrap=args.bootstrap, top_heads=args.top_heads,
            prefill_chunk=args.prefill_chunk, answers=parse_labelled_paths(args.answers, "--answers"),
            readout_features=args.readout_features)
        summary = run_probe(options, argv)
        for label, result in summary["results"].items():
            overall = result["feature_sets"]["attention"]["overall"]
            print(f"{Path(args.out) / SUMMARY_NAME}: {label}: {summary['n_instances']} instances, "
                  f"{summary['n_rows']} lines, base rate {summary['base_rate']:.3f}; attention probe AUROC "
                  f"{overall['auroc']}, AP {overall['average_precision']} ({time.perf_counter() - started:.0f} s)")
        for label, difference in (summary["model_differences"] or {}).get("attention", {}).items():
            print(f"{label} - {next(iter(summary['results']))}: attention probe AUROC {difference['difference']:+.3f} "
                  f"{_interval(difference['ci'])} (paired over instances, p = {difference['p_value']})")
        for label, found in (summary["readout"] or {}).items():
            rho = found["readability_vs_f1"]["overall"]
            lines = found["gap_lines"]
            print(f"{label}: readability vs F1 Spearman rho {_number(rho['spearman_rho'])} "
                  f"{_interval(rho['spearman_rho_ci'])} over {rho['n_instances']} instances; of {lines['n']} gap "
                  f"lines the probe finds {lines['found_named'] + lines['found_not_named']}, the answer names "
                  f"{lines['found_named'] + lines['named_not_found']}, found but not named {lines['found_not_named']}")

    return run_command(PROGRAM, run)
