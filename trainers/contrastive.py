"""The "attend to absence" method: `python -m trainers.contrastive [--config run.yaml] [--flags]`.

Loss = SFT loss + lambda_seq · sequence InfoNCE + lambda_gap · gap alignment, all from one training pass
plus forward-only passes over two companions of each instance:

* the training sequence A: the instance's prompt (original document, then the edited copy — the
  "modified" — then the question) and its answer, exactly as SFT sees it (same tokens, same labels);
* the complete copy B: the same prompt with nothing missing (the modified copy equals the original);
* the hard negatives C: the same prompt with one small edit each (`trainers.data.hard_negatives`, the
  kinds `hard_negative_kinds` names: only the shortest line edited; only the shortest pair of adjacent
  lines edited; by choice also one of a run of near-identical lines dropped, or one line changed and
  nothing missing).

Sequence level (exact choice). Every vector is the pooled hidden state (layer `contrastive_layer`,
`pooling` mean|last) of a document span inside a prompt:
  anchor   = the ORIGINAL document span of A (with gradient);
  positive = the modified copy span of B — the unaltered copy, in the copy's position (no gradient: a
             target);
  negatives= the modified copy span of A — the edited copy (with gradient) — and of every C (no gradient);
  plus, with `in_batch_negatives`, the other instances' positives and negatives. Instances with fewer
  hard negatives (no adjacent pair to edit) have their missing slots masked out.
The original text appears in the same first position in A, B and C, so its states are identical across
them; comparing it with the copy in the copy's position is what makes the task non-trivial: the
copy's representation must move when lines are missing.

Gap level. The edited modified copy of A is aligned token by token with the complete modified copy of B
(character offsets of the fast tokenizer, edited characters mapped to original characters through the
instance's omitted indices); aligned states are pulled together (1 - cos), and the first token after
each gap is pushed away from its counterpart (max(0, cos - gap_margin)) — the state there should say
"something is missing". B's states are a target (no gradient). Only omission instances have a gap
alignment; a gap at the very end of a copy has no token after it and is not marked.

Hard-negative mixing (`mochi_mixed`, `mochi_anchor_mixed`, off by default; MoCHi, Kalantidis et al. 2020):
synthetic negatives mixed at the feature level from the row's hardest ones and from the anchor itself
(`trainers.losses.mix_hard_negatives`), with no gradient, added to the InfoNCE denominator.

Direct gap signal (`lambda_probe`, off by default). A linear probe on A's states (the same layer) at the
first token of every edited-copy line predicts whether one or more original lines are missing right
before it — tens of labels per instance where the answer gives a few, and no extra forward pass (it needs
neither B nor the Cs). Class-balanced binary cross-entropy (`trainers.losses.gap_probe_loss`), trained
jointly; the probe is saved beside the model as `gap_probe/gap_probe.safetensors`, so the checkpoint stays a
plain causal LM.

Cost. B and the Cs share their first tokens with A (the instruction, the whole original document and the
copy up to its first difference), so with `share_prefix_cache` they are run only from their first
differing token, on A's key/value cache; their earlier states are A's own (bit-identical in a causal
model). Their tokens count 2·N each (forward only); A's 6·N.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache

from absence_tasks.schema import Instance
from trainers.config import ContrastiveConfig, ScriptArguments
from trainers.data import (DEFAULT_HARD_NEGATIVE_KINDS, Encoded, common_prefix_length, complete_copy,
                           document_char_spans, encode, hard_negatives, missing_line_indices, token_span)
from trainers.losses import (char_map_for_omission, combined_loss, gap_alignment_loss, gap_char_positions_for_omission,
                             gap_probe_loss, gap_token_mask, line_start_char_positions, mix_hard_negatives,
                             negatives_by_row, pool_hidden, sequence_infonce_loss, token_alignment_from_char_map)
from trainers.run import AbsenceTrainer, main_for

# The direct gap signal's probe, saved beside the model: a Linear(hidden, 1) state dict (weight, bias). In a
# folder of its own: vLLM loads every top-level *.safetensors of a checkpoint as model weights.
GAP_PROBE_FILE = "gap_probe/gap_probe.safetensors"
GAP_PROBE_LABEL = "one or more original lines are missing right before this edited-copy line (first token)"

# Collated keys the model never sees (compute_loss takes them out of the batch).
SIDE_KEYS = ("original_mask", "modified_mask", "alignment", "gap_mask", "line_start_mask", "companion_input_ids",
             "companion_attention_mask", "companion_source", "companion_prefix", "companion_modified_mask")


# ---- features of one instance ------------------------------------------------------------------------

def _modified_offsets(encoded: Encoded, span: tuple[int, int]) -> list[tuple[int, int]]:
    """Token character spans relative to the modified copy's start; (0, 0) for tokens outside it."""
    start, end = span
    return [(s - start, e - start) if e > s and s >= start and e <= end else (0, 0) for s, e in encoded.offsets]


