"""The run directory: resolved recipe, metrics as JSON lines, TensorBoard logs, resumable checkpoints, report.

    <output_dir>/recipe.yaml        the keys the recipe and command line set (tokens redacted)
    <output_dir>/run_config.json    every resolved field of every config (tokens redacted)
    <output_dir>/metrics.jsonl      one line per logging step
    <output_dir>/tensorboard/       TensorBoard event files
    <output_dir>/checkpoint-*/      HF checkpoints; rerunning the same command resumes from the newest
    <output_dir>/report.md, *.png   written when training ends
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from posttrain.io import append_jsonl, atomic_write_json, atomic_write_text
from posttrain.recipe import Recipe, redact

METRICS_FILE = "metrics.jsonl"


def prepare_run_dir(recipe: Recipe, is_main_process: bool = True) -> Path:
    """Create the run directory, record the recipe, and point TensorBoard into it."""
    run_dir = Path(recipe.training.output_dir)
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(run_dir / "tensorboard")  # read by the TensorBoard callback
    report_to = list(recipe.training.report_to or [])
    if "tensorboard" not in report_to:
        recipe.training.report_to = [*report_to, "tensorboard"]
    if is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        given = redact({k: (v.value if hasattr(v, "value") else v) for k, v in recipe.given.items()})
        atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(given, sort_keys=False))
        atomic_write_json(run_dir / "run_config.json", recipe.resolved())
    return run_dir


def last_checkpoint(run_dir: str | os.PathLike) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(run_dir)) if Path(run_dir).is_dir() else None


def metrics_callback(run_dir: str | os.PathLike):
    """A TrainerCallback that appends every log event to metrics.jsonl (main process only)."""
    from transformers import TrainerCallback

    path = Path(run_dir) / METRICS_FILE

    class MetricsJsonlCallback(TrainerCallback):
        start_step = 0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_step = state.global_step

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not (state.is_world_process_zero and logs):
                return
            if "train_loss" in logs and state.global_step == self.start_step:
                return  # rerun of a finished run: TRL logs a 0.0 summary for zero steps; keep the real one
            append_jsonl(path, {"step": state.global_step, "epoch": state.epoch, **logs})

    return MetricsJsonlCallback()
