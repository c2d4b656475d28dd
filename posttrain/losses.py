"""Post-training objectives as small pure tensor functions (no trainer state), unit-tested against hand-computed values.

Conventions (docs/methods.md §0): `*_logps` are per-sequence SUMS of completion-token log-probs with the prompt
masked; `*_token_logps` are per-token log-probs with a 0/1 `mask` over completion tokens. Every loss returns a scalar
averaged over the batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SFT_NORMALIZATIONS = ("sum", "mean", "token")


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (sigmoid): mean of -log sigmoid(beta * (r(y_w|x) - r(y_l|x))), r = logp - ref_logp (docs/methods.md §0)."""
    margin = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin).mean()


def sft_loss(chosen_token_logps: torch.Tensor, mask: torch.Tensor, normalization: str) -> torch.Tensor:
    """Negative log-likelihood of the chosen completions, in one of the three normalisations of docs/methods.md §1:

    - `sum`:   mean over the batch of -logp(y_w|x), the per-sequence token sum (RPO paper, main text);
    - `mean`:  mean over the batch of -logp(y_w|x) / |y_w|, each sequence's token mean (paper appendix, OpenRLHF);
    - `token`: -(sum of all chosen token log-probs) / (number of chosen tokens) in the batch (TRL's `sft` loss type).
    """
    token_logps = chosen_token_logps * mask
    if normalization == "sum":
        return -token_logps.sum(dim=1).mean()
    if normalization == "mean":
        return -(token_logps.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    if normalization == "token":
        return -token_logps.sum() / mask.sum().clamp(min=1)
    raise ValueError(f"unknown sft_normalization {normalization!r}; use one of {SFT_NORMALIZATIONS}")


def rpo_sft_weight(eta: float, beta: float, normalization: str) -> float:
    """The coefficient of the SFT term. The authors' `sum` code multiplies it by beta as well
    (`loss = L_DPO - eta * beta * logp(y_w|x)`); `mean` and `token` use eta alone (docs/methods.md §1)."""
    return eta * beta if normalization == "sum" else eta


def rpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, chosen_token_logps: torch.Tensor, chosen_mask: torch.Tensor,
             beta: float, eta: float, normalization: str = "sum") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """RPO (Liu et al. 2024, docs/methods.md §1): L = L_DPO(beta) + weight * L_SFT(y_w).

    Returns (total, dpo term, unweighted sft term) so trainers can log both parts.
    """
    dpo = dpo_loss(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta)
    sft = sft_loss(chosen_token_logps, chosen_mask, normalization)
    return dpo + rpo_sft_weight(eta, beta, normalization) * sft, dpo, sft


# --- SRPO (docs/methods.md §2) ---------------------------------------------------------------------------------------
# The six sequences of a pair (x, y_w, y_l): `<completion>` is given x alone, `<completion>_given_<draft>` is given x
# and the draft inside the revision template.
SRPO_SEQUENCE_NAMES = ("chosen", "rejected", "chosen_given_rejected", "rejected_given_rejected",
                       "chosen_given_chosen", "rejected_given_chosen")


