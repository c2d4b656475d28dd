"""DPO through posttrain's sequence log-prob engine, the base of the DPO family (docs/methods.md §0 and §7).

`DPOTrainer` keeps TRL's data preparation (prompt extraction, chat template, tokenization), logging, evaluation and
checkpointing, and owns three things: the batch layout (`SequenceCollator` over `self.sequences`), the forward
(`sequence_logps`: one pass over every named sequence) and the loss (`preference_loss`, from `posttrain.losses`).
A subclass changes `sequences` and `preference_loss`; the reference log-probs of every sequence come from the N-way
cache (`SequenceLogpsCacheMixin`). A Mixture-of-Experts policy's router load-balancing loss is added as TRL adds it
(`router_aux_loss_coef` times `aux_loss`, logged as `aux_loss`; docs/methods.md §9), on the plain, chunked and packed
paths. TRL's other DPO variants (`loss_type` other than `sigmoid`, `ld_alpha`, f-divergences, WPO weighting) run
TRL's own forward and loss on the same batches.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import torch
import trl

from posttrain.losses import dpo_loss
from posttrain.trainers.logprobs import (
    PAIR,
    SequenceCollator,
    frozen_sequence_logps,
    logps_column,
    model_inputs,
    sequence_logps,
    token_columns,
    token_count,
)
from posttrain.trainers.ref_cache import SequenceLogpsCacheMixin, default_cache_dir


@dataclass
class DPOConfig(trl.DPOConfig):
    """`trl.DPOConfig` with the reference log-probs precomputed by default and cached on disk."""

    precompute_ref_log_probs: bool = field(
        default=True,
        metadata={"help": "Compute the frozen reference's log-probs once before training, so training never holds "
                          "a second model (posttrain default; TRL's is False)."},
    )
    ref_logps_cache_dir: str | None = field(
        default_factory=default_cache_dir,
        metadata={"help": "Directory of the reference log-prob cache, keyed by a hash of (reference weights, "
                          "tokenized data, sequence names, truncation settings) and reused across runs and "
                          "DPO-family methods. Default $POSTTRAIN_CACHE/ref_logps (~/.cache/posttrain). Empty "
                          "string: no disk cache."},
    )
    logps_chunk_size: int | None = field(
        default=None,
        metadata={"help": "Score only the completion tokens, this many at a time through the LM head, recomputing "
                          "each chunk in backward: the peak memory of the log-probs is one [chunk x vocabulary] "
                          "tile instead of tiles over every position (docs/methods.md §9). Exact. None or 0: TRL's "
                          "fused LM head over every position."},
    )

    def __post_init__(self):
        super().__post_init__()
        unknown = sorted(set(self.loss_type) - set(trl_loss_types()))
        if unknown and trl_loss_types():
            from posttrain.registry import closest

            raise ValueError(f"loss_type {unknown[0]!r} is not one of TRL's DPO losses ({', '.join(trl_loss_types())})"
                             f"{closest(unknown[0], trl_loss_types())}")
        if not self.beta > 0:
            raise ValueError(f"beta must be above 0 (the KL weight; 0.1 is common), got {self.beta}")
        if self.logps_chunk_size is not None and self.logps_chunk_size < 0:
            raise ValueError(f"logps_chunk_size must be a positive number of tokens (or 0/null for the plain path), "
                             f"got {self.logps_chunk_size}")
        if switch_conflict(self):
            raise ValueError(switch_conflict(self))


def trl_loss_types() -> list[str]:
    """The `loss_type` values TRL's DPO trainer knows, as its config field lists them (empty if that text changes:
    then TRL itself refuses an unknown one)."""
    import re

    help_text = next(f for f in fields(trl.DPOConfig) if f.name == "loss_type").metadata.get("help", "")
    return re.findall(r"`'(\w+)'`", help_text)


def trl_only_settings(args) -> list[str]:
    """The settings of `args` that the engine does not implement (TRL's own loss then runs instead)."""
    value = getattr(args.f_divergence_type, "value", args.f_divergence_type)
    found = [f"loss_type {list(args.loss_type)}"] if list(args.loss_type) != ["sigmoid"] else []
    found += [f"f_divergence_type {value}"] if value != "reverse_kl" else []
    found += [f"ld_alpha {args.ld_alpha}"] if args.ld_alpha is not None else []
    found += ["use_weighting"] if args.use_weighting else []
    return found


def switch_conflict(args) -> str | None:
    """Why `args` cannot use the engine's `padding_free` or `logps_chunk_size` (TRL's own losses run their own
    forward over padded rows, so the switch would be ignored or wrong), or None."""
    unsupported = trl_only_settings(args)
    for switch, off in (("padding_free", "false"), ("logps_chunk_size", "0")):
        if unsupported and getattr(args, switch, None):
            return (f"{switch} works with the engine's sigmoid loss only, not {', '.join(unsupported)}; set {switch} "
                    f"{off} or drop those settings")
    return None


def check_engine_settings(args, model, peft_config=None) -> None:
    """One-line UsageErrors for what the padding-free or chunked paths cannot honour and the config cannot see."""
    from posttrain.errors import UsageError
    from posttrain.trainers.chunked_logps import unsupported_logit_transform

    if switch_conflict(args):  # a plain `trl.DPOConfig` has not checked it
        raise UsageError(switch_conflict(args))
    prompt_learning = getattr(peft_config, "is_prompt_learning", False) or \
        getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False)
    if args.padding_free and prompt_learning:
        raise UsageError("padding_free cannot pack sequences for prompt-learning PEFT (its virtual tokens lead each "
                         "row); set padding_free false or use LoRA")
    transform = None if isinstance(model, str) else unsupported_logit_transform(model.config)
    if getattr(args, "logps_chunk_size", None) and transform:
        raise UsageError(f"logps_chunk_size does not support this model's {transform} (a scaled LM head); set "
                         f"logps_chunk_size 0")


