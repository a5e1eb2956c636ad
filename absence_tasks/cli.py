"""`absence-bench`: generate, score, solve (oracle), convert and mine omission data; prepare the model;
print the lm-eval task folder.

Every subcommand either succeeds or prints one `absence-bench: error: ...` line and exits 2 (130 for
Ctrl-C), leaving no partial output file (outputs are written to a temp file and renamed). Output paths
are checked before any work: an output that is a folder, in an unwritable folder, or the same file as
an input is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

from absence_tasks.io import check_output, check_output_folder, run_command
from absence_tasks.loading import load_instances
from absence_tasks.schema import DOMAINS, SPLITS, VARIANTS, DataError, Instance, atomic_write_text, \
    dumps_jsonl, iter_json_records, write_jsonl


def _config_from_args(args: argparse.Namespace, domain: str):
    from dataclasses import replace

    from absence_tasks.generate import default_config

    cfg = default_config(domain, args.preset)
    overrides = {
        "min_lines": args.min_lines, "max_lines": args.max_lines, "n_omitted": args.n_omitted,
        "omission_probs": tuple(args.omission_prob) if args.omission_prob else None,
        "number_systems": tuple(args.number_system) if args.number_system else None,
        "context_deletion_prob": args.context_deletion_prob,
    }
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def _generate(args: argparse.Namespace, domain: str, variant: str) -> list[Instance]:
    from absence_tasks.generate import generate_instances

    return generate_instances(domain, variant, args.n, args.split, args.seed,
                              config=_config_from_args(args, domain), prs_path=args.prs,
                              git_repo=args.git_repo, poems_path=args.poems)


def _write(path: str | Path, instances: list[Instance], fmt: str) -> None:
    if fmt == "upstream":
        from absence_tasks import upstream

        upstream.write_upstream(path, instances)
    else:
        write_jsonl(path, instances)


def _source_files(args: argparse.Namespace) -> list[str | None]:
    return [args.prs, args.poems]


def cmd_generate(args: argparse.Namespace) -> None:
    check_output(args.out, _source_files(args))
    start = time.perf_counter()
    instances = _generate(args, args.domain, args.variant)
    _write(args.out, instances, args.format)
    elapsed = time.perf_counter() - start
    print(f"wrote {len(instances)} {args.domain}/{args.variant}/{args.split} instances to {args.out} "
          f"in {elapsed:.1f}s ({len(instances) / elapsed:.1f} instances/s)")


def cmd_generate_suite(args: argparse.Namespace) -> None:
    out_dir = Path(args.out_dir)
    names = {(domain, variant): f"{domain}_{variant}_{args.split}.jsonl"
             for domain in args.domains for variant in args.variants}
    check_output_folder(out_dir, _source_files(args), names.values())
    for domain in args.domains:
        for variant in args.variants:
            path = out_dir / names[domain, variant]
            start = time.perf_counter()
            instances = _generate(args, domain, variant)
            _write(path, instances, args.format)
            print(f"{path}: {len(instances)} instances in {time.perf_counter() - start:.1f}s")


def _responses(path: str | Path) -> dict[str, str]:
    out: dict[str, str] = {}
    line_of: dict[str, int] = {}
    for lineno, rec in iter_json_records(path):
        if not isinstance(rec.get("id"), (str, int)) or not isinstance(rec.get("response"), str):
            raise DataError(f"{path}:{lineno}: a response record needs an 'id' and a 'response' string")
        key = str(rec["id"])
        if key in line_of:
            raise DataError(f"{path}:{lineno}: a second response for id {key!r} (the first is on line {line_of[key]})")
        line_of[key] = lineno
        out[key] = rec["response"]
    return out


def _report(instances: list[Instance], responses: dict[str, str], out: str | None) -> dict:
    from absence_tasks.scoring import score_response, summarize

    groups = defaultdict(list)
    rows = []
    for inst in instances:
        score = score_response(inst, responses.get(inst.id, ""))
        groups[f"{inst.domain}/{inst.variant}"].append(score)
        rows.append({"id": inst.id, "domain": inst.domain, "variant": inst.variant, **score.to_dict()})
    if out:
        atomic_write_text(out, dumps_jsonl(rows))
    return {group: summarize(scores) for group, scores in sorted(groups.items())}


def cmd_score(args: argparse.Namespace) -> None:
    if args.out:
        check_output(args.out, [args.data, args.responses])
    instances = load_instances(args.data, args.domain)
    responses = _responses(args.responses)
    if unknown := sorted(set(responses) - {i.id for i in instances}):
        raise DataError(f"{args.responses}: {len(unknown)} response id(s) not in {args.data}, e.g. {unknown[0]!r}")
    if missing := [i.id for i in instances if i.id not in responses]:
        if not args.missing_as_empty:
            raise DataError(f"{args.responses}: no response for {len(missing)} of the {len(instances)} instances "
                            f"of {args.data}, e.g. {missing[0]!r} (--missing-as-empty scores them as empty answers)")
        print(f"absence-bench: {len(missing)} of {len(instances)} instances have no response; scored as empty",
              file=sys.stderr)
    print(json.dumps(_report(instances, responses, args.out), indent=2))


def cmd_oracle(args: argparse.Namespace) -> None:
    from absence_tasks.scoring import oracle_answer

    if args.responses_out:
        check_output(args.responses_out, [args.data])
    instances = load_instances(args.data, args.domain)
    responses = {inst.id: oracle_answer(inst) for inst in instances}
    if args.responses_out:
        atomic_write_text(args.responses_out, dumps_jsonl({"id": k, "response": v} for k, v in responses.items()))
    report = _report(instances, responses, None)
    print(json.dumps(report, indent=2))
    if any(r["f1"] < 1.0 for r in report.values()):
        raise DataError(f"{args.data}: the oracle cannot solve every instance (a generator bug or bad data)")


def cmd_convert(args: argparse.Namespace) -> None:
    check_output(args.out, [args.data])
    instances = load_instances(args.data, args.domain)
    _write(args.out, instances, args.to)
    print(f"wrote {len(instances)} instances to {args.out} ({args.to} format)")


def cmd_mine_prs(args: argparse.Namespace) -> None:
    from absence_tasks.sources import prs

    check_output(args.out)
    records = prs.mine_git_repo(args.repo, require_pr_number=not args.all_commits,
                                min_changed=args.min_changed, max_changed=args.max_changed)
    if not records:
        raise DataError(f"{args.repo}: no commits match (single parent, "
                        f"{args.min_changed}-{args.max_changed} changed lines"
                        f"{'' if args.all_commits else ', subject ending in (#N)'}); try --all-commits")
    prs.write_pr_records(args.out, records, license=args.license)
    print(f"wrote {len(records)} PR records from {args.repo} to {args.out}")


def cmd_task_path(args: argparse.Namespace) -> None:
    from absence_tasks import task_config_dir

    print(task_config_dir())


def cmd_prepare_model(args: argparse.Namespace) -> None:
    from absence_tasks.models import prepare_embedded_model

    path = prepare_embedded_model(args.out, force=args.force)
    print(f"HF checkpoint ready: {path}")


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=100, help="instances per file (default 100)")
    p.add_argument("--split", choices=SPLITS, default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", choices=("cpu", "upstream"), default="cpu",
                   help="document lengths: short CPU defaults, or the AbsenceBench paper's grid")
    p.add_argument("--min-lines", type=int, help="shortest document (numbers, poem lines, diff lines)")
    p.add_argument("--max-lines", type=int, help="longest document")
    p.add_argument("--omission-prob", type=float, action="append",
                   help="omission probability; repeat to draw one per instance")
    p.add_argument("--n-omitted", type=int, help="omit exactly this many lines instead")
    p.add_argument("--number-system", action="append",
                   choices=("base10", "binary", "hexadecimal", "words", "roman"),
                   help="numerical: number system(s) to draw from (default base10)")
    p.add_argument("--context-deletion-prob", type=float,
                   help="github_prs: also drop context lines with this probability (not scored)")
    p.add_argument("--prs", help="github_prs: a PR-record JSONL(.gz) file or folder (default: the 1,868 records "
                                 "embedded in the package)")
    p.add_argument("--git-repo", help="github_prs: mine PRs from this local git repository instead")
    p.add_argument("--poems", help="poetry: a .txt/.jsonl poem file or folder instead of the Gutenberg corpus")
    p.add_argument("--format", choices=("ours", "upstream"), default="ours", help="output JSONL format")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="absence-bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("generate", help="write a seeded set of instances for one domain and variant")
    p.add_argument("--domain", choices=DOMAINS, required=True)
    p.add_argument("--variant", choices=VARIANTS, default="omission")
    p.add_argument("--out", required=True)
    _add_generation_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("generate-suite", help="one file per domain and variant into a folder")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--domains", nargs="+", choices=DOMAINS, default=list(DOMAINS))
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    _add_generation_args(p)
    p.set_defaults(func=cmd_generate_suite)

    p = sub.add_parser("score", help="score model responses (JSONL of {id, response}) against a data file")
    p.add_argument("--data", required=True, help="our JSONL or an upstream AbsenceBench JSONL")
    p.add_argument("--responses", required=True)
    p.add_argument("--domain", choices=DOMAINS, help="domain of an upstream file with generic field names")
    p.add_argument("--out", help="also write per-instance scores here (JSONL)")
    p.add_argument("--missing-as-empty", action="store_true",
                   help="score an instance without a response as an empty answer (counted on stderr) "
                        "instead of refusing")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("oracle", help="solve a data file with the difflib oracle (must score 1.0)")
    p.add_argument("--data", required=True)
    p.add_argument("--domain", choices=DOMAINS)
    p.add_argument("--responses-out", help="write the oracle's responses as JSONL")
    p.set_defaults(func=cmd_oracle)

    p = sub.add_parser("convert", help="convert between our JSONL and upstream AbsenceBench JSONL")
    p.add_argument("--data", required=True)
    p.add_argument("--to", choices=("ours", "upstream"), required=True)
    p.add_argument("--domain", choices=DOMAINS)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("mine-prs", help="mine merged-PR records (the embedded records' format) from a local git repo")
    p.add_argument("--repo", default=".")
    p.add_argument("--out", required=True, help="JSONL file; gzip-compressed when it ends in .gz")
    p.add_argument("--license", help="SPDX id of the repository's licence, recorded in every record (e.g. MIT)")
    p.add_argument("--all-commits", action="store_true", help="do not require subjects ending in (#N)")
    p.add_argument("--min-changed", type=int, default=10)
    p.add_argument("--max-changed", type=int, default=200)
    p.set_defaults(func=cmd_mine_prs)

    p = sub.add_parser("task-path", help="print the installed lm-eval task folder (for lm_eval --include_path)")
    p.set_defaults(func=cmd_task_path)

    p = sub.add_parser("prepare-model", help="turn the embedded SmolLM2-135M-Instruct GGUF into an HF checkpoint")
    p.add_argument("--out", default="checkpoints/smollm2-135m-instruct")
    p.add_argument("--force", action="store_true")
    p.set_defaults(func=cmd_prepare_model)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("absence-bench", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
