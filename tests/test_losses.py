"""Tests for trainers/losses.py: exact values on hand-made tensors, and the alignment helpers on the
real SmolLM2 tokenizer (through the tiny random Llama of the `tiny_llama_dir` fixture, whose
tokenizer is the one stored in the embedded GGUF)."""

import math

import pytest
import torch
import torch.nn.functional as F

from trainers.losses import (
    mix_hard_negatives,
    char_map_for_omission,
    combined_loss,
    count_label_tokens,
    gap_alignment_loss,
    gap_alignment_terms,
    gap_char_positions_for_omission,
    gap_token_mask,
    masked_lm_loss,
    negatives_by_row,
    next_token_targets,
    pool_hidden,
    sequence_infonce_loss,
    step_flops,
    token_alignment_from_char_map,
    token_cross_entropy,
)

E = torch.eye(4, dtype=torch.float64)  # orthonormal basis e0..e3 as rows; float64 so e^-10 terms are exact


def random_tensor(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ---- masked_lm_loss / count_label_tokens --------------------------------------------------------

def test_masked_lm_loss_matches_cross_entropy_by_hand_and_ignores_masked_labels():
    logits = random_tensor(2, 4, 5, seed=0)
    labels = torch.tensor([[-100, -100, 3, 1],
                           [-100, 2, -100, 4]])
    # Position t predicts label t+1; the counted targets are (0,2)->3, (0,3)->1, (1,1)->2, (1,3)->4.
    counted = [(0, 1, 3), (0, 2, 1), (1, 0, 2), (1, 2, 4)]
    by_hand = sum(-torch.log_softmax(logits[b, t], dim=-1)[label] for b, t, label in counted) / len(counted)
    assert masked_lm_loss(logits, labels) == pytest.approx(by_hand.item(), rel=1e-6)
    assert count_label_tokens(labels) == 4

    # Logits whose next label is -100 (and the last position, which predicts nothing) do not matter.
    changed = logits.clone()
    changed[0, 0] += 7.0
    changed[1, 1] -= 3.0
    changed[:, 3] *= 5.0
    assert masked_lm_loss(changed, labels) == pytest.approx(by_hand.item(), rel=1e-6)
    changed[1, 0, 2] += 1.0
    assert masked_lm_loss(changed, labels) != pytest.approx(by_hand.item(), rel=1e-6)


def test_masked_lm_loss_with_no_answer_token_is_zero_and_differentiable():
    logits = random_tensor(2, 4, 5, seed=1).requires_grad_()
    labels = torch.full((2, 4), -100)
    loss = masked_lm_loss(logits, labels)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert count_label_tokens(labels) == 0


def test_logits_at_target_positions_only_give_the_same_loss():
    """What the contrastive trainer does: ask the model for the logits of the positions that predict a
    target only (`next_token_targets`), then `token_cross_entropy` without shifting."""
    logits = random_tensor(2, 4, 5, seed=10)
    labels = torch.tensor([[-100, -100, 3, 1],
                           [-100, 2, -100, 4]])
    positions, targets = next_token_targets(labels)
    assert positions.tolist() == [0, 1, 2]  # position 0 predicts row 1's label 2; 1 and 2 predict 3, 1 / 4
    assert targets.tolist() == [[-100, 3, 1], [2, -100, 4]]
    assert token_cross_entropy(logits[:, positions], targets).item() == pytest.approx(
        masked_lm_loss(logits, labels).item(), rel=1e-6)
    # Divided by the accumulated batch's target count when the Trainer passes it: here 4 of 8.
    assert token_cross_entropy(logits[:, positions], targets, num_items_in_batch=8).item() == pytest.approx(
        masked_lm_loss(logits, labels).item() / 2, rel=1e-6)


def test_step_flops_counts_six_n_per_trained_and_two_n_per_forward_only_token():
    assert step_flops(1000, trained_tokens=10) == 60_000
    assert step_flops(1000, trained_tokens=10, forward_only_tokens=5) == 70_000


def test_masked_lm_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="labels"):
        masked_lm_loss(torch.zeros(2, 4, 5), torch.zeros(2, 3, dtype=torch.long))


# ---- pool_hidden --------------------------------------------------------------------------------

