"""The NaN/inf guard (issue 11, build item 8): a non-finite loss stops training with one line naming the step and
the last good checkpoint; no checkpoint or final model is written from the diverged step."""

from __future__ import annotations

import pytest
from transformers import TrainerCallback

from posttrain.cli import main

from ..conftest import CPU_SETTINGS


class PoisonFromStep(TrainerCallback):
    """Makes every forward pass from optimizer step `step` on return NaN (the embeddings' output times NaN)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            model.get_input_embeddings().register_forward_hook(lambda module, inputs, output: output * float("nan"))


def test_a_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path, write_recipe,
                                                                           monkeypatch, capsys):
    import posttrain.train as train_module

    build = train_module.build_trainer
    monkeypatch.setattr(train_module, "build_trainer",
                        lambda recipe, callbacks=None: build(recipe, [*(callbacks or []), PoisonFromStep(5)]))
    run_dir = tmp_path / "run"
    recipe = write_recipe({"method": "sft", "model_name_or_path": str(tiny_model_dir), "dataset_name": "pg:sort8/sft",
                           "dataset_num_examples": 32, "output_dir": str(run_dir), "per_device_train_batch_size": 8,
                           "max_steps": 8, "logging_steps": 1, "save_steps": 2, "max_length": 64, **CPU_SETTINGS})
    with pytest.raises(SystemExit) as stop:
        main(["train", "--config", recipe])
    err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert stop.value.code == 2
    assert err.startswith("posttrain: error: non-finite loss or gradient at step 5 (gradient norm nan)")
    assert "last good checkpoint: checkpoint-4" in err and "lower learning_rate" in err
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not (run_dir / "model.safetensors").exists() and not (run_dir / ".done.json").exists()
