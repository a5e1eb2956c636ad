"""The probe's rows: which modified copy lines are probed, their labels, the spans their features are
measured on, and one prefill per instance that reduces the probed queries' attention to span masses."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from absence_tasks.schema import Instance
from analysis.attention.positions import TokenizedPrompt, find_gaps, gap_line_sources

STATISTICS = ("original", "matching", "expected_next", "lookback_ratio")
STATISTIC_DESCRIPTIONS = {
    "original": "attention mass on the whole original document",
    "matching": "attention mass on the original line this modified copy line copies (gold alignment)",
    "expected_next": "attention mass on the original line that should come next after the previous modified copy "
                     "line (gold alignment; equals 'matching' where no line is missing)",
    "lookback_ratio": "mean attention per original-document token / (that + mean attention per token of the "
                      "modified copy so far); Lookback Lens' ratio",
}
# Span columns of `LineQueries.spans`; the first three are the statistics of the same name.
SPAN_COLUMNS = ("original", "matching", "expected_next", "modified_so_far")


# ---- the rows: probed lines, their labels and the spans they are measured on ---------------------

@dataclass(frozen=True)
class LineQueries:
    """The probed modified copy lines of one instance (n of them)."""
    line_indices: np.ndarray   # [n] index into modified_lines
    positions: np.ndarray      # [n] token position of the line's first token (the query)
    labels: np.ndarray         # [n] bool: one or more original lines are missing right before the line
    spans: np.ndarray          # [n, 4, 2] token ranges [start, end) of the SPAN_COLUMNS, per query
    n_trailing_gaps: int       # gaps at the end of the modified copy: no line follows them, no positive row


def _token_range(positions: np.ndarray) -> tuple[int, int]:
    """[first, last + 1) of a run of token positions (a line's or a document's tokens are contiguous)."""
    return (int(positions[0]), int(positions[-1]) + 1) if positions.size else (0, 0)


def line_queries(instance: Instance, tokenized: TokenizedPrompt) -> LineQueries:
    """Rows, labels and spans of an omission or placeholder instance (see the module docstring)."""
    if instance.variant == "needle":
        raise ValueError(f"instance {instance.id}: needle instances have no missing lines to probe")
    original_tokens = tokenized.line_tokens(instance.original_lines, tokenized.original_span[0])
    modified_tokens = tokenized.line_tokens(instance.modified_lines, tokenized.modified_span[0])
    original_range = _token_range(tokenized.tokens(tokenized.original_span))
    modified_start = _token_range(tokenized.tokens(tokenized.modified_span))[0]
    sources = gap_line_sources(instance)  # modified copy line -> its original line
    dropped = set(instance.metadata.get("dropped_context_indices", ()))
    # Original lines a modified copy line could be expected to continue with: with text, not dropped context.
    readable = [i for i, tokens in enumerate(original_tokens) if tokens.size and i not in dropped]

    gaps = find_gaps(instance)
    if instance.variant == "placeholder":
        positive = {k for gap in gaps for k in gap.placeholders}
        n_trailing = 0
    else:
        positive = {gap.after for gap in gaps if gap.after is not None}
        n_trailing = sum(gap.after is None for gap in gaps)

    line_indices, positions, labels, spans = [], [], [], []
    previous_source = -1
    for k, tokens in enumerate(modified_tokens):
        if not tokens.size:
            continue
        query = int(tokens[0])
        after_previous = bisect.bisect_right(readable, previous_source)
        expected = readable[after_previous] if after_previous < len(readable) else sources[k]
        line_indices.append(k)
        positions.append(query)
        labels.append(k in positive)
        spans.append([original_range, _token_range(original_tokens[sources[k]]),
                      _token_range(original_tokens[expected]), (modified_start, query + 1)])
        previous_source = sources[k]
    return LineQueries(line_indices=np.array(line_indices, dtype=np.int64),
                       positions=np.array(positions, dtype=np.int64), labels=np.array(labels, dtype=bool),
                       spans=np.array(spans, dtype=np.int64).reshape(-1, len(SPAN_COLUMNS), 2),
                       n_trailing_gaps=n_trailing)


# ---- running the model ---------------------------------------------------------------------------

def span_masses(rows: Any, spans: Any) -> Any:
    """Attention mass of each query row on each of its spans.

    rows: torch [heads, r, keys] attention rows of r queries; spans: torch long [r, S, 2] ranges
    [start, end) into keys. Returns [r, heads, S] (float64), by differences of a running sum."""
    import torch

    heads, r, _ = rows.shape
    running = torch.nn.functional.pad(torch.cumsum(rows.double(), dim=-1), (1, 0))   # [heads, r, keys + 1]
    flat = spans.reshape(r, -1).unsqueeze(0).expand(heads, r, spans.shape[1] * 2)      # [heads, r, 2S]
    ends = running.gather(2, flat).reshape(heads, r, spans.shape[1], 2)
    return (ends[..., 1] - ends[..., 0]).permute(1, 0, 2)


@dataclass
class LineFeatures:
    masses: np.ndarray              # [n, layers, heads, 4] attention mass on the SPAN_COLUMNS
    hidden: dict[int, np.ndarray]   # layer -> [n, hidden size], the residual stream after that layer


def _attention_modules(model: Any) -> list[Any]:
    return [layer.self_attn for layer in model.get_decoder().layers]


def line_features(model: Any, input_ids: Sequence[int], queries: LineQueries, *,
                  hidden_layers: Sequence[int] = (), prefill_chunk: int = 256) -> LineFeatures:
    """One prefill (no generation) up to the last probed line; per layer, the probed queries' attention
    rows are reduced to span masses inside a forward hook, so no attention tensor outlives its layer."""
    import torch

    n = len(queries.positions)
    modules = _attention_modules(model)
    masses = torch.zeros(n, len(modules), model.config.num_attention_heads, len(SPAN_COLUMNS), dtype=torch.float64)
    hidden = {layer: torch.zeros(n, model.config.hidden_size, dtype=torch.float64) for layer in hidden_layers}
    spans = torch.from_numpy(queries.spans)
    positions = torch.from_numpy(queries.positions)
    chunk_rows = chunk_lines = None  # the current chunk's probed queries: rows within the chunk, row numbers

    def reduce(layer: int):
        def hook(_module: Any, _inputs: Any, output: Any) -> None:
            weights = output[1] if isinstance(output, tuple) and len(output) > 1 else None
            if weights is None:
                raise RuntimeError("the attention layers return no weights; load the model with eager attention")
            if chunk_rows.numel():
                rows = weights[0][:, chunk_rows, :]                                   # [heads, r, keys]
                masses[chunk_lines, layer] = span_masses(rows, spans[chunk_lines])
        return hook

    handles = [module.register_forward_hook(reduce(layer)) for layer, module in enumerate(modules)]
    ids = torch.tensor([list(input_ids)[:int(queries.positions.max()) + 1]], dtype=torch.long)
    cache = None
    try:
        with torch.inference_mode():
            for start in range(0, ids.shape[1], prefill_chunk):
                end = min(start + prefill_chunk, ids.shape[1])
                chunk_lines = torch.nonzero((positions >= start) & (positions < end)).flatten()
                chunk_rows = positions[chunk_lines] - start
                out = model(input_ids=ids[:, start:end], past_key_values=cache, use_cache=True, logits_to_keep=1,
                            output_hidden_states=bool(hidden_layers))
                cache = out.past_key_values
                for layer, states in hidden.items():
                    states[chunk_lines] = out.hidden_states[layer][0, chunk_rows].double()   # [r, hidden size]
    finally:
        for handle in handles:
            handle.remove()
    return LineFeatures(masses=masses.numpy(), hidden={layer: states.numpy() for layer, states in hidden.items()})


def statistics_from_masses(masses: np.ndarray, spans: np.ndarray) -> np.ndarray:
    """[n, layers, heads, 4] masses on the SPAN_COLUMNS -> [n, layers, heads, 4] STATISTICS."""
    lengths = (spans[:, :, 1] - spans[:, :, 0]).astype(np.float64)          # [n, 4] tokens per span
    per_token_original = masses[..., 0] / lengths[:, 0, None, None]
    per_token_modified = masses[..., 3] / lengths[:, 3, None, None]
    total = per_token_original + per_token_modified
    with np.errstate(divide="ignore", invalid="ignore"):
        lookback = np.where(total > 0, per_token_original / total, 0.5)
    return np.stack([masses[..., 0], masses[..., 1], masses[..., 2], lookback], axis=-1)
