"""The one place methods are listed: name -> (config class, trainer class, dataset kind).

Adding a method takes three steps: write its loss in `posttrain/losses.py`, add its trainer under
`posttrain/trainers/` and an entry here, and add a recipe under `recipes/<name>/`.
Classes are named as import strings so that listing methods does not import TRL (~10 s).
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

    @property
    def config_class(self) -> type:
        return import_string(self.config_path)

    @property
    def trainer_class(self) -> type:
        return import_string(self.trainer_path)


METHODS: dict[str, Method] = {
    method.name: method
    for method in [
        Method("sft", "trl:SFTConfig", "trl:SFTTrainer", "sft", "supervised fine-tuning (TRL baseline)"),
        Method("dpo", "posttrain.trainers.dpo:DPOConfig", "posttrain.trainers.dpo:DPOTrainer", "preference",
               "direct preference optimisation (TRL's, with the cached reference)"),
        Method("rpo", "posttrain.trainers.rpo:RPOConfig", "posttrain.trainers.rpo:RPOTrainer", "preference",
               "DPO + SFT regulariser on the chosen responses (Liu et al. 2024)"),
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
