"""Padding-free (packed) batches for every DPO-family method (docs/methods.md §9): per-sequence log-probs, the loss
and its gradients equal the padded path's (fp32, CPU) to 1e-5, with full fine-tuning and LoRA; `padding_free: true`
trains from a recipe without TRL's fallback warning; padded and packed runs share one reference cache entry."""

from __future__ import annotations

import dataclasses
import logging

import pytest
import torch

from posttrain.recipe import parse_recipe
from posttrain.registry import METHODS
from posttrain.train import build_trainer, train
from posttrain.trainers.dpo import DPOTrainer

from ..conftest import CPU_SETTINGS

DPO_FAMILY = sorted(name for name, method in METHODS.items()
                    if method.dataset_kind == "preference" and issubclass(method.trainer_class, DPOTrainer))
LORA = {"use_peft": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_modules": "all-linear"}


def _recipe(write_recipe, model_dir, method, output_dir, **extra):
    values = {"method": method, "model_name_or_path": str(model_dir), "dataset_name": "pg:sort8/preference",
              "dataset_num_examples": 8, "output_dir": str(output_dir), "per_device_train_batch_size": 4,
              "max_steps": 1, "max_length": 64, "seed": 0, "logging_steps": 1, "save_strategy": "no", **CPU_SETTINGS,
              **extra}
    return parse_recipe(["--config", write_recipe(values, f"{method}.yaml")])


def assert_equal_to_1e5(got, expected, name=""):
    """Equal to 1e-5 of the larger of 1 and the expected tensor's largest entry: fp32 rounding grows with scale
    (INPO's squared loss is ~1e4 at the start, its gradients ~1e2)."""
    scale = max(1.0, expected.abs().max().item())
    torch.testing.assert_close(got, expected, atol=1e-5 * scale, rtol=0, msg=f"{name}: {got} != {expected}")


def _loss_logps_grads(trainer, batch):
    model = trainer.model
    model.zero_grad()
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    with torch.no_grad():
        logps = trainer.frozen_logps(model, batch)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), logps, grads


def test_every_dpo_family_method_is_covered():
    assert {"dpo", "rpo", "srpo"} <= set(DPO_FAMILY)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("method", DPO_FAMILY)
def test_packed_batch_equals_padded_batch(method, lora, tiny_model_dir, tmp_path, write_recipe):
    trainer = build_trainer(_recipe(write_recipe, tiny_model_dir, method, tmp_path / "run", padding_free=True,
                                    **(LORA if lora else {})))
    packed_collator = trainer.data_collator
    assert packed_collator.padding_free
    examples = [trainer.train_dataset[i] for i in range(4)]
    packed_batch = packed_collator(examples)
    assert packed_batch["input_ids"].size(0) == 1 and "attention_mask" not in packed_batch
    packed = _loss_logps_grads(trainer, packed_batch)
    padded = _loss_logps_grads(trainer, dataclasses.replace(packed_collator, padding_free=False)(examples))
    assert_equal_to_1e5(packed[0], padded[0], "loss")
    for name in trainer.sequence_names:
        assert_equal_to_1e5(packed[1][name], padded[1][name], name)
    assert packed[2].keys() == padded[2].keys() and len(packed[2]) > 0
    for name, grad in packed[2].items():
        assert_equal_to_1e5(grad, padded[2][name], name)


def test_packed_and_chunked_together_equal_the_plain_path(tiny_model_dir, tmp_path, write_recipe):
    trainer = build_trainer(_recipe(write_recipe, tiny_model_dir, "rpo", tmp_path / "run", padding_free=True,
                                    logps_chunk_size=7))
    examples = [trainer.train_dataset[i] for i in range(4)]
    both = _loss_logps_grads(trainer, trainer.data_collator(examples))
    trainer.args.logps_chunk_size = None
    plain = _loss_logps_grads(trainer, dataclasses.replace(trainer.data_collator, padding_free=False)(examples))
    assert_equal_to_1e5(both[0], plain[0], "loss")
    for name, grad in both[2].items():
        assert_equal_to_1e5(grad, plain[2][name], name)


def test_padding_free_recipe_trains_without_trls_fallback(tiny_model_dir, tmp_path, write_recipe, caplog):
    caplog.set_level(logging.WARNING)
    cache = str(tmp_path / "cache")
    runs = {}
    for padding_free in (False, True):
        runs[padding_free] = train(_recipe(write_recipe, tiny_model_dir, "dpo", tmp_path / f"run-{padding_free}",
                                           padding_free=padding_free, ref_logps_cache_dir=cache))
    assert "padding_free" not in caplog.text
    losses = {key: _step1_loss(run_dir) for key, run_dir in runs.items()}
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)


def test_padded_and_packed_runs_share_one_reference_cache_entry(tiny_model_dir, tmp_path, write_recipe):
    """Packed log-probs equal padded ones (as do those of any batch size, which the key leaves out too), so the key
    leaves padding_free out: whichever setting runs first computes, every later run of either setting loads."""
    cache = str(tmp_path / "cache")

    def build(name, padding_free, cache_dir=cache):
        return build_trainer(_recipe(write_recipe, tiny_model_dir, "dpo", tmp_path / name, padding_free=padding_free,
                                     ref_logps_cache_dir=cache_dir))

    first, second, third = build("a", False), build("b", True), build("c", False)
    assert first.reference_forward_batches == 2 and second.reference_forward_batches == 0
    assert third.reference_forward_batches == 0
    fresh = build("d", True, cache_dir="")  # no disk cache: the packed forward itself
    for column in ("ref_chosen_logps", "ref_rejected_logps"):
        cached, computed = (torch.tensor(trainer.train_dataset[column]) for trainer in (second, fresh))
        assert_equal_to_1e5(cached, computed, column)


def _step1_loss(run_dir) -> float:
    from posttrain.io import read_jsonl

    return next(row["loss"] for row in read_jsonl(run_dir / "metrics.jsonl") if "loss" in row)