PADDED_HIDDEN = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
RIGHT_AND_LEFT_PADDING = torch.tensor([[1, 1, 1, 0],   # right padded: real positions 0..2
                                       [0, 0, 1, 1]])  # left padded: real positions 2..3


def test_pool_hidden_mean_averages_only_real_positions():
    pooled = pool_hidden(PADDED_HIDDEN, RIGHT_AND_LEFT_PADDING, "mean")
    expected = torch.stack([PADDED_HIDDEN[0, :3].mean(0), PADDED_HIDDEN[1, 2:].mean(0)])
    assert torch.allclose(pooled, expected)
    assert torch.allclose(pooled, torch.tensor([[2.0, 3.0], [13.0, 14.0]]))


def test_pool_hidden_last_takes_the_last_real_position_for_right_and_left_padding():
    pooled = pool_hidden(PADDED_HIDDEN, RIGHT_AND_LEFT_PADDING.bool(), "last")
    assert torch.equal(pooled, torch.stack([PADDED_HIDDEN[0, 2], PADDED_HIDDEN[1, 3]]))


def test_pool_hidden_rejects_empty_rows_and_unknown_pooling():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        pool_hidden(PADDED_HIDDEN, torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]]), "mean")
    with pytest.raises(ValueError, match="pooling"):
        pool_hidden(PADDED_HIDDEN, RIGHT_AND_LEFT_PADDING, "max")


# ---- sequence_infonce_loss ----------------------------------------------------------------------

def test_infonce_identical_positive_and_orthogonal_negatives_gives_the_analytic_value():
    anchor = 2.0 * E[0:1]  # scale must not matter: states are L2-normalised
    negatives = E[1:4].unsqueeze(0)  # K = 3 negatives, all orthogonal to the anchor
    loss = sequence_infonce_loss(anchor, E[0:1], negatives, temperature=0.1)
    # logits [10, 0, 0, 0] with the positive first: -log(e^10 / (e^10 + 3)) = log(1 + 3 e^-10)
    assert loss.item() == pytest.approx(math.log1p(3 * math.exp(-10)), rel=1e-9)


def test_infonce_is_larger_when_the_anchor_equals_a_negative():
    orthogonal = sequence_infonce_loss(E[0:1], E[0:1], E[1:4].unsqueeze(0), temperature=0.1)
    negatives = torch.stack([E[0], E[1], E[2]]).unsqueeze(0)
    confusable = sequence_infonce_loss(E[0:1], E[0:1], negatives, temperature=0.1)
    # logits [10, 10, 0, 0]: -log(e^10 / (2 e^10 + 2)) = log(2 + 2 e^-10)
    assert confusable.item() == pytest.approx(math.log(2 + 2 * math.exp(-10)), rel=1e-9)
    assert confusable > orthogonal


def test_infonce_negative_mask_drops_padding_negatives():
    negatives = torch.stack([E[0], E[1], E[2]]).unsqueeze(0)
    without_first = torch.tensor([[False, True, True]])
    loss = sequence_infonce_loss(E[0:1], E[0:1], negatives, temperature=0.1, negative_mask=without_first)
    assert loss.item() == pytest.approx(math.log1p(2 * math.exp(-10)), rel=1e-9)
    only_padding = sequence_infonce_loss(E[0:1], E[0:1], negatives, temperature=0.1,
                                         negative_mask=torch.zeros(1, 3, dtype=torch.bool))
    assert only_padding.item() == pytest.approx(0.0, abs=1e-7)


