"""Session fixtures of the bad-input corpus: a finished and an interrupted tiny run, each built once, on demand."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .corpus import recipe_values, write_recipe


def pytest_configure(config):
    config.addinivalue_line("markers", "bad_inputs: the bad-input corpus (exit 2, one line, nothing damaged)")
    config.addinivalue_line("markers", "process: a corpus case run as a real `posttrain` process")


class SimulatedCrash(Exception):
    """Raised by the fixture's callback to stop a run the way a crash would: checkpoints written, no final model."""


def _crash_after(step: int):
    from transformers import TrainerCallback

    class CrashAfter(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step >= step:
                raise SimulatedCrash(f"crashed after step {state.global_step}")

    return CrashAfter()


def _train(recipe_path: Path, callbacks=None) -> None:
    from posttrain.recipe import parse_recipe
    from posttrain.train import train

    train(parse_recipe(["--config", str(recipe_path)]), callbacks)


@pytest.fixture(scope="session")
def corpus_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bad-inputs")


@pytest.fixture(scope="session")
def run_slot(corpus_root) -> dict[str, Path]:
    """The one place a case's run folder and its recipe live. Runs are trained here and restored here, so the paths
    inside a run (output_dir in run_config.json, the checkpoints' state) are the paths it is rerun at."""
    work = corpus_root / "work"
    work.mkdir()
    return {"run_dir": work / "run", "run_recipe": work / "run.yaml"}


def _pristine_run(kind: str, corpus_root: Path, run_slot: dict[str, Path], tiny_model_dir: Path, max_steps: int,
                  callbacks=None) -> Path:
    """Train in the run slot, then move the run and its recipe to `<corpus_root>/pristine/<kind>[.yaml]`."""
    pristine = corpus_root / "pristine"
    pristine.mkdir(exist_ok=True)
    if run_slot["run_dir"].exists():  # a case's copy of another run
        shutil.rmtree(run_slot["run_dir"])
    values = recipe_values("sft", str(tiny_model_dir), str(run_slot["run_dir"]), {"max_steps": max_steps})
    write_recipe(run_slot["run_recipe"], values)
    try:
        _train(run_slot["run_recipe"], callbacks)
    except SimulatedCrash:
        pass
    shutil.move(run_slot["run_dir"], pristine / kind)
    shutil.move(run_slot["run_recipe"], pristine / f"{kind}.yaml")
    return pristine / kind


@pytest.fixture(scope="session")
def finished_run(corpus_root, run_slot, tiny_model_dir) -> Path:
    """A finished 2-step SFT run (checkpoint-1, checkpoint-2, final model, completion record)."""
    return _pristine_run("finished", corpus_root, run_slot, tiny_model_dir, max_steps=2)


@pytest.fixture(scope="session")
def interrupted_run(corpus_root, run_slot, tiny_model_dir) -> Path:
    """A 4-step SFT run that crashed after step 2: checkpoint-1 and checkpoint-2, no final model."""
    return _pristine_run("interrupted", corpus_root, run_slot, tiny_model_dir, max_steps=4,
                         callbacks=[_crash_after(2)])
