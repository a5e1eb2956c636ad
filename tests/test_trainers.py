"""The SFT and contrastive trainers, end to end on the tiny random Llama (real SmolLM2 tokenizer and chat
template): checkpoints and model cards, label masking, loss switches, hard negatives, compute accounting, FLOP
and time budgets, LoRA, kill -9 and resume, one-line errors, and scoring the output with the real lm-eval."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from absence_tasks.models import END_OF_TURN, load_checkpoint_or_die
from absence_tasks.prompts import render_answer
from absence_tasks.schema import PLACEHOLDER, Instance, read_jsonl, write_jsonl
from trainers import contrastive, run, sft
from trainers.config import LEARNING_RATE, AbsenceSFTConfig, ScriptArguments
from trainers.contrastive import ContrastiveCollator, companion_states, contrastive_features
from trainers.data import (adjacent_pair_negative, changed_line_negative, complete_copy, data_sha256, encode,
                           hard_negatives, load_training_instances, repeated_line_negative, shortest_line_negative)
from trainers.accounting import ComputeAccountant
from trainers.card import read_model_card

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONWARNINGS": "ignore"}


def flags(model_dir, out, *extra, max_steps=3, domains=("numerical",), save_steps=None):
    """Command-line flags for a few steps on short numerical documents (4 instances per domain);
    max_steps=None leaves the step count to a --config file."""
    saving = ["--save_strategy", "no"] if save_steps is None else ["--save_strategy", "steps", "--save_steps",
                                                                    str(save_steps)]
    steps = [] if max_steps is None else ["--max_steps", str(max_steps)]
    return ["--model_name_or_path", str(model_dir), "--output_dir", str(out), "--domains", *domains,
            "--n_train", "4", "--max_lines", "5", *steps, "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--logging_steps", "1", "--disable_tqdm", "true", *saving,
            "--curve_instances_per_domain", "0",
            *map(str, extra)]


def logged(out: Path) -> list[dict]:
    """The per-step training logs of a finished run (its final trainer_state.json)."""
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [entry for entry in history if "loss" in entry]


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def instances():
    return load_training_instances(["numerical", "poetry"], ["omission"], 2, seed=0, max_lines=5)


@pytest.fixture(scope="module")
def sft_run(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "sft"
    assert sft.main(flags(tiny_llama_dir, out, domains=("numerical", "poetry"))) == 0
    return out


@pytest.fixture(scope="module")
def contrastive_run(tiny_llama_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "contrastive"
    assert contrastive.main(flags(tiny_llama_dir, out, "--lambda_seq", 1, "--lambda_gap", 1,
                                  domains=("numerical", "poetry"))) == 0
    return out


# ---- SFT ------------------------------------------------------------------------------------------

def test_sft_writes_a_plain_checkpoint_with_a_model_card(sft_run, tokenizer):
    from transformers import AutoModelForCausalLM

    load_checkpoint_or_die(sft_run)
    model = AutoModelForCausalLM.from_pretrained(sft_run)
    assert model.config.model_type == "llama"
    assert not list(sft_run.glob(".final-partial-*"))

    card = read_model_card(sft_run)
    assert card["method"] == "sft" and card["global_step"] == 3
    compute = card["compute"]
    assert compute["tokens_trained"] > 0 and compute["tokens_forward_only"] == 0
    assert compute["instances_trained"] == 3 * 2  # 3 steps of 2 instances
    assert "| training instances seen (repeats counted) | 6 |" in (sft_run / "README.md").read_text()
    assert compute["flops"] == 6 * compute["n_params"] * compute["tokens_trained"]
    # N counts the tied embedding once (as the output projection): every parameter of the tiny Llama.
    assert compute["n_params"] == sum(p.numel() for p in model.parameters())
    assert compute["train_seconds"] > 0 and compute["stopped_by"] == [] and compute["budget_seconds"] is None
    assert card["data"]["sha256"] == data_sha256(read_jsonl(sft_run / "training_data.jsonl"))
    assert card["data"]["domains"] == ["numerical", "poetry"] and card["data"]["n_instances"] == 8
    assert card["training_args"]["learning_rate"] == LEARNING_RATE and card["seed"] == 42 and card["data_seed"] == 0
    assert (sft_run / "README.md").read_text().startswith("---\nbase_model: ")

    # Generation stops at the end-of-turn token that training taught.
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    eos = model.generation_config.eos_token_id
    assert end_of_turn in (eos if isinstance(eos, list) else [eos])

    card_text = (sft_run / "README.md").read_text()
    assert "| training wall time (s in optimizer steps, summed over sessions) |" in card_text
    assert "| stopped by | the step/epoch limit |" in card_text

    steps = logged(sft_run)
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert steps[-1]["tokens_trained"] == compute["tokens_trained"]
    assert 0 < steps[0]["train_seconds"] < steps[1]["train_seconds"] < steps[2]["train_seconds"]


@pytest.mark.parametrize("chat", [True, False], ids=["chat-template", "raw"])
def test_sft_labels_cover_exactly_the_answer_and_end_of_turn(tiny_llama_dir, tokenizer, instances, tmp_path, chat):
    model = run.load_model(tiny_llama_dir)
    args = AbsenceSFTConfig(output_dir=str(tmp_path), report_to="none")
    trainer = sft.build_sft_trainer(ScriptArguments(chat_template=chat), args)(
        model, tokenizer, instances, None, callbacks=[ComputeAccountant(1)])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(instances))])
    # Chat: the assistant turn closes with <|im_end|> and the template's newline; raw text: the EOS token.
    ending = END_OF_TURN + "\n" if chat else tokenizer.eos_token
    for row, instance in enumerate(instances):
        answer_ids = batch["labels"][row][batch["labels"][row] != -100]
        assert tokenizer.decode(answer_ids) == render_answer(instance) + ending
        # The data module's own tokenisation (used by the contrastive trainer) is TRL's, token for token.
        encoded = encode(tokenizer, instance, chat=chat)
        length = len(encoded.input_ids)
        assert batch["input_ids"][row][:length].tolist() == encoded.input_ids
        assert batch["labels"][row][:length].tolist() == encoded.labels
        assert (batch["labels"][row][length:] == -100).all()
        features = contrastive_features(tokenizer, instance, chat=chat)
        assert features["input_ids"] == encoded.input_ids and features["labels"] == encoded.labels


# ---- contrastive ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("lambda_seq", "lambda_gap"), [(1.0, 0.0), (0.0, 1.0), (0.0, 0.0)])
def test_contrastive_runs_with_each_loss_switched_on_or_off(tiny_llama_dir, tmp_path, lambda_seq, lambda_gap):
    out = tmp_path / "run"
    assert contrastive.main(flags(tiny_llama_dir, out, "--lambda_seq", lambda_seq, "--lambda_gap", lambda_gap,
                                  max_steps=2)) == 0
    steps = logged(out)
    assert len(steps) == 2
    for step in steps:
        assert math.isfinite(step["loss"]) and math.isfinite(step["sft_loss"])
        assert ("seq_loss" in step) == (lambda_seq > 0) and ("gap_loss" in step) == (lambda_gap > 0)
        for name in ("seq_loss", "gap_loss"):
            assert name not in step or math.isfinite(step[name])
    compute = read_model_card(out)["compute"]
    assert (compute["tokens_forward_only"] > 0) == (lambda_seq > 0 or lambda_gap > 0)


def test_contrastive_with_both_losses_on_logs_all_terms(contrastive_run):
    for step in logged(contrastive_run):
        assert step["seq_loss"] > 0 and 0 <= step["gap_loss"] <= 2
        expected = step["sft_loss"] + step["seq_loss"] + step["gap_loss"]
        assert step["loss"] == pytest.approx(expected, rel=1e-3)


def test_contrastive_counts_more_flops_than_sft_on_the_same_batches(sft_run, contrastive_run):
    sft_compute, contrastive_compute = read_model_card(sft_run)["compute"], read_model_card(contrastive_run)["compute"]
    # Same seed, same data: the same batches, so the same trained tokens; the extra passes cost 2·N each.
    assert contrastive_compute["tokens_trained"] == sft_compute["tokens_trained"]
    assert contrastive_compute["instances_trained"] == sft_compute["instances_trained"]
    assert contrastive_compute["tokens_forward_only"] > 0
    assert contrastive_compute["flops"] - sft_compute["flops"] ==\
        2 * contrastive_compute["n_params"] * contrastive_compute["tokens_forward_only"]
    # The first step's SFT loss is the same number in both trainers (same tokens, same weights).
    assert logged(contrastive_run)[0]["sft_loss"] == pytest.approx(logged(sft_run)[0]["loss"], rel=1e-4)


def test_companion_states_from_the_shared_cache_equal_a_full_forward(tiny_llama_dir, tokenizer, instances):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    examples = [contrastive_features(tokenizer, i, chat=True) for i in instances]
    states = {}
    for share in (True, False):
        batch = ContrastiveCollator(tokenizer.pad_token_id, share_prefix=share)(examples)
        with torch.no_grad():
            outputs = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                            output_hidden_states=True, use_cache=share)
            states[share], tokens = companion_states(model, outputs.hidden_states[-1], outputs.past_key_values,
                                                     batch, -1, reuse_cache=share)
        mask = batch["companion_modified_mask"]
        if share:
            shared_tokens = tokens
    assert shared_tokens < tokens  # reusing the prefix saves most of the extra pass
    assert torch.allclose(states[True][mask], states[False][mask], atol=1e-5)


POEM = ("The fog comes", "on little cat feet.", "It sits looking", "over harbor and city",
        "on silent haunches and then moves on.")


def test_features_align_the_modified_copy_with_the_complete_copy_inside_the_prompt(tokenizer):
    """A 5-line poem with line 2 omitted, rendered in the chat template: every aligned token of the edited
    modified copy has the same text as its counterpart in the complete copy, and the one gap token is the
    first token of the line after the gap."""
    instance = Instance("poem", "poetry", "omission", "train", POEM, POEM[:1] + POEM[2:], (1,))
    features = contrastive_features(tokenizer, instance, chat=True)
    edited, complete = features["input_ids"], features["complete_ids"]
    first, last = features["modified_span"]
    assert tokenizer.decode(edited[first:last]) == instance.modified_text
    start, end = features["complete_modified"]
    assert tokenizer.decode(complete[start:end]) == instance.original_text
    assert tokenizer.decode(edited[slice(*features["original_span"])]) == instance.original_text

    aligned = [(a, b) for a, b in enumerate(features["alignment"]) if b >= 0]
    assert {a for a, _ in aligned} == set(range(first, last))  # SmolLM2 splits at "\n": all tokens align
    assert all(edited[a] == complete[b] for a, b in aligned)
    (gap,) = [a for a, flag in enumerate(features["gap_mask"]) if flag]
    assert tokenizer.decode(edited[gap:last]).startswith(POEM[2]) and POEM[2].startswith(tokenizer.decode(edited[gap]))
    counterpart = features["alignment"][gap]
    assert tokenizer.decode(complete[counterpart:end]) == "\n".join(POEM[2:])
    # The complete copy shares everything up to the gap with the training sequence.
    assert features["complete_shared"] == gap and complete[:gap] == edited[:gap]


def test_complete_copy_has_nothing_missing(instances):
    for instance in instances:
        complete = complete_copy(instance)
        assert complete.modified_lines == instance.original_lines and complete.answer_lines == []


def poetry_instance(variant: str, lines: tuple[str, ...], omitted: tuple[int, ...]) -> Instance:
    """A hand-made poetry instance whose lines `omitted` are deleted (omission) or replaced (placeholder)."""
    if variant == "placeholder":
        modified = tuple(PLACEHOLDER if i in omitted else line for i, line in enumerate(lines))
    else:
        modified = tuple(line for i, line in enumerate(lines) if i not in omitted)
    return Instance("x", "poetry", variant, "train", lines, modified, omitted)


LINES = ("aaaa", "bb", "ccc", "dddd")  # neighbouring pairs' lengths: (0, 1) 6, (1, 2) 5, (2, 3) 7


@pytest.mark.parametrize(("variant", "omitted", "expected_line"), [
    ("omission", (2,), "bb"),       # the shortest omittable line
    ("omission", (1,), "ccc"),      # ... unless that is the instance's own edit: the next shortest
    ("placeholder", (0, 2), "bb"),
])
def test_shortest_line_negative_is_a_single_edit_of_the_shortest_line(variant, omitted, expected_line):
    hard = shortest_line_negative(poetry_instance(variant, LINES, omitted))
    assert hard.variant == variant and hard.answer_lines == [expected_line]
    assert len(hard.modified_lines) == len(LINES) - (variant == "omission")


@pytest.mark.parametrize(("variant", "omitted", "expected_modified"), [
    ("omission", (0,), ("aaaa", "dddd")),              # the shortest neighbouring pair, lines 1 and 2
    ("omission", (1, 2), ("ccc", "dddd")),             # ... unless that is the instance's own edit: (0, 1)
    ("placeholder", (3,), ("aaaa", PLACEHOLDER, PLACEHOLDER, "dddd")),
])
def test_adjacent_pair_negative_edits_the_shortest_pair_of_neighbouring_lines(variant, omitted, expected_modified):
    hard = adjacent_pair_negative(poetry_instance(variant, LINES, omitted))
    assert hard.variant == variant and hard.modified_lines == expected_modified
    assert hard.original_lines == LINES and len(hard.answer_lines) == 2


def test_adjacent_pair_negative_takes_the_first_of_equal_pairs_and_only_neighbouring_omittable_lines():
    assert adjacent_pair_negative(poetry_instance("omission", ("a", "b", "c"), (2,))).modified_lines == ("c",)
    # A repeated line is never omittable (the answer would be ambiguous): lines 0, 2, 4 are not neighbours.
    assert adjacent_pair_negative(poetry_instance("omission", ("x", "dup", "y", "dup", "z"), (0,))) is None
    # A pair that is the whole document would leave nothing to recite.
    assert adjacent_pair_negative(poetry_instance("omission", ("a", "b"), (0,))) is None


def test_repeated_line_negative_drops_the_middle_of_the_most_frequent_near_identical_lines():
    refrain = ("O sing", "the refrain", "a verse", "the  refrain", "b verse", "the refrain ", "c verse",
               "a verse")
    hard = repeated_line_negative(poetry_instance("omission", refrain, (4,)))
    # "the refrain" occurs three times (whitespace aside), "a verse" twice: the middle refrain, line 3, goes.
    assert hard.modified_lines == refrain[:3] + refrain[4:] and hard.omitted_indices == (3,)
    placeholder = repeated_line_negative(poetry_instance("placeholder", refrain, (4,)))
    assert placeholder.modified_lines[3] == PLACEHOLDER and placeholder.omitted_indices == (3,)
    diff = ("@@ -1,6 +1,7 @@", " def f():", "+    if x:", "+        return 1", "+    }", " }", "-    }")
    pr = Instance("pr", "github_prs", "omission", "train", diff, diff[:2] + diff[3:], (2,))
    # The closing brackets at any indent and diff marker are one shape; the middle of the three is line 5.
    assert repeated_line_negative(pr).omitted_indices == (5,)
    assert repeated_line_negative(poetry_instance("omission", LINES, (0,))) is None   # nothing repeats


def test_changed_line_negative_shortens_one_line_and_leaves_nothing_missing():
    poem = ("the long first line", "two words", "x", "the last line here")
    hard = changed_line_negative(poetry_instance("omission", poem, (0,)))
    # The shortest omittable line with two words loses its last word; nothing is omitted.
    assert hard.modified_lines == ("the long first line", "two", "x", "the last line here")
    assert hard.omitted_indices == () and hard.answer_lines == [] and hard.original_lines == poem
    numbers = Instance("n", "numerical", "omission", "train", ("100", "104", "108", "112"), ("100", "108", "112"),
                       (1,))
    assert changed_line_negative(numbers).modified_lines == ("10", "104", "108", "112")   # a number loses a digit
    assert changed_line_negative(poetry_instance("omission", ("a", "b", "c"), (0,))) is None


def test_hard_negatives_follow_the_kinds_in_order_and_skip_those_that_do_not_apply():
    instance = poetry_instance("omission", LINES, (0,))
    both = hard_negatives(instance)
    assert [h.modified_lines for h in both] == [("aaaa", "ccc", "dddd"), ("aaaa", "dddd")]
    assert [h.modified_lines for h in hard_negatives(instance, ["adjacent_pair"])] == [("aaaa", "dddd")]
    assert hard_negatives(instance, []) == []
    needle = Instance("x", "poetry", "needle", "train", ("a1", "a2", "a3"), ("a1", "long needle", "a2", "n", "a3"),
                      inserted_indices=(1, 3))
    (only,) = hard_negatives(needle)  # a needle instance has insertions, no pair of lines to omit
    assert only.modified_lines == ("a1", "a2", "n", "a3") and only.answer_lines == ["n"]
    with pytest.raises(ValueError, match="unknown hard negative kind 'longest_line'"):
        hard_negatives(instance, ["longest_line"])


def test_features_hold_every_hard_negative_and_the_collator_batches_them(tokenizer):
    """The 5-line poem with line 1 omitted: its shortest line is line 0 and its shortest neighbouring pair
    lines 0-1, so the two hard-negative modified copies are the poem from line 1 and from line 2; the collator
    puts both after the complete copies, as companions of their training row."""
    instance = Instance("poem", "poetry", "omission", "train", POEM, POEM[:1] + POEM[2:], (1,))
    features = contrastive_features(tokenizer, instance, chat=True)
    modified_copies = [tokenizer.decode(ids[slice(*span)])
                   for ids, span in zip(features["hard_ids"], features["hard_modified"])]
    assert modified_copies == ["\n".join(POEM[1:]), "\n".join(POEM[2:])]
    for ids, shared in zip(features["hard_ids"], features["hard_shared"]):
        assert ids[:shared] == features["input_ids"][:shared] and shared < len(ids)
    only_shortest = contrastive_features(tokenizer, instance, chat=True, hard_negative_kinds=["shortest_line"])
    assert only_shortest["hard_ids"] == features["hard_ids"][:1]

    needle = Instance("n", "poetry", "needle", "train", POEM[:3], POEM[:1] + ("a needle",) + POEM[1:3],
                      inserted_indices=(1,))
    rows = [features, contrastive_features(tokenizer, needle, chat=True)]  # 2 and 1 hard negatives
    batch = ContrastiveCollator(tokenizer.pad_token_id)(rows)
    assert batch["companion_source"].tolist() == [0, 1, 0, 0, 1]
    assert batch["companion_prefix"].tolist() == [rows[0]["complete_shared"], rows[1]["complete_shared"],
                                                  *rows[0]["hard_shared"], *rows[1]["hard_shared"]]
    assert batch["companion_modified_mask"].sum(dim=1).tolist() == [
        span[1] - span[0] for span in [rows[0]["complete_modified"], rows[1]["complete_modified"],
                                       *rows[0]["hard_modified"], *rows[1]["hard_modified"]]]


def test_each_hard_negative_kind_costs_counted_forward_only_tokens(tiny_llama_dir, tmp_path, contrastive_run):
    """The same run as `contrastive_run` (both kinds, the default) with the shortest-line negatives only:
    the same batches, fewer forward-only tokens, and the difference is exactly their 2·N FLOPs."""
    out = tmp_path / "shortest-line-only"
    assert contrastive.main(flags(tiny_llama_dir, out, "--lambda_seq", 1, "--lambda_gap", 1,
                                  "--hard_negative_kinds", "shortest_line", domains=("numerical", "poetry"))) == 0
    one_kind, both = read_model_card(out), read_model_card(contrastive_run)
    assert one_kind["training_args"]["hard_negative_kinds"] == ["shortest_line"]
    assert both["training_args"]["hard_negative_kinds"] == ["shortest_line", "adjacent_pair"]
    one_kind, both = one_kind["compute"], both["compute"]
    assert both["tokens_trained"] == one_kind["tokens_trained"]
    assert both["tokens_forward_only"] > one_kind["tokens_forward_only"]
    assert both["flops"] - one_kind["flops"] ==\
        2 * both["n_params"] * (both["tokens_forward_only"] - one_kind["tokens_forward_only"])


def test_the_harder_negatives_and_feature_mixing_train_and_are_recorded(tiny_llama_dir, tmp_path, contrastive_run,
                                                                        capsys):
    """All four kinds of hard negatives plus MoCHi's synthetic ones: the run trains, records its settings,
    and the two new kinds cost forward-only tokens beyond the default two (the synthetic ones cost none)."""
    out = tmp_path / "mochi"
    assert contrastive.main(flags(tiny_llama_dir, out, "--lambda_seq", 1, "--lambda_gap", 1, "--hard_negative_kinds",
                                  "shortest_line", "adjacent_pair", "repeated_line", "changed_line", "--mochi_mixed", 2,
                                  "--mochi_anchor_mixed", 1, domains=("numerical", "poetry"))) == 0
    card = read_model_card(out)
    assert card["training_args"]["hard_negative_kinds"] == ["shortest_line", "adjacent_pair", "repeated_line",
                                                            "changed_line"]
    assert (card["training_args"]["mochi_mixed"], card["training_args"]["mochi_anchor_mixed"]) == (2, 1)
    assert card["compute"]["tokens_trained"] == read_model_card(contrastive_run)["compute"]["tokens_trained"]
    assert card["compute"]["tokens_forward_only"] > read_model_card(contrastive_run)["compute"]["tokens_forward_only"]
    seq = [entry["seq_loss"] for entry in logged(out) if "seq_loss" in entry]
    assert seq and all(math.isfinite(value) for value in seq)
    capsys.readouterr()
    assert contrastive.main(flags(tiny_llama_dir, tmp_path / "bad", "--mochi_mixed", -1)) == 2
    assert "--mochi_mixed and --mochi_anchor_mixed must be >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


# ---- budget, LoRA ---------------------------------------------------------------------------------------

def test_compute_budget_stops_training_and_configs_come_from_yaml(tiny_llama_dir, tmp_path):
    out = tmp_path / "budget"
    config = tmp_path / "run.yaml"
    config.write_text("compute_budget_flops: 1.0e+9\nmax_steps: 5\nlearning_rate: 1.0e-4\n")
    assert sft.main(["--config", str(config), *flags(tiny_llama_dir, out, max_steps=None)]) == 0
    card = read_model_card(out)
    assert card["compute"]["stopped_by_budget"] is True and card["global_step"] == 1
    assert card["compute"]["flops"] >= 1e9 and card["max_steps"] == 5
    assert card["training_args"]["learning_rate"] == 1e-4 and card["script_args"]["compute_budget_flops"] == 1e9
    assert card["compute"]["stopped_by"] == ["compute_budget_flops"] and not card["compute"]["stopped_by_time"]


def test_time_budget_stops_training_and_counts_on_across_a_resume(tiny_llama_dir, tmp_path):
    first = tmp_path / "first"
    assert sft.main(flags(tiny_llama_dir, first, "--max_train_seconds", 1e-6, max_steps=5, save_steps=1)) == 0
    card = read_model_card(first)
    compute = card["compute"]
    assert card["global_step"] == 1 and card["max_steps"] == 5  # any step takes longer than a microsecond
    assert compute["stopped_by_time"] is True and compute["stopped_by_budget"] is False
    assert compute["stopped_by"] == ["max_train_seconds"] and compute["budget_seconds"] == 1e-6
    assert compute["train_seconds"] > 0
    assert "| stopped by | max_train_seconds |" in (first / "README.md").read_text()

    # Pretend the first session had trained for 1000 s: a resumed run with a 1000 s budget has none left,
    # so it stops after one step — a count that started again from 0 could not reach 1000 s in one step.
    checkpoint = first / "checkpoint-1"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    saved = state["stateful_callbacks"]["ComputeAccountant"]["attributes"]
    assert saved["train_seconds"] == pytest.approx(compute["train_seconds"], abs=1e-3)
    saved["train_seconds"] = 1000.0
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    second = tmp_path / "second"
    assert sft.main(flags(tiny_llama_dir, second, "--max_train_seconds", 1000, "--resume_from_checkpoint",
                          checkpoint, max_steps=5)) == 0
    resumed = read_model_card(second)
    assert resumed["global_step"] == 2 and resumed["compute"]["stopped_by"] == ["max_train_seconds"]
    assert 1000 < resumed["compute"]["train_seconds"] < 1600
    assert resumed["compute"]["tokens_trained"] > compute["tokens_trained"]
    assert (compute["instances_trained"], resumed["compute"]["instances_trained"]) == (2, 4)


def test_lora_is_merged_into_a_plain_checkpoint(tiny_llama_dir, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "lora"
    assert sft.main(flags(tiny_llama_dir, out, "--use_peft", "true", "--lora_r", 4, "--lora_alpha", 8,
                          "--lora_target_modules", "q_proj", "v_proj", "--learning_rate", 1e-2, max_steps=2)) == 0
    assert not (out / "adapter_config.json").exists()
    base, trained = load_file(tiny_llama_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(base) == set(trained)  # no lora_A / lora_B tensors left
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"], trained["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(base["model.layers.0.self_attn.k_proj.weight"], trained["model.layers.0.self_attn.k_proj.weight"])


# ---- reliability ------------------------------------------------------------------------------------

def test_a_run_killed_mid_way_resumes_to_the_right_step(tiny_llama_dir, tmp_path, kill_at_first_checkpoint):
    max_steps = 10  # killed as soon as the first checkpoint (step 2) is complete
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "trainers.sft",
               *flags(tiny_llama_dir, out, max_steps=max_steps, save_steps=2)]
    killed_at = kill_at_first_checkpoint(command, out, ENV, ROOT)
    assert 0 < killed_at < max_steps
    assert not (out / "config.json").exists() and not (out / "README.md").exists()  # nothing looks finished

    resumed = subprocess.run(command + ["--resume_from_checkpoint", "last"], cwd=ROOT, env=ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] == max_steps
    card = read_model_card(out)
    assert card["resumed_from"].endswith(f"checkpoint-{killed_at}")
    # The token count carried on across the kill: it grows at every logged step, from the first to the last.
    steps = logged(out)
    assert [s["step"] for s in steps] == list(range(1, max_steps + 1))
    counts = [s["tokens_trained"] for s in steps]
    assert all(b > a for a, b in zip(counts, counts[1:])) and counts[-1] == card["compute"]["tokens_trained"]
    # So did the training time: the resumed session added to what the first one had counted.
    seconds = [s["train_seconds"] for s in steps]
    assert all(b > a for a, b in zip(seconds, seconds[1:]))
    assert seconds[-1] == pytest.approx(card["compute"]["train_seconds"], abs=1e-3)


@pytest.fixture
def bad_inputs(tmp_path):
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    test_split = tmp_path / "test-split.jsonl"
    (instance,) = load_training_instances(["numerical"], ["omission"], 1, 0, max_lines=5)
    write_jsonl(test_split, [dataclasses.replace(instance, split="test")])
    return {
        "not a model": (["--model_name_or_path", str(not_a_model)], "not a Hugging Face model checkpoint"),
        "bad lora target": (["--use_peft", "true", "--lora_target_modules", "qq_proj"], "qq_proj not found"),
        "missing train file": (["--train_file", str(tmp_path / "nope.jsonl")], "nope.jsonl: no such file"),
        "empty train file": (["--train_file", str(empty)], "empty.jsonl: no instances"),
        "test-split train file": (["--train_file", str(test_split)], "holds test-split instances"),
        "no data": (["--n_train", "0"], "nothing to train on"),
        "zero time budget": (["--max_train_seconds", "0"], "--max_train_seconds must be > 0"),
    }


@pytest.mark.parametrize("case", ["not a model", "bad lora target"])
def test_bad_input_exits_2_with_one_stderr_line(tiny_llama_dir, tmp_path, bad_inputs, case):
    extra, message = bad_inputs[case]
    proc = subprocess.run([sys.executable, "-m", "trainers.sft", *flags(tiny_llama_dir, tmp_path / "out"), *extra],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and message in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing train file", "empty train file", "test-split train file", "no data",
                                  "zero time budget"])
def test_bad_data_or_budget_is_one_error_line_and_exit_2(tiny_llama_dir, tmp_path, bad_inputs, case, capsys):
    extra, message = bad_inputs[case]
    assert contrastive.main([*flags(tiny_llama_dir, tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "out").exists()


# ---- the output is a model lm-eval scores ------------------------------------------------------------------

def test_lm_eval_scores_the_sft_checkpoint(sft_run, tmp_path):
    env = {**ENV, "REVERSE_NEEDLE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["lm_eval", "--include_path", "task_configs", "--tasks", "absence_numerical",
                           "--model", "hf", "--model_args", f"pretrained={sft_run}", "--metadata", '{"n": 2}',
                           "--output_path", str(tmp_path / "results")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (results,) = (tmp_path / "results").rglob("results_*.json")
    assert 0.0 <= json.loads(results.read_text())["results"]["absence_numerical"]["f1,none"] <= 1.0


# ---- the recipe: answer-only loss, precision, budget schedule, curriculum, learning curve -------------------

def test_the_loss_is_computed_at_the_answer_positions_alone_and_equals_the_full_masked_loss(
        tiny_llama_dir, tokenizer, instances, tmp_path):
    from trainers.losses import masked_lm_loss

    model = run.load_model(tiny_llama_dir)
    args = AbsenceSFTConfig(output_dir=str(tmp_path), report_to="none")
    trainer = sft.build_sft_trainer(ScriptArguments(), args)(model, tokenizer, instances, None,
                                                             callbacks=[ComputeAccountant(1)])
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(instances))])
    outputs, loss, mean = trainer.answer_forward(model, batch, batch["labels"])
    answer_positions = int((batch["labels"][:, 1:] != -100).any(dim=0).sum())
    assert outputs.logits.shape[1] == answer_positions < batch["input_ids"].shape[1] // 4
    full = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert loss.item() == pytest.approx(masked_lm_loss(full, batch["labels"]).item(), rel=1e-4)
    assert mean.item() == pytest.approx(loss.item(), rel=1e-6)


def test_precision_is_measured_by_default_and_an_explicit_choice_is_kept(sft_run, tiny_llama_dir, tmp_path):
    measured = read_model_card(sft_run)["precision"]
    assert measured["requested"] == "auto" and measured["chosen"] in ("fp32", "bf16")
    assert set(measured["measured_tokens_per_s"]) == {"fp32", "bf16"}
    out = tmp_path / "bf16"
    assert sft.main(flags(tiny_llama_dir, out, "--precision", "bf16", max_steps=1)) == 0
    card = read_model_card(out)
    assert card["precision"] == {"requested": "bf16", "chosen": "bf16", "measured_tokens_per_s": None}
    assert card["training_args"]["bf16"] is True
    assert "| precision | bf16, asked: bf16 |" in (out / "README.md").read_text()


def test_a_budget_run_schedules_its_learning_rate_over_the_budget_and_draws_the_curriculum_in_order(
        sft_run, tiny_llama_dir, tmp_path):
    per_instance = read_model_card(sft_run)["compute"]["flops"] / 6  # 3 steps of 2 instances
    out = tmp_path / "recipe"
    assert sft.main(flags(tiny_llama_dir, out, "--compute_budget_flops", 5 * per_instance,
                          "--per_device_train_batch_size", 1, "--num_train_epochs", 20,
                          "--curve_instances_per_domain", 1, "--curve_every_steps", 2, max_steps=None)) == 0
    card = read_model_card(out)
    assert card["compute"]["stopped_by"] == ["compute_budget_flops"] and card["curriculum"] is True
    rates = [entry["learning_rate"] for entry in logged(out)]
    assert max(rates) > 0.5 * LEARNING_RATE        # warmed up (3% of the budget) and then near the peak
    # ... and decayed to ~0 where the budget ends, not at max_steps (the rate a step logs is the one it used,
    # set from the progress after the step before it).
    peak = rates.index(max(rates))
    assert rates[-1] < 0.1 * LEARNING_RATE and all(a > b for a, b in zip(rates[peak:], rates[peak + 1:]))
    assert card["max_steps"] > 10 * card["global_step"]  # the epoch-derived step limit was far away
    trained = read_jsonl(out / "training_data.jsonl")
    assert {i.metadata["curriculum_stage"] for i in trained} == {0, 1, 2}  # --max_lines 5 gives 3 stages

    # The learning curve: the starting model, every 2 steps, and the end; in the card and trainer_state.json.
    curve = card["learning_curve"]
    steps = [point["step"] for point in curve]
    assert steps[0] == 0 and steps[-1] == card["global_step"] and steps == sorted(set(steps))
    assert all(s % 2 == 0 for s in steps[:-1])
    assert all(point["n_per_domain"] == {"numerical": 1} and 0 <= point["average"] <= 100 for point in curve)
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert sum("curve/average_f1" in entry for entry in history) == len(curve)
    assert "## Learning curve" in (out / "README.md").read_text()
    assert json.loads((out / "training_record.json").read_text()) == card


def test_the_curriculum_sampler_feeds_the_trainer_shortest_stage_first(tiny_llama_dir, tokenizer, tmp_path):
    model = run.load_model(tiny_llama_dir)
    staged = load_training_instances(["numerical"], ["omission"], 6, 0, max_lines=12, curriculum=True,
                                     curriculum_stages=3)
    stages = [i.metadata["curriculum_stage"] for i in staged]
    args = AbsenceSFTConfig(output_dir=str(tmp_path), report_to="none", per_device_train_batch_size=1)
    accountant = ComputeAccountant(1, budget_seconds=100)
    trainer = sft.build_sft_trainer(ScriptArguments(), args)(model, tokenizer, staged, None, callbacks=[accountant],
                                                             curriculum_stages=stages)
    first = next(iter(trainer.get_train_dataloader()))
    row = next(k for k, i in enumerate(staged) if encode(tokenizer, i, chat=True).input_ids
               == first["input_ids"][0].tolist())
    assert stages[row] == 0


# ---- visible gaps first (the placeholder-first curriculum) ---------------------------------------------------

@pytest.mark.parametrize("domain", ["numerical", "poetry", "github_prs"])
def test_a_placeholder_twin_is_what_the_generator_makes_for_placeholder_from_the_same_seed(domain):
    from absence_tasks.generate import generate_instances, placeholder_twin

    omission = generate_instances(domain, "omission", 5, "train", 3, progress=False)
    placeholder = generate_instances(domain, "placeholder", 5, "train", 3, progress=False)
    twins = [placeholder_twin(i) for i in omission]
    assert [t.to_dict() | {"id": p.id} for t, p in zip(twins, placeholder)] == [p.to_dict() for p in placeholder]
    assert all(PLACEHOLDER in t.modified_lines and t.answer_lines == o.answer_lines for t, o in zip(twins, omission))


def test_the_first_stages_show_their_gaps_and_the_run_trains_on_them(tiny_llama_dir, tmp_path):
    from absence_tasks.generate import placeholder_twin
    from trainers.data import visible_gaps_first

    staged = load_training_instances(["numerical"], ["omission"], 6, 0, max_lines=12, curriculum=True,
                                     curriculum_stages=3)
    shown = visible_gaps_first(staged, 2)
    assert [(i.metadata["curriculum_stage"], i.variant) for i in shown] == [
        (i.metadata["curriculum_stage"], "placeholder" if i.metadata["curriculum_stage"] < 2 else "omission")
        for i in staged]
    assert [s for s, i in zip(shown, staged) if s.variant == "placeholder"] == [
        placeholder_twin(i) for i in staged if i.metadata["curriculum_stage"] < 2]
    with pytest.raises(ValueError, match="would show the gaps in every stage"):
        visible_gaps_first(staged, 3)
    with pytest.raises(ValueError, match="needs the length curriculum"):
        visible_gaps_first(load_training_instances(["numerical"], ["omission"], 2, 0, max_lines=5), 1)

    out = tmp_path / "visible"
    assert sft.main(flags(tiny_llama_dir, out, "--curriculum_placeholder_stages", 1, max_steps=2)) == 0
    trained = read_jsonl(out / "training_data.jsonl")
    assert {(i.metadata["curriculum_stage"] == 0, i.variant) for i in trained} == {
        (True, "placeholder"), (False, "omission")}
    assert read_model_card(out)["script_args"]["curriculum_placeholder_stages"] == 1
