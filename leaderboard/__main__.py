"""Reverse Needle's leaderboard: lm-eval outputs -> a validated JSON file -> Markdown, an HTML page, a chart.

Every command either succeeds or prints one `leaderboard: error: …` line naming the file and the problem and
exits 2 (130 for Ctrl-C), leaving the leaderboard file as it was. Writers of one leaderboard file take
its lock for the read-modify-write, so concurrent publishers keep every row.
"""

from __future__ import annotations

import argparse
import sys

from absence_tasks.io import run_command
from absence_tasks.schema import DataError
from leaderboard.compare import compare
from leaderboard.probe import DEFAULT_FEATURE_SET, add_probe
from leaderboard.probe import describe as describe_probe
from leaderboard.publish import add_reported, publish
from leaderboard.render import comparison_label, format_difference, format_estimate, format_p, render
from leaderboard.schema import METHODS, LeaderboardError, format_key, load, row_key

EPILOG = """examples:
  python -m leaderboard publish results/zero-shot --out leaderboard/leaderboard.json --model-name smollm2-135m
  python -m leaderboard add-reported --out leaderboard/leaderboard.json
  python -m leaderboard compare leaderboard/leaderboard.json smollm2-135m-contrastive smollm2-135m-sft
  python -m leaderboard add-probe leaderboard/leaderboard.json smollm2-135m@zero-shot results/probe/smollm2-135m-base/summary.json
  python -m leaderboard render leaderboard/leaderboard.json --out leaderboard/page --screenshot
  python -m leaderboard validate leaderboard/leaderboard.json
"""


def cmd_publish(args: argparse.Namespace) -> None:
    rows = publish(args.results, args.out, method=args.method, model_name=args.model_name,
                   checkpoint=args.checkpoint, allow_missing_samples=args.allow_missing_samples)
    for row in rows:
        n = sum(t["n_instances"] or 0 for t in row["tasks"].values())
        print(f"{format_key(row_key(row))}: average F1 {format_estimate(row['average'])} "
              f"({len(row['tasks'])} tasks, {n} instances) -> {args.out}")


def cmd_add_reported(args: argparse.Namespace) -> None:
    rows = add_reported(args.out)
    print(f"{len(rows)} rows reported by the AbsenceBench paper -> {args.out}")


def cmd_compare(args: argparse.Namespace) -> None:
    c = compare(args.leaderboard, args.row_a, args.row_b, task=args.task, n_resamples=args.n_resamples,
                seed=args.seed, family=args.family)
    a, b = comparison_label(c, "row_a"), comparison_label(c, "row_b")
    p = format_p(c)
    print(f"{a} - {b}, {c['task']} F1: {format_difference(c)} points (95% CI), n={c['n_instances']} shared "
          f"instances, p {p if p.startswith('<') else '= ' + p} ({c['n_resamples']} paired resamples); "
          f"detectable at {c['power']:.0%} power: {100 * c['minimum_detectable_difference']:.1f} points; "
          f"stored in {args.leaderboard}")
    if "family" in c:
        family = [d for d in load(args.leaderboard)["comparisons"] if d.get("family") == c["family"]]
        print(f"family {c['family']!r}, {len(family)} comparisons, Holm-adjusted p: "
              + "; ".join(f"{comparison_label(d, 'row_a')} - {comparison_label(d, 'row_b')} ({d['task']}) "
                          f"{format_p(d, 'p_holm')}" for d in family))


def cmd_add_probe(args: argparse.Namespace) -> None:
    row = add_probe(args.leaderboard, args.row, args.summary, probe_model=args.probe_model,
                    feature_set=args.feature_set)
    print(f"{describe_probe(row)} -> {args.leaderboard}")


def cmd_render(args: argparse.Namespace) -> None:
    for path in render(args.leaderboard, args.out, screenshot=args.screenshot):
        print(path)


