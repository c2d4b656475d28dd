"""The unlearning losses and the alpha schedule (docs/methods.md §5.2) against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.losses import npo_loss, token_nll, unlearn_alpha, unlearn_joint_loss

TOKEN_LOGPS = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]])
MASK = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # output tokens: -2, -3 and -4


def test_token_nll_is_the_mean_over_masked_tokens_or_over_a_given_count():
    assert token_nll(TOKEN_LOGPS, MASK).item() == pytest.approx(9 / 3)
    assert token_nll(TOKEN_LOGPS, MASK, torch.tensor(6.0)).item() == pytest.approx(9 / 6)
    assert token_nll(TOKEN_LOGPS, torch.zeros_like(MASK)).item() == 0.0  # no output token: 0, not 0/0
    # 3 output tokens over 6 processes: each process's share is divided by 0.5 (the trainer then averages over 6)
    assert token_nll(TOKEN_LOGPS, MASK, torch.tensor(0.5)).item() == pytest.approx(9 / 0.5)


def test_joint_loss_ascends_on_forget_and_descends_on_retain():
    ce_forget, ce_retain = torch.tensor(2.0, requires_grad=True), torch.tensor(0.5, requires_grad=True)
    loss = unlearn_joint_loss(ce_forget, ce_retain, 1.2)
    loss.backward()
    assert loss.item() == pytest.approx(-2.0 + 1.2 * 0.5)
    assert ce_forget.grad.item() == -1.0 and ce_retain.grad.item() == pytest.approx(1.2)


def test_npo_loss_by_hand():
    # logp = ref: -(2/b) log sigmoid(0) = (2/b) ln 2; logp - ref = -10, b = 0.1: (2/b) * -log sigmoid(1)
    at_reference = 20 * math.log(2)
    below = 20 * math.log(1 + math.exp(-1))
    logps, ref = torch.tensor([-3.0, -13.0]), torch.tensor([-3.0, -3.0])
    assert npo_loss(logps, ref, 0.1).item() == pytest.approx((at_reference + below) / 2, rel=1e-6)
    assert npo_loss(logps, ref, 0.1, torch.tensor(4.0)).item() == pytest.approx((at_reference + below) / 4, rel=1e-6)


def test_npo_gradient_vanishes_as_the_forget_sequence_becomes_unlikely():
    logps = torch.tensor([0.0, -50.0], requires_grad=True)
    npo_loss(logps, torch.zeros(2), 0.1).backward()
    # d/dlogp of -(2/b) log sigmoid(-b x) / 2 rows = sigmoid(b x): 0.5 at x = 0, sigmoid(-5) at x = -50
    assert logps.grad[0].item() == pytest.approx(0.5) and logps.grad[1].item() == pytest.approx(1 / (1 + math.e ** 5))


@pytest.mark.parametrize(("delta", "kwargs", "expected"), [
    (None, {}, 1.2),  # epoch 0: no baseline yet
    (0.0, {}, 1.2),  # 0.3 + 0.8 = 1.1, clipped up
    (-3.0, {}, 1.2),
    (0.5, {}, 0.3 * 6 ** 0.5 + 0.8),  # 1.5348..., inside the bounds
    (1.0, {}, 2.6),
    (2.0, {}, 2.8),  # 11.6, clipped down
    (1.0, {"high": 2.3}, 2.3),  # the authors' code's bound
    (0.5, {"decimals": 1}, 1.5),  # the authors' code rounds to one decimal
    (1e4, {}, 2.8),  # no overflow
])
def test_alpha_schedule(delta, kwargs, expected):
    assert unlearn_alpha(delta, **kwargs) == pytest.approx(expected)
