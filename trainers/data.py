"""Training data: instances of the TRAIN split, rendered with the evaluation's own Jinja templates.

An instance becomes a prompt/completion pair: the prompt is `render_prompt(instance)` (exactly what lm-eval
shows the model), the completion `render_answer(instance)`. With the chat template they are a user turn
and an assistant turn (TRL's conversational prompt-completion format); without it, raw text, and the
completion ends with the tokenizer's EOS. Either way the loss covers the completion only and its
end-of-turn token, so the model learns to stop.

`encode` tokenises a pair exactly as TRL's SFTTrainer does, but also keeps the character offsets of every
token, which the contrastive trainer needs to find the two documents inside the prompt.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from absence_tasks.generate import (GenerationConfig, default_config, generate_instances, omittable_indices,
                                     placeholder_twin)
from absence_tasks.prompts import render_answer, render_documents, render_prompt
from absence_tasks.schema import PLACEHOLDER, DataError, Instance, dumps_jsonl, read_jsonl
from absence_tasks.sources import Document
from trainers.recipe import Stage, curriculum_stages, stage_counts


# ---- instances ------------------------------------------------------------------------------------

def generation_config(domain: str, max_lines: int | Mapping[str, int] | None) -> GenerationConfig:
    """The CPU preset of `domain`, with documents capped at `max_lines` lines when given (one cap for every
    domain, or a cap per domain)."""
    config = default_config(domain)
    if isinstance(max_lines, Mapping):
        max_lines = max_lines.get(domain)
    if max_lines is None:
        return config
    return replace(config, max_lines=max_lines, min_lines=min(config.min_lines, max_lines))


def load_training_instances(domains: Sequence[str], variants: Sequence[str], n_train: int, seed: int, *,
                            max_lines: int | Mapping[str, int] | None = None, train_file: str | Path | None = None,
                            curriculum: bool = False, curriculum_stages: int = 4, curriculum_start_lines: int = 4,
                            ) -> list[Instance]:
    """`n_train` generated TRAIN-split instances per (domain, variant), or the matching instances of
    `train_file`. With `curriculum`, each domain's instances come in `curriculum_stages` length stages
    (`curriculum_instances`), each marked with its `curriculum_stage` in the metadata. Raises DataError
    (one line) for a missing/empty file, a file holding other splits, or nothing left to train on."""
    if train_file is None:
        if curriculum:
            return [instance for domain in domains for variant in variants
                    for instance in curriculum_instances(domain, variant, n_train, seed, generation_config(
                        domain, max_lines), curriculum_stages, curriculum_start_lines)]
        return [instance for domain in domains for variant in variants
                for instance in generate_instances(domain, variant, n_train, "train", seed,
                                                   config=generation_config(domain, max_lines), progress=False)]
    instances = read_jsonl(train_file)
    if leaked := sorted({i.split for i in instances} - {"train"}):
        raise DataError(f"{train_file}: holds {'/'.join(leaked)}-split instances; train only on "
                        f"`absence-bench generate --split train` data")
    selected = [i for i in instances if i.domain in domains and i.variant in variants]
    if not selected:
        raise DataError(f"{train_file}: none of its {len(instances)} instances is in --domains "
                        f"{' '.join(domains)} and --variants {' '.join(variants)}")
    return selected


PR_CURRICULUM_START_LINES = 20


def domain_curriculum_stages(domain: str, config: GenerationConfig, n_stages: int, start_lines: int) -> list[Stage]:
    """The length stages of `domain`'s curriculum (`recipe.curriculum_stages`): from `start_lines` lines (PR
    diffs from `PR_CURRICULUM_START_LINES`) up to `config`'s own range."""
    # Diffs are never cut (a cut diff is not a diff), so PR stages start where there are enough of them:
    # the embedded pool's shortest train diffs have 19 lines, and about a hundred have at most 33.
    start = max(start_lines, PR_CURRICULUM_START_LINES) if domain == "github_prs" else start_lines
    return curriculum_stages(start, config.min_lines, config.max_lines, n_stages)


def curriculum_instances(domain: str, variant: str, n: int, seed: int, config: GenerationConfig, n_stages: int,
                         start_lines: int) -> list[Instance]:
    """`n` train-split instances of one domain in length stages (`recipe.curriculum_stages`: from
    `start_lines` lines up to `config`'s own range), each generated with its own seed derived from `seed`
    and the stage, and marked `metadata["curriculum_stage"]`. PR diffs start at `PR_CURRICULUM_START_LINES`."""
    stages = domain_curriculum_stages(domain, config, n_stages, start_lines)
    out: list[Instance] = []
    for index, (stage, count) in enumerate(zip(stages, stage_counts(n, len(stages)))):
        if not count:
            continue
        stage_seed = int.from_bytes(hashlib.sha256(f"{seed}:curriculum:{index}".encode()).digest()[:4], "big")
        stage_config = replace(config, min_lines=stage.min_lines, max_lines=stage.max_lines,
                               n_omitted=None if config.n_omitted is None or config.n_omitted < stage.max_lines
                               else stage.max_lines - 1)
        for instance in generate_instances(domain, variant, count, "train", stage_seed, config=stage_config,
                                           progress=False):
            out.append(replace(instance, metadata={**instance.metadata, "curriculum_stage": index}))
    return out


