"""The finished model: a plain HF checkpoint (LoRA merged) written atomically beside the checkpoint-N folders,
with a model card (README.md: a readable summary and the full training record as a JSON block) and the same
record as a JSON sidecar (`training_record.json`) that readers such as the leaderboard load without importing
torch or TRL.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2

from absence_tasks.io import default_file_mode, new_directory_mode
from absence_tasks.schema import Instance, atomic_write_text, write_jsonl

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
CARD_NAME = "README.md"
RECORD_NAME = "training_record.json"
DATA_NAME = "training_data.jsonl"
# Written last: a directory is a finished model only once its card exists (config.json comes just before).
FINAL_FILES_LAST = ("config.json", CARD_NAME)


def _json_safe(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def model_card(method: str, record: dict[str, Any]) -> str:
    """README.md for the final model (templates/model_card.md.jinja): a readable summary and the full record
    as a JSON block."""
    points = record.get("learning_curve") or []
    return _templates().get_template("model_card.md.jinja").render(
        **{**record, "method": method, "learning_curve": points, "curriculum": record.get("curriculum", False),
           "rl": record.get("rl"), "gap_probe": record.get("gap_probe"), "pass_at_k": record.get("pass_at_k") or []},
        name=Path(record["training_args"]["output_dir"]).name, data_name=DATA_NAME,
        budget=_budget, precision_text=_precision(record.get("precision")),
        curve_domains=sorted({domain for point in points for domain in point["f1"]}),
        record_json=json.dumps(record, indent=2, sort_keys=True))


@functools.cache
def _templates() -> jinja2.Environment:
    # Markdown, not HTML: nothing to escape; StrictUndefined makes a missing record field an error, not a gap.
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE_DIR), undefined=jinja2.StrictUndefined,
                              keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)


def _precision(precision: dict[str, Any] | None) -> str:
    if not precision:
        return "not recorded"
    rates = precision.get("measured_tokens_per_s")
    measured = (f" (measured at start-up: fp32 {rates['fp32']:.0f}, bf16 autocast {rates['bf16']:.0f} trained "
                f"tokens/s)" if rates else "")
    return f"{precision['chosen']}, asked: {precision['requested']}{measured}"


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
        trainer.save_side_files(staging)
        write_jsonl(staging / DATA_NAME, instances)
        trainer.state.save_to_json(str(staging / "trainer_state.json"))
        atomic_write_text(staging / RECORD_NAME, json.dumps(record, indent=2, sort_keys=True) + "\n")
        atomic_write_text(staging / CARD_NAME, model_card(record["method"], record))
        names = sorted(p.name for p in staging.iterdir())
        for path in staging.rglob("*"):  # safetensors creates owner-only files; a model is ordinary data
            os.chmod(path, new_directory_mode() if path.is_dir() else default_file_mode())
        for name in [n for n in names if n not in FINAL_FILES_LAST] + list(FINAL_FILES_LAST):
            if (out / name).is_dir():  # a folder (the gap probe's) replaces a folder of a killed earlier write
                shutil.rmtree(out / name)
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
