"""What a stop on repeated lines would save, and what it would change, on answers lm-eval already logged.

    python benchmarks/degenerate_stop.py zero-shot=results/study-30m/eval/zero-shot \\
        sft=results/study-30m/eval/sft --repeats 3 5 10 --tokenizer checkpoints/smollm2-135m-instruct \\
        [--out benchmarks/results/degenerate_stop.json]

A small model often loops, giving the same line again and again until `max_gen_toks`. The stop under
study ends an answer once one of its lines has been given k times (`trainers.learning_curve`'s
`repeated_line_count`, the rule the learning curve decodes with, k = `REPEATS_TO_STOP` there). Each logged
answer (lm-eval `--log_samples`, greedy, so the answer a stopped decode would have given is exactly its
prefix) is cut where that rule would have stopped it and scored again with the tasks' own
`process_results`. The report gives, per model and k: answers cut, answers whose F1 changed, mean F1
before and after (percent), the prompt (prefill) and decoded tokens and the decoded tokens the stop would
have saved (in the tokenizer's tokens, else characters). A stop that saves little decode, or changes scores, is not worth a generation hook.
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from absence_tasks.io import atomic_write_text  # noqa: E402
from absence_tasks.lm_eval_tasks import process_results  # noqa: E402
from leaderboard.publish import read_samples  # noqa: E402
from trainers.learning_curve import repeated_line_count  # noqa: E402


def stopped_answer(answer: str, repeats: int) -> str:
    """The answer a decode stopped by the rule would have given: up to and including the newline that
    completes the first line given `repeats` times (the rule counts complete lines only)."""
    end = answer.find("\n")
    while end != -1:
        if repeated_line_count(answer[:end + 1]) >= repeats:
            return answer[:end + 1]
        end = answer.find("\n", end + 1)
    return answer


def sample_files(folder: Path) -> list[Path]:
    files = sorted(folder.rglob("samples_*.jsonl"))
    if not files:
        sys.exit(f"degenerate_stop: error: {folder}: no lm-eval samples_*.jsonl in it (run with --log_samples)")
    return files


def measure(folder: Path, repeats: int, length) -> dict:
    answers = cut = changed = 0
    f1_before = f1_after = 0.0
    decoded = saved = prompt = 0
    for path in sample_files(folder):
        for sample in read_samples(path):
            answer = sample["resps"][0][0]
            stopped = stopped_answer(answer, repeats)
            before = sample["f1"]
            after = process_results(sample["doc"], [stopped])["f1"] if stopped != answer else before
            answers += 1
            cut += stopped != answer
            changed += abs(after - before) > 1e-12
            f1_before, f1_after = f1_before + before, f1_after + after
            total = length(answer)
            decoded, saved = decoded + total, saved + total - length(stopped)
            prompt += length(sample["arguments"]["gen_args_0"]["arg_0"])
    return {"repeats": repeats, "answers": answers, "answers_cut": cut, "answers_changed": changed,
            "f1": round(100 * f1_before / answers, 2), "f1_stopped": round(100 * f1_after / answers, 2),
            "prompt": prompt, "decoded": decoded, "saved": saved, "saved_fraction": round(saved / decoded, 4) if decoded else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluations", nargs="+", metavar="LABEL=DIR", help="lm-eval --output_path folders")
    parser.add_argument("--repeats", type=int, nargs="+", default=[3, 5, 10])
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="count decoded tokens with this tokenizer (default: characters)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    folders = {}
    for item in args.evaluations:
        label, sep, folder = item.partition("=")
        if not sep or not label or not Path(folder).is_dir():
            sys.exit(f"degenerate_stop: error: {item}: expected LABEL=DIR with an existing folder")
        folders[label] = Path(folder)
    if any(k < 1 for k in args.repeats):
        sys.exit("degenerate_stop: error: --repeats must be >= 1")
    unit, length = "characters", len
    if args.tokenizer is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, local_files_only=True)
        unit = "tokens"

        def length(text: str) -> int:
            return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    report = {"unit": unit, "models": {label: [measure(folder, k, length) for k in args.repeats]
                                       for label, folder in folders.items()}}
    print(f"| model | k | answers cut | F1 changed | F1 | F1 stopped | {unit} saved |\n|---|---:|---:|---:|---:|---:|---:|")
    for label, rows in report["models"].items():
        for r in rows:
            print(f"| {label} | {r['repeats']} | {r['answers_cut']}/{r['answers']} | {r['answers_changed']} | "
                  f"{r['f1']:.2f} | {r['f1_stopped']:.2f} | {100 * r['saved_fraction']:.1f}% |")
    if args.out is not None:
        report["command"] = " ".join(["python", os.path.relpath(__file__, ROOT), *sys.argv[1:]])
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
