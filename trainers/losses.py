"""The training objectives and the token-alignment helpers, as small pure functions (no model, no trainer).

Shapes: B = batch rows, T = sequence length, V = vocabulary, H = hidden size, K = negatives per row.

Objectives
* `masked_lm_loss` / `token_cross_entropy`: causal-LM cross entropy on the answer tokens only (labels -100
  elsewhere); `next_token_targets` picks the positions that have a target so the trainer can ask the
  model for those logits only.
* `pool_hidden`: one vector per row from the states of a token span (mean or last token).
* `sequence_infonce_loss`: the original must be closer to its complete copy than to its edited versions;
  `negatives_by_row` arranges a varying number of negatives per row into its (B, K, H) input and mask;
  `mix_hard_negatives` adds MoCHi's synthetic negatives (feature-level mixes of the hardest ones).
* `gap_alignment_terms` / `gap_alignment_loss`: the edited document's states match the complete
  document's at corresponding tokens, except the first token after a gap, which is pushed away.
* `gap_probe_loss`: the direct gap signal — a linear probe on the state at each edited-copy line's first
  token says whether lines are missing right before it (class-balanced binary cross-entropy).
* `combined_loss`, `step_flops`.

Alignment (edited document -> original document, for omissions)
* `char_map_for_omission`: the original character of every edited character.
* `gap_char_positions_for_omission`: where in the edited text each run of omitted lines was.
* `token_alignment_from_char_map`: the original token with exactly the same text, per edited token.
* `gap_token_mask`: the first token at or after each gap (or, given `line_start_char_positions`, each line).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100
POOLING_MODES = ("mean", "last")
# Cosine similarity of a zero vector would be 0/0; F.normalize divides by max(norm, eps) instead.
_NORM_EPS = 1e-8


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """Half-precision states are compared in float32; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


# ---- causal-LM loss -------------------------------------------------------------------------------

def count_label_tokens(labels: torch.Tensor) -> int:
    """How many next-token targets `labels` (B, T) holds: position t predicts labels[:, t + 1]."""
    return int((labels[:, 1:] != IGNORE_INDEX).sum())


def next_token_targets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions that predict a target, and those targets.

    labels: (B, T). Returns (positions (P,) long, targets (B, P)) with
    ``targets[b, k] == labels[b, positions[k] + 1]``. A position is kept when ANY row has a target there
    (a model computes logits for one shared set of positions); other rows get IGNORE_INDEX there.
    """
    shifted = labels[:, 1:]
    positions = (shifted != IGNORE_INDEX).any(dim=0).nonzero().flatten()
    return positions, shifted[:, positions]


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor,
                        num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Summed cross entropy of `logits` (B, P, V) against `targets` (B, P) (no shift; IGNORE_INDEX
    skipped), divided by `num_items_in_batch` — the target count of the whole accumulated batch, as the
    HF Trainer passes it — or else by the number of targets here. No target at all gives a
    differentiable 0, not NaN. Computed in float32 whatever the logits' dtype."""
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(targets.shape)} disagree on (batch, length)")
    total = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1),
                            ignore_index=IGNORE_INDEX, reduction="sum")
    if num_items_in_batch is None:
        num_items_in_batch = (targets != IGNORE_INDEX).sum()
    return total / torch.as_tensor(num_items_in_batch, device=total.device).clamp(min=1)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor,
                   num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Causal-LM loss: logits (B, T, V) at position t against labels (B, T) at t + 1, -100 ignored;
    the mean over targets (or the sum over `num_items_in_batch`, see `token_cross_entropy`)."""
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (batch, length)")
    return token_cross_entropy(logits[:, :-1], labels[:, 1:], num_items_in_batch)


# ---- pooling and the sequence-level objective -----------------------------------------------------

def pool_hidden(hidden: torch.Tensor, mask: torch.Tensor, mode: str = "mean") -> torch.Tensor:
    """One vector per row from the states where `mask` is set.

    hidden: (B, T, H); mask: (B, T) bool or 0/1 — the span may sit anywhere in the row, so left and
    right padding both work. "mean" averages the span, "last" takes its last token. Returns (B, H).
    A row with an empty span is an error (it would silently pool nothing)."""
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling {mode!r} (expected one of {', '.join(POOLING_MODES)})")
    mask = mask.bool()
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"pool_hidden: rows {empty} have no position to pool")
    if mode == "mean":
        weights = mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1)
    positions = torch.arange(mask.size(1), device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).max(dim=1).values
    return hidden[torch.arange(hidden.size(0), device=hidden.device), last]


def negatives_by_row(vectors: torch.Tensor, rows: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Negatives listed one per entry — vectors (R, H), rows (R,) the batch row each belongs to — as the
    (B, K, H) tensor `sequence_infonce_loss` takes, K the most any row has, each row's in order of
    appearance, and the (B, K) mask that is False at the zero padding of rows with fewer."""
    if vectors.size(0) != rows.numel():
        raise ValueError(f"{vectors.size(0)} vectors but {rows.numel()} row indices")
    if rows.numel() and not 0 <= int(rows.min()) <= int(rows.max()) < batch:
        raise ValueError(f"row indices must lie in 0..{batch - 1}, got {rows.tolist()}")
    counts = torch.bincount(rows, minlength=batch)
    k = int(counts.max()) if rows.numel() else 0
    # slot of entry r = how many earlier entries belong to the same row
    slots = (F.one_hot(rows, batch).cumsum(dim=0) - 1).gather(1, rows[:, None]).flatten()
    negatives = vectors.new_zeros(batch, k, vectors.size(-1))
    negatives[rows, slots] = vectors
    mask = torch.zeros(batch, k, dtype=torch.bool, device=vectors.device)
    mask[rows, slots] = True
    return negatives, mask


