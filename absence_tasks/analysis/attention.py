"""Attention-to-gap analysis: do the answer-side positions of a model look at where something is missing?

AbsenceBench explains models' failure to list omitted lines by attention: a transformer attends to
keys, and an omission leaves no key behind. This module measures it. For every instance it runs the
checkpoint with eager attention over the *evaluation* prompt (`render_prompt`, inside the tokenizer's
chat template exactly as lm-eval's ``--apply_chat_template`` sends it) and records, per layer and head,
the attention mass that the answer-side query positions put on two sets of prompt tokens:

* ``flank``   – the tokens flanking each gap in the document that lacks the line: the last token of
  the line before the gap and the first token of the line after it (blank neighbours are skipped:
  they have no tokens of their own). In the placeholder variant the gap is visible, so the set is the
  placeholder's tokens instead.
* ``omitted`` – the tokens of the missing line itself in the document that still has it.

For omission / placeholder instances the document that lacks the line is the modified one and the
line is in the original. Needle instances are the mirror image, and are measured as such: the
inserted line is absent from the *original* document, so ``flank`` is the pair of original-document
tokens around the place where it was inserted, and ``omitted`` is the inserted line's tokens in the
modified document.

The answer-side queries are the last prompt token (the position that emits the first answer token)
and, with ``--generate``, every greedily generated token that emits a further one. A measure's mass
is averaged over these queries. The **gap-attention ratio** divides it by the mass the same queries
put on an equal number of random tokens of the same document (the gap document for ``flank``, the
other one for ``omitted``; the measured tokens themselves are avoided while the document has enough
others), averaged over several seeded draws: 1.0 means no preference for the gap, above 1 means the
head looks there.

Memory stays bounded by one layer's attention over a chunk of the prompt: the prompt minus its last
token is prefilled in chunks into the KV cache without returning attentions, and only the answer-side
queries are then run with ``output_attentions=True``, so each layer hands back just a
``[heads, 1, keys]`` row, which is reduced to the four masses (and, for strip figures, the row over
the gap document) at once.

Outputs (``--out DIR``): ``summary.json`` (written last), ``heatmap_<domain>.png``, and
``strip_<instance id>.png`` for the first ``--strips`` instances of each domain; ``--compare DIR ... --out DIR``
draws ``comparison.png`` (and ``comparison.json``) from several earlier runs on one colour scale.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
import warnings
import zlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.stats

from absence_tasks.prompts import render_documents, render_prompt
from absence_tasks.io import atomic_write, run_command
from absence_tasks.schema import DOMAINS, DataError, Instance, atomic_write_text, iter_json_records
from leaderboard.stats import bootstrap_ci

MEASURES = ("flank", "omitted")
MEASURE_DESCRIPTIONS = {
    "flank": "tokens flanking each gap in the document that lacks the line (placeholder variant: the "
             "placeholder's tokens); baseline drawn from that document",
    "omitted": "tokens of the missing line in the document that has it (needle: the inserted line in the "
               "modified document); baseline drawn from that document",
}
SUMMARY_NAME = "summary.json"
CONFIDENCE_LEVEL = 0.95


# ---- where the documents sit in the prompt -------------------------------------------------------------

@functools.cache
def _template_geometry(domain: str, variant: str) -> tuple[int, int]:
    """(characters before the original document, characters between the two documents) in the prompt.

    Found by rendering the template with one-character documents that differ in one place: the first
    character where two renderings differ is where that document starts. The template text around the
    documents does not depend on them, so this holds for every instance (and is verified there)."""
    both_a = render_documents(domain, variant, "a", "a")
    original_start = len(os.path.commonprefix([both_a, render_documents(domain, variant, "b", "a")]))
    modified_start = len(os.path.commonprefix([both_a, render_documents(domain, variant, "a", "b")]))
    return original_start, modified_start - original_start - 1


def document_spans(instance: Instance) -> tuple[str, tuple[int, int], tuple[int, int]]:
    """The evaluation prompt and the character spans of the original and the modified document in it.

    Positions come from the template's geometry, not from searching for the texts, which would be
    fooled by a short document that also occurs in the instructions (a one-line recitation "Now")."""
    prompt = render_prompt(instance)
    before, between = _template_geometry(instance.domain, instance.variant)
    original, modified = instance.original_text, instance.modified_text
    original_span = (before, before + len(original))
    modified_start = original_span[1] + between
    modified_span = (modified_start, modified_start + len(modified))
    if prompt[slice(*original_span)] != original or prompt[slice(*modified_span)] != modified:
        raise ValueError(f"instance {instance.id}: the {instance.domain}/{instance.variant} prompt template does "
                         f"not contain the two documents verbatim; cannot locate them")
    return prompt, original_span, modified_span


def line_content_spans(lines: Sequence[str]) -> list[tuple[int, int] | None]:
    """Per line, the span of its text without surrounding white space, relative to the start of
    "\\n".join(lines); None for a blank line."""
    spans: list[tuple[int, int] | None] = []
    start = 0
    for line in lines:
        content = line.strip()
        if content:
            lead = len(line) - len(line.lstrip())
            spans.append((start + lead, start + lead + len(content)))
        else:
            spans.append(None)
        start += len(line) + 1
    return spans


@dataclass(frozen=True)
class Gap:
    """One place where lines are missing. Line indices point into the gap document (the one lacking
    the lines) except `absent`, which points into the document that has them."""
    before: int | None              # nearest non-blank line before the gap
    after: int | None               # nearest non-blank line after the gap
    placeholders: tuple[int, ...]   # placeholder lines standing in for the missing ones
    absent: tuple[int, ...]         # the missing lines


def gap_document_is_original(instance: Instance) -> bool:
    """Needle instances lack the inserted lines in the original; the others lack lines in the modified."""
    return instance.variant == "needle"


def _consecutive_runs(indices: Iterable[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return runs


def gap_line_sources(instance: Instance) -> list[int]:
    """Per line of the gap document, the index of the same line in the document that has everything
    (a placeholder line maps to the line it stands for)."""
    if gap_document_is_original(instance):
        inserted = set(instance.inserted_indices)
        return [j for j in range(len(instance.modified_lines)) if j not in inserted]
    dropped = set(instance.metadata.get("dropped_context_indices", ()))
    leaves_out = set(instance.omitted_indices) if instance.variant == "omission" else set()
    return [i for i in range(len(instance.original_lines)) if i not in dropped and i not in leaves_out]


def find_gaps(instance: Instance) -> list[Gap]:
    """The gaps of an instance: each run of consecutive missing lines is one gap."""
    if gap_document_is_original(instance):
        gap_lines = instance.original_lines
        runs = _consecutive_runs(instance.inserted_indices)
    else:
        gap_lines = instance.modified_lines
        runs = _consecutive_runs(instance.omitted_indices)
    # Lines of the document that has everything -> their index in the gap document.
    in_gap_document = {present: k for k, present in enumerate(gap_line_sources(instance))}
    n_present = len(instance.modified_lines if gap_document_is_original(instance) else instance.original_lines)

    def nearest(candidates: Iterable[int]) -> int | None:
        for i in candidates:
            k = in_gap_document.get(i)
            if k is not None and gap_lines[k].strip():
                return k
        return None

    gaps = []
    for run in runs:
        placeholders = tuple(in_gap_document[i] for i in run) if instance.variant == "placeholder" else ()
        gaps.append(Gap(before=nearest(range(run[0] - 1, -1, -1)), after=nearest(range(run[-1] + 1, n_present)),
                        placeholders=placeholders, absent=tuple(run)))
    return gaps


# ---- characters -> tokens --------------------------------------------------------------------------------

def model_input_text(prompt: str, tokenizer: Any, use_chat_template: bool) -> tuple[str, int]:
    """The string the model reads and the character offset of `prompt` in it. With a chat template the
    prompt is the one user message followed by the generation prompt, as lm-eval sends it."""
    if not use_chat_template:
        return prompt, 0
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                         add_generation_prompt=True)
    position = text.find(prompt)
    if position >= 0:
        return text, position
    # Some templates trim the message; the documents inside are untouched by that.
    position = text.find(prompt.strip())
    if position >= 0:
        return text, position - (len(prompt) - len(prompt.lstrip()))
    raise ValueError("the tokenizer's chat template rewrites the prompt, so the documents cannot be located in "
                     "it; rerun with --no-chat-template")


def tokens_in_span(offsets: np.ndarray, start: int, end: int) -> np.ndarray:
    """Indices of the tokens whose character range overlaps [start, end) (offsets: [n_tokens, 2])."""
    return np.flatnonzero((offsets[:, 0] < end) & (offsets[:, 1] > start) & (offsets[:, 1] > offsets[:, 0]))


@dataclass(frozen=True)
class TokenizedPrompt:
    """One instance's model input as tokens, with where its two documents sit (character spans in the
    model input, so the chat template's text before the prompt is already accounted for)."""
    input_ids: tuple[int, ...]
    offsets: np.ndarray              # [n_tokens, 2] character range of each token in the model input
    original_span: tuple[int, int]
    modified_span: tuple[int, int]

    def tokens(self, span: tuple[int, int]) -> np.ndarray:
        return tokens_in_span(self.offsets, *span)

    def line_tokens(self, lines: Sequence[str], document_start: int) -> list[np.ndarray]:
        """Per line of the document starting at `document_start`, the positions of its text's tokens
        (empty for a blank line)."""
        empty = np.empty(0, dtype=np.int64)
        return [empty if span is None else tokens_in_span(self.offsets, document_start + span[0],
                                                           document_start + span[1])
                for span in line_content_spans(lines)]


