"""Losses against values computed by hand from docs/methods.md §1, and their defining properties."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.losses import dpo_loss, rpo_loss, rpo_sft_weight, sft_loss

# Two pairs. Chosen completions have 2 and 3 tokens (the padded position has mask 0 and a junk value).
CHOSEN_TOKENS = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -0.5, -1.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
CHOSEN = torch.tensor([-3.0, -2.0])  # = masked sums of CHOSEN_TOKENS
REJECTED = torch.tensor([-4.0, -1.0])
REF_CHOSEN = torch.tensor([-3.5, -2.5])
REF_REJECTED = torch.tensor([-3.0, -1.5])


def _log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_dpo_loss_matches_hand_computation():
    # margins: (-3+3.5) - (-4+3) = 1.5 ; (-2+2.5) - (-1+1.5) = 0.0
    beta = 0.5
    expected = -(_log_sigmoid(beta * 1.5) + _log_sigmoid(0.0)) / 2
    assert dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(("normalization", "expected"), [
    ("sum", (3.0 + 2.0) / 2),                 # mean over sequences of -sum
    ("mean", (3.0 / 2 + 2.0 / 3) / 2),        # mean over sequences of -sum/len
    ("token", (1 + 2 + 0.5 + 0.5 + 1) / 5),   # all chosen tokens pooled
])
def test_sft_loss_normalisations_match_hand_computation(normalization, expected):
    assert sft_loss(CHOSEN_TOKENS, MASK, normalization).item() == pytest.approx(expected, abs=1e-6)


def test_sft_loss_rejects_unknown_normalisation():
    with pytest.raises(ValueError, match="unknown sft_normalization 'avg'"):
        sft_loss(CHOSEN_TOKENS, MASK, "avg")


@pytest.mark.parametrize("normalization", ["sum", "mean", "token"])
def test_rpo_is_dpo_plus_weighted_sft(normalization):
    beta, eta = 0.1, 0.7
    total, dpo, sft = rpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, CHOSEN_TOKENS, MASK, beta, eta,
                               normalization)
    weight = eta * beta if normalization == "sum" else eta  # the authors' sum form carries beta (docs/methods.md §1)
    assert rpo_sft_weight(eta, beta, normalization) == pytest.approx(weight)
    assert dpo.item() == pytest.approx(dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, beta).item())
    assert sft.item() == pytest.approx(sft_loss(CHOSEN_TOKENS, MASK, normalization).item())
    assert total.item() == pytest.approx(dpo.item() + weight * sft.item(), abs=1e-6)


def test_rpo_with_eta_zero_is_dpo():
    total, dpo, _ = rpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, CHOSEN_TOKENS, MASK, 0.1, 0.0, "sum")
    assert total.item() == dpo.item()


@pytest.mark.parametrize("normalization", ["sum", "mean", "token"])
def test_raising_the_chosen_log_prob_lowers_the_loss_and_gradients_point_up(normalization):
    token_logps = CHOSEN_TOKENS.clone().requires_grad_(True)
    chosen = (token_logps * MASK).sum(dim=1)
    total, _, _ = rpo_loss(chosen, REJECTED, REF_CHOSEN, REF_REJECTED, token_logps, MASK, 0.1, 1.0, normalization)
    total.backward()
    # Descent raises every unmasked chosen token's log-prob and leaves the padded position alone.
    assert (token_logps.grad[MASK.bool()] < 0).all() and (token_logps.grad[~MASK.bool()] == 0).all()
    with torch.no_grad():
        raised = token_logps + 0.1 * MASK
        higher, _, _ = rpo_loss((raised * MASK).sum(dim=1), REJECTED, REF_CHOSEN, REF_REJECTED, raised, MASK, 0.1,
                                1.0, normalization)
    assert higher.item() < total.item()


def test_dpo_prefers_chosen_over_rejected():
    low = dpo_loss(CHOSEN + 1, REJECTED, REF_CHOSEN, REF_REJECTED, 0.1)
    high = dpo_loss(CHOSEN, REJECTED + 1, REF_CHOSEN, REF_REJECTED, 0.1)
    assert low.item() < dpo_loss(CHOSEN, REJECTED, REF_CHOSEN, REF_REJECTED, 0.1).item() < high.item()
