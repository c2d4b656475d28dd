"""RPO: DPO plus an SFT regulariser on the chosen responses (Liu et al. 2024; METHODS.md §1).

`RPOTrainer` is TRL's DPO (through posttrain's cached-reference `DPOTrainer`) with one addition in `compute_loss`:
the policy forward that TRL runs for the DPO term is recorded, and the SFT term is computed from its per-token
log-probs with `posttrain.losses.sft_loss`, so RPO costs no extra forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.losses import SFT_NORMALIZATIONS, rpo_sft_weight, sft_loss
from posttrain.trainers.dpo import DPOConfig, DPOTrainer


@dataclass
class RPOConfig(DPOConfig):
    """Defaults follow the paper's main recipe (zephyr-7b-sft on UltraFeedback, METHODS.md §1): `sum`
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


class _RecordForward:
    """Calls the wrapped model and keeps its last output, so the SFT term reuses TRL's policy forward."""

    def __init__(self, model):
        self.model, self.outputs = model, None

    def __call__(self, *args, **kwargs):
        self.outputs = self.model(*args, **kwargs)
        return self.outputs


class RPOTrainer(DPOTrainer):
    """DPO loss from TRL + `rpo_sft_weight(eta, beta) * sft_loss(chosen)`; logs `loss/dpo` and `loss/sft`."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        recorder = _RecordForward(model)
        result = super().compute_loss(recorder, inputs, return_outputs, num_items_in_batch)
        dpo = result[0] if return_outputs else result
        # TRL's DPO batch is [chosen; rejected]; log-probs are for the shifted (next-token) positions.
        completion_mask = inputs["completion_mask"][..., 1:]
        token_logps = recorder.outputs.log_probs[:, -completion_mask.size(1):]
        chosen_token_logps, _ = token_logps.chunk(2, dim=0)
        chosen_mask, _ = completion_mask.chunk(2, dim=0)
        sft = sft_loss(chosen_token_logps, chosen_mask.to(chosen_token_logps.dtype), self.args.sft_normalization)
        loss = dpo + rpo_sft_weight(self.args.rpo_eta, self.args.beta, self.args.sft_normalization) * sft
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["loss/dpo"].append(self.accelerator.gather_for_metrics(dpo.detach()).mean().item())
        self._metrics[mode]["loss/sft"].append(self.accelerator.gather_for_metrics(sft.detach()).mean().item())
        return (loss, result[1]) if return_outputs else loss
