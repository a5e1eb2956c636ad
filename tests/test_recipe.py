"""The training recipe's pieces (trainers/recipe.py, the learning curve's stop, the accountant's progress):
the budget schedule, the length curriculum and its sampler, the precision choice — as pure functions, and on
the tiny random Llama where a model is involved."""

import math

import pytest
import torch

from absence_tasks.generate import default_config
from absence_tasks.schema import dumps_jsonl
from trainers.accounting import ComputeAccountant
from trainers.data import curriculum_instances, load_training_instances
from trainers.learning_curve import StopOnRepeatedLine, repeated_line_count
from trainers.recipe import (BF16_MIN_SPEEDUP, CurriculumSampler, Stage, budget_lr_factor, budget_scheduler,
                             choose_precision, curriculum_stages, measure_precision, stage_counts)


# ---- schedule ----------------------------------------------------------------------------------------

def test_budget_schedule_warms_up_then_decays_to_its_floor_at_the_end_of_the_budget():
    assert budget_lr_factor(0.0, 0.1) == 0.0
    assert budget_lr_factor(0.05, 0.1) == pytest.approx(0.5)
    assert budget_lr_factor(0.1, 0.1) == pytest.approx(1.0)
    assert budget_lr_factor(0.55, 0.1) == pytest.approx(0.5)  # cosine midway through the decay
    assert budget_lr_factor(1.0, 0.1) == pytest.approx(0.0)
    assert budget_lr_factor(1.7, 0.1) == pytest.approx(0.0)   # a step past the budget stays at the floor
    assert budget_lr_factor(1.0, 0.1, "cosine", min_lr_ratio=0.1) == pytest.approx(0.1)
    assert budget_lr_factor(0.55, 0.1, "linear") == pytest.approx(0.5)
    assert budget_lr_factor(0.9, 0.1, "constant") == 1.0
    values = [budget_lr_factor(p / 100, 0.03) for p in range(3, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    with pytest.raises(ValueError, match="unknown schedule shape"):
        budget_lr_factor(0.5, 0.1, "polynomial")


def test_budget_scheduler_reads_the_progress_not_the_step_count():
    progress = {"value": 0.0}
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = budget_scheduler(optimizer, lambda: progress["value"], warmup=0.1, shape="linear", min_lr_ratio=0)
    for value, expected in ((0.05, 0.5), (0.55, 0.5), (1.0, 0.0)):
        progress["value"] = value
        optimizer.step()
        scheduler.step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)


def test_accountant_progress_is_the_largest_used_fraction_of_its_budgets():
    accountant = ComputeAccountant(n_params=10, budget_flops=6000, budget_seconds=100)
    assert accountant.progress() == 0.0
    accountant.add(trained_tokens=25)          # 6·10·25 = 1500 FLOPs: a quarter of the FLOP budget
    accountant.train_seconds = 10.0            # a tenth of the time budget
    assert accountant.progress() == pytest.approx(0.25)
    assert accountant.progress(step=5, max_steps=10) == pytest.approx(0.5)
    accountant.train_seconds = 250.0
    assert accountant.progress() == 1.0
    assert ComputeAccountant(n_params=10).progress(step=3, max_steps=4) == pytest.approx(0.75)


# ---- curriculum --------------------------------------------------------------------------------------

def test_curriculum_stages_climb_from_short_documents_to_the_test_suites_range():
    stages = curriculum_stages(4, 20, 80, 4)
    assert stages[0] == Stage(4, 8) and stages[-1] == Stage(20, 80)
    assert [s.max_lines for s in stages] == sorted(s.max_lines for s in stages)
    assert curriculum_stages(4, 20, 80, 1) == [Stage(20, 80)]
    assert all(2 <= s.min_lines <= s.max_lines for s in curriculum_stages(4, 2, 5, 4))
    assert stage_counts(10, 4) == [3, 3, 2, 2] and sum(stage_counts(7, 3)) == 7


def test_curriculum_instances_are_seeded_staged_and_within_their_lengths():
    config = default_config("numerical")
    first = curriculum_instances("numerical", "omission", 12, 0, config, 4, 4)
    again = curriculum_instances("numerical", "omission", 12, 0, config, 4, 4)
    assert dumps_jsonl(i.to_dict() for i in first) == dumps_jsonl(i.to_dict() for i in again)
    stages = curriculum_stages(4, config.min_lines, config.max_lines, 4)
    assert [i.metadata["curriculum_stage"] for i in first] == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    for instance in first:
        stage = stages[instance.metadata["curriculum_stage"]]
        assert stage.min_lines <= len(instance.original_lines) <= stage.max_lines
        assert instance.split == "train"
    assert len({i.id for i in first}) == len(first)
    # Off: one stage at the preset's lengths, no stage marks (the data of runs before the curriculum).
    plain = load_training_instances(["numerical"], ["omission"], 3, 0)
    assert all("curriculum_stage" not in i.metadata for i in plain)
    assert all(config.min_lines <= len(i.original_lines) <= config.max_lines for i in plain)


def test_curriculum_sampler_opens_stages_with_progress_and_gives_each_row_once_per_pass():
    stages = [0, 0, 0, 1, 1, 1, 2, 2, 2]
    progress = {"value": 0.0}
    sampler = CurriculumSampler(stages, lambda: progress["value"], seed=0, ramp=0.6)
    drawn = []
    for index in sampler:
        drawn.append(index)
        if len(drawn) == 3:
            progress["value"] = 0.3   # stage 1 opens (0.3 / 0.6 · 3 = 1.5)
        if len(drawn) == 5:
            progress["value"] = 0.9   # past the ramp: the last stage
    assert sorted(drawn) == list(range(9))
    assert {stages[i] for i in drawn[:3]} == {0}
    assert {stages[i] for i in drawn[3:5]} == {1}
    assert {stages[i] for i in drawn[5:8]} == {2}
    # Seeded: the same progress gives the same order; another seed another one.
    def order(seed):
        return list(CurriculumSampler(stages, lambda: 0.0, seed=seed))
    assert order(1) == order(1) and order(1) != order(2)
    # With nothing open beyond stage 0 the sampler still goes on to later rows once stage 0 is used up.
    assert [stages[i] for i in order(1)][:3] == [0, 0, 0] and sorted(order(1)) == list(range(9))
    with pytest.raises(ValueError, match="ramp"):
        CurriculumSampler(stages, lambda: 0.0, seed=0, ramp=0)


# ---- precision ---------------------------------------------------------------------------------------

def test_precision_choice_needs_a_clear_bf16_win_and_respects_an_explicit_request():
    assert choose_precision("auto", {"fp32": 100.0, "bf16": 100.0 * BF16_MIN_SPEEDUP}) == "bf16"
    assert choose_precision("auto", {"fp32": 100.0, "bf16": 104.0}) == "fp32"
    assert choose_precision("auto", {"fp32": 100.0, "bf16": 50.0}) == "fp32"
    assert choose_precision("bf16", None) == "bf16" and choose_precision("fp32", None) == "fp32"
    with pytest.raises(ValueError, match="unknown --precision"):
        choose_precision("fp8", None)


def test_measuring_precision_times_both_and_leaves_the_model_as_it_was(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    rates = measure_precision(model, tokens=64, repeats=1, answer_tokens=8)
    assert set(rates) == {"fp32", "bf16"} and all(r > 0 and math.isfinite(r) for r in rates.values())
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())


# ---- the learning curve's stop ------------------------------------------------------------------------

def test_a_looping_answer_stops_at_its_third_repeat_and_a_line_in_progress_is_not_counted():
    assert repeated_line_count("") == 0
    assert repeated_line_count("12\n15\n") == 1
    assert repeated_line_count("12\n15\n12\n 12 \n") == 3
    assert repeated_line_count("12\n12\n12") == 2  # the last "12" may still grow into "120"


def test_stop_on_repeated_line_looks_only_at_the_answer(tiny_llama_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    prompt = tokenizer("a\na\na\na\n", return_tensors="pt")["input_ids"]
    answer = tokenizer("x\ny\n", return_tensors="pt")["input_ids"]
    stop = StopOnRepeatedLine(tokenizer, prompt.size(1))
    assert not bool(stop(torch.cat([prompt, answer], dim=1), None))
    looping = tokenizer("x\nx\nx\n", return_tensors="pt")["input_ids"]
    assert bool(stop(torch.cat([prompt, looping], dim=1), None))
    until = tokenizer("x\n\n\n", return_tensors="pt")["input_ids"]
    assert bool(stop(torch.cat([prompt, until], dim=1), None))
