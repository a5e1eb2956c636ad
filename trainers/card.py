"""The finished model: a plain HF checkpoint (LoRA merged) written atomically beside the checkpoint-N folders,
with a model card (README.md: a readable summary and the full training record as a JSON block) and the same
record as a JSON sidecar (`training_record.json`) that readers such as the leaderboard load without importing
torch or TRL.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from absence_tasks.io import default_file_mode
from absence_tasks.schema import Instance, atomic_write_text, write_jsonl

CARD_NAME = "README.md"
RECORD_NAME = "training_record.json"
DATA_NAME = "training_data.jsonl"
# Written last: a directory is a finished model only once its card exists (config.json comes just before).
FINAL_FILES_LAST = ("config.json", CARD_NAME)


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def model_card(method: str, record: dict[str, Any]) -> str:
    """README.md for the final model: a readable summary and the full record as a JSON block."""
    compute, data = record["compute"], record["data"]
    eval_flag = " --apply_chat_template" if record["script_args"]["chat_template"] else ""
    lines = [
        "---",
        f"base_model: {record['script_args']['model_name_or_path']}",
        "library_name: transformers",
        f"tags: [reverse-needle, absencebench, trl, {method}]",
        "---",
        "",
        f"# {Path(record['training_args']['output_dir']).name}: {method} on AbsenceBench-style omission tasks",
        "",
        f"Trained with `python -m trainers.{method}` (Reverse Needle) from "
        f"`{record['script_args']['model_name_or_path']}`; {record['method_description']}",
        "",
        "| | |", "|---|---|",
        f"| method | {method} |",
        f"| optimizer steps | {record['global_step']} |",
        f"| training instances seen (repeats counted) | {compute['instances_trained']:,} |",
        f"| tokens trained (forward + backward) | {compute['tokens_trained']:,} |",
        f"| tokens forward-only | {compute['tokens_forward_only']:,} |",
        f"| training FLOPs (6·N·trained + 2·N·forward-only, N = {compute['n_params']:,}) | {compute['flops']:.4g} |",
        f"| training wall time (s in optimizer steps, summed over sessions) | {compute['train_seconds']:.1f} |",
        f"| FLOP budget (--compute_budget_flops) | {_budget(compute['budget_flops'], compute['stopped_by_budget'])} |",
        f"| time budget (--max_train_seconds) | {_budget(compute['budget_seconds'], compute['stopped_by_time'])} |",
        f"| stopped by | {' and '.join(compute['stopped_by']) or 'the step/epoch limit'} |",
        f"| precision | {_precision(record.get('precision'))} |",
        f"| length curriculum | {'on' if record.get('curriculum') else 'off'} |",
        f"| seed / data seed | {record['seed']} / {record['data_seed']} |",
        f"| training file instances | {data['n_instances']} ({', '.join(data['domains'])}; {', '.join(data['variants'])}) |",
        f"| data sha256 ({DATA_NAME}) | `{data['sha256']}` |",
        "",
        *_curve_lines(record.get("learning_curve") or []),
        "Evaluate with lm-eval:",
        "",
        f"    absence-lm-eval --tasks absencebench --model hf --model_args pretrained=<this dir>"
        f"{eval_flag}",
        "",
        "## Full record",
        "",
        "```json",
        json.dumps(record, indent=2, sort_keys=True),
        "```",
        "",
    ]
    return "\n".join(lines)


def _precision(precision: dict[str, Any] | None) -> str:
    if not precision:
        return "not recorded"
    rates = precision.get("measured_tokens_per_s")
    measured = (f" (measured at start-up: fp32 {rates['fp32']:.0f}, bf16 autocast {rates['bf16']:.0f} trained "
                f"tokens/s)" if rates else "")
    return f"{precision['chosen']}, asked: {precision['requested']}{measured}"


def _curve_lines(points: list[dict[str, Any]]) -> list[str]:
    """The learning curve as a table: greedy F1 on the fixed validation set against training progress."""
    if not points:
        return []
    domains = sorted({domain for point in points for domain in point["f1"]})
    n = points[-1]["n_per_domain"]
    lines = ["## Learning curve", "",
             f"Greedy F1 on the fixed validation split ({', '.join(f'{d} {n[d]}' for d in domains)} instances; "
             "`trainers/learning_curve.py`), not counted as training time.", "",
             "| step | training s | " + " | ".join(domains) + " | average | eval s |",
             "|---:|---:|" + "---:|" * len(domains) + "---:|---:|"]
    for point in points:
        lines.append(f"| {point['step']} | {point['train_seconds']:.0f} | "
                     + " | ".join(f"{point['f1'][d]:.1f}" for d in domains)
                     + f" | {point['average']:.1f} | {point['eval_seconds']:.0f} |")
    return lines + [""]


def _budget(value: float | None, reached: bool) -> str:
    return "none" if value is None else f"{value:g}{' (reached: stopped early)' if reached else ''}"


def read_model_card(directory: str | os.PathLike) -> dict[str, Any]:
    """The training record of a model written by `write_final_model`: its JSON sidecar, or for a model saved
    before the sidecar existed, the JSON block of its card."""
    sidecar = Path(directory) / RECORD_NAME
    if sidecar.is_file():
        return json.loads(sidecar.read_text(encoding="utf-8"))
    text = (Path(directory) / CARD_NAME).read_text(encoding="utf-8")
    return json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])


def write_final_model(trainer, output_dir: str, record: dict[str, Any], instances: Sequence[Instance]) -> Path:
    """Save the trained model (LoRA merged) as a plain checkpoint into output_dir, beside the checkpoint-N
    folders: everything is written to a staging folder and moved in, config.json and the card last, so a
    run killed on the way never leaves a directory that loads as a finished model."""
    out = Path(output_dir)
    staging = out / f".final-partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    try:
        model.save_pretrained(staging, safe_serialization=True)
        trainer.processing_class.save_pretrained(staging)
        write_jsonl(staging / DATA_NAME, instances)
        trainer.state.save_to_json(str(staging / "trainer_state.json"))
        atomic_write_text(staging / RECORD_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")
        atomic_write_text(staging / CARD_NAME, model_card(record["method"], record))
        names = sorted(p.name for p in staging.iterdir())
        for name in names:  # safetensors creates owner-only files; a model is ordinary data
            os.chmod(staging / name, default_file_mode())
        for name in [n for n in names if n not in FINAL_FILES_LAST] + list(FINAL_FILES_LAST):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