def srpo_loss(policy: dict[str, torch.Tensor], reference: dict[str, torch.Tensor], beta: float,
              alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SRPO in the form of TRL pull request #1772 (not checked against the paper's equation; docs/methods.md §2).

    `policy` and `reference` map the six `SRPO_SEQUENCE_NAMES` to (B,) summed log-probs. With R(a|b) the log-ratio
    of a given the draft b and r(a) the log-ratio given x alone:
    L_improve = (1/2 - beta*(R(y_w|y_l) - R(y_l|y_l)))^2 + (1/2 - beta*(R(y_w|y_w) - R(y_l|y_w)))^2,
    L_gen = (beta*((R(y_w|y_l) + r(y_w)) - (R(y_l|y_w) + r(y_l))) - 1)^2, L = (1 - alpha)*L_gen + alpha*L_improve,
    each averaged over the batch. Returns (L, L_gen, L_improve).
    """
    ratio = {name: policy[name] - reference[name] for name in SRPO_SEQUENCE_NAMES}
    improve = ((0.5 - beta * (ratio["chosen_given_rejected"] - ratio["rejected_given_rejected"])) ** 2
               + (0.5 - beta * (ratio["chosen_given_chosen"] - ratio["rejected_given_chosen"])) ** 2).mean()
    gen = (beta * ((ratio["chosen_given_rejected"] + ratio["chosen"])
                   - (ratio["rejected_given_chosen"] + ratio["rejected"])) - 1) ** 2
    gen = gen.mean()
    return (1 - alpha) * gen + alpha * improve, gen, improve


# --- DYPO (docs/methods.md §4) ---------------------------------------------------------------------------------------
ROUTE_EASY, ROUTE_HARD, ROUTE_MID = 0, 1, 2
ROUTE_NAMES = ("easy", "hard", "mid")  # indexed by route
GAL_PAIRINGS = ("all", "zip")
DYPO_SFT_NORMALIZATIONS = ("sum", "mean")  # per-sequence, so a hard group's SFT term is its own (not batch-wide)


def route_groups(rewards: torch.Tensor, correct: float = 1.0) -> torch.Tensor:
    """DYPO's gate: (G, k) rollout rewards -> (G,) routes. A rollout is correct when its reward equals `correct`
    exactly (the authors' code: the summed reward == 1; NaN, unscorable, is incorrect). Easy: all k correct;
    hard: none; mid: mixed."""
    num_correct = (rewards == correct).sum(dim=1)
    routes = torch.full_like(num_correct, ROUTE_MID)
    routes[num_correct == 0] = ROUTE_HARD
    routes[num_correct == rewards.size(1)] = ROUTE_EASY
    return routes


def gal_pair_mask(success: torch.Tensor, pairing: str = "all") -> torch.Tensor:
    """(..., k) success flags of a group -> (..., k, k) mask whose [s, f] is True for each (success s, failure f)
    pair GAL uses. `all`: every success x failure pair (default; the paper does not say); `zip`: the j-th success
    with the j-th failure in rollout order, min(S, F) pairs, each rollout in at most one pair."""
    pairs = success[..., :, None] & ~success[..., None, :]
    if pairing == "all":
        return pairs
    if pairing == "zip":
        success_rank = success.long().cumsum(-1) - 1
        failure_rank = (~success).long().cumsum(-1) - 1
        return pairs & (success_rank[..., :, None] == failure_rank[..., None, :])
    raise ValueError(f"unknown gal_pairing {pairing!r}; use one of {GAL_PAIRINGS}")


def gal_loss(logps: torch.Tensor, success: torch.Tensor, beta: float, ref_logps: torch.Tensor | None = None,
             pairing: str = "all") -> torch.Tensor:
    """L_GAL of one group (docs/methods.md §4): `dpo_loss` over its (success, failure) pairs of summed rollout
    log-probs; `ref_logps` None is the reference-free form (r = logp). 0 for a group without pairs."""
    chosen, rejected = gal_pair_mask(success, pairing).nonzero(as_tuple=True)
    if chosen.numel() == 0:
        return logps.sum() * 0.0
    ref = torch.zeros_like(logps) if ref_logps is None else ref_logps
    return dpo_loss(logps[chosen], logps[rejected], ref[chosen], ref[rejected], beta)


def gal_row_loss(delta: torch.Tensor, partner_delta: torch.Tensor, partner_mask: torch.Tensor, success: torch.Tensor,
                 group_pairs: torch.Tensor, beta: float) -> torch.Tensor:
    """Each rollout's share of its group's `gal_loss`, for a group whose rollouts are spread over micro-batches and
    processes.

    `delta` (B,): the rollout's r (logp - ref_logp, or logp), with grad; `partner_delta` (B, k): its group's r values,
    without grad; `partner_mask` (B, k): the rollouts it is paired with; `success` (B,); `group_pairs` (B,): its
    group's number of pairs. Value: half of each of its pairs' losses over `group_pairs`, so a group's rows sum to
    `gal_loss`; gradient: all of `gal_loss`'s gradient with respect to this rollout's r (exact while the partners'
    r are the current policy's). 0 for rows without partners.
    """
    sign = success.to(delta.dtype) * 2 - 1  # a failure's pair margin is r_partner - r_self
    margins = sign[:, None] * (delta[:, None] - partner_delta)
    pair_losses = -F.logsigmoid(beta * margins) * partner_mask.to(delta.dtype)
    share = pair_losses.sum(dim=1) / group_pairs.clamp(min=1) / 2
    return share + (share - share.detach())  # value: the share; gradient: doubled, the partner's half of each pair


def dypo_mid_weights(alpha: float, contrastive_loss_coef: float | None = None) -> tuple[float, float]:
    """(GRPO weight, GAL weight) on a mid group: the paper's mixture (alpha, 1 - alpha), or with
    `contrastive_loss_coef` the authors' additive form L_GRPO + coef * L_GAL (docs/methods.md §4)."""
    if contrastive_loss_coef is None:
        return alpha, 1.0 - alpha
    return 1.0, contrastive_loss_coef


def dypo_loss(routes: torch.Tensor, grpo: torch.Tensor, gal: torch.Tensor, sft: torch.Tensor, alpha: float,
              gamma: float, contrastive_loss_coef: float | None = None) -> torch.Tensor:
    """DYPO's total over Q groups (docs/methods.md §4), from per-group (Q,) terms:
    mean_q [1_hard * gamma * L_SFT + 1_mid * (w_grpo * L_GRPO + w_gal * L_GAL)]; easy groups add 0."""
    w_grpo, w_gal = dypo_mid_weights(alpha, contrastive_loss_coef)
    hard, mid = (routes == ROUTE_HARD).to(sft.dtype), (routes == ROUTE_MID).to(grpo.dtype)
    return (hard * gamma * sft + mid * (w_grpo * grpo + w_gal * gal)).mean()


def sequence_nll(token_logps: torch.Tensor, mask: torch.Tensor, normalization: str = "sum") -> torch.Tensor:
    """(B,) per-sequence -logp: `sum` over tokens (the paper's L_SFT = -logp(tau|q)) or token `mean`; each row is
    `sft_loss` of that row alone."""
    if normalization not in DYPO_SFT_NORMALIZATIONS:
        raise ValueError(f"unknown sft_normalization {normalization!r}; use one of {DYPO_SFT_NORMALIZATIONS}")
    return torch.stack([sft_loss(token_logps[i:i + 1], mask[i:i + 1], normalization)
                        for i in range(token_logps.size(0))]) if token_logps.size(0) else token_logps.sum(1)


# --- INPO (docs/methods.md §3) ---------------------------------------------------------------------------------------
def inpo_target(ref_margin: torch.Tensor, prev_margin: torch.Tensor, eta: float, tau: float) -> torch.Tensor:
    """The value INPO pulls the policy margin D_pi to: (tau/eta)*D_ref + ((eta - tau)/eta)*D_t + 1/(2*eta)."""
    return (tau / eta) * ref_margin + ((eta - tau) / eta) * prev_margin + 1.0 / (2.0 * eta)


def inpo_loss(policy_margin: torch.Tensor, ref_margin: torch.Tensor, prev_margin: torch.Tensor, eta: float,
              tau: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """INPO (Zhang et al. 2024, docs/methods.md §3): L = mean((D_pi - target)^2), `inpo_target` above.

    Each margin is (B,) logp(y_w|x) - logp(y_l|x) of summed completion log-probs: D_pi under the policy, D_ref
    under pi_ref (pi_0) and D_t under the previous iterate pi_t. With D_t = D_ref (iteration 0) this is IPO on
    summed log-probs with IPO's temperature eta: ((D_pi - D_ref) - 1/(2*eta))^2, whatever tau is.
    Returns (L, target, residual = D_pi - target); target and residual are (B,) and carry no gradient.
    """
    target = inpo_target(ref_margin, prev_margin, eta, tau).detach()
    residual = policy_margin - target
    return (residual ** 2).mean(), target, residual.detach()


# --- Unlearning (docs/methods.md §5.2) -------------------------------------------------------------------------------
def token_nll(token_logps: torch.Tensor, mask: torch.Tensor, num_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy as a token mean over the masked (output) tokens: -sum(logp * mask) / num_tokens. `num_tokens`
    defaults to mask.sum(); a trainer passes the count over every process so the mean is the global batch's."""
    count = mask.sum() if num_tokens is None else num_tokens
    return -(token_logps * mask).sum() / _divisor(count, token_logps.dtype)


def _divisor(count, dtype) -> torch.Tensor:
    """`count` as a divisor that is never 0: a count over processes may be a fraction (1 token over 2 processes is
    0.5 per process), so only an empty count (whose sum is 0 too, giving 0, not 0/0) is lifted."""
    return torch.as_tensor(count, dtype=dtype).clamp(min=torch.finfo(dtype).tiny)


def unlearn_joint_loss(ce_forget: torch.Tensor, ce_retain: torch.Tensor, alpha: float) -> torch.Tensor:
    """The paper's constrained-unlearning loss L = -CE_forget + alpha * CE_retain. With alpha fixed this is gradient
    difference (alpha 1 in open-unlearning's GradDiff); with alpha 0, gradient ascent."""
    return -ce_forget + alpha * ce_retain


def npo_loss(logps: torch.Tensor, ref_logps: torch.Tensor, beta: float,
             num_sequences: torch.Tensor | None = None) -> torch.Tensor:
    """NPO (Zhang et al. 2024): mean over forget sequences of -(2/beta) log sigmoid(-beta (logp - logp_ref)), with
    summed completion log-probs. `num_sequences` (default: len(logps)) is the divisor, as `token_nll`'s."""
    count = logps.numel() if num_sequences is None else num_sequences
    total = (-(2.0 / beta) * F.logsigmoid(-beta * (logps - ref_logps))).sum()
    return total / _divisor(count, logps.dtype)


def unlearn_alpha(delta: float | None, a: float = 0.3, b: float = 6.0, c: float = 0.8, low: float = 1.2,
                  high: float = 2.8, decimals: int | None = None) -> float:
    """The adaptive retain weight alpha = clip(a * b**delta + c, low, high), delta = the retain CE's rise above its
    epoch-0 mean. `delta` None (epoch 0, no baseline yet) gives `low`. `decimals` rounds the unclipped value first,
    as the authors' code does (one decimal)."""
    if delta is None:
        return low
    try:
        gamma = a * b ** delta + c
    except OverflowError:  # a retain CE far above its baseline: alpha is `high` anyway
        gamma = math.inf
    if decimals is not None:
        gamma = round(gamma, decimals)
    return min(max(gamma, low), high)