def mix_hard_negatives(anchor: torch.Tensor, negatives: torch.Tensor, negative_mask: torch.Tensor, n_hardest: int,
                       n_mixed: int, n_anchor_mixed: int, generator: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard-negative mixing at the feature level (MoCHi, Kalantidis et al. 2020), per row.

    anchor (B, H); negatives (B, K, H) with negative_mask (B, K). The row's negatives are ranked by cosine
    similarity to its anchor and the `n_hardest` most similar kept; from them `n_mixed` synthetic ones
    h = norm(a·n_i + (1 - a)·n_j) (a ~ U(0, 1), i != j drawn from the hardest) and `n_anchor_mixed` harder
    ones h' = norm(b·q + (1 - b)·n_j) (b ~ U(0, 0.5), q the anchor, n_j one of the hardest). They carry no
    gradient. Returns (B, K + n_mixed + n_anchor_mixed, H) and its mask: a synthetic slot is False where
    its row lacks the negatives to make it (two for a mix of pairs, one for a mix with the anchor). Every
    random draw comes from `generator`."""
    batch, k, hidden = negatives.shape
    if min(n_hardest, n_mixed, n_anchor_mixed) < 0:
        raise ValueError("n_hardest, n_mixed and n_anchor_mixed must be >= 0")
    if n_mixed + n_anchor_mixed == 0 or n_hardest == 0 or k == 0:
        return negatives, negative_mask
    with torch.no_grad():
        q = F.normalize(_compute_dtype(anchor), dim=-1, eps=_NORM_EPS)                     # (B, H)
        n = F.normalize(_compute_dtype(negatives), dim=-1, eps=_NORM_EPS)                  # (B, K, H)
        similarity = torch.einsum("bh,bkh->bk", q, n).masked_fill(~negative_mask, float("-inf"))
        top = min(n_hardest, k)
        hardest = similarity.topk(top, dim=1).indices                                     # (B, top)
        available = negative_mask.sum(dim=1).clamp(max=top)                               # (B,) hardest that exist
        rows = torch.arange(batch, device=negatives.device)[:, None]
        pool = n[rows, hardest]                                                             # (B, top, H)

        def draw(count: int, within: torch.Tensor) -> torch.Tensor:
            """(B, count) indices uniform in 0..within[b] - 1 (0 where within is 0)."""
            u = torch.rand(batch, count, generator=generator, device=generator.device).to(negatives.device)
            return (u * within.clamp(min=1)[:, None]).long().clamp(max=top - 1)

        synthetic, masks = [], []
        if n_mixed:
            i = draw(n_mixed, available)
            # j != i: drawn among the other available - 1 and shifted past i
            j = draw(n_mixed, available - 1)
            j = j + (j >= i).long()
            j = j.clamp(max=top - 1)
            alpha = torch.rand(batch, n_mixed, 1, generator=generator, device=generator.device).to(negatives.device)
            mixed = alpha * pool[rows, i] + (1 - alpha) * pool[rows, j]
            synthetic.append(F.normalize(mixed, dim=-1, eps=_NORM_EPS))
            masks.append((available >= 2)[:, None].expand(batch, n_mixed))
        if n_anchor_mixed:
            j = draw(n_anchor_mixed, available)
            beta = 0.5 * torch.rand(batch, n_anchor_mixed, 1, generator=generator,
                                    device=generator.device).to(negatives.device)
            mixed = beta * q[:, None, :] + (1 - beta) * pool[rows, j]
            synthetic.append(F.normalize(mixed, dim=-1, eps=_NORM_EPS))
            masks.append((available >= 1)[:, None].expand(batch, n_anchor_mixed))
    return (torch.cat([negatives, torch.cat(synthetic, dim=1).to(negatives.dtype)], dim=1),
            torch.cat([negative_mask.bool(), *masks], dim=1))


def sequence_infonce_loss(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None,
                          temperature: float, negative_mask: torch.Tensor | None = None,
                          in_batch_negatives: bool = True) -> torch.Tensor:
    """InfoNCE on cosine similarity: each anchor must pick its own positive.

    anchor, positive: (B, H) — the original document and its complete copy; negatives: (B, K, H) — its
    edited versions, or None; negative_mask: (B, K) bool, False for padding negatives (they are nobody's
    negative). With `in_batch_negatives`, the other rows' positives and (unmasked) negatives join every
    row's denominator. Returns the mean over rows of -log softmax(cos / temperature)[own positive].
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    batch, hidden = anchor.shape
    if negatives is None:
        negatives = anchor.new_zeros(batch, 0, hidden)
    k = negatives.size(1)
    if negative_mask is None:
        negative_mask = torch.ones(batch, k, dtype=torch.bool, device=anchor.device)
    a = F.normalize(_compute_dtype(anchor), dim=-1, eps=_NORM_EPS)
    candidates = torch.cat([positive.unsqueeze(1), negatives], dim=1)  # (B, 1 + K, H): row j's candidates
    c = F.normalize(_compute_dtype(candidates), dim=-1, eps=_NORM_EPS)
    # logits[i, j, m] = cos(anchor i, candidate m of row j) / t
    logits = torch.einsum("ih,jmh->ijm", a, c) / temperature
    valid = torch.cat([torch.ones(batch, 1, dtype=torch.bool, device=anchor.device), negative_mask.bool()], dim=1)
    visible = valid.unsqueeze(0).expand(batch, -1, -1)
    if not in_batch_negatives:
        own_row = torch.eye(batch, dtype=torch.bool, device=anchor.device).unsqueeze(-1)
        visible = visible & own_row
    logits = logits.masked_fill(~visible, float("-inf")).reshape(batch, -1)
    own_positive = torch.arange(batch, device=anchor.device) * (1 + k)
    return F.cross_entropy(logits, own_positive)


# ---- the gap-level objective ----------------------------------------------------------------------

def gap_alignment_terms(original: torch.Tensor, edited: torch.Tensor, alignment: torch.Tensor,
                        gap_mask: torch.Tensor, margin: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The two parts of the gap loss, (align, push).

    original: (T_o, H) or (B, T_o, H) — states of the complete document; edited: (T_e, H) or (B, T_e, H);
    alignment: (T_e,) or (B, T_e) long, the original position with the same text per edited token, -1
    for none; gap_mask: same shape, True at the first token after a gap.
    align = mean over aligned non-gap tokens of (1 - cos); push = mean over aligned gap tokens of
    max(0, cos - margin). A part without tokens is a differentiable 0 (never NaN).
    """
    if original.dim() == 2:
        original, edited, alignment, gap_mask = (x.unsqueeze(0) for x in (original, edited, alignment, gap_mask))
    if alignment.numel() and int(alignment.max()) >= original.size(1):
        raise ValueError(f"alignment values must index the {original.size(1)} original positions, "
                         f"got {int(alignment.max())}")
    aligned = alignment >= 0
    rows, positions = aligned.nonzero(as_tuple=True)
    counterpart = original[rows, alignment[rows, positions]]
    cosine = F.cosine_similarity(_compute_dtype(edited[rows, positions]), _compute_dtype(counterpart),
                                 dim=-1, eps=_NORM_EPS)
    is_gap = gap_mask.bool()[rows, positions]
    # Connected to both inputs, so "nothing aligned" still backpropagates (zeros) instead of failing.
    zero = (edited.sum() + original.sum()) * 0.0
    pull, push = (1.0 - cosine)[~is_gap], torch.relu(cosine - margin)[is_gap]
    return (pull.mean() if pull.numel() else zero), (push.mean() if push.numel() else zero)


def gap_alignment_loss(original: torch.Tensor, edited: torch.Tensor, alignment: torch.Tensor,
                       gap_mask: torch.Tensor, margin: float = 0.0, align_weight: float = 1.0,
                       gap_weight: float = 1.0) -> torch.Tensor:
    """align_weight · align + gap_weight · push (see `gap_alignment_terms`)."""
    align, push = gap_alignment_terms(original, edited, alignment, gap_mask, margin)
    return align_weight * align + gap_weight * push


# ---- the direct gap signal ------------------------------------------------------------------------

def gap_probe_loss(logits: torch.Tensor, line_start_mask: torch.Tensor, gap_mask: torch.Tensor) -> torch.Tensor:
    """Class-balanced binary cross-entropy of a gap logit read at the first token of every edited-copy line:
    label 1 where one or more original lines are missing right before the line (`gap_mask`), else 0.

    logits: (B, T) — a linear probe's output on each token's state; line_start_mask, gap_mask: (B, T) bool,
    gap tokens being line starts too. Gaps are rare (a few per tens of lines), so the two classes are
    averaged separately and the two means averaged: a constant guess scores log 2 whatever the base rate.
    A class without tokens drops out; no line start at all is a differentiable 0 (never NaN)."""
    starts = line_start_mask.bool() | gap_mask.bool()
    scores = _compute_dtype(logits)[starts]
    labels = gap_mask.bool()[starts].to(scores.dtype)
    losses = F.binary_cross_entropy_with_logits(scores, labels, reduction="none")
    means = [losses[labels == value].mean() for value in (1.0, 0.0) if bool((labels == value).any())]
    return sum(means) / len(means) if means else logits.sum() * 0.0


def combined_loss(sft: torch.Tensor | None, seq: torch.Tensor | None, gap: torch.Tensor | None,
                  lambda_seq: float, lambda_gap: float, probe: torch.Tensor | None = None,
                  lambda_probe: float = 0.0) -> torch.Tensor:
    """sft + lambda_seq · seq + lambda_gap · gap + lambda_probe · probe, leaving out the terms that are None
    (switched off)."""
    terms = [t for t in (sft, None if seq is None else lambda_seq * seq, None if gap is None else lambda_gap * gap,
                         None if probe is None else lambda_probe * probe) if t is not None]
    if not terms:
        raise ValueError("every loss term is off; switch at least one on")
    return sum(terms[1:], terms[0])


def step_flops(n_params: int, trained_tokens: int, forward_only_tokens: int = 0) -> int:
    """Training FLOPs: 6·N per token through forward + backward, 2·N per token of a forward-only
    (no-grad) pass. Attention scores are left out, as in the usual 6·N·D estimate."""
    return 6 * n_params * trained_tokens + 2 * n_params * forward_only_tokens


# ---- alignment of an edited document with its original --------------------------------------------

def _check_omission(lines: Sequence[str], omitted: Sequence[int]) -> set[int]:
    for number, line in enumerate(lines):
        if "\n" in line:
            raise ValueError(f"line {number} contains a newline; one list item is one line")
    bad = [i for i in omitted if not 0 <= i < len(lines)]
    if bad:
        raise ValueError(f"omitted index {bad[0]} is outside the {len(lines)} original lines")
    if len(set(omitted)) != len(omitted):
        raise ValueError("an omitted index is listed twice")
    return set(omitted)


def _line_starts(lines: Sequence[str]) -> list[int]:
    starts, position = [], 0
    for line in lines:
        starts.append(position)
        position += len(line) + 1
    return starts


def char_map_for_omission(lines: Sequence[str], omitted: Sequence[int]) -> list[int]:
    """For every character of the edited text ("\\n".join of the kept lines), its index in the original
    text ("\\n".join(lines)). The newline after a kept line maps to the newline ending that same line in
    the original, so the map is strictly increasing."""
    missing = _check_omission(lines, omitted)
    starts = _line_starts(lines)
    kept = [i for i in range(len(lines)) if i not in missing]
    char_map: list[int] = []
    for position, line_number in enumerate(kept):
        if position:
            previous = kept[position - 1]
            char_map.append(starts[previous] + len(lines[previous]))
        char_map.extend(range(starts[line_number], starts[line_number] + len(lines[line_number])))
    return char_map


def gap_char_positions_for_omission(lines: Sequence[str], omitted: Sequence[int]) -> list[int]:
    """Where each run of consecutive omitted lines was, as a character position in the edited text: the
    start of the next kept line, or len(edited text) when the run ends the document."""
    missing = _check_omission(lines, omitted)
    kept = [i for i in range(len(lines)) if i not in missing]
    edited_starts = _line_starts([lines[i] for i in kept])
    edited_length = sum(len(lines[i]) for i in kept) + max(len(kept) - 1, 0)
    gaps = []
    for number in sorted(missing):
        if number - 1 in missing:
            continue  # inside a run: the run's first line already placed the gap
        next_kept = next((p for p, i in enumerate(kept) if i > number), None)
        gaps.append(edited_length if next_kept is None else edited_starts[next_kept])
    return gaps


def line_start_char_positions(lines: Sequence[str]) -> list[int]:
    """Where each line that has text starts in "\\n".join(lines) (a blank line has no token of its own)."""
    return [start for start, line in zip(_line_starts(lines), lines) if line]


def _spans(offsets) -> list[tuple[int, int]]:
    return [(int(s), int(e)) for s, e in (offsets.tolist() if isinstance(offsets, torch.Tensor) else offsets)]


def token_alignment_from_char_map(edited_offsets, char_map: Sequence[int], original_offsets) -> torch.Tensor:
    """Per edited token, the index of the original token covering exactly the corresponding characters,
    or -1: empty-span tokens (special tokens, padding), tokens with a character that has no counterpart
    (-1 in `char_map`) or that maps non-contiguously, and tokens the original split differently.

    edited_offsets / original_offsets: (T, 2) character spans, as a fast tokenizer's offset_mapping gives
    them (lists or tensors); char_map: edited character -> original character. Returns (T_e,) long."""
    by_span = {}
    for index, span in enumerate(_spans(original_offsets)):
        if span[1] > span[0]:
            by_span.setdefault(span, index)
    alignment = []
    for start, end in _spans(edited_offsets):
        target = -1
        if end > start and end <= len(char_map):
            mapped = [char_map[c] for c in range(start, end)]
            contiguous = all(m >= 0 for m in mapped) and all(b == a + 1 for a, b in zip(mapped, mapped[1:]))
            if contiguous:
                target = by_span.get((mapped[0], mapped[-1] + 1), -1)
        alignment.append(target)
    return torch.tensor(alignment, dtype=torch.long)


def gap_token_mask(offsets, edited_text: str, gap_positions: Sequence[int]) -> torch.Tensor:
    """True at the first (non-empty) token starting at or after each gap position of the edited text. A
    gap at the very end (len(edited_text)) has no token after it inside the document and marks nothing."""
    spans = _spans(offsets)
    mask = torch.zeros(len(spans), dtype=torch.bool)
    for gap in gap_positions:
        if not 0 <= gap <= len(edited_text):
            raise ValueError(f"gap position {gap} is outside the edited text (length {len(edited_text)})")
        if gap == len(edited_text):
            continue
        first = next((i for i, (s, e) in enumerate(spans) if e > s and s >= gap), None)
        if first is not None:
            mask[first] = True
    return mask