def _spans_in_text(encoded: Encoded, instance: Instance) -> tuple[tuple[int, int], tuple[int, int]]:
    (o_start, o_end), (m_start, m_end) = document_char_spans(instance)
    shift = encoded.prompt_start
    return (o_start + shift, o_end + shift), (m_start + shift, m_end + shift)


def _companion(tokenizer, instance: Instance, chat: bool, training_ids: Sequence[int]) -> dict[str, Any]:
    """A companion prompt (complete copy or hard negative), cut after its modified copy (nothing later is
    used), with the length of the prefix it shares with the training sequence."""
    encoded = encode(tokenizer, instance, chat, with_answer=False)
    _, modified_chars = _spans_in_text(encoded, instance)
    first, last = token_span(encoded.offsets, modified_chars)
    ids = encoded.input_ids[:last]
    return {"encoded": encoded, "modified_chars": modified_chars, "ids": ids, "modified": [first, last],
            "shared": common_prefix_length(ids, training_ids)}


def contrastive_features(tokenizer, instance: Instance, chat: bool,
                         hard_negative_kinds: Sequence[str] = DEFAULT_HARD_NEGATIVE_KINDS,
                         scratchpad: bool = False) -> dict[str, Any]:
    """Everything the contrastive trainer needs about one instance, as plain lists (a datasets row).

    input_ids / labels: the training sequence A, tokenised exactly as for SFT.
    original_span / modified_span: [first, last) tokens of the two documents in A.
    complete_ids / complete_modified / complete_shared: B (cut after its modified copy), its modified copy
    tokens, and how many leading tokens it shares with A. hard_ids / hard_modified / hard_shared: the
    same, one entry per hard negative (`hard_negatives(instance, hard_negative_kinds)`).
    alignment: per token of A, the position in B with the same text (-1: none); gap_mask: 1 at the first
    token after each gap; line_start_mask: 1 at the first token of every edited-copy line that has text
    (the rows of the direct gap signal; all 0 for instances that are not omissions)."""
    training = encode(tokenizer, instance, chat, scratchpad=scratchpad)
    original_chars, modified_chars = _spans_in_text(training, instance)
    complete = _companion(tokenizer, complete_copy(instance), chat, training.input_ids)

    alignment = [-1] * len(training.input_ids)
    gaps = [0] * len(training.input_ids)
    line_starts = [0] * len(training.input_ids)
    if instance.variant == "omission":
        missing = missing_line_indices(instance)
        edited_offsets = _modified_offsets(training, modified_chars)
        char_map = char_map_for_omission(instance.original_lines, missing)
        alignment = token_alignment_from_char_map(
            edited_offsets, char_map, _modified_offsets(complete["encoded"], complete["modified_chars"])).tolist()
        gaps = gap_token_mask(edited_offsets, instance.modified_text,
                              gap_char_positions_for_omission(instance.original_lines, missing)).int().tolist()
        line_starts = gap_token_mask(edited_offsets, instance.modified_text,
                                     line_start_char_positions(instance.modified_lines)).int().tolist()

    features = {
        "input_ids": training.input_ids,
        "labels": training.labels,
        "original_span": list(token_span(training.offsets, original_chars)),
        "modified_span": list(token_span(training.offsets, modified_chars)),
        "complete_ids": complete["ids"],
        "complete_modified": complete["modified"],
        "complete_shared": complete["shared"],
        "alignment": alignment,
        "gap_mask": gaps,
        "line_start_mask": line_starts,
    }
    hard = [_companion(tokenizer, negative, chat, training.input_ids)
            for negative in hard_negatives(instance, hard_negative_kinds)]
    features.update(hard_ids=[h["ids"] for h in hard], hard_modified=[h["modified"] for h in hard],
                    hard_shared=[h["shared"] for h in hard])
    return features


