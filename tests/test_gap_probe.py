"""The direct gap signal of the contrastive trainer (`--lambda_probe`): its loss on hand-made logits, the
rows it reads (the first token of every edited-copy line), and a real run on the tiny random Llama that
trains the probe, keeps it out of the checkpoint and resumes it."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from trainers import contrastive
from trainers.card import read_model_card
from trainers.contrastive import GAP_PROBE_FILE, contrastive_features
from trainers.data import load_training_instances
from trainers.losses import gap_probe_loss, line_start_char_positions
from test_trainers import flags, logged


def _masks(labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One row whose tokens are all line starts, gaps where labels is 1."""
    gap = torch.tensor([labels], dtype=torch.bool)
    return torch.ones_like(gap), gap


def test_a_constant_guess_costs_log_2_whatever_the_base_rate():
    for labels in ([1, 0, 0, 0, 0, 0, 0, 0, 0], [1, 0], [1, 1, 0]):
        starts, gaps = _masks(labels)
        assert gap_probe_loss(torch.zeros(1, len(labels)), starts, gaps).item() == pytest.approx(math.log(2))


def test_the_two_classes_weigh_the_same_and_a_confident_right_answer_costs_nothing():
    starts, gaps = _masks([1, 0, 0, 0])
    wrong_positive = gap_probe_loss(torch.tensor([[-3.0, -3.0, -3.0, -3.0]]), starts, gaps)
    wrong_negatives = gap_probe_loss(torch.tensor([[3.0, 3.0, 3.0, 3.0]]), starts, gaps)
    # Missing the one gap costs as much as calling all three ordinary lines gaps.
    assert wrong_positive.item() == pytest.approx(wrong_negatives.item())
    assert gap_probe_loss(torch.tensor([[30.0, -30.0, -30.0, -30.0]]), starts, gaps).item() < 1e-6


def test_only_line_starts_are_read_and_no_line_start_is_a_differentiable_zero():
    logits = torch.tensor([[5.0, -7.0, 100.0]], requires_grad=True)
    starts = torch.tensor([[True, True, False]])
    gaps = torch.tensor([[False, False, False]])
    loss = gap_probe_loss(logits, starts, gaps)
    loss.backward()
    assert logits.grad[0, 2] == 0 and logits.grad[0, 0] > 0  # the third token is not a line start
    empty = torch.zeros(1, 3, requires_grad=True)
    none = gap_probe_loss(empty, torch.zeros(1, 3, dtype=torch.bool), torch.zeros(1, 3, dtype=torch.bool))
    none.backward()
    assert none.item() == 0 and torch.equal(empty.grad, torch.zeros(1, 3))


def test_line_starts_skip_blank_lines():
    assert line_start_char_positions(["ab", "", "c", "def"]) == [0, 4, 6]


@pytest.mark.parametrize("domain", ["numerical", "poetry", "github_prs"])
def test_the_probe_reads_one_token_per_edited_line_and_every_gap_is_one_of_them(tokenizer, domain):
    gaps_seen = 0
    for instance in load_training_instances([domain], ["omission"], 4, seed=0, max_lines=40):
        features = contrastive_features(tokenizer, instance, chat=True, hard_negative_kinds=())
        starts, gaps = features["line_start_mask"], features["gap_mask"]
        assert all(s for s, g in zip(starts, gaps) if g)
        gaps_seen += sum(gaps)  # 0 for an instance whose only gap ends the copy: no line after it
        lines_with_text = sum(1 for line in instance.modified_lines if line)
        # A line whose first token also covers the newline before it is read at its next token, so two
        # lines can share one; numbers (digits are single tokens) never do.
        assert 1 <= sum(starts) <= lines_with_text
        if domain == "numerical":
            assert sum(starts) == lines_with_text
            for index in (i for i, s in enumerate(starts) if s):
                first = tokenizer.decode([features["input_ids"][index]])
                assert first.strip() and first.strip()[0].isdigit()
    assert gaps_seen >= 1


@pytest.fixture(scope="module")
def tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def test_a_probe_run_trains_the_probe_beside_a_plain_checkpoint_and_resumes_it(tiny_llama_dir, tmp_path):
    out = tmp_path / "probe"
    probe_only = ("--lambda_seq", 0, "--lambda_gap", 0, "--lambda_probe", 1, "--learning_rate", 1e-2)
    assert contrastive.main(flags(tiny_llama_dir, out, *probe_only, max_steps=2, save_steps=1)) == 0
    steps = logged(out)
    assert len(steps) == 2 and all(math.isfinite(s["probe_loss"]) and s["probe_loss"] > 0 for s in steps)
    assert all("seq_loss" not in s and "gap_loss" not in s for s in steps)
    assert all(s["loss"] == pytest.approx(s["sft_loss"] + s["probe_loss"], rel=1e-3) for s in steps)
    card = read_model_card(out)
    assert card["gap_probe"]["file"] == GAP_PROBE_FILE and card["compute"]["tokens_forward_only"] == 0
    assert "direct gap signal" in (out / "README.md").read_text()

    # The checkpoint's only top-level weights file is the model's: vLLM loads every top-level *.safetensors.
    assert [p.name for p in out.glob("*.safetensors")] == ["model.safetensors"]
    assert [p.name for p in (out / "checkpoint-1").glob("*.safetensors")] == ["model.safetensors"]
    from absence_tasks.io import default_file_mode
    assert (out / GAP_PROBE_FILE).stat().st_mode & 0o777 == default_file_mode()   # ordinary data, like the model
    final = load_file(out / GAP_PROBE_FILE)
    first = load_file(out / "checkpoint-1" / GAP_PROBE_FILE)
    assert final["weight"].shape == (1, json.loads((out / "config.json").read_text())["hidden_size"])
    assert not torch.equal(first["weight"], final["weight"])  # the probe is optimised, step after step
    model = load_file(out / "model.safetensors")
    assert not any("probe" in name for name in model)  # the checkpoint stays a plain causal LM

    # Resuming restores the probe saved in the checkpoint, not a freshly initialised one: from a probe of
    # zeros written into the checkpoint, one step (learning rate 1e-2) stays near zero, where a fresh
    # initialisation (normal, std hidden_size ** -0.5) is far from it.
    assert first["weight"].abs().max() > 0.05
    save_file({"weight": torch.zeros_like(first["weight"]), "bias": torch.zeros(1)},
              out / "checkpoint-1" / GAP_PROBE_FILE)
    resumed = tmp_path / "resumed"
    assert contrastive.main(flags(tiny_llama_dir, resumed, *probe_only, "--resume_from_checkpoint",
                                  out / "checkpoint-1", max_steps=2)) == 0
    assert read_model_card(resumed)["global_step"] == 2
    assert 0 < load_file(resumed / GAP_PROBE_FILE)["weight"].abs().max() < 0.05


def test_resuming_a_run_without_a_probe_into_one_with_it_is_refused(tiny_llama_dir, tmp_path):
    out = tmp_path / "plain"
    assert contrastive.main(flags(tiny_llama_dir, out, "--lambda_seq", 0, "--lambda_gap", 0, max_steps=1,
                                  save_steps=1)) == 0
    with pytest.raises(ValueError, match=f"has no {GAP_PROBE_FILE}"):
        contrastive.main(flags(tiny_llama_dir, tmp_path / "again", "--lambda_seq", 0, "--lambda_gap", 0,
                               "--lambda_probe", 1, "--resume_from_checkpoint", out / "checkpoint-1", max_steps=2))