def visible_gaps_first(instances: Sequence[Instance], n_stages: int) -> list[Instance]:
    """The curriculum's first `n_stages` length stages with their gaps shown: each omission instance there
    becomes its placeholder twin (the same lines missing, each marked where it was), so the model learns where
    to look while the marker gives attention a key at the gap; the later stages stay omission instances, whose
    gaps it must find itself. DataError (one line) when instances carry no stages or no omission stage is left."""
    if not n_stages:
        return list(instances)
    stages = [i.metadata.get("curriculum_stage") for i in instances]
    if None in stages:
        raise DataError("--curriculum_placeholder_stages needs the length curriculum: training instances without a "
                        "curriculum_stage (use --curriculum true, or a --train_file generated with it)")
    if not any(stage >= n_stages for stage in stages):
        raise DataError(f"--curriculum_placeholder_stages {n_stages} would show the gaps in every stage (the data "
                        f"has {max(stages) + 1}); at least the last one must be omission instances")
    return [placeholder_twin(i) if stage < n_stages and i.variant == "omission" else i
            for i, stage in zip(instances, stages)]


def data_sha256(instances: Sequence[Instance]) -> str:
    """sha256 of the training data as JSONL bytes (`schema.dumps_jsonl`, the bytes of training_data.jsonl)."""
    return hashlib.sha256(dumps_jsonl(i.to_dict() for i in instances).encode("utf-8")).hexdigest()


# ---- prompt / completion ----------------------------------------------------------------------------

def prompt_completion(instance: Instance, chat: bool, scratchpad: bool = False) -> dict[str, Any]:
    """One row of TRL's prompt-completion format: conversational (lists of messages) with the chat
    template, plain strings without it (TRL then appends the EOS token to the completion)."""
    prompt, answer = render_prompt(instance), render_answer(instance, scratchpad)
    if chat:
        return {"prompt": [{"role": "user", "content": prompt}],
                "completion": [{"role": "assistant", "content": answer}]}
    return {"prompt": prompt, "completion": answer}


def sft_dataset(instances: Sequence[Instance], chat: bool, scratchpad: bool = False):
    """A `datasets.Dataset` in TRL's prompt-completion format, one row per instance, in order."""
    import datasets

    return datasets.Dataset.from_list([prompt_completion(i, chat, scratchpad) for i in instances])


@dataclass(frozen=True)
class Encoded:
    """A tokenised prompt (+ completion): ids, per-token character spans in `text`, the loss labels
    (-100 outside the completion), and where the rendered prompt starts in `text`."""
    text: str
    input_ids: list[int]
    offsets: list[tuple[int, int]]
    labels: list[int]
    prompt_start: int


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two sequences share."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length


def _tokenize(tokenizer, text: str, chat: bool) -> tuple[list[int], list[tuple[int, int]]]:
    # As TRL: a rendered chat is tokenised without adding special tokens (the template has them); a raw
    # string with the tokenizer's defaults.
    encoding = tokenizer(text, return_offsets_mapping=True, **({"add_special_tokens": False} if chat else {}))
    return list(encoding["input_ids"]), [tuple(span) for span in encoding["offset_mapping"]]


def _render(tokenizer, prompt: str, answer: str | None, chat: bool) -> str:
    if not chat:
        return prompt if answer is None else prompt + answer + tokenizer.eos_token
    messages = [{"role": "user", "content": prompt}]
    if answer is None:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": answer}], tokenize=False)


def encode(tokenizer, instance: Instance, chat: bool, with_answer: bool = True, scratchpad: bool = False) -> Encoded:
    """Tokenise an instance as TRL's SFTTrainer does: the completion starts where the tokens of the prompt
    alone (with the generation prompt) and of prompt + completion diverge. Without the answer: the prompt
    as the model sees it at evaluation time, all labels -100."""
    prompt = render_prompt(instance)
    text = _render(tokenizer, prompt, render_answer(instance, scratchpad) if with_answer else None, chat)
    prompt_start = text.find(prompt)
    if prompt_start < 0:
        raise ValueError("the tokenizer's chat template changes the prompt text; train with --chat_template false")
    input_ids, offsets = _tokenize(tokenizer, text, chat)
    if with_answer:
        prompt_ids, _ = _tokenize(tokenizer, _render(tokenizer, prompt, None, chat), chat)
        completion_start = common_prefix_length(prompt_ids, input_ids)
    else:
        completion_start = len(input_ids)
    labels = [-100] * completion_start + input_ids[completion_start:]
    return Encoded(text, input_ids, offsets, labels, prompt_start)