def contrastive_dataset(tokenizer, instances: Sequence[Instance], chat: bool, hard_negative_kinds: Sequence[str],
                        scratchpad: bool = False):
    import datasets

    return datasets.Dataset.from_list([contrastive_features(tokenizer, i, chat, hard_negative_kinds, scratchpad)
                                       for i in instances])


# ---- batches ------------------------------------------------------------------------------------------

def _pad(rows: Sequence[Sequence[int]], value: int, length: int | None = None) -> torch.Tensor:
    length = max(map(len, rows)) if length is None else length
    return torch.tensor([list(r) + [value] * (length - len(r)) for r in rows], dtype=torch.long)


def _span_mask(spans: Sequence[Sequence[int]], length: int) -> torch.Tensor:
    positions = torch.arange(length)
    starts, ends = torch.tensor([s[0] for s in spans]), torch.tensor([s[1] for s in spans])
    return (positions >= starts[:, None]) & (positions < ends[:, None])


@dataclass
class ContrastiveCollator:
    """Right-padded training sequences with their side information, plus the companion rows (one complete
    copy per training row first, in row order, then every hard negative of row 0, of row 1, ...): only
    their tokens after the shared prefix (all of them when `share_prefix` is off), the training row each
    belongs to and its shared-prefix length."""

    pad_token_id: int
    with_complete: bool = True
    with_hard_negative: bool = True
    share_prefix: bool = True

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        batch = {
            "input_ids": _pad([e["input_ids"] for e in examples], self.pad_token_id),
            "attention_mask": _pad([[1] * len(e["input_ids"]) for e in examples], 0),
            "labels": _pad([e["labels"] for e in examples], -100),
            "original_mask": _span_mask([e["original_span"] for e in examples], length),
            "modified_mask": _span_mask([e["modified_span"] for e in examples], length),
            "alignment": _pad([e["alignment"] for e in examples], -1),
            "gap_mask": _pad([e["gap_mask"] for e in examples], 0).bool(),
            "line_start_mask": _pad([e["line_start_mask"] for e in examples], 0).bool(),
        }
        # (training row, token ids, modified copy span, tokens shared with the training row) per companion
        rows = []
        if self.with_complete:
            rows += [(source, e["complete_ids"], e["complete_modified"], e["complete_shared"])
                     for source, e in enumerate(examples)]
        if self.with_hard_negative:
            rows += [(source, *hard) for source, e in enumerate(examples)
                     for hard in zip(e["hard_ids"], e["hard_modified"], e["hard_shared"])]
        if not rows:
            return batch
        prefixes = [shared if self.share_prefix else 0 for *_, shared in rows]
        full_length = max(len(ids) for _, ids, _, _ in rows)
        new_tokens = [ids[prefix:] for (_, ids, _, _), prefix in zip(rows, prefixes)]
        new_length = max(1, max(map(len, new_tokens)))
        batch.update(
            companion_input_ids=_pad(new_tokens, self.pad_token_id, new_length),
            companion_attention_mask=_pad([[1] * len(t) for t in new_tokens], 0, new_length),
            companion_source=torch.tensor([source for source, *_ in rows], dtype=torch.long),
            companion_prefix=torch.tensor(prefixes, dtype=torch.long),
            companion_modified_mask=_span_mask([modified for _, _, modified, _ in rows], full_length),
        )
        return batch


# ---- the trainer ----------------------------------------------------------------------------------------