def test_infonce_in_batch_negatives_add_the_other_rows_to_the_denominator():
    diagonal = F.normalize(E[0] + E[1], dim=0)
    anchor = torch.stack([E[0], diagonal])
    positive = anchor.clone()
    negatives = torch.stack([E[1], E[2]]).unsqueeze(1)  # one hard negative per row: e1, e2
    t = 0.5
    c = 1 / math.sqrt(2)  # cos(e0, diagonal) = cos(e1, diagonal)
    # Row 0 (anchor e0): own positive 1, own negative e1 -> 0, other positive c, other negative e2 -> 0.
    row0 = -1 / t + math.log(math.exp(1 / t) + 1 + math.exp(c / t) + 1)
    # Row 1 (anchor diagonal): own positive 1, own negative e2 -> 0, other positive e0 -> c, other negative e1 -> c.
    row1 = -1 / t + math.log(math.exp(1 / t) + 1 + 2 * math.exp(c / t))
    with_batch = sequence_infonce_loss(anchor, positive, negatives, temperature=t)
    assert with_batch.item() == pytest.approx((row0 + row1) / 2, rel=1e-9)

    own_only = sequence_infonce_loss(anchor, positive, negatives, temperature=t, in_batch_negatives=False)
    assert own_only.item() == pytest.approx(-1 / t + math.log(math.exp(1 / t) + 1), rel=1e-9)
    assert with_batch > own_only

    # Row 1's negative is padding, so it is no in-batch negative for row 0 either (nor for row 1).
    mask = torch.tensor([[True], [False]])
    masked = sequence_infonce_loss(anchor, positive, negatives, temperature=t, negative_mask=mask)
    row0_masked = -1 / t + math.log(math.exp(1 / t) + 1 + math.exp(c / t))
    row1_masked = -1 / t + math.log(math.exp(1 / t) + 2 * math.exp(c / t))
    assert masked.item() == pytest.approx((row0_masked + row1_masked) / 2, rel=1e-9)


def test_negatives_by_row_arranges_each_rows_negatives_in_order_and_masks_the_padding():
    vectors = torch.arange(8.0).reshape(4, 2)
    negatives, mask = negatives_by_row(vectors, torch.tensor([1, 0, 1, 1]), batch=3)
    assert negatives.tolist() == [[[2, 3], [0, 0], [0, 0]],
                                  [[0, 1], [4, 5], [6, 7]],
                                  [[0, 0], [0, 0], [0, 0]]]
    assert mask.tolist() == [[True, False, False], [True, True, True], [False, False, False]]
    nothing, no_mask = negatives_by_row(vectors[:0], torch.zeros(0, dtype=torch.long), batch=2)
    assert nothing.shape == (2, 0, 2) and no_mask.shape == (2, 0)
    with pytest.raises(ValueError, match="row indices must lie in 0..1"):
        negatives_by_row(vectors[:1], torch.tensor([2]), batch=2)


def test_infonce_with_several_hard_negatives_per_row_gives_the_analytic_value():
    """As the contrastive trainer builds it: per row the edited copy, then that row's hard negatives —
    two for row 0 (e2, and e0, which equals its anchor), one for row 1 (e3) — padded by negatives_by_row."""
    hard, hard_mask = negatives_by_row(torch.stack([E[2], E[0], E[3]]), torch.tensor([0, 0, 1]), batch=2)
    edited = torch.stack([E[1], E[2]])
    negatives = torch.cat([edited.unsqueeze(1), hard], dim=1)  # (2, 3, 4)
    mask = torch.cat([torch.ones(2, 1, dtype=torch.bool), hard_mask], dim=1)
    assert mask.tolist() == [[True, True, True], [True, True, False]]
    anchor = torch.stack([E[0], E[1]])
    t = 0.1
    own_only = sequence_infonce_loss(anchor, anchor, negatives, t, negative_mask=mask, in_batch_negatives=False)
    # Row 0: logits [10 | 0, 0, 10] -> log(2 + 2e^-10). Row 1: [10 | 0, 0] (padding left out) -> log(1 + 2e^-10).
    e = math.exp(-10)
    assert own_only.item() == pytest.approx((math.log(2 + 2 * e) + math.log(1 + 2 * e)) / 2, rel=1e-9)
    # With in-batch negatives row 0 also sees row 1's e1, e2, e3 (all 0 logits); row 1 sees row 0's
    # e0, e2, e0 (0) and e1 (its own anchor: 10). Both rows: log(2 + 5e^-10).
    with_batch = sequence_infonce_loss(anchor, anchor, negatives, t, negative_mask=mask)
    assert with_batch.item() == pytest.approx(math.log(2 + 5 * e), rel=1e-9)
    # Without the second hard negative of row 0 (the one equal to its anchor) its loss falls to log(1 + 2e^-10).
    fewer = sequence_infonce_loss(anchor, anchor, negatives[:, :2], t, negative_mask=mask[:, :2],
                                  in_batch_negatives=False)
    assert fewer.item() == pytest.approx(math.log(1 + 2 * e), rel=1e-9)


