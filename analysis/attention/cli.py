"""`python -m analysis.attention`: run the attention analysis on a checkpoint, or compare earlier runs."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields
from pathlib import Path

from absence_tasks.io import run_command
from absence_tasks.schema import DOMAINS
from analysis.attention.measure import SUMMARY_NAME, AttentionOptions, run_analysis, run_compare


# The defaults live in AttentionOptions; the flags show them.
DEFAULTS = AttentionOptions(model="", data="", out="")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.attention",
        description="Measure how much a checkpoint's answer-side attention goes to where lines are missing "
                    "(gap-attention ratio per layer and head; 1.0 = no preference), or compare earlier runs.")
    parser.add_argument("--model", help="local Hugging Face checkpoint directory")
    parser.add_argument("--data", help="instances JSONL (ours or upstream AbsenceBench)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--compare", nargs="+", metavar="DIR",
                        help="instead of running a model, draw comparison.png from these output directories")
    parser.add_argument("--n", type=int, help="at most N instances per domain, in file order (default: all)")
    parser.add_argument("--domain", choices=DOMAINS, help="domain of an upstream AbsenceBench file")
    parser.add_argument("--generate", action="store_true",
                        help="also measure the greedily generated answer tokens (and score the answer)")
    parser.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens,
                        help="generation budget with --generate")
    parser.add_argument("--label", help="name of this checkpoint in figures (default: the model folder's name)")
    parser.add_argument("--no-chat-template", action="store_true", help="feed the raw prompt, no chat template")
    parser.add_argument("--scores", nargs="+", metavar="FILE",
                        help="per-instance F1 to correlate with: `absence-bench score --out` JSONL or lm-eval "
                             "--log_samples files (samples_<task>_*.jsonl, one per task)")
    parser.add_argument("--seed", type=int, default=DEFAULTS.seed, help="seed of the baseline draws and the bootstrap")
    parser.add_argument("--baseline-draws", type=int, default=DEFAULTS.baseline_draws,
                        help="random position sets per instance")
    parser.add_argument("--bootstrap", type=int, default=DEFAULTS.bootstrap, help="bootstrap resamples for the CIs")
    parser.add_argument("--strips", type=int, default=DEFAULTS.strips,
                        help="draw strip figures for the first N instances of each domain")
    parser.add_argument("--prefill-chunk", type=int, default=DEFAULTS.prefill_chunk,
                        help="prompt tokens per prefill step (bounds the eager attention memory)")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare and (args.model or args.data):
        parser.error("--compare takes earlier output directories; do not combine it with --model/--data")
    if not args.compare and not (args.model and args.data):
        parser.error("--model and --data are required (or --compare DIR ...)")
    def run() -> None:
        if args.compare:
            run_compare(args.compare, args.out)
            print(f"{Path(args.out) / 'comparison.png'}: {len(args.compare)} runs compared")
        else:
            options = AttentionOptions(**{f.name: getattr(args, f.name) for f in fields(AttentionOptions)})
            summary = run_analysis(options)
            overall = summary["groups"]["overall"]
            print(f"{Path(args.out) / SUMMARY_NAME}: {summary['n_instances']} instances; mean gap-attention ratio "
                  f"flank {overall['flank']['mean_over_heads']['ratio']:.3f}, "
                  f"omitted {overall['omitted']['mean_over_heads']['ratio']:.3f}")

    return run_command(None, run)
