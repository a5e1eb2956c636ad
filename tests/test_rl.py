"""The RL trainer (`python -m trainers.rl`): its reward on hand-made answers, the advantages of its three modes,
the pass@k estimator, and on the tiny random Llama (real SmolLM2 tokenizer and chat template) the advantages
the GRPOTrainer trains on, one real GRPO step, kill -9 and resume, and one-line errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from absence_tasks.lm_eval_tasks import process_results
from absence_tasks.schema import Instance
from trainers import rl, run
from trainers.accounting import ComputeAccountant
from trainers.card import read_model_card
from trainers.config import RLConfig, RLScriptArguments
from trainers.data import load_training_instances
from trainers.rewards import (answer_reward, group_advantages, grpo_advantages, instance_column, line_f1_reward,
                              nsr_advantages, w_reinforce_advantages)

ROOT = Path(__file__).resolve().parent.parent
CHILD_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
             "PYTHONWARNINGS": "ignore"}
# A few RL steps on 5-line numerical documents: 2 answers of at most 8 tokens per instance, one instance a step.
SMALL_RUN = ("--domains", "numerical", "--n_train", "4", "--max_lines", "5", "--num_generations", "2",
             "--per_device_train_batch_size", "2", "--max_completion_length", "8", "--logging_steps", "1",
             "--disable_tqdm", "true", "--curve_instances_per_domain", "0", "--precision", "fp32")


def rl_flags(model_dir, out, *extra, max_steps=1, save_steps=None, pass_at_k_instances=0):
    saving = (["--save_strategy", "no"] if save_steps is None
              else ["--save_strategy", "steps", "--save_steps", str(save_steps)])
    return ["--model_name_or_path", str(model_dir), "--output_dir", str(out), *SMALL_RUN, "--max_steps",
            str(max_steps), "--pass_at_k_instances_per_domain", str(pass_at_k_instances), "--pass_at_k_samples", "4",
            *saving, *map(str, extra)]


def step_logs(out: Path) -> list[dict]:
    return [entry for entry in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in entry]


# Two of the five lines are missing: "on little cat feet." and "over harbor and city".
POEM = ("The fog comes", "on little cat feet.", "It sits looking", "over harbor and city",
        "on silent haunches and then moves on.")
INSTANCE = Instance("fog", "poetry", "omission", "train", POEM, (POEM[0], POEM[2], POEM[4]), (1, 3))


# ---- the reward ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("answer", "f1"), [
    ("on little cat feet.\nover harbor and city", 1.0),                    # perfect
    ("- over harbor and city\n- on little cat feet.", 1.0),                # perfect, as a bulleted list
    ("", 0.0),                                                             # empty
    ("on little cat feet.", 2 / 3),                                        # one of two: tp 1, fn 1
    ("on little cat feet.\nThe fog comes", 0.5),                           # a present line: tp 1, fp 1, fn 1
    ("the moon is made of cheese", 0.0),                                   # hallucinated: in no document
    ("on little cat feet.\nover harbor and city\nthe moon is made of cheese", 1.0),  # chatter is not counted
    ("on little cat feet.\non little cat feet.\non little cat feet.", 2 / 3),  # a repeated line counts once
    ("The fog comes\nThe fog comes", 0.0),                                 # ... a repeated wrong one too
    ("on little cat feet.\nover harbor and city\n\n\n\nThe fog comes", 1.0),  # cut at the tasks' stop sequence
])
def test_the_reward_is_the_tasks_line_f1_of_the_answer(answer, f1):
    (plain,) = line_f1_reward([answer], instance=[instance_column(INSTANCE)])
    (chat,) = line_f1_reward([[{"role": "assistant", "content": answer}]], instance=[instance_column(INSTANCE)])
    assert plain == chat == pytest.approx(f1)
    # The metric lm-eval reports for the same answer (lm-eval cuts it at `until` before scoring).
    doc = {**INSTANCE.to_dict(), "metadata": json.dumps(INSTANCE.metadata)}
    assert process_results(doc, [answer.split("\n\n\n", 1)[0]])["f1"] == pytest.approx(plain)


def test_the_reward_scores_each_completion_against_its_own_instance():
    other = Instance("seq", "numerical", "omission", "train", ("1", "2", "3", "4"), ("1", "2", "4"), (2,))
    rewards = line_f1_reward(["3", "3", "on little cat feet."],
                             instance=[instance_column(other), instance_column(INSTANCE), instance_column(INSTANCE)])
    assert rewards == pytest.approx([1.0, 0.0, 2 / 3])
    assert answer_reward(other, "3\n\n\n4") == 1.0


# ---- advantages ------------------------------------------------------------------------------------------

def test_grpo_advantages_are_normalised_within_each_group_as_trl_does():
    from trl.trainer.utils import nanstd

    rewards = torch.tensor([[0.0, 0.5, 1.0, 1.0], [0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 0.0, 1.0]])
    advantages = grpo_advantages(rewards)
    assert torch.allclose(advantages.mean(dim=1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(advantages[[0, 2]].std(dim=1), torch.ones(2), atol=1e-3)  # (std + 1e-4) in the divisor
    assert torch.equal(advantages[1], torch.zeros(4))  # all equal: nothing to learn from the group
    expected = (rewards - rewards.mean(dim=1, keepdim=True)) / (nanstd(rewards, dim=1, keepdim=True) + 1e-4)
    assert torch.allclose(advantages, expected)
    # The flat form TRL hands over (each instance's samples side by side) gives the same numbers.
    assert torch.equal(group_advantages(rewards.flatten(), 4, "grpo"), advantages.flatten())


def test_nsr_pushes_down_only_the_samples_below_the_threshold():
    rewards = torch.tensor([1.0, 0.99, 0.0, 1.0, 0.5, 0.7])
    assert nsr_advantages(rewards).tolist() == [0.0, -1.0, -1.0, 0.0, -1.0, -1.0]
    assert nsr_advantages(rewards, threshold=0.7).tolist() == [0.0, 0.0, -1.0, 0.0, -1.0, 0.0]
    # No group baseline: a sample's advantage does not depend on the others in its group.
    assert torch.equal(group_advantages(rewards, 3, "nsr"), group_advantages(rewards, 2, "nsr"))
    assert group_advantages(torch.ones(4), 2, "nsr").tolist() == [0.0] * 4


def test_w_reinforce_weights_correct_samples_by_lambda_and_wrong_ones_by_minus_one():
    rewards = torch.tensor([1.0, 0.99, 0.0, 1.0])
    assert w_reinforce_advantages(rewards).tolist() == pytest.approx([0.1, -1.0, -1.0, 0.1])
    assert w_reinforce_advantages(rewards, positive_weight=1.0).tolist() == [1.0, -1.0, -1.0, 1.0]  # REINFORCE ±1
    # W-REINFORCE = lambda * PSR + NSR.
    weighted = group_advantages(rewards, 2, "w_reinforce", positive_weight=0.3)
    assert torch.allclose(weighted - group_advantages(rewards, 2, "nsr"), 0.3 * (rewards >= 1).float())


def test_advantages_refuse_an_unknown_mode_and_broken_groups():
    with pytest.raises(ValueError, match="unknown rl mode 'ppo'"):
        group_advantages(torch.zeros(4), 2, "ppo")
    with pytest.raises(ValueError, match="do not make groups of 3"):
        group_advantages(torch.zeros(4), 3, "grpo")


# ---- pass@k ---------------------------------------------------------------------------------------------

def test_pass_at_k_evaluation_is_seeded_and_leaves_the_training_generator_alone(tiny_llama_dir):
    model = run.load_model(tiny_llama_dir)
    tokenizer = run.load_tokenizer(str(tiny_llama_dir), chat=True)
    instances = load_training_instances(["numerical"], ["omission"], 2, seed=0, max_lines=5)
    state = torch.get_rng_state()
    first = rl.evaluate_pass_at_k(model, tokenizer, instances, True, False, n=4, threshold=1.0, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    again = rl.evaluate_pass_at_k(model, tokenizer, instances, True, False, n=4, threshold=1.0, seed=3)
    assert {k: v for k, v in first.items() if k != "eval_seconds"} == {k: v for k, v in again.items()
                                                                         if k != "eval_seconds"}
    assert first["ks"] == [1, 4] and first["n_per_domain"] == {"numerical": 2}
    assert set(first["pass_at_k"]) == {"numerical", "average"} and first["decoded_tokens"] > 0


# ---- the trainer -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["grpo", "nsr", "w_reinforce"])
def test_the_trainer_trains_on_the_advantages_of_its_mode(tiny_llama_dir, tmp_path, mode):
    tokenizer = run.load_tokenizer(str(tiny_llama_dir), chat=True)
    instances = load_training_instances(["numerical"], ["omission"], 2, seed=0, max_lines=5)
    args = RLConfig(output_dir=str(tmp_path), report_to="none", rl_mode=mode, num_generations=2,
                    per_device_train_batch_size=2, max_completion_length=8, precision="fp32")
    trainer = rl.build_rl_trainer(RLScriptArguments(domains=["numerical"]), args)(
        run.load_model(tiny_llama_dir), tokenizer, instances, None, callbacks=[ComputeAccountant(1)])
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch[0]["instance"] == batch[1]["instance"]  # one instance, its two samples
    output = trainer._generate_and_score_completions(batch)
    rewards = trainer._rewards[:, 0]
    assert torch.equal(output["advantages"], group_advantages(rewards, 2, mode, 1.0, 0.1))
    if mode != "grpo" and (rewards < 1).any():  # TRL's own (group-normalised) advantages would be 0 here
        assert (output["advantages"][rewards < 1] == -1).all()
    accountant = trainer.accountant()
    assert accountant.instances_trained == 1 and accountant.tokens_forward_only == trainer.state.num_input_tokens_seen


def test_the_data_order_follows_data_seed_and_keeps_each_group_together(tiny_llama_dir, tmp_path):
    tokenizer = run.load_tokenizer(str(tiny_llama_dir), chat=True)
    instances = load_training_instances(["numerical"], ["omission"], 8, seed=0, max_lines=5)
    model = run.load_model(tiny_llama_dir)

    def order(**seeds):
        args = RLConfig(output_dir=str(tmp_path), report_to="none", num_generations=2, per_device_train_batch_size=2,
                        precision="fp32", **seeds)
        trainer = rl.build_rl_trainer(RLScriptArguments(domains=["numerical"]), args)(
            model, tokenizer, instances, None, callbacks=[ComputeAccountant(1)])
        return list(trainer._get_train_sampler())

    default, again, other = order(), order(data_seed=42), order(data_seed=7)
    assert default == again  # --data_seed defaults to --seed (42)
    assert other != default and sorted(other) == sorted(default) == sorted(list(range(8)) * 2)
    assert all(other[i] == other[i + 1] for i in range(0, len(other), 2))  # an instance's two samples side by side


def test_one_grpo_step_changes_the_weights_and_writes_a_model_card_with_pass_at_k(tiny_llama_dir, tmp_path):
    out = tmp_path / "rl"
    config = tmp_path / "rl.yaml"  # options from a YAML file too
    config.write_text("rl_mode: nsr\nwarmup_steps: 0\n")  # no warm-up: its one step would have a learning rate of 0
    assert rl.main(["--config", str(config), *rl_flags(tiny_llama_dir, out, pass_at_k_instances=1)]) == 0
    base, trained = load_file(tiny_llama_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(base) == set(trained)
    assert any(not torch.equal(base[name], trained[name]) for name in base)

    card = read_model_card(out)
    assert card["method"] == "rl" and card["global_step"] == 1
    assert card["rl"]["mode"] == "nsr" and card["rl"]["num_generations"] == 2 and card["rl"]["document_lines"] == 5
    compute = card["compute"]
    assert compute["instances_trained"] == 1  # one instance (its group of 2 answers) per optimizer step
    # Sampling saw each answer's prompt and answer once (2·N each), the gradient pass the same tokens (6·N).
    seen = json.loads((out / "trainer_state.json").read_text())["num_input_tokens_seen"]
    assert compute["tokens_forward_only"] == compute["tokens_trained"] == seen > 0
    assert compute["flops"] == compute["n_params"] * (6 * compute["tokens_trained"] + 2 * compute["tokens_forward_only"])

    points = card["pass_at_k"]
    assert [p["step"] for p in points] == [0, 1] and points[0]["ks"] == [1, 4]
    assert all(0 <= p["pass_at_k"]["average"]["pass@4"] <= 100 for p in points)
    assert "## pass@k" in (out / "README.md").read_text()
    # The step's own log keeps its reward metrics although the final pass@k was logged before it.
    (step,) = step_logs(out)
    assert math.isfinite(step["rewards/line_f1_reward/mean"]) and 0 <= step["correct_fraction"] <= 1
    assert json.loads((out / "training_record.json").read_text()) == card


def test_a_killed_run_resumes_its_step_count_and_its_counts(tiny_llama_dir, tmp_path, kill_at_first_checkpoint):
    max_steps = 12  # killed as soon as the first checkpoint (step 2) is complete
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "trainers.rl", *rl_flags(tiny_llama_dir, out, max_steps=max_steps, save_steps=2,
                                                               pass_at_k_instances=1)]
    killed_at = kill_at_first_checkpoint(command, out, CHILD_ENV, ROOT)
    assert 0 < killed_at < max_steps and not (out / "config.json").exists()

    resumed = subprocess.run(command + ["--resume_from_checkpoint", "last"], cwd=ROOT, env=CHILD_ENV,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    card = read_model_card(out)
    assert card["global_step"] == card["max_steps"] == max_steps
    assert card["resumed_from"].endswith(f"checkpoint-{killed_at}")
    steps = step_logs(out)
    assert [s["step"] for s in steps] == list(range(1, max_steps + 1))
    counts = [s["tokens_trained"] for s in steps]
    assert all(b > a for a, b in zip(counts, counts[1:])) and counts[-1] == card["compute"]["tokens_trained"]
    assert card["compute"]["instances_trained"] >= max_steps  # steps after the checkpoint were done (and counted) twice
    # The starting model's pass@k came back from the checkpoint; the resumed session measured only the end.
    assert [p["step"] for p in card["pass_at_k"]] == [0, max_steps]


def test_a_missing_model_is_one_error_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "trainers.rl",
                           *rl_flags(tmp_path / "no-such-model", tmp_path / "out")],
                          cwd=ROOT, env={k: v for k, v in CHILD_ENV.items() if k != "PYTHONWARNINGS"},  # as a user has it
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ")
    assert "no-such-model" in proc.stderr and "not a Hugging Face model checkpoint" in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--curriculum", "true"], "--curriculum true is not supported by trainers.rl"),
    (["--num_generations", "3"], "must be divisible by num_generations (3)"),
    (["--pass_threshold", "0"], "--pass_threshold is an F1, in (0, 1]"),
    (["--positive_weight", "-1"], "--positive_weight must be >= 0"),
    pytest.param(["--use_vllm", "true"], "does not work on vLLM's CPU backend",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="colocated vLLM is refused only on CPU")),
])
def test_bad_options_are_one_error_line_and_exit_2(tiny_llama_dir, tmp_path, capsys, extra, message):
    assert rl.main([*rl_flags(tiny_llama_dir, tmp_path / "out"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (tmp_path / "out").exists()
