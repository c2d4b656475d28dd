"""INPO's loss against hand-computed values, its iteration-0 identity with IPO on summed log-probs, and the sign
of its gradient (docs/methods.md §3)."""

from __future__ import annotations

import pytest
import torch

from posttrain.losses import inpo_loss, inpo_target

ETA, TAU = 0.25, 0.25 / 3  # 1/(2 eta) = 2 nats; tau/eta = 1/3, (eta - tau)/eta = 2/3


def test_inpo_loss_matches_hand_computation():
    policy, ref, prev = torch.tensor([3.0, 0.0]), torch.tensor([1.5, -3.0]), torch.tensor([0.0, 3.0])
    # targets: 1.5/3 + 0 + 2 = 2.5 ; -3/3 + 2 + 2 = 3.0 ; residuals 0.5, -3.0
    loss, target, residual = inpo_loss(policy, ref, prev, ETA, TAU)
    assert target.tolist() == pytest.approx([2.5, 3.0])
    assert residual.tolist() == pytest.approx([0.5, -3.0])
    assert loss.item() == pytest.approx((0.25 + 9.0) / 2)


def test_target_is_100_nats_at_the_papers_eta_with_zero_margins():
    zero = torch.zeros(1)
    assert inpo_target(zero, zero, 0.005, 0.005 / 3).item() == pytest.approx(100.0)


def test_iteration_zero_is_ipo_on_summed_logps_whatever_tau():
    """pi_t = pi_ref: L = ((D_pi - D_ref) - 1/(2 eta))^2, IPO on summed (not per-token averaged) log-probs."""
    chosen, rejected = torch.tensor([-3.0, -7.0, -2.0]), torch.tensor([-4.0, -1.0, -2.5])
    ref_chosen, ref_rejected = torch.tensor([-3.5, -6.0, -2.0]), torch.tensor([-3.0, -1.5, -2.0])
    ipo_sum = (((chosen - rejected) - (ref_chosen - ref_rejected) - 1 / (2 * ETA)) ** 2).mean()
    ref_margin = ref_chosen - ref_rejected
    for tau in (0.0, TAU, ETA):
        loss, _, _ = inpo_loss(chosen - rejected, ref_margin, ref_margin, ETA, tau)
        assert loss.item() == pytest.approx(ipo_sum.item())


@pytest.mark.parametrize(("policy_margin", "chosen_sign"), [(0.0, -1), (10.0, 1)])
def test_gradient_raises_the_margin_below_target_and_lowers_it_above(policy_margin, chosen_sign):
    """Target 2 nats: below it descent raises logp(y_w) and lowers logp(y_l); above it (overshoot) the reverse."""
    chosen = torch.tensor([policy_margin], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    zero = torch.zeros(1)
    loss, _, _ = inpo_loss(chosen - rejected, zero, zero, ETA, TAU)
    loss.backward()
    assert torch.sign(chosen.grad).item() == chosen_sign and torch.sign(rejected.grad).item() == -chosen_sign
    assert chosen.grad.item() == pytest.approx(2 * (policy_margin - 2.0))


def test_only_the_policy_margin_gets_a_gradient():
    policy, ref, prev = (torch.tensor([1.0], requires_grad=True) for _ in range(3))
    loss, target, residual = inpo_loss(policy, ref, prev, ETA, TAU)
    loss.backward()
    assert ref.grad is None and prev.grad is None and not target.requires_grad and not residual.requires_grad
