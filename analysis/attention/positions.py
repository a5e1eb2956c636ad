"""Where an instance's gaps are, in lines and then in tokens of the model input.

The two documents' character spans in the prompt come from `trainers.data.document_char_spans` (the
template rendered around markers, as the contrastive trainer locates them). The model input and its
tokens are the analysis's own: it reads the prompt as lm-eval sends it (`model_input_text`: the chat
template with the generation prompt, or the raw prompt with no special tokens added), while
`trainers.data.encode` tokenises as TRL trains (a raw prompt with the tokenizer's special tokens), so
the two differ for a tokenizer that adds a BOS token. A line's tokens are those that overlap its text
(`tokens_in_span`), not only those wholly inside it (`trainers.data.token_span`): a token that spans
the newline and the line's first characters belongs to the line.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from absence_tasks.prompts import render_prompt
from absence_tasks.schema import Instance
from trainers.data import document_char_spans


# ---- lines of the two documents ------------------------------------------------------------------

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


# ---- characters -> tokens ------------------------------------------------------------------------

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
    prompt = render_prompt(instance)
    original_span, modified_span = document_char_spans(instance)
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