def drop_overlong(tokenizer, instances: Sequence[Instance], chat: bool, max_length: int | None,
                  scratchpad: bool = False) -> list[Instance]:
    """The instances whose tokenised prompt + answer fits in `max_length` tokens (a note on stderr says how
    many were left out); DataError when none does."""
    if max_length is None:
        return list(instances)
    kept = [i for i in instances if len(encode(tokenizer, i, chat, scratchpad=scratchpad).input_ids) <= max_length]
    if not kept:
        raise DataError(f"all {len(instances)} training instances are longer than --max_length {max_length} tokens; "
                        f"raise --max_length or lower --max_lines")
    if len(kept) < len(instances):
        print(f"note: left out {len(instances) - len(kept)} of {len(instances)} instances longer than "
              f"--max_length {max_length} tokens", file=sys.stderr)
    return kept


# ---- where the documents are -----------------------------------------------------------------------

def document_char_spans(instance: Instance) -> tuple[tuple[int, int], tuple[int, int]]:
    """Character spans [start, end) of the original document and of the modified copy (the
    "modified") inside `render_prompt(instance)`, found by rendering the template around markers."""
    original_marker, modified_marker = "\x00ORIGINAL\x00", "\x00MODIFIED\x00"
    skeleton = render_documents(instance.domain, instance.variant, original_marker, modified_marker)
    prefix, rest = skeleton.split(original_marker)
    middle, suffix = rest.split(modified_marker)
    original, modified = instance.original_text, instance.modified_text
    if prefix + original + middle + modified + suffix != render_prompt(instance):
        raise ValueError(f"instance {instance.id}: the prompt template does not place the documents verbatim")
    original_start = len(prefix)
    modified_start = original_start + len(original) + len(middle)
    return (original_start, original_start + len(original)), (modified_start, modified_start + len(modified))


def token_span(offsets: Sequence[tuple[int, int]], char_span: tuple[int, int]) -> tuple[int, int]:
    """[first, last + 1) of the tokens lying wholly inside `char_span`; ValueError if there are none."""
    start, end = char_span
    inside = [i for i, (s, e) in enumerate(offsets) if e > s and s >= start and e <= end]
    if not inside:
        raise ValueError(f"no token lies inside characters {start}..{end}")
    return inside[0], inside[-1] + 1


# ---- variants of an instance used by the contrastive method ------------------------------------------

def complete_copy(instance: Instance) -> Instance:
    """The same task with nothing missing: the modified copy is the original itself."""
    return replace(instance, modified_lines=instance.original_lines, omitted_indices=(), inserted_indices=(),
                   metadata={})


def missing_line_indices(instance: Instance) -> list[int]:
    """Original lines the copy lacks or blanks out: the omitted ones and any dropped context lines."""
    return sorted({*instance.omitted_indices, *instance.metadata.get("dropped_context_indices", ())})


def _omittable_candidates(instance: Instance) -> list[int]:
    """The original lines the generator could have omitted (scored ones first, else context, else any)."""
    scored, context = omittable_indices(Document(instance.domain, instance.id, instance.original_lines))
    return scored or context or list(range(len(instance.original_lines)))


def _with_lines_edited(instance: Instance, edited: Sequence[int]) -> Instance:
    """The same task whose only edit is `edited`: those original lines deleted (omission) or replaced by
    the placeholder (placeholder)."""
    gone = set(edited)
    lines = instance.original_lines
    if instance.variant == "placeholder":
        modified = tuple(PLACEHOLDER if i in gone else line for i, line in enumerate(lines))
    else:
        modified = tuple(line for i, line in enumerate(lines) if i not in gone)
    return replace(instance, modified_lines=modified, omitted_indices=tuple(sorted(gone)), metadata={})


def shortest_line_negative(instance: Instance) -> Instance:
    """The same task with a single edit — the hardest kind (what the generator's `n_omitted=1` makes).

    omission / placeholder: the original's shortest omittable line (short lines are the easiest to miss;
    first of equals) is deleted / replaced by the placeholder; if that is exactly the instance's own edit,
    the next shortest is taken so the negative adds something. needle: only the shortest of the
    instance's inserted lines is kept. Deterministic: no randomness involved."""
    lines = instance.original_lines
    if instance.variant == "needle":
        position = min(instance.inserted_indices, key=lambda i: (len(instance.modified_lines[i]), i))
        before = sum(1 for i in instance.inserted_indices if i < position)  # needles ahead of it
        kept = lines[:position - before] + (instance.modified_lines[position],) + lines[position - before:]
        return replace(instance, modified_lines=kept, inserted_indices=(position - before,), metadata={})
    candidates = sorted(_omittable_candidates(instance), key=lambda i: (len(lines[i]), i))
    own_edit = missing_line_indices(instance)
    choice = next((i for i in candidates if [i] != own_edit), candidates[0])
    return _with_lines_edited(instance, [choice])


