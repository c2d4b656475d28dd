"""DYPO's pure pieces (docs/methods.md §4): the gate, GAL against hand values, its per-row split, the total, and
the verifiable rewards."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.losses import (
    ROUTE_EASY,
    ROUTE_HARD,
    ROUTE_MID,
    dypo_loss,
    dypo_mid_weights,
    gal_loss,
    gal_pair_mask,
    gal_row_loss,
    route_groups,
    sequence_nll,
)
from posttrain.trainers.dypo_rewards import exact_match_reward, math_verify_reward


def _nls(x: float) -> float:
    """-log sigmoid(x)."""
    return math.log1p(math.exp(-x))


def test_route_groups_easy_hard_and_mixed():
    rewards = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert route_groups(rewards).tolist() == [ROUTE_EASY, ROUTE_HARD, ROUTE_MID, ROUTE_MID]


def test_route_groups_correct_means_exactly_one():
    """Partial credit (0.5, 1.5) and unscorable rollouts (NaN) are not correct; all-equal non-1 rewards are hard."""
    rewards = torch.tensor([[0.5, 0.5], [1.5, 1.5], [float("nan"), 1.0], [0.5, 1.0]])
    assert route_groups(rewards).tolist() == [ROUTE_HARD, ROUTE_HARD, ROUTE_MID, ROUTE_MID]
    assert route_groups(torch.tensor([[0.5, 0.5]]), correct=0.5).tolist() == [ROUTE_EASY]


def test_gal_pair_mask_all_and_zip():
    success = torch.tensor([True, False, True, False, False])
    pairs = gal_pair_mask(success, "all")
    assert sorted(map(tuple, pairs.nonzero().tolist())) == [(0, 1), (0, 3), (0, 4), (2, 1), (2, 3), (2, 4)]
    assert sorted(map(tuple, gal_pair_mask(success, "zip").nonzero().tolist())) == [(0, 1), (2, 3)]
    with pytest.raises(ValueError, match="gal_pairing"):
        gal_pair_mask(success, "best")


def test_gal_loss_matches_hand_values():
    logps = torch.tensor([-1.0, -3.0, -2.0])  # success, failure, failure
    success = torch.tensor([True, False, False])
    expected = (_nls(0.5 * 2.0) + _nls(0.5 * 1.0)) / 2
    assert gal_loss(logps, success, beta=0.5).item() == pytest.approx(expected, rel=1e-6)
    ref = torch.tensor([-2.0, -1.0, -2.0])  # r = logp - ref = [1, -2, 0]
    expected_ref = (_nls(0.5 * 3.0) + _nls(0.5 * 1.0)) / 2
    assert gal_loss(logps, success, beta=0.5, ref_logps=ref).item() == pytest.approx(expected_ref, rel=1e-6)


def test_gal_loss_is_zero_without_pairs():
    logps = torch.tensor([-1.0, -2.0], requires_grad=True)
    for success in (torch.tensor([True, True]), torch.tensor([False, False])):
        loss = gal_loss(logps, success, beta=1.0)
        loss.backward()
        assert loss.item() == 0.0 and logps.grad.abs().sum().item() == 0.0


def test_gal_gradient_raises_successes_and_lowers_failures():
    logps = torch.tensor([-1.0, -3.0, -2.0, -0.5], requires_grad=True)
    success = torch.tensor([True, False, True, False])
    gal_loss(logps, success, beta=1.0).backward()
    assert (logps.grad[success] < 0).all() and (logps.grad[~success] > 0).all()  # descent: up, down


@pytest.mark.parametrize("pairing", ["all", "zip"])
def test_gal_row_loss_sums_to_gal_loss_with_its_gradient(pairing):
    """Split over rows (any micro-batch or process), a group's rows carry gal_loss's value and gradient."""
    logps = torch.tensor([-1.0, -3.0, -2.0, -0.5, -4.0], requires_grad=True)
    success = torch.tensor([True, False, True, False, False])
    gal_loss(logps, success, beta=0.7, pairing=pairing).backward()
    whole_value, whole_grad = gal_loss(logps, success, beta=0.7, pairing=pairing).item(), logps.grad.clone()

    rows = logps.detach().clone().requires_grad_(True)
    pairs = gal_pair_mask(success, pairing)
    partner_mask = torch.where(success[:, None], pairs, pairs.T)
    group_pairs = pairs.sum().float().expand(5)
    shares = gal_row_loss(rows, logps.detach().expand(5, 5), partner_mask, success, group_pairs, beta=0.7)
    shares.sum().backward()
    assert shares.sum().item() == pytest.approx(whole_value, rel=1e-6)
    assert torch.allclose(rows.grad, whole_grad, atol=1e-7)


def test_dypo_loss_routes_each_group():
    routes = torch.tensor([ROUTE_EASY, ROUTE_HARD, ROUTE_MID])
    grpo, gal, sft = torch.tensor([5.0, 7.0, 0.2]), torch.tensor([9.0, 9.0, 0.6]), torch.tensor([3.0, 2.0, 4.0])
    total = dypo_loss(routes, grpo, gal, sft, alpha=0.25, gamma=2.0)
    assert total.item() == pytest.approx((0 + 2.0 * 2.0 + 0.25 * 0.2 + 0.75 * 0.6) / 3)
    additive = dypo_loss(routes, grpo, gal, sft, alpha=0.25, gamma=2.0, contrastive_loss_coef=0.001)
    assert additive.item() == pytest.approx((2.0 * 2.0 + 0.2 + 0.001 * 0.6) / 3)
    assert dypo_mid_weights(0.5) == (0.5, 0.5) and dypo_mid_weights(0.5, 0.001) == (1.0, 0.001)


def test_dypo_loss_all_easy_is_zero_and_gradient_signs():
    routes = torch.tensor([ROUTE_EASY, ROUTE_EASY])
    terms = [torch.tensor([1.0, 2.0], requires_grad=True) for _ in range(3)]
    assert dypo_loss(routes, *terms, alpha=0.5, gamma=1.0).item() == 0.0
    teacher_logps = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    nll = sequence_nll(teacher_logps, torch.tensor([[1, 1, 0]]), "sum")
    dypo_loss(torch.tensor([ROUTE_HARD]), torch.zeros(1), torch.zeros(1), nll, alpha=0.5, gamma=1.0).backward()
    assert nll.item() == pytest.approx(3.0)
    assert teacher_logps.grad.tolist() == [[-1.0, -1.0, 0.0]]  # descent raises the teacher's masked tokens only


def test_sequence_nll_mean_and_bad_normalization():
    logps, mask = torch.tensor([[-1.0, -3.0], [-2.0, -9.0]]), torch.tensor([[1, 1], [1, 0]])
    assert sequence_nll(logps, mask, "mean").tolist() == [2.0, 2.0]
    with pytest.raises(ValueError, match="sft_normalization"):
        sequence_nll(logps, mask, "token")


def test_exact_match_reward_reads_the_final_field_of_text_or_messages():
    completions = ["0 1 2 = 012", [{"role": "assistant", "content": "012"}], "012 ", "0 1 2", ""]
    assert exact_match_reward(completions, ["012"] * 5) == [1.0, 1.0, 1.0, 0.0, 0.0]


def test_math_verify_reward_compares_mathematically():
    completions = ["so x = \\boxed{\\frac{1}{2}}", "The answer is $0.5$.", "\\boxed{3}", "no answer here"]
    assert math_verify_reward(completions, ["\\frac{1}{2}", "1/2", "4", "7"]) == [1.0, 1.0, 0.0, 0.0]
