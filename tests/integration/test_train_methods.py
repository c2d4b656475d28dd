"""A few training steps of every registered method on the tiny model, the run directory, and resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from posttrain.recipe import parse_recipe
from posttrain.registry import METHODS
from posttrain.train import train

from ..conftest import CPU_SETTINGS

DATASET_FOR_KIND = {"sft": "pg:sort8/sft", "preference": "pg:sort8/preference", "verifiable": "pg:sort8/verifiable",
                    "unlearning": "pg:facts/all"}
# Settings a method needs on the 2-layer tiny model: unlearning trains one layer's MLPs (its default, `auto`, reads a
# trace file) on rows holding both forget and retain people (pg:facts/all starts with its 60 forget facts).
METHOD_SETTINGS = {"unlearn": {"unlearn_layers": "1", "dataset_num_examples": 96}}
# Length settings per dataset kind: on-policy (GRPO-family) configs cap the sampled completion instead.
LENGTH_FOR_KIND = {"verifiable": {"max_completion_length": 12}}


def length_settings(method: str) -> dict:
    return LENGTH_FOR_KIND.get(METHODS[method].dataset_kind, {"max_length": 64})


def _recipe(write_recipe, model_dir, method, output_dir, **extra):
    values = {"method": method, "model_name_or_path": str(model_dir),
              "dataset_name": DATASET_FOR_KIND[METHODS[method].dataset_kind], "dataset_num_examples": 32,
              "output_dir": str(output_dir), "per_device_train_batch_size": 8, "max_steps": 4,
              "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "steps", "save_steps": 2,
              **length_settings(method), "seed": 0, **CPU_SETTINGS, **METHOD_SETTINGS.get(method, {}), **extra}
    return parse_recipe(["--config", write_recipe(values, f"{method}.yaml")])


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_trains_and_writes_run_directory(method, tiny_model_dir, tmp_path, write_recipe):
    run_dir = train(_recipe(write_recipe, tiny_model_dir, method, tmp_path / "run", hub_token="hf_" + "s" * 30,
                            eval_task="sort8", eval_num_examples=8, eval_baseline_model=str(tiny_model_dir)))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    if METHODS[method].dataset_kind == "preference":
        assert {"rewards/accuracies", "logps/chosen", "logps/rejected"} <= set(records[0])
    recipe_text = (run_dir / "recipe.yaml").read_text()
    assert f"method: {method}" in recipe_text and "<redacted>" in recipe_text and "hf_sss" not in recipe_text
    assert "hf_sss" not in (run_dir / "run_config.json").read_text()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    report = (run_dir / "report.md").read_text()
    assert "![loss](loss.png)" in report and (run_dir / "loss.png").exists() and (run_dir / "metrics.png").exists()
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["n"] == 8 and 0.0 <= evaluation["accuracy"] <= 1.0
    assert evaluation["vs_baseline"]["n_total"] == 8
    trained, initial = load_file(run_dir / "model.safetensors"), load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)


def test_rerun_resumes_and_matches_an_uninterrupted_run(tiny_model_dir, tmp_path, write_recipe):
    settings = {"lr_scheduler_type": "constant", "report_to": "none"}
    straight = train(_recipe(write_recipe, tiny_model_dir, "sft", tmp_path / "straight", max_steps=6, **settings))
    resumed_dir = tmp_path / "resumed"
    train(_recipe(write_recipe, tiny_model_dir, "sft", resumed_dir, max_steps=4, **settings))
    train(_recipe(write_recipe, tiny_model_dir, "sft", resumed_dir, max_steps=6, **settings))
    assert "checkpoint-4" in (resumed_dir / "report.md").read_text()  # "resumed_from" row
    a, b = load_file(straight / "model.safetensors"), load_file(resumed_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    metrics, stamp = (resumed_dir / "metrics.jsonl").read_text(), (resumed_dir / "model.safetensors").stat().st_mtime_ns
    train(_recipe(write_recipe, tiny_model_dir, "sft", resumed_dir, max_steps=6, **settings))  # already finished
    assert (resumed_dir / "metrics.jsonl").read_text() == metrics  # no extra step, no zero-step summary
    assert (resumed_dir / "model.safetensors").stat().st_mtime_ns == stamp


def _recording_collator_hook(recipe, tokenizer, train_dataset, eval_dataset):
    """A construction hook: a method's own constructor arguments (here, its data collator)."""
    from posttrain.trainers.logprobs import SequenceCollator

    return {"data_collator": SequenceCollator(tokenizer.pad_token_id, max_length=recipe.training.max_length,
                                              pad_to_multiple_of=16)}


def test_build_trainer_passes_the_methods_construction_hook_arguments(monkeypatch, tiny_model_dir, tmp_path,
                                                                      write_recipe):
    import dataclasses

    from posttrain import registry
    from posttrain.train import build_trainer

    hooked = dataclasses.replace(METHODS["dpo"], name="dpo-hooked",
                                 construction_hook_path=f"{__name__}:_recording_collator_hook")
    monkeypatch.setitem(registry.METHODS, "dpo-hooked", hooked)
    trainer = build_trainer(_recipe(write_recipe, tiny_model_dir, "dpo-hooked", tmp_path / "run"))
    assert trainer.data_collator.pad_to_multiple_of == 16  # the hook's collator, not the default (None)
    assert trainer.train_dataset.num_rows == 32 and "ref_chosen_logps" in trainer.train_dataset.column_names
    assert METHODS["dpo"].extra_trainer_kwargs(None, None, None, None) == {}
