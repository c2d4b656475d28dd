"""`srpo_loss` against values computed by hand from docs/methods.md §2, and its defining properties."""

from __future__ import annotations

import pytest
import torch

from posttrain.losses import SRPO_SEQUENCE_NAMES, srpo_loss

# Per sequence, the log-ratios (policy - reference) of two pairs; the reference differs per row so the subtraction
# is exercised.
RATIOS = {"chosen": [1.0, 0.0], "rejected": [-1.0, 0.0], "chosen_given_rejected": [2.0, 0.0],
          "rejected_given_rejected": [0.0, 0.0], "chosen_given_chosen": [1.0, 0.0],
          "rejected_given_chosen": [-1.0, 0.0]}
REFERENCE = {name: torch.tensor([-2.0, -3.0]) - index for index, name in enumerate(SRPO_SEQUENCE_NAMES)}


def _policy(ratios: dict) -> dict[str, torch.Tensor]:
    return {name: torch.tensor(values) + REFERENCE[name] for name, values in ratios.items()}


def test_srpo_loss_matches_hand_computation():
    # beta 0.5. Row 0: L_improve = (0.5 - 0.5*(2 - 0))^2 + (0.5 - 0.5*(1 + 1))^2 = 0.25 + 0.25 = 0.5;
    #                  L_gen = (0.5*((2 + 1) - (-1 - 1)) - 1)^2 = 1.5^2 = 2.25.
    # Row 1 (all ratios 0): L_improve = 0.25 + 0.25 = 0.5; L_gen = (0 - 1)^2 = 1.
    # Means: L_improve 0.5, L_gen 1.625; alpha 0.8: L = 0.2*1.625 + 0.8*0.5 = 0.725.
    total, gen, improve = srpo_loss(_policy(RATIOS), REFERENCE, beta=0.5, alpha=0.8)
    assert improve.item() == pytest.approx(0.5)
    assert gen.item() == pytest.approx(1.625)
    assert total.item() == pytest.approx(0.725)


def test_alpha_zero_leaves_only_the_generation_loss():
    policy = {name: values.requires_grad_() for name, values in _policy(RATIOS).items()}
    total, gen, improve = srpo_loss(policy, REFERENCE, beta=0.5, alpha=0.0)
    assert total.item() == pytest.approx(gen.item())
    assert improve.item() > 0
    total.backward()
    # R(y_l|y_l) appears only in L_improve.
    assert torch.equal(policy["rejected_given_rejected"].grad, torch.zeros(2))


@pytest.mark.parametrize("draft", ["rejected", "chosen"])
def test_raising_the_revised_chosen_over_the_revised_rejected_lowers_l_improve(draft):
    # Below the target margin 1/(2*beta) = 1, a larger R(y_w|y_draft) - R(y_l|y_draft) lowers L_improve.
    beta, previous = 0.5, None
    for margin in [-1.0, 0.0, 0.5, 1.0]:
        ratios = {name: [0.0, 0.0] for name in SRPO_SEQUENCE_NAMES}
        ratios[f"chosen_given_{draft}"] = [margin / 2] * 2
        ratios[f"rejected_given_{draft}"] = [-margin / 2] * 2
        _, _, improve = srpo_loss(_policy(ratios), REFERENCE, beta=beta, alpha=0.8)
        if previous is not None:
            assert improve.item() < previous
        previous = improve.item()


def test_gradients_raise_the_chosen_and_lower_the_rejected_in_every_sequence():
    policy = {name: torch.zeros(2, requires_grad=True) for name in SRPO_SEQUENCE_NAMES}
    reference = {name: torch.zeros(2) for name in SRPO_SEQUENCE_NAMES}
    total, _, _ = srpo_loss(policy, reference, beta=0.1, alpha=0.8)
    total.backward()
    # Gradient descent moves against the gradient: negative raises a log-prob, positive lowers it.
    for name in SRPO_SEQUENCE_NAMES:
        sign = -1 if name.startswith("chosen") else 1
        assert (torch.sign(policy[name].grad) == sign).all(), name


def test_the_optimum_of_each_revision_term_is_a_margin_of_one_over_two_beta():
    beta = 0.25
    ratios = {name: [0.0] for name in SRPO_SEQUENCE_NAMES}
    ratios["chosen_given_rejected"] = ratios["chosen_given_chosen"] = [1 / (2 * beta)]
    reference = {name: torch.zeros(1) for name in SRPO_SEQUENCE_NAMES}
    _, _, improve = srpo_loss({n: torch.tensor(v) for n, v in ratios.items()}, reference, beta=beta, alpha=0.8)
    assert improve.item() == pytest.approx(0.0)
