"""The unlearning trainer (docs/methods.md §5.2) on the 2-layer tiny model: what trains, the alpha schedule, the
logged loss parts, the best checkpoint, resuming the retain baseline, NPO's cached reference and LUME-format data."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from posttrain.io import read_jsonl
from posttrain.recipe import parse_recipe
from posttrain.train import build_trainer, train
from posttrain.trainers.unlearn import parse_layer_spec

from ..conftest import CPU_SETTINGS, REPO


def _recipe(write_recipe, model_dir, output_dir, **extra):
    values = {"method": "unlearn", "model_name_or_path": str(model_dir), "dataset_name": "pg:facts/all",
              "dataset_num_examples": 96, "output_dir": str(output_dir), "per_device_train_batch_size": 8,
              "max_steps": 1, "learning_rate": 1e-3, "logging_steps": 1, "save_strategy": "no", "max_length": 32,
              "unlearn_layers": "1", "seed": 0, **CPU_SETTINGS, **extra}
    return parse_recipe(["--config", write_recipe(values)])


@pytest.mark.parametrize(("spec", "expected"), [
    ("0-2", [0, 1, 2]), ("1,3,5", [1, 3, 5]), ("0-1,4", [0, 1, 4]), ([2, 0], [0, 2]), (["1", "3-4"], [1, 3, 4]),
    ("all", "all"), (["auto"], "auto"), ("full", "full"),
])
def test_layer_specs(spec, expected):
    assert parse_layer_spec(spec) == expected


def test_only_the_chosen_mlps_train_and_the_optimizer_holds_only_them(tiny_model_dir, tmp_path, write_recipe):
    trainer = build_trainer(_recipe(write_recipe, tiny_model_dir, tmp_path / "run"))
    chosen = {name for name, _ in trainer.model.named_parameters() if name.startswith("model.layers.1.mlp.")}
    assert set(trainer.trained_parameters) == chosen and len(chosen) == 3
    trainer.train()
    params = dict(trainer.model.named_parameters())
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert in_optimizer == {id(params[name]) for name in chosen}
    initial = load_file(tiny_model_dir / "model.safetensors")
    changed = {name for name, value in initial.items() if not torch.equal(params[name].detach(), value)}
    assert changed == chosen  # everything else bit-identical


def test_alpha_is_fixed_in_epoch_0_then_follows_the_rise_over_the_epoch_0_mean(tiny_model_dir, tmp_path,
                                                                                write_recipe):
    trainer = build_trainer(_recipe(write_recipe, tiny_model_dir, tmp_path / "run"))
    trainer.state.epoch = 0.5
    assert trainer._alpha_for(2.0, 4) == (1.2, None) and trainer._alpha_for(4.0, 4) == (1.2, None)
    trainer.state.epoch = 1.0  # baseline: mean over batches (2 + 4) / 2 = 3, so dL = 1 and alpha = 0.3*6 + 0.8
    alpha, delta = trainer._alpha_for(4.0, 4)
    assert delta == pytest.approx(1.0) and alpha == pytest.approx(2.6)
    assert trainer.baseline.batches == 2  # no longer accumulating
    trainer.args.baseline_mean = "examples"  # the authors' code: (2 + 4) / 8 examples = 0.75, dL = 3.25
    alpha, delta = trainer._alpha_for(4.0, 4)
    assert delta == pytest.approx(3.25) and alpha == pytest.approx(2.8)


def test_joint_run_logs_its_parts_keeps_the_best_checkpoint_and_resumes_the_baseline(tiny_model_dir, tmp_path,
                                                                                     write_recipe):
    settings = {"max_steps": 2, "save_strategy": "steps", "save_steps": 1, "eval_strategy": "steps", "eval_steps": 1,
                "per_device_eval_batch_size": 64, "load_best_model_at_end": True, "metric_for_best_model": "eval_loss",
                "greater_is_better": False}
    run_dir = train(_recipe(write_recipe, tiny_model_dir, tmp_path / "run", **settings))
    rows = list(read_jsonl(run_dir / "metrics.jsonl"))
    steps = [row for row in rows if "loss" in row]
    assert len(steps) == 2
    for row in steps:
        assert row["unlearn/alpha"] == 1.2
        assert row["loss"] == pytest.approx(-row["unlearn/ce_forget"] + 1.2 * row["unlearn/ce_retain"], rel=1e-5)
    assert all(math.isfinite(row["eval_loss"]) for row in rows if "eval_loss" in row)
    state = json.loads((run_dir / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{state['best_global_step']}")
    assert state["stateful_callbacks"]["RetainBaseline"]["attributes"]["batches"] == 2
    assert state["stateful_callbacks"]["RetainBaseline"]["attributes"]["alpha"] == steps[-1]["unlearn/alpha"]

    train(_recipe(write_recipe, tiny_model_dir, tmp_path / "run", **{**settings, "max_steps": 3}))
    resumed = json.loads((run_dir / "checkpoint-3" / "trainer_state.json").read_text())
    assert resumed["stateful_callbacks"]["RetainBaseline"]["attributes"]["batches"] == 3  # 2 restored + 1


def test_npo_starts_at_2_ln2_over_beta_from_a_reference_scored_once(tiny_model_dir, tmp_path, write_recipe):
    recipe = _recipe(write_recipe, tiny_model_dir, tmp_path / "run", unlearn_loss="npo", unlearn_layers="full",
                     ref_logps_cache_dir=str(tmp_path / "cache"))
    trainer = build_trainer(recipe)
    assert trainer.reference_forward_batches > 0 and "ref_completion_logps" in trainer.train_dataset.column_names
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["unlearn/npo"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)  # policy = reference at step 1
    again = build_trainer(_recipe(write_recipe, tiny_model_dir, tmp_path / "run2", unlearn_loss="npo",
                                  unlearn_layers="full", ref_logps_cache_dir=str(tmp_path / "cache")))
    assert again.reference_forward_batches == 0  # loaded from the disk cache


def test_auto_layers_and_lume_format_rows(tiny_model_dir, tmp_path, write_recipe):
    data = tmp_path / "lume"
    data.mkdir()
    for name in ("forget.jsonl", "retain.jsonl"):
        shutil.copy(REPO / "tests" / "fixtures" / "lume" / name, data / name)
    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"suggested_layers": [0]}))
    trainer = build_trainer(_recipe(write_recipe, tiny_model_dir, tmp_path / "run", dataset_name=str(data),
                                    dataset_num_examples=None, unlearn_layers="auto", trace_file=str(trace),
                                    unlearn_loss="gd", max_length=48))
    assert trainer.trained_parameters and all(n.startswith("model.layers.0.mlp.") for n in trainer.trained_parameters)
    assert {"prompt", "completion"} <= set(trainer.train_dataset.column_names)
    trainer.train()
    assert math.isfinite(trainer.state.log_history[0]["loss"])
