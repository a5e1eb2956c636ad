"""The SFT and contrastive trainers, end to end on the tiny random Llama (real SmolLM2 tokenizer and chat
template): checkpoints and model cards, label masking, loss switches, compute accounting, FLOP budget, LoRA,
kill -9 and resume, one-line errors, and scoring the output with the real lm-eval."""

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from absence_tasks.models import END_OF_TURN, load_checkpoint_or_die
from absence_tasks.prompts import render_answer
from absence_tasks.schema import Instance, read_jsonl, write_jsonl
from trainers import contrastive, sft
from trainers.config import AbsenceSFTConfig, ScriptArguments
from trainers.contrastive import ContrastiveCollator, companion_states, contrastive_features
from trainers.data import complete_copy, data_sha256, encode, hard_negative, load_training_instances
from trainers.sft import read_model_card

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
    assert compute["flops"] == 6 * compute["n_params"] * compute["tokens_trained"]
    # N counts the tied embedding once (as the output projection): every parameter of the tiny Llama.
    assert compute["n_params"] == sum(p.numel() for p in model.parameters())
    assert card["data"]["sha256"] == data_sha256(read_jsonl(sft_run / "training_data.jsonl"))
    assert card["data"]["domains"] == ["numerical", "poetry"] and card["data"]["n_instances"] == 8
    assert card["training_args"]["learning_rate"] == 2e-5 and card["seed"] == 42 and card["data_seed"] == 0
    assert (sft_run / "README.md").read_text().startswith("---\nbase_model: ")

    # Generation stops at the end-of-turn token that training taught.
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    eos = model.generation_config.eos_token_id
    assert end_of_turn in (eos if isinstance(eos, list) else [eos])

    steps = logged(sft_run)
    assert [s["step"] for s in steps] == [1, 2, 3]
    assert steps[-1]["tokens_trained"] == compute["tokens_trained"]


@pytest.mark.parametrize("chat", [True, False], ids=["chat-template", "raw"])
def test_sft_labels_cover_exactly_the_answer_and_end_of_turn(tiny_llama_dir, tokenizer, instances, tmp_path, chat):
    model = sft.load_model(tiny_llama_dir)
    args = AbsenceSFTConfig(output_dir=str(tmp_path), report_to="none")
    trainer = sft.build_sft_trainer(ScriptArguments(chat_template=chat), args)(model, tokenizer, instances, None,
                                                                               sft.ComputeAccountant(1))
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
    assert contrastive_compute["tokens_forward_only"] > 0
    assert contrastive_compute["flops"] - sft_compute["flops"] == \
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
        mask = batch["companion_recitation_mask"]
        if share:
            shared_tokens = tokens
    assert shared_tokens < tokens  # reusing the prefix saves most of the extra pass
    assert torch.allclose(states[True][mask], states[False][mask], atol=1e-5)


POEM = ("The fog comes", "on little cat feet.", "It sits looking", "over harbor and city",
        "on silent haunches and then moves on.")


def test_features_align_the_recitation_with_the_complete_copy_inside_the_prompt(tokenizer):
    """A 5-line poem with line 2 omitted, rendered in the chat template: every aligned token of the edited
    recitation has the same text as its counterpart in the complete copy, and the one gap token is the
    first token of the line after the gap."""
    instance = Instance("poem", "poetry", "omission", "train", POEM, POEM[:1] + POEM[2:], (1,))
    features = contrastive_features(tokenizer, instance, chat=True)
    edited, complete = features["input_ids"], features["complete_ids"]
    first, last = features["recitation_span"]
    assert tokenizer.decode(edited[first:last]) == instance.modified_text
    start, end = features["complete_recitation"]
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


@pytest.mark.parametrize(("variant", "omitted", "expected_line"), [
    ("omission", (2,), "bb"),       # the shortest omittable line
    ("omission", (1,), "ccc"),      # ... unless that is the instance's own edit: the next shortest
    ("placeholder", (0, 2), "bb"),
])
def test_hard_negative_is_a_single_edit_of_the_shortest_line(variant, omitted, expected_line):
    lines = ("aaaa", "bb", "ccc", "dddd")
    modified = tuple(("<missing line>" if variant == "placeholder" else None) if i in omitted else line
                     for i, line in enumerate(lines))
    instance = Instance("x", "poetry", variant, "train", lines, tuple(m for m in modified if m is not None), omitted)
    hard = hard_negative(instance)
    assert hard.variant == variant and hard.answer_lines == [expected_line]
    assert len(hard.modified_lines) == len(lines) - (variant == "omission")


def test_hard_negative_of_a_needle_instance_keeps_its_shortest_needle():
    instance = Instance("x", "poetry", "needle", "train", ("a1", "a2", "a3"), ("a1", "long needle", "a2", "n", "a3"),
                        inserted_indices=(1, 3))
    hard = hard_negative(instance)
    assert hard.modified_lines == ("a1", "a2", "n", "a3") and hard.answer_lines == ["n"]


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

def test_a_run_killed_mid_way_resumes_to_the_right_step(tiny_llama_dir, tmp_path):
    max_steps = 10  # killed as soon as the first checkpoint (step 2) is complete
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "trainers.sft",
               *flags(tiny_llama_dir, out, max_steps=max_steps, save_steps=2)]
    proc = subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while sft.last_complete_checkpoint(out) is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = json.loads((Path(sft.last_complete_checkpoint(out)) / "trainer_state.json").read_text())["global_step"]
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
    }


@pytest.mark.parametrize("case", ["not a model", "bad lora target"])
def test_bad_input_exits_2_with_one_stderr_line(tiny_llama_dir, tmp_path, bad_inputs, case):
    extra, message = bad_inputs[case]
    proc = subprocess.run([sys.executable, "-m", "trainers.sft", *flags(tiny_llama_dir, tmp_path / "out"), *extra],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and message in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing train file", "empty train file", "test-split train file", "no data"])
def test_bad_data_is_one_error_line_and_exit_2(tiny_llama_dir, tmp_path, bad_inputs, case, capsys):
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
