"""lm-eval outputs → leaderboard rows, and the paper's reported rows (paired comparisons: `compare`).

`publish` reads lm-eval's `results_<date>.json` and the `samples_<task>_<date>.jsonl` files written beside
it by `--log_samples`, and computes every score from the per-instance samples: mean F1 / precision /
recall per task with percentile-bootstrap CIs, the average over the omission tasks with a CI that
resamples within each task, and the per-instance F1 the paired test needs. It identifies

* the data (`suite`): a sha256 over the sorted (task, instance id, hash of the instance's fields) triples,
  so two rows with the same suite id were scored on exactly the same instances — whatever model scored
  them (lm-eval's own doc_hash also covers the row's budget and prompt length, which are in the scored
  model's tokens: `TASK_ROW_COLUMNS`);
* the model: `--model-name`, or the checkpoint folder's name, or lm-eval's model type;
* the weights (`checkpoint_sha256`) and training budget (`training`, from the Reverse Needle training
  record) when `pretrained=` names a local folder (or `checkpoint=` names it);
* the method: `method=`, or the training record's `method`, or `oracle` for the absence-oracle model, else
  `zero-shot`.

A row replaces the row with the same model, method and suite id; comparisons made with the old row go.
Nothing is written unless every input is good (errors name the file, in one line).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm import tqdm

from absence_tasks.io import check_output, locked
from absence_tasks.loading import DataSettings
from absence_tasks.schema import TASK_ROW_COLUMNS, DataError, iter_json_records
from leaderboard.probe import carry_probe
from leaderboard.reported import reported_rows
from leaderboard.schema import OMISSION_TASKS, LeaderboardError, format_key, load, row_key, save
from leaderboard.stats import average_ci, bootstrap_ci

METRICS = ("f1", "precision", "recall")
# lm-eval keys every metric by "<metric>,<filter>"; the AbsenceBench tasks use no filter.
FILTER = "none"
# A mean recomputed from the samples may differ from lm-eval's by float rounding, never by more.
MEAN_TOLERANCE = 1e-9
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
ORACLE_BACKEND = "absence-oracle"
# A trained model's folder: the trainers' model card and, beside it, its record as plain JSON (the same
# dict as the card's JSON block), so reading it needs neither torch nor the trainers.
MODEL_CARD = "README.md"
TRAINING_RECORD = "training_record.json"


# ---- reading lm-eval outputs -------------------------------------------------------------------

def find_results_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Each path is a results JSON file or a folder searched recursively; in a folder, the newest
    `results_*.json` of each model folder (lm-eval names them by date, so the newest sorts last)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            newest: dict[Path, Path] = {}
            for results in sorted(path.rglob("results_*.json")):
                newest[results.parent] = results
            if not newest:
                raise LeaderboardError(f"{path}: no lm-eval results_*.json file in this folder")
            found.extend(newest[folder] for folder in sorted(newest))
        else:
            raise LeaderboardError(f"{path}: no such file or folder")
    if not found:
        raise LeaderboardError("no lm-eval results given")
    return found


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise LeaderboardError(f"{path}: not UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise LeaderboardError(f"{path}: malformed JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(doc, dict):
        raise LeaderboardError(f"{path}: expected a JSON object, got {type(doc).__name__}")
    return doc


def check_results(path: Path, results: dict[str, Any]) -> None:
    """Is this lm-eval's results file (not some other JSON)?"""
    for key, kind in (("results", dict), ("config", dict), ("configs", dict), ("lm_eval_version", str),
                      ("date", (int, float))):
        if not isinstance(results.get(key), kind):
            raise LeaderboardError(f"{path}: not an lm-eval results file (no '{key}')")
    if not isinstance(results["config"].get("model"), str):
        raise LeaderboardError(f"{path}: not an lm-eval results file (no config.model)")


def task_names(path: Path, results: dict[str, Any]) -> list[str]:
    """The tasks scored (groups such as `absencebench` only aggregate them), each with F1/P/R."""
    groups = set(results.get("groups", {})) | {g for g, subtasks in results.get("group_subtasks", {}).items()
                                               if subtasks}
    tasks = sorted(t for t in results["results"] if t not in groups)
    if not tasks:
        raise LeaderboardError(f"{path}: no task results in it")
    for task in tasks:
        for metric in METRICS:
            if not isinstance(results["results"][task].get(f"{metric},{FILTER}"), (int, float)):
                raise LeaderboardError(f"{path}: task {task} has no {metric} score (not an AbsenceBench task?)")
    return tasks