def tokenize_prompt(instance: Instance, tokenizer: Any, use_chat_template: bool = True) -> TokenizedPrompt:
    """Tokenize the instance's evaluation prompt as the model reads it (fast tokenizer offsets)."""
    prompt, original_span, modified_span = document_spans(instance)
    text, prompt_offset = model_input_text(prompt, tokenizer, use_chat_template)
    # No special tokens of our own: the chat template already has them, and lm-eval adds none either.
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = np.asarray(encoding["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return TokenizedPrompt(
        input_ids=tuple(encoding["input_ids"]), offsets=offsets,
        original_span=(prompt_offset + original_span[0], prompt_offset + original_span[1]),
        modified_span=(prompt_offset + modified_span[0], prompt_offset + modified_span[1]))


@dataclass(frozen=True)
class GapPositions:
    """Token positions of one instance's model input (all int64 arrays of positions, sorted)."""
    input_ids: tuple[int, ...]
    flank: np.ndarray
    omitted: np.ndarray
    gap_region: np.ndarray       # every token of the document that lacks the lines
    present_region: np.ndarray   # every token of the document that has them
    gap_starts: np.ndarray       # per gap, the position the gap sits just before (for figures)
    n_gaps: int


def gap_positions(instance: Instance, tokenizer: Any, use_chat_template: bool = True) -> GapPositions:
    """Tokenize the instance's model input (fast tokenizer offsets) and find the measured tokens."""
    tokenized = tokenize_prompt(instance, tokenizer, use_chat_template)
    if gap_document_is_original(instance):
        gap_span, present_span = tokenized.original_span, tokenized.modified_span
        gap_lines, present_lines = instance.original_lines, instance.modified_lines
    else:
        gap_span, present_span = tokenized.modified_span, tokenized.original_span
        gap_lines, present_lines = instance.modified_lines, instance.original_lines
    gap_line_tokens = tokenized.line_tokens(gap_lines, gap_span[0])
    present_line_tokens = tokenized.line_tokens(present_lines, present_span[0])

    def line_tokens(per_line: list[np.ndarray], index: int | None) -> np.ndarray:
        return np.empty(0, dtype=np.int64) if index is None else per_line[index]

    gap_region = tokenized.tokens(gap_span)
    flank: set[int] = set()
    omitted: set[int] = set()
    gap_starts = []
    gaps = find_gaps(instance)
    for gap in gaps:
        if gap.placeholders:
            marker = np.concatenate([line_tokens(gap_line_tokens, k) for k in gap.placeholders])
            flank.update(marker.tolist())
            gap_starts.append(int(marker[0]))
        else:
            before = line_tokens(gap_line_tokens, gap.before)
            after = line_tokens(gap_line_tokens, gap.after)
            if before.size:
                flank.add(int(before[-1]))
            if after.size:
                flank.add(int(after[0]))
                gap_starts.append(int(after[0]))
            elif before.size:
                gap_starts.append(int(before[-1]) + 1)
        for line in gap.absent:
            omitted.update(line_tokens(present_line_tokens, line).tolist())

    def positions(values: Iterable[int]) -> np.ndarray:
        return np.array(sorted(values), dtype=np.int64)

    return GapPositions(
        input_ids=tokenized.input_ids, flank=positions(flank), omitted=positions(omitted),
        gap_region=gap_region, present_region=tokenized.tokens(present_span),
        gap_starts=positions(gap_starts), n_gaps=len(gaps))


# ---- the ratio -----------------------------------------------------------------------------------------

def draw_baseline_positions(region: np.ndarray, target: np.ndarray, n_draws: int,
                            rng: np.random.Generator) -> np.ndarray:
    """`n_draws` random sets of len(target) positions from `region` ([n_draws, k]), each without
    replacement. The target positions themselves are avoided while the region has enough others."""
    k = len(target)
    others = np.setdiff1d(region, target)
    pool = others if len(others) >= k else np.asarray(region)
    if k == 0 or len(pool) < k:
        return np.empty((n_draws, 0), dtype=np.int64)
    return np.stack([rng.choice(pool, size=k, replace=False) for _ in range(n_draws)]).astype(np.int64)


def position_weights(n_keys: int, target: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """[n_keys, 2]: column 0 selects the target positions, column 1 is the mean selection of the draws,
    so (attention row @ weights) gives the target mass and the mean baseline mass in one product."""
    weights = np.zeros((n_keys, 2))
    weights[np.asarray(target, dtype=np.int64), 0] = 1.0
    if draws.size:
        np.add.at(weights[:, 1], draws.ravel(), 1.0 / len(draws))
    return weights


def ratio_of_masses(target_mass: np.ndarray, baseline_mass: np.ndarray) -> np.ndarray:
    """target / baseline, NaN where the baseline is zero (nothing to compare with)."""
    target_mass, baseline_mass = np.asarray(target_mass, dtype=np.float64), np.asarray(baseline_mass, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(baseline_mass > 0, target_mass / baseline_mass, np.nan)


def gap_attention_ratio(rows: np.ndarray, target: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """The gap-attention ratio of attention rows [..., n_keys] (one value per row): mass on `target`
    over the mean mass on the `draws` (from `draw_baseline_positions`)."""
    rows = np.asarray(rows, dtype=np.float64)
    masses = rows @ position_weights(rows.shape[-1], target, draws)
    return ratio_of_masses(masses[..., 0], masses[..., 1])


# ---- running the model ---------------------------------------------------------------------------------

@dataclass
class AnswerAttention:
    masses: np.ndarray             # [layers, heads, n_weight_columns], mean over answer-side queries
    n_queries: int
    generated: list[int]
    strip: np.ndarray | None       # [layers, len(strip_positions)], mean over heads and queries


def answer_attention(model: Any, input_ids: Sequence[int], weights: np.ndarray, *,
                     strip_positions: np.ndarray | None = None, max_new_tokens: int = 0,
                     eos_ids: Iterable[int] = (), prefill_chunk: int = 512) -> AnswerAttention:
    """Attention of the answer-side queries, reduced on the fly.

    `weights` [n_prompt, S] turns each attention row over the prompt into S masses. The prompt except
    its last token is prefilled in chunks (eager attention over a chunk is [heads, chunk, keys], and no
    attentions are returned); then the last prompt token and, up to `max_new_tokens`, each greedily
    generated token that emits another one are fed one at a time with `output_attentions=True`."""
    import torch

    ids = torch.tensor([list(input_ids)], dtype=torch.long)
    n_prompt = ids.shape[1]
    weight_matrix = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float32))
    strip_index = None if strip_positions is None else torch.from_numpy(np.asarray(strip_positions, dtype=np.int64))
    eos_ids = set(eos_ids)
    cache = None
    mass_sum = strip_sum = None
    generated: list[int] = []
    n_queries = 0
    with torch.inference_mode():
        for start in range(0, n_prompt - 1, prefill_chunk):
            out = model(input_ids=ids[:, start:min(start + prefill_chunk, n_prompt - 1)], past_key_values=cache,
                        use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
        step_input = ids[:, n_prompt - 1:]
        while True:
            out = model(input_ids=step_input, past_key_values=cache, use_cache=True, output_attentions=True)
            cache = out.past_key_values
            # Each layer: [batch 1, heads, 1 query, keys]; keys beyond the prompt (generated tokens) are not measured.
            rows = torch.stack([layer[0, :, -1, :n_prompt] for layer in out.attentions]).float()
            masses = rows @ weight_matrix
            mass_sum = masses if mass_sum is None else mass_sum + masses
            if strip_index is not None:
                over_document = rows[:, :, strip_index].mean(dim=1)
                strip_sum = over_document if strip_sum is None else strip_sum + over_document
            n_queries += 1
            if len(generated) == max_new_tokens:
                break
            token = int(out.logits[0, -1].argmax())
            generated.append(token)
            if token in eos_ids or len(generated) == max_new_tokens:
                break
            step_input = torch.tensor([[token]], dtype=torch.long)
    return AnswerAttention(
        masses=(mass_sum / n_queries).double().numpy(), n_queries=n_queries, generated=generated,
        strip=None if strip_sum is None else (strip_sum / n_queries).double().numpy())


def instance_rng(seed: int, instance_id: str) -> np.random.Generator:
    """A generator per instance, so an instance's baseline does not depend on which others are analysed."""
    return np.random.default_rng([seed, zlib.crc32(instance_id.encode("utf-8"))])


def measure_weights(positions: GapPositions, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """[n_prompt, 4]: flank target, flank baseline, omitted target, omitted baseline."""
    n_keys = len(positions.input_ids)
    flank_draws = draw_baseline_positions(positions.gap_region, positions.flank, n_draws, rng)
    omitted_draws = draw_baseline_positions(positions.present_region, positions.omitted, n_draws, rng)
    return np.hstack([position_weights(n_keys, positions.flank, flank_draws),
                      position_weights(n_keys, positions.omitted, omitted_draws)])


def ratios_from_masses(masses: np.ndarray) -> dict[str, np.ndarray]:
    """The two measures' ratio matrices from the [..., 4] masses of `measure_weights`."""
    return {"flank": ratio_of_masses(masses[..., 0], masses[..., 1]),
            "omitted": ratio_of_masses(masses[..., 2], masses[..., 3])}


# ---- statistics ----------------------------------------------------------------------------------------

def finite_mean_ci(values: np.ndarray, rng: np.random.Generator, n_resamples: int = 1000,
                   level: float = CONFIDENCE_LEVEL) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean over the finite values (None when there are none)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    estimate = bootstrap_ci(values, n_resamples, level, seed=rng)
    return estimate.ci_low, estimate.ci_high


def _nanmean(values: np.ndarray, axis: Any = None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN slice is NaN, which is what we want
        return np.nanmean(values, axis=axis)


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, Any]:
    """Pearson and Spearman correlation over the pairs where both are finite (NaN below 3 pairs or for a
    constant variable, where scipy would only warn)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    both = np.isfinite(x) & np.isfinite(y)
    x, y = x[both], y[both]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"n": int(x.size), "pearson": math.nan, "spearman": math.nan}
    return {"n": int(x.size), "pearson": float(scipy.stats.pearsonr(x, y).statistic),
            "spearman": float(scipy.stats.spearmanr(x, y).statistic)}


def summarize_measure(ratios: np.ndarray, rng: np.random.Generator, n_resamples: int) -> dict[str, Any]:
    """Aggregate one measure's per-instance [n, layers, heads] ratios."""
    mean_ratio = _nanmean(ratios, axis=0)
    per_instance = _nanmean(ratios.reshape(len(ratios), -1), axis=1)
    best_head = None
    if np.isfinite(mean_ratio).any():
        layer, head = np.unravel_index(int(np.nanargmax(mean_ratio)), mean_ratio.shape)
        head_values = ratios[:, layer, head]
        best_head = {"layer": int(layer), "head": int(head), "ratio": float(mean_ratio[layer, head]),
                     "ci": finite_mean_ci(head_values, rng, n_resamples),
                     "n": int(np.isfinite(head_values).sum())}
    return {
        "mean_ratio": mean_ratio.tolist(),
        "best_head": best_head,
        "mean_over_heads": {"ratio": float(_nanmean(per_instance)), "ci": finite_mean_ci(per_instance, rng, n_resamples),
                            "n": int(np.isfinite(per_instance).sum())},
    }


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


# ---- figures -------------------------------------------------------------------------------------------

def save_figure(figure: Any, path: Path) -> None:
    atomic_write(path, lambda f: figure.savefig(f, format="png", dpi=110))


def heatmap_grid(cells: Sequence[Sequence[tuple[str, Any]]], title: str) -> Any:
    """A grid of layer x head heatmaps of log2(ratio) on one symmetric colour scale (white = no
    preference). A cell is (title, ratio matrix or None for 'not available')."""
    import matplotlib
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    def log2(matrix: Any) -> np.ndarray:
        values = np.array(matrix, dtype=np.float64)  # None -> nan
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, np.log2(values), np.nan)

    logged = [[(name, None if matrix is None else log2(matrix)) for name, matrix in row] for row in cells]
    finite = [np.abs(m[np.isfinite(m)]) for row in logged for _, m in row if m is not None]
    limit = max([float(v.max()) for v in finite if v.size] + [0.1])
    norm = Normalize(vmin=-limit, vmax=limit)
    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.75")
    n_rows, n_cols = len(cells), max(len(row) for row in cells)
    n_layers = max([m.shape[0] for row in logged for _, m in row if m is not None] + [1])
    figure = Figure(figsize=(2.6 * n_cols + 1.4, max(2.4, 0.08 * n_layers + 1.4) * n_rows + 0.6), layout="constrained")
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for r, row in enumerate(logged):
        for c in range(n_cols):
            ax = axes[r][c]
            if c >= len(row) or row[c][1] is None:
                ax.set_axis_off()
                if c < len(row):
                    ax.set_title(row[c][0], fontsize=8)
                    ax.text(0.5, 0.5, "n/a", ha="center", va="center", transform=ax.transAxes)
                continue
            name, matrix = row[c]
            ax.imshow(np.ma.masked_invalid(matrix), cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
            if np.isfinite(matrix).any():
                layer, head = np.unravel_index(int(np.nanargmax(matrix)), matrix.shape)
                ax.plot(head, layer, marker="s", markersize=9, markerfacecolor="none", markeredgecolor="black")
            ax.set_title(name, fontsize=8)
            ax.set_xlabel("head", fontsize=8)
            ax.set_ylabel("layer", fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
    figure.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=axes, shrink=0.8,
                    label="log2(gap-attention ratio)\n0 = no preference")
    figure.suptitle(title, fontsize=10)
    return figure


def strip_figure(strip: np.ndarray, flank_columns: np.ndarray, gap_columns: np.ndarray, title: str) -> Any:
    """Attention of the answer-side queries over the tokens of the gap document: one row per layer (mean
    over heads), and below it the mean over layers; dashed lines where lines are missing, red marks on
    the measured flank tokens."""
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1.3])
    positive = strip[strip > 0]
    norm = LogNorm(vmin=positive.min(), vmax=positive.max()) if positive.size and positive.min() < positive.max() else None
    image = top.imshow(strip, aspect="auto", interpolation="nearest", cmap="viridis", norm=norm)
    figure.colorbar(image, ax=top, label="attention (mean over heads)")
    top.set_ylabel("layer")
    top.yaxis.set_major_locator(MaxNLocator(integer=True))
    mean_over_layers = strip.mean(axis=0)
    bottom.plot(np.arange(strip.shape[1]), mean_over_layers, color="0.2", linewidth=0.8)
    bottom.plot(flank_columns, mean_over_layers[flank_columns], linestyle="none", marker="v", color="red",
                markersize=4, label="measured gap tokens")
    for column in gap_columns:
        top.axvline(column, color="white", linestyle="--", linewidth=0.8)
        bottom.axvline(column, color="red", linestyle="--", linewidth=0.8)
    bottom.set_xlabel("token of the document with the gap(s)")
    bottom.set_ylabel("mean")
    if len(flank_columns):
        bottom.legend(loc="upper right", fontsize=7)
    figure.suptitle(title, fontsize=9)
    return figure


def _safe_file_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:120]


# ---- the analysis run ----------------------------------------------------------------------------------

def read_f1_scores(path: str | os.PathLike) -> dict[str, float]:
    """Per-instance F1 keyed by id, from a JSONL of {id, f1, ...} (`absence-bench score --out`)."""
    scores = {}
    for lineno, record in iter_json_records(path):
        identifier, f1 = record.get("id"), record.get("f1")
        if (not isinstance(identifier, (str, int)) or isinstance(f1, bool) or not isinstance(f1, (int, float))
                or not math.isfinite(f1)):
            raise DataError(f"{path}:{lineno}: a score record needs an 'id' and a numeric 'f1'")
        scores[str(identifier)] = float(f1)
    if not scores:
        raise DataError(f"{path}: no score records in file")
    return scores


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


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = set(configured if isinstance(configured, (list, tuple)) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {i for i in ids if i is not None}


def check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a directory")


def _check_options(args: argparse.Namespace) -> None:
    checks = [(args.n is None or args.n >= 1, "--n must be at least 1"),
              (args.max_new_tokens >= 1, "--max-new-tokens must be at least 1"),
              (args.baseline_draws >= 1, "--baseline-draws must be at least 1"),
              (args.bootstrap >= 10, "--bootstrap must be at least 10"),
              (args.strips >= 0, "--strips must not be negative"),
              (args.prefill_chunk >= 1, "--prefill-chunk must be at least 1")]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def run_analysis(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from absence_tasks.loading import load_instances
    from absence_tasks.scoring import score_response

    _check_options(args)
    out = Path(args.out)
    check_output_dir(out)
    instances = select_instances(load_instances(args.data, args.domain), args.n)
    f1_by_id: dict[str, float] = {}
    f1_source = None
    if args.scores:
        f1_by_id = read_f1_scores(args.scores)
        if not {i.id for i in instances} & set(f1_by_id):
            raise DataError(f"{args.scores}: none of its ids is among the {len(instances)} analysed instances of "
                            f"{args.data}")
        f1_source = f"scores file {args.scores}"
    elif args.generate:
        f1_source = f"greedy generation here (max {args.max_new_tokens} new tokens)"

    model, tokenizer = load_model(args.model)
    use_chat_template = not args.no_chat_template and bool(getattr(tokenizer, "chat_template", None))
    if not args.no_chat_template and not use_chat_template:
        print(f"note: {args.model} has no chat template; using the raw prompt", file=sys.stderr)
    max_new_tokens = args.max_new_tokens if args.generate else 0
    # Locate everything before the slow part, so bad input fails at once.
    positions = [gap_positions(instance, tokenizer, use_chat_template) for instance in instances]
    max_positions = getattr(model.config, "max_position_embeddings", None)
    for instance, where in zip(instances, positions):
        needed = len(where.input_ids) + max_new_tokens
        if max_positions is not None and needed > max_positions:
            raise ValueError(f"{args.data}: instance {instance.id} needs {needed} positions, more than the "
                             f"{max_positions} of {args.model}")

    eos_ids = _eos_ids(model, tokenizer)
    records, ratio_stack, strips = [], {m: [] for m in MEASURES}, []
    strips_per_domain: Counter = Counter()
    for instance, where in tqdm(list(zip(instances, positions)), desc="attention", unit="instance", file=sys.stderr):
        weights = measure_weights(where, args.baseline_draws, instance_rng(args.seed, instance.id))
        wants_strip = strips_per_domain[instance.domain] < args.strips
        strips_per_domain[instance.domain] += wants_strip
        result = answer_attention(model, where.input_ids, weights,
                                  strip_positions=where.gap_region if wants_strip else None,
                                  max_new_tokens=max_new_tokens, eos_ids=eos_ids, prefill_chunk=args.prefill_chunk)
        ratios = ratios_from_masses(result.masses)
        for measure in MEASURES:
            ratio_stack[measure].append(ratios[measure])
        record = {
            "id": instance.id, "domain": instance.domain, "variant": instance.variant,
            "n_tokens": len(where.input_ids), "n_queries": result.n_queries, "n_gaps": where.n_gaps,
            "n_flank_tokens": int(where.flank.size), "n_omitted_tokens": int(where.omitted.size),
            "ratio_flank": float(_nanmean(ratios["flank"])), "ratio_omitted": float(_nanmean(ratios["omitted"])),
            "mass_flank": float(result.masses[..., 0].mean()), "mass_omitted": float(result.masses[..., 2].mean()),
        }
        if args.generate:
            record["response"] = tokenizer.decode(result.generated, skip_special_tokens=True)
            if not args.scores:
                f1_by_id[instance.id] = score_response(instance, record["response"]).f1
        record["f1"] = f1_by_id.get(instance.id)
        records.append(record)
        if result.strip is not None:
            strips.append((instance, where, result.strip))

    stacked = {m: np.stack(v) for m, v in ratio_stack.items()}
    n_layers, n_heads = stacked["flank"].shape[1:]
    groups = {"overall": np.arange(len(instances))}
    for domain in DOMAINS:
        members = np.array([i for i, inst in enumerate(instances) if inst.domain == domain], dtype=np.int64)
        if members.size:
            groups[domain] = members
    group_summaries = {}
    for name, members in groups.items():
        summary: dict[str, Any] = {
            "n_instances": int(members.size),
            "variants": dict(sorted(Counter(instances[i].variant for i in members).items())),
        }
        for measure in MEASURES:
            rng = np.random.default_rng([args.seed, zlib.crc32(f"bootstrap/{name}/{measure}".encode())])
            summary[measure] = summarize_measure(stacked[measure][members], rng, args.bootstrap)
        if f1_source is not None:
            f1 = [math.nan if records[i]["f1"] is None else records[i]["f1"] for i in members]
            summary["f1_correlation"] = {measure: correlation([records[i][f"ratio_{measure}"] for i in members], f1)
                                         for measure in MEASURES}
        group_summaries[name] = summary

    label = args.label or Path(args.model).name
    result_summary = {
        "label": label, "model": str(args.model), "data": str(args.data), "n_instances": len(instances),
        "n_layers": int(n_layers), "n_heads": int(n_heads),
        "settings": {"chat_template": use_chat_template, "generate": bool(args.generate),
                     "answer_queries": "the last prompt token" + (" and each generated token that emits another"
                                                                   if args.generate else ""),
                     "max_new_tokens": max_new_tokens, "n_per_domain": args.n, "seed": args.seed,
                     "baseline_draws": args.baseline_draws, "bootstrap_resamples": args.bootstrap,
                     "confidence_level": CONFIDENCE_LEVEL},
        "measures": MEASURE_DESCRIPTIONS, "f1_source": f1_source,
        "groups": group_summaries, "instances": records,
    }

    out.mkdir(parents=True, exist_ok=True)
    for name, summary in group_summaries.items():
        if name == "overall":
            continue
        cells = [[(f"{measure} (n={summary[measure]['mean_over_heads']['n']})", summary[measure]["mean_ratio"])
                  for measure in MEASURES]]
        save_figure(heatmap_grid(cells, f"{label}: gap-attention ratio, {name}"), out / f"heatmap_{name}.png")
    for instance, where, strip in strips:
        flank_columns = np.searchsorted(where.gap_region, where.flank)
        gap_columns = np.searchsorted(where.gap_region, where.gap_starts) - 0.5
        document = "original" if gap_document_is_original(instance) else "modified"
        title = f"{label}: {instance.id} ({instance.variant}; attention over the {document} document)"
        save_figure(strip_figure(strip, flank_columns, gap_columns, title),
                     out / f"strip_{_safe_file_part(instance.id)}.png")
    atomic_write_text(out / SUMMARY_NAME, json.dumps(json_ready(result_summary), indent=2, ensure_ascii=False,
                                                     allow_nan=False) + "\n")
    return result_summary


# ---- comparing runs ------------------------------------------------------------------------------------

def read_summary(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / SUMMARY_NAME
    if not path.is_file():
        raise DataError(f"{path}: no such file (not an output directory of this analysis)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("groups"), dict) or "label" not in summary:
        raise DataError(f"{path}: not a summary of this analysis (no 'label' or 'groups')")
    for name, group in summary["groups"].items():
        if not all(isinstance(group, dict) and isinstance(group.get(m), dict) and "mean_ratio" in group[m]
                   and "mean_over_heads" in group[m] for m in MEASURES):
            raise DataError(f"{path}: group {name!r} lacks the {' and '.join(MEASURES)} statistics")
    return summary


def run_compare(directories: Sequence[str], out_dir: str | os.PathLike) -> dict[str, Any]:
    """comparison.png: one row per group (overall, then each domain), a pair of columns (flank, omitted)
    per run, all on one colour scale; comparison.json: the runs' mean-over-heads ratios and best heads."""
    out = Path(out_dir)
    check_output_dir(out)
    summaries = [read_summary(d) for d in directories]
    present = {name for s in summaries for name in s["groups"]}
    group_names = [name for name in ("overall", *DOMAINS) if name in present]
    cells = [[(f"{summary['label']}\n{name} / {measure}",
               None if summary["groups"].get(name) is None else summary["groups"][name][measure]["mean_ratio"])
              for summary in summaries for measure in MEASURES]
             for name in group_names]
    table = {"runs": [{"label": s["label"], "model": s.get("model"), "directory": str(d),
                       "groups": {name: {measure: g[measure]["mean_over_heads"] | {"best_head": g[measure]["best_head"]}
                                         for measure in MEASURES}
                                  for name, g in s["groups"].items()}}
                      for s, d in zip(summaries, directories)]}
    out.mkdir(parents=True, exist_ok=True)
    save_figure(heatmap_grid(cells, "gap-attention ratio by checkpoint"), out / "comparison.png")
    atomic_write_text(out / "comparison.json", json.dumps(json_ready(table), indent=2, ensure_ascii=False) + "\n")
    return table


# ---- command line --------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m absence_tasks.analysis.attention",
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
    parser.add_argument("--max-new-tokens", type=int, default=64, help="generation budget with --generate")
    parser.add_argument("--label", help="name of this checkpoint in figures (default: the model folder's name)")
    parser.add_argument("--no-chat-template", action="store_true", help="feed the raw prompt, no chat template")
    parser.add_argument("--scores", help="per-instance scores JSONL (absence-bench score --out) to correlate with")
    parser.add_argument("--seed", type=int, default=0, help="seed of the baseline draws and the bootstrap")
    parser.add_argument("--baseline-draws", type=int, default=32, help="random position sets per instance")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the CIs")
    parser.add_argument("--strips", type=int, default=2, help="draw strip figures for the first N instances of each domain")
    parser.add_argument("--prefill-chunk", type=int, default=512,
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
            summary = run_analysis(args)
            overall = summary["groups"]["overall"]
            print(f"{Path(args.out) / SUMMARY_NAME}: {summary['n_instances']} instances; mean gap-attention ratio "
                  f"flank {overall['flank']['mean_over_heads']['ratio']:.3f}, "
                  f"omitted {overall['omitted']['mean_over_heads']['ratio']:.3f}")

    return run_command(None, run)


if __name__ == "__main__":
    sys.exit(main())
