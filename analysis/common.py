"""What the attention analysis and the gap probe share: choosing instances, loading a checkpoint for
attention read-out, the output folder check, figures and JSON written atomically."""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from absence_tasks.io import atomic_write
from absence_tasks.schema import Instance

CONFIDENCE_LEVEL = 0.95


def select_instances(instances: Sequence[Instance], per_domain: int | None) -> list[Instance]:
    """The first `per_domain` instances of each domain, in file order (all when None)."""
    if per_domain is None:
        return list(instances)
    taken: Counter = Counter()
    selected = []
    for instance in instances:
        if taken[instance.domain] < per_domain:
            taken[instance.domain] += 1
            selected.append(instance)
    return selected


def load_model(path: str | os.PathLike) -> tuple[Any, Any]:
    """(model with eager attention in float32, fast tokenizer); ValueError naming the path otherwise."""
    from absence_tasks.models import load_checkpoint_or_die

    load_checkpoint_or_die(path)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager", dtype=torch.float32,
                                                     local_files_only=True)
    except Exception as e:  # transformers raises many kinds for a broken checkpoint
        raise ValueError(f"{path}: cannot load the model ({type(e).__name__}: {' '.join(str(e).split())})") from e
    if not tokenizer.is_fast:
        raise ValueError(f"{path}: the tokenizer is not a fast tokenizer (no tokenizer.json); "
                         f"token offsets need one")
    return model.eval(), tokenizer


def check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")


def save_figure(figure: Any, path: Path) -> None:
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=110))


def json_ready(value: Any) -> Any:
    """Floats rounded to 6 decimals, NaN/inf as null, tuples and arrays as lists."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, (float, np.floating)):
        return round(float(value), 6) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def label_layer_head_axes(ax: Any, title: str) -> None:
    """Title, axis names and integer ticks of one layer x head heatmap."""
    from matplotlib.ticker import MaxNLocator

    ax.set_title(title, fontsize=8)
    ax.set_xlabel("head", fontsize=8)
    ax.set_ylabel("layer", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
