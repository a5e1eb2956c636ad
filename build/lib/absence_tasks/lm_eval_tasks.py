"""What the lm-eval task YAMLs in `task_configs/` call: data loading, prompts, scoring, aggregation.

The YAMLs' `utils.py` only re-exports names from here, so the logic lives in the package (tested,
importable) and lm-eval's by-path import of `utils.py` stays trivial.

Data for a task comes from, in order of precedence (all set with lm-eval's `--metadata` JSON):
* `data_file`: one local JSONL — ours, or upstream AbsenceBench's (e.g. a held-out set);
* `data_dir`:  a folder of `{domain}_{variant}_{split}.jsonl` files as `absence-bench generate-suite` writes;
* `source: "hub"`: the official AbsenceBench data from the HF hub (needs a network);
* otherwise a seeded test set generated from the embedded sources (`n`, `seed`, `split`, `preset`,
  `prs`, `git_repo`, `poems` tune it), cached on disk after first use.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from lm_eval.api.task import ConfigurableTask

from absence_tasks.prompts import render_answer, render_prompt, template_name
from absence_tasks.schema import PLACEHOLDER, DataError, Instance, from_hf_dataset, read_jsonl, to_hf_dataset, \
    write_jsonl
from absence_tasks.scoring import score_response
from absence_tasks.sources.prs import EMBEDDED_PRS

PACKAGE_DIR = Path(__file__).resolve().parent
MIN_GEN_TOKS, MAX_GEN_TOKS, GEN_TOKS_STEP = 64, 4096, 64


def cache_dir() -> Path:
    base = os.environ.get("REVERSE_NEEDLE_CACHE") or Path.home() / ".cache" / "reverse-needle"
    return Path(base) / "datasets"


def _generator_fingerprint() -> str:
    """Hash of the code and embedded data that make instances, so a cached test set is rebuilt when either
    changes."""
    h = hashlib.sha256()
    for path in sorted([PACKAGE_DIR / "generate.py", PACKAGE_DIR / "schema.py", PACKAGE_DIR / "scoring.py",
                        *(PACKAGE_DIR / "sources").glob("*.py"), *EMBEDDED_PRS.glob("*.jsonl.gz")]):
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def generation_budget(instance: Instance) -> int:
    """max_gen_toks for one instance, from what the model itself can see: how many lines are missing
    (placeholders, or the length difference of the two documents) times the length of the longest
    lines that could be the answer, plus room for list decoration; rounded up to a multiple of
    `GEN_TOKS_STEP` so requests fall into a few groups that backends can batch. Small models often
    never stop on their own, so this budget is most of an evaluation's cost."""
    if instance.variant == "placeholder":
        n_lines = sum(1 for x in instance.modified_lines if x == PLACEHOLDER)
    else:
        n_lines = abs(len(instance.original_lines) - len(instance.modified_lines))
    pool = instance.modified_lines if instance.variant == "needle" else instance.original_lines
    longest = sorted((len(x) for x in pool), reverse=True)[:max(n_lines, 1)]
    # Short lines (numbers) may cost a token per character (many BPEs split digits); long lines of
    # verse or code average well over 3 characters per token. +1 or +8 covers the newline and a bullet.
    estimate = 16 + sum(min(chars + 1, chars // 3 + 8) for chars in longest)
    return min(MAX_GEN_TOKS, max(MIN_GEN_TOKS, GEN_TOKS_STEP * math.ceil(estimate / GEN_TOKS_STEP)))


def _check_kind(instances: list[Instance], domain: str, variant: str, where: str) -> list[Instance]:
    wrong = [i for i in instances if (i.domain, i.variant) != (domain, variant)]
    if wrong:
        raise DataError(f"{where} holds {wrong[0].domain}/{wrong[0].variant} instances; "
                        f"this task expects {domain}/{variant}")
    return instances


def _load_file(path: str | Path, domain: str, variant: str) -> list[Instance]:
    from absence_tasks.cli import load_instances

    return _check_kind(load_instances(path, domain), domain, variant, str(path))


def _generated(domain: str, variant: str, *, n: int, seed: int, split: str, preset: str,
               prs: str | None, git_repo: str | None, poems: str | None) -> list[Instance]:
    from absence_tasks.generate import generate_instances

    key = json.dumps({"domain": domain, "variant": variant, "n": n, "seed": seed, "split": split,
                      "preset": preset, "prs": prs, "git_repo": git_repo, "poems": poems,
                      "code": _generator_fingerprint()}, sort_keys=True)
    path = cache_dir() / f"{domain}_{variant}_{split}_n{n}_s{seed}_{hashlib.sha256(key.encode()).hexdigest()[:12]}.jsonl"
    if path.is_file():
        return read_jsonl(path)
    instances = generate_instances(domain, variant, n, split, seed, preset=preset, prs_path=prs,
                                   git_repo=git_repo, poems_path=poems)
    write_jsonl(path, instances)
    return instances


def load_instances_for_task(domain: str, variant: str, *, data_file: str | None = None,
                            data_dir: str | None = None, source: str = "generated", n: int = 100,
                            seed: int = 0, split: str = "test", preset: str = "cpu", prs: str | None = None,
                            git_repo: str | None = None, poems: str | None = None, **_lm_eval_keys: Any,
                            ) -> list[Instance]:
    """The instances one task evaluates (see the module docstring for the switches)."""
    if data_file:
        return _load_file(data_file, domain, variant)
    if data_dir:
        return _load_file(Path(data_dir) / f"{domain}_{variant}_{split}.jsonl", domain, variant)
    if source == "hub":
        from absence_tasks.upstream import load_hf_upstream

        if variant != "omission":
            raise DataError(f"the hub's AbsenceBench data has no {variant} variant for {domain}; "
                            "use a data_file for it")
        return load_hf_upstream(domain)
    if source != "generated":
        raise DataError(f"unknown data source {source!r} (expected 'generated' or 'hub')")
    return _generated(domain, variant, n=int(n), seed=int(seed), split=split, preset=preset, prs=prs,
                      git_repo=git_repo, poems=poems)


def dataset_loader(domain: str, variant: str):
    """A `custom_dataset` callable for one task: lm-eval calls it with the `--metadata` keys."""
    template_name(domain, variant)  # an unknown domain or variant fails here, when utils.py is read
    def load(**metadata: Any):
        instances = load_instances_for_task(domain, variant, **metadata)
        dataset = to_hf_dataset(instances)
        budgets = [generation_budget(i) for i in instances]
        return {"test": dataset.add_column("max_gen_toks", budgets)}

    load.__name__ = f"{domain}_{variant}"
    return load


def instance_from_doc(doc: dict[str, Any]) -> Instance:
    return from_hf_dataset([{k: v for k, v in doc.items() if k != "max_gen_toks"}])[0]


def doc_to_text(doc: dict[str, Any]) -> str:
    return render_prompt(instance_from_doc(doc))


def doc_to_target(doc: dict[str, Any]) -> str:
    return render_answer(instance_from_doc(doc))


def process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """Per-instance metrics. The `micro_f1` item carries the instance's counts (summed by
    `micro_f1_aggregation`) and the parsed lines, so `--log_samples` shows why it scored what it did."""
    score = score_response(instance_from_doc(doc), results[0])
    return {
        "f1": score.f1,
        "precision": score.precision,
        "recall": score.recall,
        "micro_f1": {
            "tp": score.tp, "fp": score.fp, "fn": score.fn,
            "parsed_lines": score.predicted_lines,
            "matched_lines": score.matched_lines,
            "false_positive_lines": score.false_positive_lines,
            "missed_lines": score.missed_lines,
            "unmatched_lines": score.unmatched_lines,
        },
    }


def micro_f1_aggregation(items: list[dict[str, Any]]) -> float:
    tp = sum(i["tp"] for i in items)
    fp = sum(i["fp"] for i in items)
    fn = sum(i["fn"] for i in items)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


class AbsenceTask(ConfigurableTask):
    """A generate_until task whose generation budget is set per instance (`generation_budget`)."""

    def __init__(self, config: dict[str, Any] | None = None, **kwargs: Any) -> None:
        # lm-eval hands the YAML's `class:` key to the task config, which does not know it.
        super().__init__(config={k: v for k, v in (config or {}).items() if k != "class"}, **kwargs)

    def construct_requests(self, doc, ctx, **kwargs):
        requests = super().construct_requests(doc, ctx, **kwargs)
        for request in requests if isinstance(requests, list) else [requests]:
            request.arguments[1]["max_gen_toks"] = int(doc["max_gen_toks"])
        return requests
