"""SRPO: self-improving robust preference optimisation (Choi et al. 2024; docs/methods.md §2).

One set of weights is trained as the generator pi(y|x) and as the self-improver pi(y'|x, T(x, y)), where T is the
revision template (`posttrain.revision.RevisionTemplate`). `SRPOTrainer` is posttrain's `DPOTrainer` with six
sequences per pair instead of two: y_w and y_l given x, given T(x, y_l) and given T(x, y_w). All six go through the
log-prob engine in one forward pass; the reference's six log-probs come from the N-way cache, so no second model is
held. The loss is `posttrain.losses.srpo_loss`, in the form of TRL pull request #1772, with its three faults fixed
(reference log-probs always taken from the cache; `logps/chosen` logs the chosen; the template is never cut).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from posttrain.errors import UsageError
from posttrain.losses import SRPO_SEQUENCE_NAMES, srpo_loss
from posttrain.revision import DEFAULT_REVISION_TEMPLATE, RevisionTemplate, completion_text
from posttrain.trainers.dpo import DPOConfig, DPOTrainer
from posttrain.trainers.logprobs import PAIR, Sequence

# y_<completion> after the revision prompt whose draft is y_<draft> (`revise_<draft>_prompt_ids`).
SRPO_SEQUENCES = (*PAIR, *(Sequence(f"{completion}_given_{draft}", f"revise_{draft}_prompt_ids", f"{completion}_ids")
                           for draft in ("rejected", "chosen") for completion in ("chosen", "rejected")))
assert tuple(s.name for s in SRPO_SEQUENCES) == SRPO_SEQUENCE_NAMES


@dataclass
class SRPOConfig(DPOConfig):
    """`alpha` and `beta` follow TRL pull request #1772 (the paper's settings are not given as code)."""

    alpha: float = field(
        default=0.8,
        metadata={"help": "Weight of the self-improvement loss: L = (1 - alpha) * L_gen + alpha * L_improve "
                          "(pull request #1772's value: 0.8)."},
    )
    beta: float = field(default=0.1, metadata={"help": "Temperature of the log-ratios in both squared losses."})
    revision_template: str = field(
        default=DEFAULT_REVISION_TEMPLATE,
        metadata={"help": "The revision prompt T(x, y): text with {prompt} then {draft}, each exactly once. Saved "
                          "with the model (revision_template.json) so that generation revises with the same one."},
    )

    def __post_init__(self):
        super().__post_init__()
        RevisionTemplate(self.revision_template)  # a ValueError naming what is wrong with a bad template
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if list(self.loss_type) != ["sigmoid"]:
            raise ValueError(f"SRPO computes its own loss; loss_type must be [sigmoid] (unused), got "
                             f"{list(self.loss_type)}")


def revision_rewards(policy: dict, reference: dict, beta: float) -> dict[str, torch.Tensor]:
    """The implied rewards of the two revision pairs (same draft, y_w vs y_l) and of L_gen's pair, per example."""
    ratio = {name: (policy[name] - reference[name]).detach() for name in SRPO_SEQUENCE_NAMES}
    given_rejected = beta * (ratio["chosen_given_rejected"] - ratio["rejected_given_rejected"])
    given_chosen = beta * (ratio["chosen_given_chosen"] - ratio["rejected_given_chosen"])
    gen = beta * ((ratio["chosen_given_rejected"] + ratio["chosen"])
                  - (ratio["rejected_given_chosen"] + ratio["rejected"]))
    return {"rewards/revise_rejected_margins": given_rejected, "rewards/revise_chosen_margins": given_chosen,
            "rewards/revision_margins": (given_rejected + given_chosen) / 2,
            "rewards/revision_accuracies": ((given_rejected > 0).float() + (given_chosen > 0).float()) / 2,
            "rewards/gen_margins": gen, "rewards/gen_accuracies": (gen > 0).float()}