def adjacent_pair_negative(instance: Instance) -> Instance | None:
    """The same task with two adjacent lines edited, one gap that hides two lines: of the pairs of
    neighbouring omittable lines, the one with the shortest combined length (first of equals), other
    than the instance's own edit. None when there is no such pair (needle instances — their edits are
    insertions —, documents without two neighbouring omittable lines, or a pair that is the whole
    document). Deterministic: no randomness involved."""
    lines = instance.original_lines
    if instance.variant == "needle" or len(lines) < 3:
        return None
    candidates = set(_omittable_candidates(instance))
    pairs = sorted(((i, i + 1) for i in candidates if i + 1 in candidates),
                   key=lambda pair: (len(lines[pair[0]]) + len(lines[pair[1]]), pair[0]))
    own_edit = missing_line_indices(instance)
    pair = next((p for p in pairs if list(p) != own_edit), None)
    return None if pair is None else _with_lines_edited(instance, pair)


def _line_shape(instance: Instance, line: str) -> str:
    """What makes two lines near-identical: the text without whitespace (and, in a diff, without the
    first column's +/-/space marker), so refrains and closing brackets at any indent fall together."""
    text = line[1:] if instance.domain == "github_prs" and line[:1] in "+- " else line
    return "".join(text.split())


def repeated_line_negative(instance: Instance) -> Instance | None:
    """The same task with one line dropped from the middle of a run of near-identical lines (a verse
    refrain, a `}` or `)` line in code): of the line shapes (`_line_shape`) that occur more than once,
    the most frequent (first of equals), its middle occurrence deleted / replaced by the placeholder. The
    text no longer says which copy is gone, only that one is. None for needle instances, documents
    without a repeated line, or when that line is the instance's own edit. Deterministic."""
    if instance.variant == "needle":
        return None
    occurrences: dict[str, list[int]] = {}
    for i, line in enumerate(instance.original_lines):
        if shape := _line_shape(instance, line):
            occurrences.setdefault(shape, []).append(i)
    repeated = [where for where in occurrences.values() if len(where) > 1]
    if not repeated:
        return None
    most = max(repeated, key=lambda where: (len(where), -where[0]))
    choice = most[len(most) // 2]
    return None if [choice] == missing_line_indices(instance) else _with_lines_edited(instance, [choice])


def changed_line_negative(instance: Instance) -> Instance | None:
    """The same task whose only edit is one *changed* line, nothing missing (the model must not take
    "edited" for "missing"): the shortest omittable line with two or more words loses its last word;
    without one, the shortest with two or more characters loses its last character (a number loses a
    digit). None for needle instances or when no line can be shortened. Deterministic."""
    if instance.variant == "needle":
        return None
    lines = instance.original_lines
    candidates = sorted(_omittable_candidates(instance), key=lambda i: (len(lines[i]), i))

    def shortened(line: str) -> str | None:
        words = line.split()
        if len(words) > 1:
            return line[:line.rstrip().rfind(words[-1])].rstrip()
        return line.rstrip()[:-1] if len(line.strip()) > 1 else None

    for i in candidates:
        if (changed := shortened(lines[i])) is not None:
            modified = tuple(changed if k == i else line for k, line in enumerate(lines))
            return replace(instance, modified_lines=modified, omitted_indices=(), metadata={})
    return None


HARD_NEGATIVE_BUILDERS = {"shortest_line": shortest_line_negative, "adjacent_pair": adjacent_pair_negative,
                          "repeated_line": repeated_line_negative, "changed_line": changed_line_negative}
HARD_NEGATIVE_KINDS = tuple(HARD_NEGATIVE_BUILDERS)
# The kinds a run builds unless told otherwise (the two the committed studies used).
DEFAULT_HARD_NEGATIVE_KINDS = ("shortest_line", "adjacent_pair")


def hard_negatives(instance: Instance, kinds: Sequence[str] = DEFAULT_HARD_NEGATIVE_KINDS) -> list[Instance]:
    """The hard negatives of `instance`, one per kind in `kinds` order, leaving out kinds that do not apply."""
    if bad := [k for k in kinds if k not in HARD_NEGATIVE_BUILDERS]:
        raise ValueError(f"unknown hard negative kind {bad[0]!r} (expected {', '.join(HARD_NEGATIVE_KINDS)})")
    built = (HARD_NEGATIVE_BUILDERS[kind](instance) for kind in kinds)
    return [negative for negative in built if negative is not None]
