"""RPO: DPO plus an SFT regulariser on the chosen responses (Liu et al. 2024; docs/methods.md §1).

`RPOTrainer` is posttrain's `DPOTrainer` with another `preference_loss`: `posttrain.losses.rpo_loss` over the
engine's one policy forward (summed log-probs for the DPO term, per-token log-probs for the SFT term), so RPO costs
no extra forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.losses import SFT_NORMALIZATIONS, rpo_loss
from posttrain.trainers.dpo import DPOConfig, DPOTrainer


@dataclass
class RPOConfig(DPOConfig):
    """Defaults follow the paper's main recipe (zephyr-7b-sft on UltraFeedback, docs/methods.md §1): `sum`
    normalisation, eta 0.005, beta 0.01, lr 5e-7, 1 epoch, cosine schedule, warmup 0.1."""

    rpo_eta: float = field(
        default=0.005,
        metadata={"help": "eta, the weight of the SFT term. With sft_normalization=sum the term is also multiplied "
                          "by beta, as in the authors' code: L = L_DPO - eta * beta * logp(y_w|x)."},
    )
    sft_normalization: str = field(
        default="sum",
        metadata={"help": "sum: per-sequence token sum (paper main text); mean: per-sequence token mean, no beta "
                          "(paper appendix / OpenRLHF); token: mean over all chosen tokens in the batch (TRL's "
                          "loss_type [sigmoid, sft]).", "choices": list(SFT_NORMALIZATIONS)},
    )
    beta: float = field(default=0.01, metadata={"help": "DPO temperature (paper main recipe: 0.01)."})
    learning_rate: float = field(default=5e-7, metadata={"help": "Paper main recipe: 5e-7."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Paper main recipe: 1 epoch."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Paper main recipe: cosine."})
    warmup_steps: float = field(default=0.1, metadata={"help": "A value below 1 is a fraction of the total steps "
                                                               "(paper main recipe: 0.1)."})

    def __post_init__(self):
        super().__post_init__()
        if self.sft_normalization not in SFT_NORMALIZATIONS:
            raise ValueError(f"sft_normalization must be one of {', '.join(SFT_NORMALIZATIONS)}, "
                             f"got {self.sft_normalization!r}")
        if self.rpo_eta < 0:
            raise ValueError(f"rpo_eta must be >= 0, got {self.rpo_eta}")
        if list(self.loss_type) != ["sigmoid"]:
            raise ValueError(f"RPO adds its own SFT term to the sigmoid DPO loss; loss_type must be [sigmoid], got "
                             f"{list(self.loss_type)} (TRL's [sigmoid, sft] is sft_normalization: token)")


class RPOTrainer(DPOTrainer):
    """`rpo_loss`: the DPO term plus `rpo_sft_weight(eta, beta) * sft_loss(chosen)`, both from the one policy forward
    of the log-prob engine; logs `loss/dpo` and `loss/sft`."""

    engine_required = True

    def preference_loss(self, policy, reference):
        loss, dpo, sft = rpo_loss(policy.logps["chosen"], policy.logps["rejected"], reference["chosen"],
                                  reference["rejected"], policy.token_logps["chosen"], policy.masks["chosen"],
                                  self.beta, self.args.rpo_eta, self.args.sft_normalization)
        return loss, {"loss/dpo": dpo, "loss/sft": sft}
