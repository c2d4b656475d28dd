"""INPO: iterative Nash policy optimisation, one iteration's training step (Zhang et al. 2024; docs/methods.md §3).

Iteration t trains pi_{t+1}, initialised from pi_t (the model being trained), on pairs ranked from pi_t's samples:
L = mean((D_pi - (tau/eta)*D_ref - ((eta - tau)/eta)*D_t - 1/(2*eta))^2) with `posttrain.losses.inpo_loss`.
`INPOTrainer` is posttrain's `DPOTrainer` with that loss and two frozen models' log-probs, both precomputed through
the N-way cache (`SequenceLogpsCacheMixin`), so no frozen model is held during training:

- `prev_<name>_logps` (`chosen`, `rejected`): pi_t, the previous iterate = the weights training starts from (the
  adapter-disabled base under LoRA). It is the cache entry DPO's reference would be on the same model and data.
- `ref_<name>_logps`: pi_ref = pi_0, the model named by `reference_model`, loaded once for scoring and dropped
  before training. `reference_model` unset means pi_ref = pi_t (iteration 0: the columns are copies, no second
  model is loaded), so one plain `posttrain train` run is INPO's iteration 0, which is IPO on summed log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from posttrain.losses import inpo_loss
from posttrain.trainers.dpo import DPOConfig, DPOTrainer
from posttrain.trainers.logprobs import logps_column

PREVIOUS = "prev"  # the column prefix of pi_t's log-probs (DPO's `ref` prefix holds pi_ref here)


@dataclass
class INPOConfig(DPOConfig):
    """Defaults from the authors' run script (docs/methods.md §3): eta 0.005, tau/eta 1/3, lr 5e-7, cosine, one
    epoch per iteration; warmup 0.03 of the steps as in their training script."""

    eta: float = field(default=0.005, metadata={"help": "eta, the step size of the online mirror descent: the "
                                                        "target margin is 1/(2*eta) nats (100 at 0.005)."})
    tau_ratio: float = field(
        default=1 / 3,
        metadata={"help": "tau/eta, the weight of pi_ref's margin (tau: the KL regularisation towards pi_ref); pi_t's "
                          "weight is 1 - tau_ratio. 0 drops the KL term. Authors' value: 1/3."})
    reference_model: str | None = field(
        default=None,
        metadata={"help": "pi_ref = pi_0 (the SFT model), a path or hub id whose log-probs are precomputed once "
                          "(cached). Unset: the model being trained, i.e. iteration 0 where pi_t = pi_ref."})
    beta: float | None = field(
        default=None,
        metadata={"help": "Not an INPO setting: set to eta, the temperature of the logged rewards/* "
                          "(eta * log-ratio to pi_ref). Leave it unset."})
    learning_rate: float = field(default=5e-7, metadata={"help": "Authors' value: 5e-7."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "One epoch per iteration."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Authors' value: cosine."})
    warmup_steps: float = field(default=0.03, metadata={"help": "A value below 1 is a fraction of the total steps "
                                                                "(authors' training script: 0.03)."})

    def __post_init__(self):
        if self.beta is not None and self.beta != self.eta:
            raise ValueError(f"INPO's temperature is eta; set eta (now {self.eta}), not beta ({self.beta})")
        if self.eta <= 0:
            raise ValueError(f"eta must be > 0, got {self.eta}")
        self.beta = self.eta
        super().__post_init__()
        if not 0 <= self.tau_ratio <= 1:
            raise ValueError(f"tau_ratio (tau/eta) must be in [0, 1] so that both margins keep a non-negative weight, "
                             f"got {self.tau_ratio}")
        if list(self.loss_type) != ["sigmoid"]:
            raise ValueError(f"INPO computes its own loss; loss_type must be [sigmoid] (unused), got "
                             f"{list(self.loss_type)}")
        if self.reference_model and not self.precompute_ref_log_probs:
            raise ValueError("INPO scores reference_model only through the precomputed cache; set "
                             "precompute_ref_log_probs true (or unset reference_model for iteration 0)")

    @property
    def tau(self) -> float:
        return self.tau_ratio * self.eta


def construction_hook(recipe, tokenizer, train_dataset, eval_dataset) -> dict:
    """No extra trainer arguments: checks, before any model loads, that a local-looking `reference_model` exists."""
    from posttrain.models import check_model_path

    if recipe.training.reference_model:
        check_model_path(recipe.training.reference_model, "reference_model")
    return {}


def _drop_scoring_model(accelerator, model) -> None:
    """Forget a model placed by `load_scoring_model` (the accelerator keeps a reference) and free its memory."""
    from accelerate.utils.memory import clear_device_cache

    accelerator._models[:] = [m for m in accelerator._models if m is not model]
    if hasattr(model, "destroy"):  # a DeepSpeed engine: remove its ZeRO hooks
        model.destroy()
    clear_device_cache(garbage_collection=True)


class INPOTrainer(DPOTrainer):
    """`inpo_loss` over (chosen, rejected) with pi_ref's and pi_t's margins from the precomputed columns; logs the
    margins, the target and the residual (`inpo/*`) beside DPO's metrics, whose rewards are eta * (logp - logp_ref)
    against pi_ref, as in the authors' trainer."""

    engine_required = True
    logps_prefixes = ("ref", PREVIOUS)

    def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
        """pi_t's log-probs (the initial weights, scored as DPO scores its reference) as `prev_*`, then pi_ref's as
        `ref_*`."""
        if len(dataset) == 0:
            return super()._precompute_ref_logps(dataset, name, batch_size)  # its one-line error
        dataset = self.add_logps_columns(dataset, PREVIOUS, split=name, batch_size=batch_size)
        if not self.args.reference_model:  # iteration 0: pi_ref = pi_t
            for n in self.sequence_names:
                dataset = dataset.add_column(logps_column("ref", n), dataset[logps_column(PREVIOUS, n)])
            return dataset
        scorer = self.load_scoring_model(self.args.reference_model)
        try:
            return self.add_logps_columns(dataset, "ref", model=scorer, split=name, batch_size=batch_size)
        finally:
            _drop_scoring_model(self.accelerator, scorer)
            del scorer

    def reference_logps(self, batch: dict) -> dict:
        """{name: pi_ref's log-probs, `prev_<name>`: pi_t's}. Without precompute (iteration 0 only, checked by the
        config) both are one live frozen forward of the initial weights."""
        reference = super().reference_logps(batch)
        if self.precompute_ref_logps:
            previous = {n: batch[logps_column(PREVIOUS, n)] for n in self.sequence_names}
        else:
            previous = reference
        return {**reference, **{f"{PREVIOUS}_{n}": values for n, values in previous.items()}}

    def preference_loss(self, policy, reference):
        margin = policy.logps["chosen"] - policy.logps["rejected"]
        ref_margin = reference["chosen"] - reference["rejected"]
        prev_margin = reference[f"{PREVIOUS}_chosen"] - reference[f"{PREVIOUS}_rejected"]
        loss, target, residual = inpo_loss(margin, ref_margin, prev_margin, self.args.eta, self.args.tau)
        return loss, {"inpo/policy_margin": margin.detach(), "inpo/ref_margin": ref_margin,
                      "inpo/prev_margin": prev_margin, "inpo/target": target, "inpo/residual": residual,
                      "inpo/abs_residual": residual.abs()}