def shared_prefix_cache(cache, source: torch.Tensor, prefix: torch.Tensor) -> tuple[DynamicCache, torch.Tensor]:
    """A key/value cache for the companion rows: row r gets the first prefix[r] positions of training row
    source[r], left-padded to the longest prefix; plus the (R, longest) mask of its real positions."""
    longest = int(prefix.max())
    index = torch.arange(longest, device=prefix.device)[None, :] - (longest - prefix)[:, None]
    valid = index >= 0
    gather_index = index.clamp(min=0)

    def take(states: torch.Tensor) -> torch.Tensor:  # (B, heads, T, d) -> (R, heads, longest, d)
        rows = states.detach()[source]
        expanded = gather_index[:, None, :, None].expand(-1, rows.size(1), -1, rows.size(3))
        return torch.gather(rows, 2, expanded) * valid[:, None, :, None].to(rows.dtype)

    layers = [(take(layer.keys), take(layer.values)) for layer in cache.layers]
    return DynamicCache(ddp_cache_data=layers), valid.long()


def companion_states(model, states: torch.Tensor, past_key_values, side: dict[str, torch.Tensor], layer: int,
                     reuse_cache: bool) -> tuple[torch.Tensor, int]:
    """States (R, L, H) at hidden layer `layer` of the companion rows (complete copies, hard negatives),
    without gradient, and how many tokens the forward-only pass processed.

    Up to its shared prefix a companion's states are its training row's own (`states`, detached — a
    causal model computes the same thing there); after it they come from one batched no-grad forward
    over the remaining tokens, attending to the training pass's cache (`past_key_values`) when
    `reuse_cache`, else (prefixes all 0) over the whole companion."""
    source, prefix = side["companion_source"], side["companion_prefix"]
    new_ids, new_mask = side["companion_input_ids"], side["companion_attention_mask"]
    full_length = side["companion_modified_mask"].size(1)
    t = torch.arange(full_length, device=states.device)
    from_training = states.detach()[source]
    if from_training.size(1) < full_length:
        from_training = torch.nn.functional.pad(from_training, (0, 0, 0, full_length - from_training.size(1)))
    from_training = from_training[:, :full_length]
    new_count = int(new_mask.sum())
    if not new_count:
        return from_training, 0
    kwargs, attention_mask = {}, new_mask
    if reuse_cache:
        cache, prefix_mask = shared_prefix_cache(past_key_values, source, prefix)
        kwargs["past_key_values"] = cache
        attention_mask = torch.cat([prefix_mask, new_mask], dim=1)
    position_ids = prefix[:, None] + torch.arange(new_ids.size(1), device=new_ids.device)[None, :]
    with torch.no_grad():
        new_states = model(input_ids=new_ids, attention_mask=attention_mask, position_ids=position_ids,
                           output_hidden_states=True, logits_to_keep=1, **kwargs).hidden_states[layer]
    new_index = (t[None, :] - prefix[:, None]).clamp(0, new_states.size(1) - 1)
    from_new = torch.gather(new_states, 1, new_index[..., None].expand(-1, -1, new_states.size(2)))
    before_prefix = (t[None, :] < prefix[:, None])[..., None]
    return torch.where(before_prefix, from_training, from_new.to(from_training.dtype)), new_count