def test_infonce_gradients_are_finite_with_masked_negatives():
    anchor = random_tensor(3, 8, seed=2).requires_grad_()
    negatives = random_tensor(3, 2, 8, seed=3).requires_grad_()
    mask = torch.tensor([[True, False], [True, True], [False, False]])
    loss = sequence_infonce_loss(anchor, random_tensor(3, 8, seed=4), negatives, 0.05, negative_mask=mask)
    loss.backward()
    assert torch.isfinite(anchor.grad).all() and anchor.grad.abs().sum() > 0
    assert torch.equal(negatives.grad[~mask], torch.zeros(3, 8))
    assert (negatives.grad[mask].abs().sum(dim=-1) > 0).all()


def test_infonce_accepts_no_hard_negatives_and_rejects_bad_temperature():
    anchor = random_tensor(2, 4, seed=5)
    none_given = sequence_infonce_loss(anchor, anchor, None, temperature=0.2)
    zero_given = sequence_infonce_loss(anchor, anchor, torch.zeros(2, 0, 4), temperature=0.2)
    assert torch.equal(none_given, zero_given)
    with pytest.raises(ValueError, match="temperature"):
        sequence_infonce_loss(anchor, anchor, None, temperature=0.0)


# ---- mix_hard_negatives (MoCHi) ------------------------------------------------------------------

def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def test_mixing_draws_from_the_hardest_negatives_only_and_carries_no_gradient():
    """Row 0 has three negatives, e1 the most similar to the anchor, then e2, e3 orthogonal: with N = 2
    every pair mix lies in span(e1, e2) and every anchor mix in span(anchor, e1 or e2) and is closer to the
    anchor than the negative it came from. Row 1 has one negative: no pair mix (masked), anchor mixes only."""
    anchor = torch.stack([_unit(E[0] + 0.0 * E[1]), E[0]]).requires_grad_()
    negatives = torch.stack([torch.stack([_unit(E[0] + 2 * E[1]), _unit(E[0] + 4 * E[2]), E[3]]),
                             torch.stack([_unit(E[0] + E[1]), E[2], E[3]])]).requires_grad_()
    mask = torch.tensor([[True, True, True], [True, False, False]])
    generator = torch.Generator().manual_seed(0)
    mixed, mixed_mask = mix_hard_negatives(anchor, negatives, mask, 2, 5, 4, generator)
    assert mixed.shape == (2, 3 + 5 + 4, 4) and mixed_mask.shape == (2, 12)
    assert torch.equal(mixed[:, :3], negatives) and torch.equal(mixed_mask[:, :3], mask)
    assert mixed_mask[0, 3:].all() and not mixed_mask[1, 3:8].any() and mixed_mask[1, 8:].all()
    pairs, with_anchor = mixed[0, 3:8].detach(), mixed[0, 8:].detach()
    assert torch.allclose(pairs.norm(dim=-1), torch.ones(5, dtype=pairs.dtype))
    assert torch.allclose(pairs[:, 3], torch.zeros(5, dtype=pairs.dtype), atol=1e-12)   # nothing of e3
    first_two = negatives[0, :2].detach()
    spanned = first_two.T @ torch.linalg.lstsq(first_two.T, pairs.T).solution            # projection on span
    assert torch.allclose(spanned.T, pairs, atol=1e-10)
    cosine = with_anchor @ anchor[0].detach()
    assert (cosine > (negatives[0, :2].detach() @ anchor[0].detach()).min() - 1e-12).all()
    assert torch.allclose(with_anchor[:, 3], torch.zeros(4, dtype=pairs.dtype), atol=1e-12)
    # No gradient through the synthetic negatives: a loss on them alone reaches neither input.
    to_anchor, to_negatives = torch.autograd.grad(mixed[:, 3:].sum(), [anchor, negatives], allow_unused=True,
                                                  materialize_grads=True)
    assert not to_anchor.any() and not to_negatives.any()
    # The same generator seed gives the same draws; another seed others.
    again, _ = mix_hard_negatives(anchor, negatives, mask, 2, 5, 4, torch.Generator().manual_seed(0))
    other, _ = mix_hard_negatives(anchor, negatives, mask, 2, 5, 4, torch.Generator().manual_seed(1))
    assert torch.equal(again, mixed) and not torch.equal(other, mixed)