def _revision_columns(example: dict, tokenizer, template: RevisionTemplate, max_length: int | None) -> dict:
    """`revise_<draft>_prompt_ids` for both drafts, within max_length minus the longer completion (empty when the
    template itself leaves no room for that completion: the row is then dropped)."""
    longest = max(len(example["chosen_ids"]), len(example["rejected_ids"]))
    budget = None if max_length is None else max_length - longest
    if budget is not None and budget < template.template_length(tokenizer, example["prompt"]):
        return {"revise_chosen_prompt_ids": [], "revise_rejected_prompt_ids": []}
    return {f"revise_{draft}_prompt_ids": template.prompt_ids(tokenizer, example["prompt"],
                                                              completion_text(example[draft], tokenizer.eos_token),
                                                              budget)
            for draft in ("chosen", "rejected")}


def construction_hook(recipe, tokenizer, train_dataset, eval_dataset) -> dict:
    """No extra trainer arguments: checks, before the run folder is made, that the revision template around the
    first row's prompt leaves at least one of max_length's tokens for a completion."""
    from trl.data_utils import maybe_extract_prompt

    max_length, row = recipe.training.max_length, next(iter(train_dataset), None)
    if max_length is not None and row is not None:  # the ids of an empty draft: the template's length check alone
        RevisionTemplate(recipe.training.revision_template).prompt_ids(
            tokenizer, maybe_extract_prompt(row)["prompt"], "", max_length - 1,
            fix=f"raise max_length (now {max_length}, one token of it kept for the completion) or shorten "
                "revision_template")
    return {}


class SRPOTrainer(DPOTrainer):
    """`srpo_loss` over the six sequences of each pair, in one forward; logs `loss/gen`, `loss/improve` and the
    revision pairs' rewards beside DPO's metrics of the given-x pair (`rewards/accuracies` is generation's)."""

    sequences = SRPO_SEQUENCES
    engine_required = True

    @property
    def revision_template(self) -> RevisionTemplate:
        return RevisionTemplate(self.args.revision_template)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        """TRL's preparation (prompt extraction, EOS, tokenisation), then the two revision prompts per row."""
        from accelerate import PartialState
        from datasets import Dataset

        from posttrain.console import is_silent

        if not isinstance(dataset, Dataset):
            raise UsageError("SRPO needs a map-style dataset (its reference log-probs are precomputed); "
                             "turn streaming off")
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        dataset = dataset.map(_revision_columns, num_proc=args.dataset_num_proc,
                              fn_kwargs={"tokenizer": tokenizer, "template": RevisionTemplate(args.revision_template),
                                         "max_length": args.max_length},
                              desc=f"Adding revision prompts to {dataset_name} dataset")
        kept = dataset.filter(lambda row: len(row["revise_chosen_prompt_ids"]) > 0, num_proc=args.dataset_num_proc,
                              desc=f"Dropping pairs with no room for the revision template from {dataset_name} dataset")
        if len(kept) == 0 and len(dataset):
            raise UsageError(f"no {dataset_name} example leaves room for the revision template within "
                             f"max_length={args.max_length}; raise max_length or shorten revision_template")
        if len(kept) < len(dataset) and PartialState().is_main_process and not is_silent():
            print(f"posttrain: dropped {len(dataset) - len(kept)} of {len(dataset)} {dataset_name} pairs whose "
                  f"completion leaves no room for the revision template within max_length={args.max_length}")
        return kept

    def preference_loss(self, policy, reference):
        loss, gen, improve = srpo_loss(policy.logps, reference, self.beta, self.args.alpha)
        return loss, {"loss/gen": gen, "loss/improve": improve,
                      **revision_rewards(policy.logps, reference, self.beta)}

    def _save(self, output_dir: str | None = None, state_dict=None):
        """The model, and beside it the revision template that generation must revise with."""
        super()._save(output_dir, state_dict)
        self.revision_template.save(output_dir or self.args.output_dir)