class ContrastiveTrainer(AbsenceTrainer):
    """SFTTrainer whose loss adds the sequence-level and gap-level objectives (see the module docstring).
    The SFT term is the same token-mean NLL SFTTrainer computes, on the same tokens."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        text_config = self.model.config.get_text_config()
        layers = text_config.num_hidden_layers
        if not -(layers + 1) <= self.args.contrastive_layer <= layers:
            raise ValueError(f"--contrastive_layer {self.args.contrastive_layer} is outside the model's "
                             f"{layers} layers (-{layers + 1}..{layers})")
        # The direct gap signal's linear probe: trained with the model (its own parameter group), saved beside
        # it as GAP_PROBE_FILE, never inside it, so the checkpoint stays a plain causal LM.
        self.gap_probe = None
        if self.probe_on:
            generator = torch.Generator().manual_seed(self.args.seed)
            self.gap_probe = torch.nn.Linear(text_config.hidden_size, 1)
            with torch.no_grad():  # seeded, not from the global generator: same seed, same run
                torch.nn.init.normal_(self.gap_probe.weight, std=text_config.hidden_size ** -0.5, generator=generator)
                self.gap_probe.bias.zero_()
            self.gap_probe.to(self.args.device)
        self._mixing_calls = (-1, 0)   # (optimizer step, micro-batches seen in it): seeds MoCHi's draws

    @property
    def sequence_on(self) -> bool:
        return self.args.lambda_seq > 0

    @property
    def gap_on(self) -> bool:
        return self.args.lambda_gap > 0

    @property
    def probe_on(self) -> bool:
        return self.args.lambda_probe > 0

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.gap_probe is not None and not any(p is self.gap_probe.weight for group in optimizer.param_groups
                                                  for p in group["params"]):
            optimizer.add_param_group({"params": list(self.gap_probe.parameters()), "weight_decay": 0.0})
        return optimizer

    def save_side_files(self, folder: str | os.PathLike) -> None:
        if self.gap_probe is not None:
            from safetensors.torch import save_file

            os.makedirs(os.path.dirname(os.path.join(folder, GAP_PROBE_FILE)), exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in self.gap_probe.state_dict().items()},
                      os.path.join(folder, GAP_PROBE_FILE),
                      metadata={"layer": str(self.args.contrastive_layer), "label": GAP_PROBE_LABEL})

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        super().save_model(output_dir, _internal_call)
        # Checkpoints: written with the weights, before the Trainer's trainer_state.json marks them complete.
        self.save_side_files(output_dir or self.args.output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.gap_probe is not None:
            from safetensors.torch import load_file

            path = os.path.join(resume_from_checkpoint, GAP_PROBE_FILE)
            if not os.path.isfile(path):
                raise ValueError(f"{resume_from_checkpoint} has no {GAP_PROBE_FILE}: it was not trained with "
                                 f"--lambda_probe > 0, resume it with --lambda_probe 0")
            self.gap_probe.load_state_dict(load_file(path, device=str(self.args.device)))

    def extra_record(self) -> dict[str, Any]:
        if self.gap_probe is None:
            return {}
        return {"gap_probe": {"file": GAP_PROBE_FILE, "layer": self.args.contrastive_layer, "label": GAP_PROBE_LABEL}}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        side = {key: inputs.pop(key) for key in SIDE_KEYS if key in inputs}
        labels = inputs.pop("labels")
        needs_companions = self.sequence_on or self.gap_on
        needs_states = needs_companions or self.probe_on
        if needs_companions and "companion_input_ids" not in side:
            raise ValueError("the contrastive losses need a ContrastiveCollator built with with_complete=True")
        reuse_cache = needs_companions and bool(side["companion_prefix"].max() > 0)
        outputs, sft, sft_mean = self.answer_forward(model, inputs, labels, num_items_in_batch,
                                                     output_hidden_states=needs_states, use_cache=reuse_cache)

        seq = gap = probe = None
        forward_only_tokens = 0
        if needs_states:
            states = outputs.hidden_states[self.args.contrastive_layer]
        if self.probe_on:
            probe_logits = self.gap_probe(states.to(self.gap_probe.weight.dtype)).squeeze(-1)  # (B, T)
            probe = gap_probe_loss(probe_logits, side["line_start_mask"], side["gap_mask"])
        if needs_companions:
            companions, forward_only_tokens = companion_states(model, states, outputs.past_key_values, side,
                                                               self.args.contrastive_layer, reuse_cache)
            batch = states.size(0)
            if self.sequence_on:
                seq = self._sequence_loss(states, companions, side, batch)
            if self.gap_on:
                gap = gap_alignment_loss(companions[:batch], states, side["alignment"], side["gap_mask"],
                                         margin=self.args.gap_margin)
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["sft_loss"].append(sft_mean.item())
        for name, term in (("seq_loss", seq), ("gap_loss", gap), ("probe_loss", probe)):
            if term is not None:
                self._metrics[mode][name].append(term.item())
        # Those three are per-micro-batch means; with num_items_in_batch the Trainer leaves gradient
        # accumulation to the loss, so they are averaged over the accumulated micro-batches here.
        steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
        loss = combined_loss(sft, None if seq is None else seq / steps, None if gap is None else gap / steps,
                             self.args.lambda_seq, self.args.lambda_gap, None if probe is None else probe / steps,
                             self.args.lambda_probe)
        if mode == "train":
            self.count(inputs["attention_mask"].size(0), inputs["attention_mask"].sum(), forward_only_tokens)
        return (loss, outputs) if return_outputs else loss

    def _mixing_generator(self) -> torch.Generator:
        """MoCHi's draws: seeded by (seed, optimizer step, micro-batch within the step), so a resumed run
        draws what the uninterrupted one would have."""
        step = self.state.global_step
        calls = self._mixing_calls[1] + 1 if self._mixing_calls[0] == step else 0
        self._mixing_calls = (step, calls)
        return torch.Generator().manual_seed((self.args.seed * 1_000_003 + step) * 1_009 + calls)

    def _sequence_loss(self, states, companions, side, batch) -> torch.Tensor:
        pooling = self.args.pooling
        anchor = pool_hidden(states, side["original_mask"], pooling)
        edited = pool_hidden(states, side["modified_mask"], pooling)
        modified_mask = side["companion_modified_mask"]
        positive = pool_hidden(companions[:batch], modified_mask[:batch], pooling)
        hard = (pool_hidden(companions[batch:], modified_mask[batch:], pooling) if companions.size(0) > batch
                else edited.new_zeros(0, edited.size(-1)))
        hard, hard_mask = negatives_by_row(hard, side["companion_source"][batch:], batch)
        negatives = torch.cat([edited.unsqueeze(1), hard], dim=1)
        edited_present = torch.ones(batch, 1, dtype=torch.bool, device=hard_mask.device)
        negative_mask = torch.cat([edited_present, hard_mask], dim=1)
        if self.args.mochi_mixed or self.args.mochi_anchor_mixed:
            negatives, negative_mask = mix_hard_negatives(anchor, negatives, negative_mask, self.args.mochi_hardest,
                                                          self.args.mochi_mixed, self.args.mochi_anchor_mixed,
                                                          self._mixing_generator())
        return sequence_infonce_loss(anchor, positive, negatives, self.args.temperature, negative_mask=negative_mask,
                                     in_batch_negatives=self.args.in_batch_negatives)


# ---- the run --------------------------------------------------------------------------------------------

CONTRASTIVE_DESCRIPTION = ("SFT loss plus the 'attend to absence' objectives: sequence-level InfoNCE (the original "
                           "document closer to its complete copy than to its edited versions), gap-level "
                           "alignment (edited-copy states match the complete copy's, except the token after each "
                           "gap, which is pushed away) and, when its weight is above 0, the direct gap signal (a "
                           "linear probe at each edited-copy line says whether lines are missing before it). See "
                           "trainers/contrastive.py.")


def build_contrastive_trainer(script_args: ScriptArguments, training_args: ContrastiveConfig):
    def build(model, tokenizer, instances, peft_config, **recipe):
        needs_companions = training_args.lambda_seq > 0 or training_args.lambda_gap > 0
        with_hard = (needs_companions and training_args.lambda_seq > 0 and training_args.hard_negatives
                     and bool(training_args.hard_negative_kinds))
        # The dataset is tokenised here (with offsets); the trainer must keep its side columns.
        training_args.dataset_kwargs = {**(training_args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        training_args.remove_unused_columns = False
        collator = ContrastiveCollator(
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            with_complete=needs_companions, with_hard_negative=with_hard,
            # Gradient checkpointing turns the key/value cache off, so there is no prefix to reuse.
            share_prefix=training_args.share_prefix_cache and not training_args.gradient_checkpointing)
        dataset = contrastive_dataset(tokenizer, instances, script_args.chat_template,
                                      training_args.hard_negative_kinds if with_hard else (), script_args.scratchpad)
        return ContrastiveTrainer(model=model, args=training_args, processing_class=tokenizer, train_dataset=dataset,
                                  data_collator=collator, peft_config=peft_config, **recipe)
    return build


def main(argv: Sequence[str] | None = None) -> int:
    return main_for("contrastive", CONTRASTIVE_DESCRIPTION, ContrastiveConfig, build_contrastive_trainer, argv)


if __name__ == "__main__":
    sys.exit(main())
