"""Interrupts, the non-finite guard and damaged checkpoints (issue 11, defect 7 and build items 6-8) in isolation."""

from __future__ import annotations

import json
import os
import signal
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from posttrain.errors import Interrupted, UsageError, exit_on_usage_error
from posttrain.guards import StopOnNonFinite, StopOnSignal
from posttrain.resume import check_checkpoint_intact


def test_ctrl_c_in_any_cli_is_one_line_and_exit_130(capsys):
    @exit_on_usage_error
    def command():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        command()
    assert stop.value.code == 130
    assert capsys.readouterr().err == "posttrain: interrupted; rerun the same command to resume\n"


def test_sigterm_in_any_cli_is_one_line_and_exit_143(capsys):
    @exit_on_usage_error
    def command():
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the command")

    with pytest.raises(SystemExit) as stop:
        command()
    assert stop.value.code == 143 and capsys.readouterr().err.count("\n") == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_a_signal_stops_at_the_step_end_with_a_save_and_a_second_aborts_at_once():
    stopper, control = StopOnSignal(), SimpleNamespace(should_save=False, should_training_stop=False)
    args = SimpleNamespace(world_size=1)
    stopper.on_step_end(args, None, control)
    assert not control.should_save
    stopper._handle(signal.SIGTERM, None)
    stopper.on_step_end(args, None, control)
    assert control.should_save and control.should_training_stop
    with pytest.raises(Interrupted) as second:
        stopper._handle(signal.SIGINT, None)
    assert second.value.exit_code == 130


def _model_with_grad(value: float) -> torch.nn.Module:
    model = torch.nn.Linear(2, 1)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, value)
    return model


def test_the_non_finite_guard_names_the_step_and_the_last_good_checkpoint(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    args = SimpleNamespace(fp16=False, output_dir=str(tmp_path), learning_rate=1e-3)
    guard, state = StopOnNonFinite(), SimpleNamespace(global_step=6)
    guard.on_pre_optimizer_step(args, state, None, model=_model_with_grad(0.5))  # finite: nothing happens
    with pytest.raises(UsageError, match=r"at step 7 \(gradient norm inf\).*last good checkpoint: checkpoint-4"):
        guard.on_pre_optimizer_step(args, state, None, model=_model_with_grad(float("inf")))


def _checkpoint(path, step: int = 2):
    path.mkdir()
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    save_file({"w": torch.zeros(64, 64)}, str(path / "model.safetensors"))
    torch.save({"state": torch.zeros(64)}, path / "optimizer.pt")
    return path


@pytest.mark.parametrize("damage, named", [
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:8000]),
     "model.safetensors is truncated"),
    (lambda c: (c / "optimizer.pt").write_bytes((c / "optimizer.pt").read_bytes()[:100]), "optimizer.pt is truncated"),
    (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    (lambda c: (c / "trainer_state.json").write_text('{"global_st'), "trainer_state.json is not readable"),
])
def test_a_damaged_checkpoint_is_named_with_the_fix_and_kept(tmp_path, damage, named):
    checkpoint = _checkpoint(tmp_path / "checkpoint-2")
    assert check_checkpoint_intact(str(checkpoint)) == 2
    damage(checkpoint)
    with pytest.raises(UsageError, match=named) as error:
        check_checkpoint_intact(str(checkpoint))
    assert "delete that folder" in str(error.value) and "--auto_resume false" in str(error.value)
    assert checkpoint.is_dir()