def test_mixing_off_or_without_negatives_returns_the_inputs_and_the_loss_still_trains():
    anchor, negatives = random_tensor(2, 8, seed=1), random_tensor(2, 3, 8, seed=2)
    mask = torch.ones(2, 3, dtype=torch.bool)
    generator = torch.Generator().manual_seed(0)
    assert mix_hard_negatives(anchor, negatives, mask, 3, 0, 0, generator)[0] is negatives
    assert mix_hard_negatives(anchor, negatives[:, :0], mask[:, :0], 3, 2, 2, generator)[0].shape == (2, 0, 8)
    with pytest.raises(ValueError, match=">= 0"):
        mix_hard_negatives(anchor, negatives, mask, 3, -1, 0, generator)
    anchor.requires_grad_()
    mixed, mixed_mask = mix_hard_negatives(anchor, negatives, mask, 3, 2, 2, generator)
    loss = sequence_infonce_loss(anchor, random_tensor(2, 8, seed=3), mixed, 0.1, negative_mask=mixed_mask)
    plain = sequence_infonce_loss(anchor, random_tensor(2, 8, seed=3), negatives, 0.1, negative_mask=mask)
    assert loss > plain   # more negatives in the denominator
    loss.backward()
    assert torch.isfinite(anchor.grad).all() and anchor.grad.abs().sum() > 0


# ---- gap_alignment_loss -------------------------------------------------------------------------

def test_gap_loss_is_zero_for_identical_states_without_gaps():
    hidden = random_tensor(5, 8, seed=6)
    loss = gap_alignment_loss(hidden, hidden.clone(), torch.arange(5), torch.zeros(5, dtype=torch.bool))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_push_term_is_zero_for_orthogonal_and_one_for_identical_gap_states():
    orig = torch.stack([E[0], E[1]])
    gap_at_1 = torch.tensor([False, True])
    _, orthogonal = gap_alignment_terms(orig, torch.stack([E[0], E[2]]), torch.arange(2), gap_at_1)
    align, identical = gap_alignment_terms(orig, orig.clone(), torch.arange(2), gap_at_1)
    _, opposite = gap_alignment_terms(orig, torch.stack([E[0], -E[1]]), torch.arange(2), gap_at_1)
    assert orthogonal.item() == 0.0 and opposite.item() == 0.0  # a hinge: nothing to gain below the margin
    assert identical.item() == pytest.approx(1.0, abs=1e-6)
    assert align.item() == pytest.approx(0.0, abs=1e-6)
    _, with_margin = gap_alignment_terms(orig, orig.clone(), torch.arange(2), gap_at_1, margin=0.25)
    assert with_margin.item() == pytest.approx(0.75, abs=1e-6)