@contextmanager
def _no_padding_free_fallback_warning():
    """Hide TRL's "padding_free is disabled, falling back to padding" warning: the engine packs the batches itself."""
    import logging

    trl_logger = logging.getLogger("trl.trainer.dpo_trainer")

    def quiet(record) -> bool:
        return "`padding_free=True` is temporarily unavailable" not in record.getMessage()

    trl_logger.addFilter(quiet)
    try:
        yield
    finally:
        trl_logger.removeFilter(quiet)


def _pad_token_id(tokenizer, args) -> int:
    """The pad token TRL would choose (recipe's, tokenizer's, else EOS), set on the tokenizer."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    tokenizer.pad_token = args.pad_token or tokenizer.pad_token or tokenizer.eos_token
    return tokenizer.pad_token_id


class DPOTrainer(SequenceLogpsCacheMixin, trl.DPOTrainer):
    """Sigmoid DPO: L = mean(-log sigmoid(beta * (r(y_w) - r(y_l)))) with `posttrain.losses.dpo_loss`."""

    sequences = PAIR  # the named sequences scored per example, in batch order
    logps_prefixes = ("ref",)  # precomputed `<prefix>_<name>_logps` columns the batches carry
    engine_required = False  # True: TRL-only settings are an error rather than a fallback to TRL's loss
    engine_loss = True  # False when the config asks for a TRL-only variant

    def __init__(self, model, ref_model=None, args=None, data_collator=None, train_dataset=None, eval_dataset=None,
                 processing_class=None, **kwargs):
        if args is not None:
            unsupported = trl_only_settings(args)
            if unsupported and self.engine_required:
                raise ValueError(f"{type(self).__name__} computes its own loss and does not support "
                                 f"{', '.join(unsupported)}")
            self.engine_loss = not unsupported
            check_engine_settings(args, model, kwargs.get("peft_config"))
        if data_collator is None and processing_class is not None and args is not None:
            pad_token_id = _pad_token_id(processing_class, args)
            data_collator = SequenceCollator(pad_token_id, self.sequences, args.max_length, args.truncation_mode,
                                             args.pad_to_multiple_of, args.padding_free)
            if not isinstance(model, str):  # as TRL does: the model agrees with the tokenizer on the pad token
                model.config.get_text_config().pad_token_id = pad_token_id
                model.generation_config.pad_token_id = pad_token_id
        with _no_padding_free_fallback_warning():
            super().__init__(model, ref_model, args, data_collator, train_dataset, eval_dataset, processing_class,
                             **kwargs)
        self.padding_free = self.args.padding_free  # TRL turns it off; the engine's collator packs instead

    @property
    def logps_chunk_size(self) -> int | None:
        """Completion tokens per LM-head chunk (None: TRL's fused head over every position); TRL's own config
        class has no such field."""
        return getattr(self.args, "logps_chunk_size", None)

    @property
    def sequence_names(self) -> list[str]:
        return [s.name for s in self.sequences]

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = [*token_columns(self.sequences),
                                       *(logps_column(p, n) for p in self.logps_prefixes for n in self.sequence_names)]

    def frozen_logps(self, model, batch: dict, peft_model=None) -> dict[str, torch.Tensor]:
        """Summed log-probs of every sequence under a frozen model (no gradient, no checkpointing)."""
        from trl.models.utils import disable_gradient_checkpointing

        with disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs), \
                self.accelerator.autocast():
            return frozen_sequence_logps(model, batch, self.sequence_names, peft_model, self.logps_chunk_size)

    def reference_logps(self, batch: dict) -> dict[str, torch.Tensor]:
        """The reference's summed log-probs: precomputed columns, or a live forward of the reference."""
        if self.precompute_ref_logps:
            return {name: batch[logps_column("ref", name)] for name in self.sequence_names}
        if self.ref_model is not None:
            return self.frozen_logps(self.ref_model, batch)
        from accelerate.utils import is_peft_model

        peft_model = self.accelerator.unwrap_model(self.model) if is_peft_model(self.model) else None
        return self.frozen_logps(self.model, batch, peft_model)

    def preference_loss(self, policy, reference: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, {name: logged loss part}) from the policy's `SequenceLogps` and the reference's summed log-probs."""
        return dpo_loss(policy.logps["chosen"], policy.logps["rejected"], reference["chosen"], reference["rejected"],
                        self.beta), {}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if not self.engine_loss:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        policy = sequence_logps(model, inputs, self.sequence_names, self.logps_chunk_size, self.aux_loss_enabled)
        reference = self.reference_logps(inputs)
        loss, parts = self.preference_loss(policy, reference)
        if self.aux_loss_enabled:  # TRL's condition and weight: the policy's MoE load-balancing loss, never the ref's
            parts = {**parts, "aux_loss": policy.outputs.aux_loss}
            loss = loss + self.router_aux_loss_coef * policy.outputs.aux_loss
        self._log_engine_metrics(inputs, policy, reference, parts)
        if return_outputs:  # logits for `compute_metrics` (deprecated in TRL): one plain forward
            with torch.no_grad():
                return loss, model(**model_inputs(inputs))
        return loss

    def _log_engine_metrics(self, inputs, policy, reference: dict, parts: dict) -> None:
        """TRL's DPO metrics (rewards, log-probs, entropy, token accuracy, tokens) plus the loss parts."""
        mode = "train" if self.model.training else "eval"
        metrics = self._metrics[mode]

        def mean(values: torch.Tensor) -> float:
            return self.accelerator.gather_for_metrics(values.detach().float().reshape(-1)).mean().item()

        def token_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
            totals = self.accelerator.gather_for_metrics(torch.stack([(values * mask).sum(), mask.sum()]).float()
                                                         .reshape(1, 2)).sum(dim=0)
            return (totals[0] / totals[1]).item() if totals[1] > 0 else 0.0

        for name, value in parts.items():
            metrics[name].append(mean(value))
        chosen = self.beta * (policy.logps["chosen"] - reference["chosen"]).detach()
        rejected = self.beta * (policy.logps["rejected"] - reference["rejected"]).detach()
        metrics["rewards/chosen"].append(mean(chosen))
        metrics["rewards/rejected"].append(mean(rejected))
        metrics["rewards/accuracies"].append(mean((chosen > rejected).float()))
        metrics["rewards/margins"].append(mean(chosen - rejected))
        for name in self.sequence_names:
            metrics[f"logps/{name}"].append(mean(policy.logps[name]))
        mask = torch.cat([policy.masks[name] for name in self.sequence_names]).float()
        outputs, length = policy.outputs, mask.size(1)
        metrics["entropy"].append(token_mean(outputs.entropy[:, -length:].detach(), mask))
        rows, block = len(policy.logps["chosen"]), self.sequence_names.index("chosen")
        chosen_rows = slice(block * rows, (block + 1) * rows)  # the chosen block of the [name_0; name_1; ...] batch
        metrics["mean_token_accuracy"].append(token_mean(outputs.is_top1[chosen_rows, -length:].float(),
                                                         mask[chosen_rows]))
        if mode == "train":
            tokens = self.accelerator.gather_for_metrics(token_count(inputs).reshape(1)).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