def samples_path(results_path: Path, task: str) -> Path:
    """lm-eval names a run's files by the same date: results_<date>.json, samples_<task>_<date>.jsonl."""
    stamp = results_path.stem.removeprefix("results_")
    return results_path.with_name(f"samples_{task}_{stamp}.jsonl")


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The logged samples of one task, checked for what the leaderboard needs from each."""
    samples = []
    seen: set[str] = set()
    try:
        for lineno, sample in iter_json_records(path):
            doc = sample.get("doc")
            if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
                raise LeaderboardError(f"{path}:{lineno}: sample has no doc.id (not an AbsenceBench sample?)")
            for metric in METRICS:
                value = sample.get(metric)
                if not isinstance(value, (int, float)) or not 0 <= value <= 1:
                    raise LeaderboardError(f"{path}:{lineno}: sample {doc['id']} has no {metric} in [0, 1]")
            if doc["id"] in seen:
                raise LeaderboardError(f"{path}:{lineno}: instance {doc['id']} appears twice")
            seen.add(doc["id"])
            samples.append(sample)
    except DataError as e:
        raise LeaderboardError(str(e)) from None
    if not samples:
        raise LeaderboardError(f"{path}: no samples in it")
    return samples


def check_samples_match(results_path: Path, results: dict[str, Any], task: str, path: Path,
                        samples: list[dict[str, Any]]) -> None:
    """The samples must be the ones this results file aggregated (same count, same mean F1)."""
    reported = results["results"][task][f"f1,{FILTER}"]
    mean = sum(s["f1"] for s in samples) / len(samples)
    if abs(mean - reported) > MEAN_TOLERANCE:
        raise LeaderboardError(f"{path}: mean F1 {mean:.6f} of its {len(samples)} samples differs from "
                               f"{results_path.name}'s {reported:.6f} (samples of another run?)")


# ---- identifying data, model, weights ----------------------------------------------------------

def instance_sha256(doc: dict[str, Any]) -> str:
    """sha256 of a task row's instance fields (not the model-dependent `TASK_ROW_COLUMNS`), as sorted JSON."""
    fields = {k: v for k, v in doc.items() if k not in TASK_ROW_COLUMNS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def suite_sha256(samples_by_task: dict[str, list[dict[str, Any]]]) -> str:
    triples = sorted((task, s["doc"]["id"], instance_sha256(s["doc"])) for task, samples in samples_by_task.items()
                     for s in samples)
    digest = hashlib.sha256()
    for triple in triples:
        digest.update(("\t".join(triple) + "\n").encode("utf-8"))
    return digest.hexdigest()


def describe_data(metadata: dict[str, Any]) -> str:
    settings = DataSettings.from_metadata(metadata)
    if settings.data_file:
        return f"data_file {settings.data_file}"
    if settings.data_dir:
        return f"data_dir {settings.data_dir} (split {settings.split})"
    if settings.source == "hub":
        return "official AbsenceBench data from the HF hub"
    sources = {"prs": settings.prs, "git_repo": settings.git_repo, "poems": settings.poems}
    extra = "".join(f", {name}={value}" for name, value in sources.items() if value)
    return (f"generated: n={settings.n}, seed={settings.seed}, split={settings.split}, "
            f"preset={settings.preset}{extra}")


def suite_description(results: dict[str, Any], tasks: Sequence[str], counts: dict[str, int]) -> str:
    metadata = results["configs"].get(tasks[0], {}).get("metadata") or {}
    sizes = ", ".join(f"{task} {counts[task]}" for task in tasks)
    return f"{describe_data(metadata)}; {sum(counts.values())} instances ({sizes})"


def model_args(results: dict[str, Any]) -> dict[str, Any]:
    """lm-eval stores --model_args as given: a dict, or the 'key=value,key=value' string."""
    args = results["config"].get("model_args") or {}
    if isinstance(args, str):
        args = dict(item.split("=", 1) for item in args.split(",") if "=" in item)
    return args


def checkpoint_sha256(folder: Path) -> str | None:
    """sha256 over the weight files of a checkpoint folder: each file's name and content hash, by name."""
    weights = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not weights:
        return None
    digest = hashlib.sha256()
    with tqdm(total=sum(p.stat().st_size for p in weights), unit="B", unit_scale=True,
              desc=f"hashing {folder.name}", leave=False) as progress:
        for path in weights:
            file_digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    file_digest.update(chunk)
                    progress.update(len(chunk))
            digest.update(f"{path.name}\t{file_digest.hexdigest()}\n".encode("utf-8"))
    return digest.hexdigest()


def training_record(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """The training record of a Reverse Needle model and the file it came from, or None when the folder
    has none (a base model's README is not a model card). The trainers write it as `training_record.json`
    beside the model card; models saved before that carry it only in the card's JSON block."""
    sidecar = folder / TRAINING_RECORD
    if sidecar.is_file():
        return sidecar, read_json_object(sidecar)
    card = folder / MODEL_CARD
    text = card.read_text(encoding="utf-8", errors="replace") if card.is_file() else ""
    if "```json\n" not in text:
        return None
    block = text.split("```json\n", 1)[1].split("\n```", 1)[0]
    try:
        record = json.loads(block)
    except json.JSONDecodeError as e:
        raise LeaderboardError(f"{card}: unreadable model card record ({e})") from None
    if not isinstance(record, dict):
        raise LeaderboardError(f"{card}: the model card's record is not a JSON object")
    return card, record


def training_budget(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    compute = record.get("compute")
    if not isinstance(compute, dict) or not all(isinstance(compute.get(k), (int, float))
                                                for k in ("tokens_trained", "flops")):
        raise LeaderboardError(f"{path}: training record has no compute.tokens_trained / compute.flops")
    # The trainers' own clock (optimizer-step time summed over every session of a resumed run) when the
    # card has it; older cards only know the wall time of their last session.
    seconds = compute.get("train_seconds", record.get("wall_seconds_last_session"))
    budget = {"tokens": int(compute["tokens_trained"]), "flops": float(compute["flops"]),
              "wall_seconds": float(seconds) if isinstance(seconds, (int, float)) else None}
    if isinstance(record.get("global_step"), int):
        budget["optimizer_steps"] = record["global_step"]
    if isinstance(compute.get("instances_trained"), int):  # cards from before it was counted have none
        budget["instances"] = compute["instances_trained"]
    if isinstance(compute.get("stopped_by"), list):  # the budgets that ended the run; [] = its data or steps did
        budget["stopped_by"] = [str(name) for name in compute["stopped_by"]]
    if (start := starting_checkpoint(record)) is not None:
        budget["started_from"] = start
    return budget


def starting_checkpoint(record: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint a run started from, when it was itself trained here (its folder holds a training
    record: RL or SFT continued from an SFT checkpoint), with its own budget; None for a base model, or when
    that folder is not on this machine. A row's counts are its own run's, so without this an SFT continued
    for 220 steps from a 364-step checkpoint would read as 220 steps from the base model."""
    start = (record.get("model_args") or {}).get("model_name_or_path")
    folder = Path(start) if isinstance(start, str) else None
    if folder is None or not folder.is_dir() or (found := training_record(folder)) is None:
        return None
    path, start_record = found
    return {"model": display_path(folder), "method": start_record.get("method"),
            "training": training_budget(path, start_record)}


def display_path(path: Path) -> str:
    """The path relative to the working folder when it lies inside it (what a committed file should say)."""
    resolved = path.resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(resolved)


# ---- building a row ----------------------------------------------------------------------------

def task_scores_from_samples(samples: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    scores = {metric: bootstrap_ci([s[metric] for s in samples], seed=seed).as_dict() for metric in METRICS}
    return {**scores, "n_instances": len(samples)}


def task_scores_from_results(results: dict[str, Any], task: str) -> dict[str, Any]:
    values = results["results"][task]
    counts = results.get("n-samples", {}).get(task, {})
    n = counts.get("effective") if isinstance(counts, dict) else None
    scores = {m: {"value": float(values[f"{m},{FILTER}"]), "ci_low": None, "ci_high": None} for m in METRICS}
    return {**scores, "n_instances": n if isinstance(n, int) and n > 0 else None}


def _row_from_samples(results: dict[str, Any], tasks: list[str], samples_by_task: dict[str, list[dict[str, Any]]],
                      seed: int) -> dict[str, Any]:
    sha = suite_sha256(samples_by_task)
    omission = [t for t in tasks if t in OMISSION_TASKS]
    average = (average_ci([[s["f1"] for s in samples_by_task[t]] for t in omission], seed=seed).as_dict()
               if omission else None)
    return {
        "tasks": {t: task_scores_from_samples(samples_by_task[t], seed) for t in tasks},
        "average": average,
        "suite": {"id": sha[:12], "sha256": sha,
                  "description": suite_description(results, tasks, {t: len(samples_by_task[t]) for t in tasks})},
        "per_instance": {t: {s["doc"]["id"]: float(s["f1"]) for s in samples_by_task[t]} for t in tasks},
        "notes": [],
    }


def _row_from_results_only(results_path: Path, results: dict[str, Any], tasks: list[str]) -> dict[str, Any]:
    scores = {t: task_scores_from_results(results, t) for t in tasks}
    omission = [t for t in tasks if t in OMISSION_TASKS]
    average = ({"value": sum(scores[t]["f1"]["value"] for t in omission) / len(omission),
                "ci_low": None, "ci_high": None} if omission else None)
    # Without samples the instances are unknown; lm-eval's task_hashes (when present) still tell runs on
    # different data apart, but they also hash the prompts, so this id never equals a samples-based one.
    task_hashes = results.get("task_hashes") or {}
    basis = json.dumps(task_hashes, sort_keys=True) if task_hashes else display_path(results_path)
    counts = {t: scores[t]["n_instances"] or 0 for t in tasks}
    return {
        "tasks": scores,
        "average": average,
        "suite": {"id": "results-only-" + hashlib.sha256(basis.encode("utf-8")).hexdigest()[:12], "sha256": None,
                  "description": suite_description(results, tasks, counts) + " (instances unknown: no samples)"},
        "notes": [f"no samples files beside {results_path.name}: scores copied from the results file, "
                  f"without CIs or per-instance scores (cannot be compared)"],
    }


def context_notes(results: dict[str, Any], tasks: list[str]) -> list[str]:
    """What the tasks recorded about prompts too long for the model's context (absence_tasks.lm_eval_tasks)."""
    notes = []
    for task in tasks:
        metadata = results["configs"].get(task, {}).get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        if over := metadata.get("prompts_over_context"):
            notes.append(f"{task}: {over} prompts with their answer budget exceeded the model's context "
                         f"(lm-eval cut them on the left)")
        if skipped := metadata.get("skipped_over_context"):
            notes.append(f"{task}: {skipped} instances skipped, their prompt and answer budget exceeding max_length")
    return notes


def checkpoint_folder(checkpoint: str | os.PathLike | None, pretrained: str | None) -> Path | None:
    """The scored checkpoint's folder: the one named explicitly (which must exist), else lm-eval's
    `pretrained=` when it is a folder from here (a hub id or a path relative to elsewhere is not)."""
    if checkpoint is not None:
        if not Path(checkpoint).is_dir():
            raise LeaderboardError(f"{checkpoint}: no such checkpoint folder")
        return Path(checkpoint)
    if pretrained and Path(str(pretrained)).expanduser().is_dir():
        return Path(str(pretrained)).expanduser()
    return None


def build_row(results_path: Path, *, method: str | None = None, model_name: str | None = None,
              checkpoint: str | os.PathLike | None = None, allow_missing_samples: bool = False,
              seed: int = 0) -> dict[str, Any]:
    """One leaderboard row from one lm-eval results file and its samples."""
    results = read_json_object(results_path)
    check_results(results_path, results)
    tasks = task_names(results_path, results)
    missing = [samples_path(results_path, t) for t in tasks if not samples_path(results_path, t).is_file()]
    if missing and not allow_missing_samples:
        raise LeaderboardError(f"{missing[0]}: no such samples file (run lm-eval with --log_samples, or "
                               f"publish with --allow-missing-samples to take the results without CIs)")
    if missing:
        scored = _row_from_results_only(results_path, results, tasks)
    else:
        samples_by_task = {}
        for task in tasks:
            path = samples_path(results_path, task)
            samples_by_task[task] = read_samples(path)
            check_samples_match(results_path, results, task, path, samples_by_task[task])
        scored = _row_from_samples(results, tasks, samples_by_task, seed)

    backend = results["config"]["model"]
    pretrained = model_args(results).get("pretrained")
    folder = checkpoint_folder(checkpoint, pretrained)
    notes = scored.pop("notes") + context_notes(results, tasks)
    weights_sha, training, card_method = None, None, None
    if folder is not None:
        weights_sha = checkpoint_sha256(folder)
        if (found := training_record(folder)) is not None:
            record_path, record = found
            training = training_budget(record_path, record)
            card_method = record.get("method")
        default_name = folder.resolve().name
    else:
        if pretrained:
            notes.append(f"pretrained={pretrained} is not a folder here: no checkpoint hash or training record")
        # An API backend names its model with `model=` (gpt-4.1, claude-..., a served model name).
        default_name = str(pretrained or model_args(results).get("model") or backend)
    chosen_method = method or card_method or ("oracle" if backend == ORACLE_BACKEND else "zero-shot")
    row = {
        "model": model_name or default_name,
        "checkpoint_sha256": weights_sha,
        "method": chosen_method,
        "training": training,
        "tasks": scored["tasks"],
        "average": scored["average"],
        "suite": scored["suite"],
        "backend": backend,
        "lm_eval_version": results["lm_eval_version"],
        "date": datetime.fromtimestamp(results["date"], timezone.utc).isoformat(timespec="seconds"),
        "source": display_path(results_path),
        "notes": notes,
    }
    if "per_instance" in scored:
        row["per_instance"] = scored["per_instance"]
    return row


# ---- changing the leaderboard file -------------------------------------------------------------

def merge_rows(doc: dict[str, Any], rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Add rows, replacing rows with the same key and dropping comparisons that involved a replaced row."""
    new_keys = {row_key(r) for r in rows}
    old_rows = {row_key(r): r for r in doc["rows"]}
    kept = [r for r in doc["rows"] if row_key(r) not in new_keys]
    comparisons = [c for c in doc.get("comparisons", [])
                   if not {_comparison_key(c, "row_a"), _comparison_key(c, "row_b")} & new_keys]
    rows = [carry_probe(old_rows[row_key(r)], r) if row_key(r) in old_rows else r for r in rows]
    return {**doc, "rows": kept + rows, "comparisons": comparisons}


def _comparison_key(comparison: dict[str, Any], side: str) -> tuple[str, str, str]:
    return tuple(comparison[side][k] for k in ("model", "method", "suite_id"))


def _newest_per_key(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two runs that make the same row (a rerun into the same output folder): the newer one counts."""
    newest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        key = row_key(row)
        if key in newest:
            older, newer = sorted((newest[key], row), key=lambda r: r["date"])
            print(f"leaderboard: {format_key(key)}: {newer['source']} replaces the older {older['source']}",
                  file=sys.stderr)
            row = newer
        newest[key] = row
    return list(newest.values())


def publish(results_paths: Iterable[str | os.PathLike], leaderboard_path: str | os.PathLike, *,
            method: str | None = None, model_name: str | None = None, checkpoint: str | os.PathLike | None = None,
            allow_missing_samples: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Add (or replace) one row per lm-eval run found in `results_paths`; returns the rows written.
    The rows are built first; the leaderboard is then read, merged and written under its lock, so
    concurrent publishers to one file all keep their rows."""
    files = find_results_files(results_paths)
    check_output(leaderboard_path, files)
    load(leaderboard_path, missing_ok=True)  # a broken leaderboard fails before the slow part
    rows = [build_row(path, method=method, model_name=model_name, checkpoint=checkpoint,
                      allow_missing_samples=allow_missing_samples, seed=seed) for path in files]
    rows = _newest_per_key(rows)
    with locked(leaderboard_path):
        save(leaderboard_path, merge_rows(load(leaderboard_path, missing_ok=True), rows))
    return rows


def add_reported(leaderboard_path: str | os.PathLike) -> list[dict[str, Any]]:
    """Add (or refresh) the AbsenceBench paper's reported rows."""
    check_output(leaderboard_path)
    rows = reported_rows()
    with locked(leaderboard_path):
        save(leaderboard_path, merge_rows(load(leaderboard_path, missing_ok=True), rows))
    return rows
