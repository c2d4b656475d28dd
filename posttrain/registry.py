"""The one place methods are listed: name -> (config class, trainer class, dataset kind, construction hook).

Adding a method takes three steps: write its loss in `posttrain/losses.py`, add its trainer under
`posttrain/trainers/` and an entry here, and add a recipe under `recipes/<name>/`.
Classes are named as import strings so that listing methods does not import TRL (~10 s).

A method whose trainer needs more than the common constructor arguments (model, args, datasets, tokenizer, PEFT
config, callbacks) names a construction hook, `hook(recipe, tokenizer, train_dataset, eval_dataset) -> dict`, whose
result is passed to the trainer as extra keyword arguments: reward functions, a data collator, extra datasets.
`report_metrics` are the logged metrics its run report plots beside the common ones.
"""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from posttrain.errors import UsageError


def import_string(path: str):
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Method:
    name: str
    config_path: str
    trainer_path: str
    dataset_kind: str
    summary: str
    construction_hook_path: str | None = None
    report_metrics: tuple[str, ...] = ()
    toy_recipe: str | None = None  # the proving-ground recipe (relative to the repository), used by the demo

    @property
    def config_class(self) -> type:
        return import_string(self.config_path)

    @property
    def trainer_class(self) -> type:
        return import_string(self.trainer_path)

    def extra_trainer_kwargs(self, recipe, tokenizer, train_dataset, eval_dataset) -> dict:
        """The method's own constructor arguments for its trainer ({} for methods without a hook)."""
        if self.construction_hook_path is None:
            return {}
        return import_string(self.construction_hook_path)(recipe, tokenizer, train_dataset, eval_dataset)


DPO_METRICS = ("rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "rewards/chosen",
               "rewards/rejected")

METHODS: dict[str, Method] = {
    method.name: method
    for method in [
        Method("sft", "trl:SFTConfig", "trl:SFTTrainer", "sft", "supervised fine-tuning (TRL baseline)",
               toy_recipe="recipes/sft/sort8_tiny_cpu.yaml"),
        Method("dpo", "posttrain.trainers.dpo:DPOConfig", "posttrain.trainers.dpo:DPOTrainer", "preference",
               "direct preference optimisation (sigmoid loss, through the log-prob engine and the reference cache)",
               report_metrics=DPO_METRICS, toy_recipe="recipes/dpo/sort8_tiny_cpu.yaml"),
        Method("rpo", "posttrain.trainers.rpo:RPOConfig", "posttrain.trainers.rpo:RPOTrainer", "preference",
               "DPO + SFT regulariser on the chosen responses (Liu et al. 2024)",
               report_metrics=("loss/dpo", "loss/sft", *DPO_METRICS), toy_recipe="recipes/rpo/sort8_tiny_cpu.yaml"),
        Method("srpo", "posttrain.trainers.srpo:SRPOConfig", "posttrain.trainers.srpo:SRPOTrainer", "preference",
               "self-improving robust preference optimisation: generator and self-reviser (Choi et al. 2024)",
               report_metrics=("loss/gen", "loss/improve", "rewards/revision_accuracies", "rewards/revision_margins",
                               "rewards/gen_accuracies", *DPO_METRICS),
               construction_hook_path="posttrain.trainers.srpo:construction_hook",
               toy_recipe="recipes/srpo/sort8_tiny_cpu.yaml"),
        Method("dypo", "posttrain.trainers.dypo:DYPOConfig", "posttrain.trainers.dypo:DYPOTrainer", "verifiable",
               "GRPO gated per group: SFT on a teacher trace when all rollouts fail, GRPO + group alignment loss when "
               "mixed (Zhu et al. 2026)",
               construction_hook_path="posttrain.trainers.dypo_rewards:construction_hook",
               report_metrics=("dypo/hard_share", "dypo/mid_share", "dypo/easy_share", "reward", "loss/grpo",
                               "loss/gal", "loss/sft"),
               toy_recipe="recipes/dypo/sort8_tiny_cpu.yaml"),
        Method("unlearn", "posttrain.trainers.unlearn:UnlearnConfig", "posttrain.trainers.unlearn:UnlearnTrainer",
               "unlearning", "layer-frozen unlearning: -CE_forget + adaptive alpha * CE_retain on the MLPs of traced "
               "layers (Agrawal & Huang 2025); unlearn_loss ga, gd or npo gives the baselines",
               construction_hook_path="posttrain.trainers.unlearn:construction_hook",
               report_metrics=("unlearn/alpha", "unlearn/ce_forget", "unlearn/ce_retain", "unlearn/delta_retain"),
               toy_recipe="recipes/unlearn/facts_tiny_cpu.yaml"),
        Method("inpo", "posttrain.trainers.inpo:INPOConfig", "posttrain.trainers.inpo:INPOTrainer", "preference",
               "one iteration of iterative Nash policy optimisation: a squared loss on the margin against pi_ref "
               "and the previous iterate, both precomputed (Zhang et al. 2024)",
               construction_hook_path="posttrain.trainers.inpo:construction_hook",
               report_metrics=("inpo/residual", "inpo/policy_margin", "inpo/target", "inpo/ref_margin",
                               "inpo/prev_margin", *DPO_METRICS),
               toy_recipe="recipes/inpo/sort8_tiny_cpu.yaml"),
    ]
}


def closest(name: str, choices) -> str:
    """' (did you mean 'x'?)' for the closest valid choice, or '' when nothing is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise UsageError(f"unknown method {name!r}{closest(name, METHODS)} (registered: {', '.join(METHODS)})")
    return METHODS[name]