def three_token_pair():
    """Original of 4 tokens (token 1 is the omitted line) and its 3-token edit; edit token 1 is the
    gap token and corresponds to original token 2."""
    orig = torch.tensor([[1.0, 0.0], [3.0, 4.0], [0.0, 1.0], [1.0, 1.0]])
    edit = torch.tensor([[2.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    alignment = torch.tensor([0, 2, 3])
    gap_mask = torch.tensor([False, True, False])
    return orig, edit, alignment, gap_mask


def test_gap_loss_exact_value_on_a_three_token_example():
    orig, edit, alignment, gap_mask = three_token_pair()
    c = 1 / math.sqrt(2)
    # Aligned non-gap: edit 0 ~ orig 0 (cos 1), edit 2 ~ orig 3 (cos c). Gap: edit 1 ~ orig 2 (cos c).
    align_term, push_term = (1 - 1 + 1 - c) / 2, c - 0.5
    loss = gap_alignment_loss(orig, edit, alignment, gap_mask, margin=0.5, align_weight=2.0, gap_weight=0.5)
    assert loss.item() == pytest.approx(2.0 * align_term + 0.5 * push_term, rel=1e-6)


def test_gap_loss_batched_with_padding_equals_the_token_mean_over_pairs():
    orig, edit, alignment, gap_mask = three_token_pair()
    junk = 1e6 * random_tensor(4, 2, seed=7)  # padding states must not matter, however large
    # Row 0: the pair as it is. Row 1: the first two original tokens only, right padded, edit left padded.
    orig_batch = torch.stack([orig, torch.cat([orig[:2], junk[:2]])])
    edit_batch = torch.stack([edit, torch.cat([junk[:1], torch.tensor([[0.0, 1.0], [3.0, 1.0]])])])
    alignment_batch = torch.stack([alignment, torch.tensor([-1, 0, 1])])
    gap_batch = torch.stack([gap_mask, torch.tensor([False, False, True])])
    align_term, push_term = gap_alignment_terms(orig_batch, edit_batch, alignment_batch, gap_batch)
    c = 1 / math.sqrt(2)
    # Non-gap tokens: (1, c) from row 0 and cos((0,1),(1,0)) = 0 from row 1; gap: c and cos((3,1),(3,4)).
    assert align_term.item() == pytest.approx(((1 - 1) + (1 - c) + (1 - 0)) / 3, rel=1e-6)
    assert push_term.item() == pytest.approx((c + (9 + 4) / (math.sqrt(10) * 5)) / 2, rel=1e-6)


def test_gap_loss_gradients_reach_aligned_and_gap_tokens_only():
    orig, edit, alignment, gap_mask = three_token_pair()
    edit = torch.cat([edit, torch.tensor([[5.0, -2.0]])])  # a 4th edited token with no counterpart
    alignment = torch.cat([alignment, torch.tensor([-1])])
    gap_mask = torch.cat([gap_mask, torch.tensor([False])])
    orig.requires_grad_()
    edit.requires_grad_()
    gap_alignment_loss(orig, edit, alignment, gap_mask).backward()
    moved = edit.grad.abs().sum(dim=-1)
    # Edit token 0 is already parallel to its counterpart: 1 - cos has zero gradient there.
    assert moved[0] == 0 and moved[1] > 0 and moved[2] > 0 and moved[3] == 0
    orig_moved = orig.grad.abs().sum(dim=-1)
    assert orig_moved[1] == 0 and orig_moved[2] > 0 and orig_moved[3] > 0


def test_gap_loss_without_any_alignment_is_zero_not_nan():
    orig = random_tensor(4, 3, seed=8).requires_grad_()
    edit = random_tensor(3, 3, seed=9).requires_grad_()
    loss = gap_alignment_loss(orig, edit, torch.full((3,), -1), torch.tensor([True, False, False]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(edit.grad, torch.zeros(3, 3)) and torch.equal(orig.grad, torch.zeros(4, 3))


def test_gap_loss_rejects_alignment_outside_the_original():
    orig, edit, _, gap_mask = three_token_pair()
    with pytest.raises(ValueError, match="alignment values"):
        gap_alignment_loss(orig, edit, torch.tensor([0, 2, 4]), gap_mask)


# ---- combined_loss ------------------------------------------------------------------------------

def test_combined_loss_weights_terms_and_skips_switched_off_ones():
    sft, seq, gap = torch.tensor(1.5), torch.tensor(2.0), torch.tensor(4.0)
    assert combined_loss(sft, seq, gap, lambda_seq=0.5, lambda_gap=0.25).item() == 3.5
    assert combined_loss(sft, None, gap, lambda_seq=0.5, lambda_gap=0.25).item() == 2.5
    assert combined_loss(None, seq, None, lambda_seq=0.5, lambda_gap=0.25).item() == 1.0
    with pytest.raises(ValueError, match="switch at least one"):
        combined_loss(None, None, None, lambda_seq=1.0, lambda_gap=1.0)


# ---- alignment helpers on hand-made offsets ------------------------------------------------------

LINES = ["ab", "cd", "", "efg", "h"]


@pytest.mark.parametrize("omitted", [[1], [0], [4], [1, 2], [0, 3], [0, 1, 2, 3, 4], []])
def test_char_map_points_every_edited_char_at_the_same_char_of_the_original(omitted):
    original = "\n".join(LINES)
    edited = "\n".join(line for number, line in enumerate(LINES) if number not in omitted)
    char_map = char_map_for_omission(LINES, omitted)
    assert len(char_map) == len(edited)
    assert all(original[mapped] == char for char, mapped in zip(edited, char_map))
    assert char_map == sorted(set(char_map))


def test_char_map_sends_the_newline_before_a_gap_to_the_newline_ending_the_same_line():
    # original "ab\ncd\n\nefg\nh", edited "ab\nefg\nh": the edited "\n" at 2 ends "ab" in both.
    assert char_map_for_omission(LINES, [1, 2]) == [0, 1, 2, 7, 8, 9, 10, 11]


@pytest.mark.parametrize(("omitted", "expected"), [
    ([1], [3]),          # "ab\n|\nefg\nh": the gap is at the (empty) kept line after "cd"
    ([1, 2], [3]),       # one run, one gap: "ab\n|efg\nh"
    ([0], [0]),          # a gap at the start marks the first token
    ([0, 3], [0, 4]),    # "|cd\n\n|h"
    ([4], [10]),         # "ab\ncd\n\nefg|": at the end, len(edited text)
])
def test_gap_char_positions(omitted, expected):
    assert gap_char_positions_for_omission(LINES, omitted) == expected


def test_omission_helpers_reject_bad_lines_and_indices():
    with pytest.raises(ValueError, match="line 1 contains a newline"):
        char_map_for_omission(["a", "b\nc"], [0])
    with pytest.raises(ValueError, match="outside the 2 original lines"):
        gap_char_positions_for_omission(["a", "b"], [2])
    with pytest.raises(ValueError, match="listed twice"):
        char_map_for_omission(["a", "b"], [1, 1])


def test_token_alignment_requires_the_same_span_of_text():
    # original "ab\ncd\nef" tokens: [bos] "ab" "\n" "cd" "\n" "ef"; edited "ab\nef" (line 1 omitted).
    orig_offsets = [(0, 0), (0, 2), (2, 3), (3, 5), (5, 6), (6, 8)]
    char_map = char_map_for_omission(["ab", "cd", "ef"], [1])
    same_split = [(0, 0), (0, 2), (2, 3), (3, 5)]
    assert token_alignment_from_char_map(same_split, char_map, orig_offsets).tolist() == [-1, 1, 2, 5]
    # A tokenizer that merged "\ne" in the edit and split "ef" as "e" "f": no original token has that text.
    other_split = torch.tensor([[0, 1], [1, 2], [2, 4], [4, 5]])
    assert token_alignment_from_char_map(other_split, char_map, orig_offsets).tolist() == [-1, -1, -1, -1]
    # Characters without a counterpart (-1 in the char map) align to nothing.
    assert token_alignment_from_char_map([(0, 1), (1, 2)], [0, -1], [(0, 1), (1, 2)]).tolist() == [0, -1]


def test_gap_token_mask_marks_the_first_token_at_or_after_each_gap():
    edit_text = "ab\nef\ngh"
    offsets = [(0, 0), (0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 8), (0, 0)]  # bos ... pad
    assert gap_token_mask(offsets, edit_text, [3]).tolist() == [False, False, False, True,
                                                                False, False, False, False]
    # A gap at the start skips the empty-span bos; a gap at the very end marks nothing.
    assert gap_token_mask(offsets, edit_text, [0, 8]).tolist() == [False, True] + [False] * 6
    with pytest.raises(ValueError, match="outside the edited text"):
        gap_token_mask(offsets, edit_text, [9])
    # A token that merged the "\n" before the gap with the line's first char starts before the gap.
    merged = [(0, 2), (2, 4), (4, 5), (5, 6), (6, 8)]  # "ab" "\ne" "f" "\n" "gh"
    assert gap_token_mask(merged, edit_text, [3]).tolist() == [False, False, True, False, False]


# ---- alignment helpers and losses on the real tokenizer and a real (tiny) model ------------------

POEM = ["The fog comes", "on little cat feet.", "It sits looking", "over harbor and city",
        "on silent haunches and then moves on."]
OMITTED = [1]


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer(tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32),
            AutoTokenizer.from_pretrained(tiny_llama_dir))


@pytest.fixture(scope="module")
def poem_pair(tiny_model_and_tokenizer):
    _, tokenizer = tiny_model_and_tokenizer
    original = "\n".join(POEM)
    edited = "\n".join(line for number, line in enumerate(POEM) if number not in OMITTED)
    orig_encoding = tokenizer(original, return_offsets_mapping=True, return_tensors="pt")
    edit_encoding = tokenizer(edited, return_offsets_mapping=True, return_tensors="pt")
    alignment = token_alignment_from_char_map(edit_encoding["offset_mapping"][0],
                                              char_map_for_omission(POEM, OMITTED),
                                              orig_encoding["offset_mapping"][0])
    gaps = gap_token_mask(edit_encoding["offset_mapping"][0], edited,
                          gap_char_positions_for_omission(POEM, OMITTED))
    return original, edited, orig_encoding, edit_encoding, alignment, gaps


def test_real_tokenizer_alignment_pairs_tokens_with_identical_text(poem_pair):
    original, edited, orig_encoding, edit_encoding, alignment, _ = poem_pair
    orig_spans = orig_encoding["offset_mapping"][0].tolist()
    edit_spans = edit_encoding["offset_mapping"][0].tolist()
    aligned = (alignment >= 0).nonzero().flatten().tolist()
    assert len(aligned) == len(edit_spans)  # SmolLM2 splits at every "\n", so every token has a partner
    for position in aligned:
        (start, end), (orig_start, orig_end) = edit_spans[position], orig_spans[alignment[position]]
        assert edited[start:end] == original[orig_start:orig_end]
        assert edit_encoding["input_ids"][0, position] == orig_encoding["input_ids"][0, alignment[position]]
    # The omitted line's tokens are nobody's counterpart.
    omitted_start = len(POEM[0]) + 1
    omitted_tokens = {i for i, (s, _) in enumerate(orig_spans) if omitted_start <= s < omitted_start + len(POEM[1])}
    assert omitted_tokens and not omitted_tokens & set(alignment.tolist())


def test_real_tokenizer_gap_token_is_the_first_token_of_the_line_after_the_gap(poem_pair):
    original, edited, orig_encoding, edit_encoding, alignment, gaps = poem_pair
    assert gaps.sum() == 1
    gap_position = gaps.nonzero().item()
    start, end = edit_encoding["offset_mapping"][0, gap_position].tolist()
    line_after_gap = POEM[2]
    assert start == len(POEM[0]) + 1 and line_after_gap.startswith(edited[start:end])
    # Its counterpart is the first token of the same line in the original, which follows the omitted line.
    orig_start, _ = orig_encoding["offset_mapping"][0, alignment[gap_position]].tolist()
    assert orig_start == len(POEM[0]) + 1 + len(POEM[1]) + 1


def test_losses_on_a_tiny_llama_push_apart_exactly_where_the_gap_starts(tiny_model_and_tokenizer, poem_pair):
    model, _ = tiny_model_and_tokenizer
    _, _, orig_encoding, edit_encoding, alignment, gaps = poem_pair
    model.zero_grad()
    orig_hidden = model(input_ids=orig_encoding["input_ids"], output_hidden_states=True).hidden_states[-1][0]
    edit_hidden = model(input_ids=edit_encoding["input_ids"], output_hidden_states=True).hidden_states[-1][0]
    gap_position = gaps.nonzero().item()

    # A causal model reads the same prefix before the gap, so those aligned states are identical.
    before_gap = torch.zeros_like(gaps)
    before_gap[:gap_position] = True
    prefix_align, _ = gap_alignment_terms(orig_hidden, edit_hidden, alignment.masked_fill(~before_gap, -1), gaps)
    assert prefix_align.item() == pytest.approx(0.0, abs=1e-5)
    align_term, push_term = gap_alignment_terms(orig_hidden, edit_hidden, alignment, gaps)
    assert align_term.item() > 1e-4 and 0.0 < push_term.item() < 1.0 - 1e-4

    # The unaltered copy is the original itself here, so the edited version is the only negative.
    anchor = pool_hidden(orig_hidden.unsqueeze(0), torch.ones(1, orig_hidden.shape[0]), "last")
    negative = pool_hidden(edit_hidden.unsqueeze(0), torch.ones(1, edit_hidden.shape[0]), "last")
    seq = sequence_infonce_loss(anchor, anchor, negative.unsqueeze(1), temperature=0.1)
    total = combined_loss(None, seq, gap_alignment_loss(orig_hidden, edit_hidden, alignment, gaps),
                          lambda_seq=1.0, lambda_gap=1.0)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