def cmd_validate(args: argparse.Namespace) -> None:
    doc = load(args.leaderboard)
    print(f"{args.leaderboard}: valid (schema {doc['schema_version']}, {len(doc['rows'])} rows, "
          f"{len(doc.get('comparisons', []))} comparisons)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m leaderboard", description=__doc__.splitlines()[0],
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "publish", help="add or replace rows from lm-eval outputs",
        description="Add one row per lm-eval run (a results_*.json file, or a folder searched recursively: "
                    "the newest results file of each model folder), scored from its --log_samples files: "
                    "F1/precision/recall per task with bootstrap CIs, the average over the omission tasks, "
                    "per-instance F1 for paired tests. A row with the same model, method and data suite "
                    "is replaced.")
    p.add_argument("results", nargs="+", metavar="RESULTS", help="results_*.json files or folders")
    p.add_argument("--out", required=True, metavar="LEADERBOARD", help="leaderboard JSON (created if missing)")
    p.add_argument("--method", choices=METHODS,
                   help="default: the checkpoint's training record, else oracle for absence-oracle, else zero-shot")
    p.add_argument("--model-name", help="default: the checkpoint folder's name (or lm-eval's model type)")
    p.add_argument("--checkpoint", metavar="DIR",
                   help="the scored checkpoint, when the results' pretrained= path does not resolve from here "
                        "(for its weight hash and training record)")
    p.add_argument("--allow-missing-samples", action="store_true",
                   help="take a run without samples files from its results alone (no CIs, no paired tests; "
                        "the row says so); without this flag, missing samples are an error")
    p.set_defaults(run=cmd_publish)

    p = commands.add_parser(
        "add-reported", help="add the AbsenceBench paper's reported rows",
        description="Add (or refresh) the F1 scores the AbsenceBench paper reports, as rows of method "
                    "'reported' on the paper's own data; they are rendered in a separate table.")
    p.add_argument("--out", required=True, metavar="LEADERBOARD", help="leaderboard JSON (created if missing)")
    p.set_defaults(run=cmd_add_reported)

    p = commands.add_parser(
        "compare", help="paired bootstrap between two rows",
        description="Paired bootstrap of ROW_A minus ROW_B over the instances both scored, on one task or "
                    "(default) the average over the omission tasks both have; prints the difference, its CI "
                    "and p, and stores the result in the leaderboard so the page shows it. A row is named "
                    "by model, model@method or model@method@suite.")
    p.add_argument("leaderboard", metavar="LEADERBOARD")
    p.add_argument("row_a", metavar="ROW_A")
    p.add_argument("row_b", metavar="ROW_B")
    p.add_argument("--task", help="one task, e.g. absence_poetry (default: the average)")
    p.add_argument("--family", help="a name for the comparisons tested together (e.g. an ablation's variants "
                                    "against SFT): their p-values are Holm-adjusted over the family, which "
                                    "can be built up run by run")
    p.add_argument("--n-resamples", type=int, default=10_000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run=cmd_compare)

    p = commands.add_parser(
        "add-probe", help="attach a gap probe's AUROC to a row",
        description="Store the overall AUROC (with its CI), average precision and per-domain AUROC of one "
                    "model's gap probe (the summary.json of python -m analysis.probe) in a row; the page "
                    "shows it as a column. A row published again keeps it while its checkpoint is the same.")
    p.add_argument("leaderboard", metavar="LEADERBOARD")
    p.add_argument("row", metavar="ROW", help="model, model@method or model@method@suite")
    p.add_argument("summary", metavar="SUMMARY", help="the probe's summary.json")
    p.add_argument("--probe-model", help="the model's label in the summary (default: its only model)")
    p.add_argument("--feature-set", default=DEFAULT_FEATURE_SET,
                   help=f"the probe's feature set (default {DEFAULT_FEATURE_SET}: attention statistics that need "
                        f"no gold alignment)")
    p.set_defaults(run=cmd_add_probe)

    p = commands.add_parser(
        "render", help="write leaderboard.md, index.html and f1_by_domain.png",
        description="Write leaderboard.md, a static index.html (sortable tables, no network) and "
                    "f1_by_domain.png into --out.")
    p.add_argument("leaderboard", metavar="LEADERBOARD")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--screenshot", action="store_true",
                   help="also save screenshot.png of the page (headless Chromium: /usr/bin/chromium)")
    p.set_defaults(run=cmd_render)

    p = commands.add_parser("validate", help="check a leaderboard file against schema.json")
    p.add_argument("leaderboard", metavar="LEADERBOARD")
    p.set_defaults(run=cmd_validate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("leaderboard", lambda: args.run(args), handled=(LeaderboardError, DataError, OSError))


if __name__ == "__main__":
    sys.exit(main())
