"""Post-training objectives as small pure tensor functions (no trainer state), unit-tested against hand-computed values.

Conventions (docs/methods.md §0): `*_logps` are per-sequence SUMS of completion-token log-probs with the prompt
masked; `*_token_logps` are per-token log-probs with a 0/1 `mask` over completion tokens. Every loss returns a scalar
averaged over the batch.
"""

from __future__ import annotations

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
