"""The scratchpad answer (a walk through the original inside <think>…</think>, then the missing lines): its
text, its score, the generation budget that makes room for it, the learning curve's repeat stop, and the
trainers' data with `--scratchpad true` (one real SFT step on the tiny random Llama)."""

import json
import os
import subprocess
import sys

import pytest

from absence_tasks.generate import generate_instances
from absence_tasks.lm_eval_tasks import BYTES, dataset_loader, generation_budget, token_counter
from absence_tasks.prompts import SCRATCHPAD_PREFIX_CHARS, render_answer, render_scratchpad
from absence_tasks.schema import DOMAINS, DataError
from absence_tasks.scoring import score_response
from trainers.learning_curve import repeated_line_count

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "PYTHONWARNINGS": "ignore"}


@pytest.fixture(scope="module")
def instances():
    return {domain: generate_instances(domain, "omission", 8, "train", seed=3, progress=False) for domain in DOMAINS}


def test_the_walk_names_every_line_with_text_and_marks_exactly_the_missing_ones(instances):
    for domain, group in instances.items():
        for instance in group:
            walk = render_scratchpad(instance).split("\n")
            assert walk[0] == "<think>" and walk[-1] == "</think>"
            named = [(index, line) for index, line in enumerate(instance.original_lines) if line.strip()]
            assert len(walk) - 2 == len(named), domain
            for (index, line), step in zip(named, walk[1:-1]):
                prefix, mark = step.rsplit(" -> ", 1)
                assert prefix == line.strip()[:SCRATCHPAD_PREFIX_CHARS].rstrip()
                assert mark == ("MISSING" if index in instance.omitted_indices else "present")


def test_the_scorer_sees_only_the_answer_after_the_walk(instances):
    for group in instances.values():
        for instance in group:
            assert score_response(instance, render_answer(instance, scratchpad=True)).f1 == 1.0
            # A walk cut off by the budget (no </think>) is scored as the answer it is: not a perfect one.
            unfinished = render_scratchpad(instance).removesuffix("</think>")
            assert score_response(instance, unfinished).f1 < 1.0
    plain = instances["poetry"][0]
    assert render_answer(plain) == "\n".join(plain.answer_lines)


def test_the_budget_makes_room_for_a_perfect_walk_and_answer_in_the_models_tokens(instances, tiny_llama_dir):
    counter = token_counter({"pretrained": str(tiny_llama_dir)})
    for group in instances.values():
        for instance in group:
            (tokens,) = counter.counts([render_answer(instance, scratchpad=True)])
            assert tokens <= generation_budget(instance, counter, scratchpad=True)
            assert generation_budget(instance, counter) < generation_budget(instance, counter, scratchpad=True)
            assert tokens <= generation_budget(instance, BYTES, scratchpad=True)


def test_lm_eval_metadata_switches_the_budgets_and_refuses_a_non_boolean():
    load = dataset_loader("numerical", "omission")
    plain = load(n=3)["test"]["max_gen_toks"]
    walked = load(n=3, scratchpad=True)["test"]["max_gen_toks"]
    assert all(w > p for w, p in zip(walked, plain))
    with pytest.raises(DataError, match="scratchpad must be true or false"):
        load(n=3, scratchpad="yes")


def test_the_repeat_stop_ignores_the_walk_and_counts_the_answer():
    refrain = "\n".join(["<think>", *["O sing -> present"] * 5])
    assert repeated_line_count(refrain + "\n") == 0  # inside the open walk: a refrain is not a loop
    assert repeated_line_count(refrain + "\n</think>\nx\ny\nx\n") == 2
    assert repeated_line_count("a\na\na\n") == 3


def test_sft_with_a_scratchpad_trains_on_the_walk(tiny_llama_dir, tmp_path):
    from transformers import AutoTokenizer

    from trainers.data import encode, sft_dataset

    instance = generate_instances("numerical", "omission", 1, "train", seed=0, progress=False)[0]
    row = sft_dataset([instance], chat=True, scratchpad=True)[0]
    assert row["completion"][0]["content"] == render_answer(instance, scratchpad=True)
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    encoded = encode(tokenizer, instance, chat=True, scratchpad=True)
    target = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != -100])
    assert target.startswith("<think>\n") and "-> MISSING" in target and target.count("->") > len(
        instance.answer_lines)

    out = tmp_path / "sft"
    proc = subprocess.run(
        [sys.executable, "-m", "trainers.sft", "--model_name_or_path", str(tiny_llama_dir), "--output_dir", str(out),
         "--domains", "numerical", "--n_train", "2", "--max_lines", "5", "--max_steps", "1", "--scratchpad", "true",
         "--curve_instances_per_domain", "1", "--save_strategy", "no", "--disable_tqdm", "true"],
        env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads((out / "training_record.json").read_text())
    assert record["script_args"]["scratchpad"] is True and record["global_step"] == 1
    assert len(record["learning_curve"]) == 2  # the starting model and the end, with the walk's budgets
