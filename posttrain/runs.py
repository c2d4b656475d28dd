"""The run directory: resolved recipe, metrics as JSON lines, TensorBoard logs, resumable checkpoints, report.

    <output_dir>/recipe.yaml        the keys the recipe and command line set (tokens redacted)
    <output_dir>/run_config.json    every resolved field of every config (tokens redacted)
    <output_dir>/recipe_history.jsonl  only after `--continue_with_changes`: the earlier settings and their steps
    <output_dir>/metrics.jsonl      one line per logging step (lines past a resumed checkpoint are dropped)
    <output_dir>/tensorboard/       TensorBoard event files
    <output_dir>/checkpoint-*/      HF checkpoints; rerunning the same command resumes from the newest
    <output_dir>/report.md, *.png   written when training ends
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import UsageError
from posttrain.io import append_jsonl, atomic_write_json, atomic_write_text, read_json, read_jsonl, write_jsonl
from posttrain.pipeline import as_json, completed
from posttrain.recipe import Recipe, redact

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "run_config.json"
HISTORY_FILE = "recipe_history.jsonl"

NON_TRAINING_FIELDS = frozenset({
    # where and how the run is recorded and reported
    "output_dir", "run_name", "project", "report_to", "disable_tqdm", "verbose", "log_level", "log_level_replica",
    "log_on_each_node", "skip_memory_metrics", "include_num_input_tokens_seen", "push_to_hub", "local_rank",
    # resuming itself
    "auto_resume", "continue_with_changes", "reset_optimizer_on_resume", "resume_from_checkpoint",
    "restore_callback_states_from_checkpoint", "build_tiny_model_if_missing",
    # evaluation during and after training (it reads the model, never changes it)
    "do_eval", "do_predict", "eval_strategy", "eval_steps", "eval_delay", "eval_on_start", "eval_accumulation_steps",
    "eval_do_concat_batches", "eval_use_gather_object", "eval_packing", "per_device_eval_batch_size",
    "batch_eval_metrics", "include_for_metrics", "prediction_loss_only", "bf16_full_eval", "fp16_full_eval",
    "dataset_test_split", "eval_task", "eval_num_examples", "eval_baseline_model",
    # speed and memory only: the same numbers come out
    "dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor",
    "dataloader_multiprocessing_context", "dataset_num_proc", "ddp_timeout", "torch_empty_cache_steps",
    "gradient_checkpointing", "gradient_checkpointing_kwargs", "activation_offloading",
})
"""Fields a rerun may change freely: they do not change what is trained (logging, saving, hub, eval, resume
options, speed and memory settings), together with every field whose name starts with one of
`NON_TRAINING_PREFIXES`. Every other field affects training: changing it on a run that has a checkpoint is refused
unless `--continue_with_changes true` (a new `output_dir` or `--auto_resume false` start a fresh run)."""

NON_TRAINING_PREFIXES = ("logging_", "save_", "hub_", "push_to_hub_", "trackio_")

LENGTH_FIELDS = ("max_steps", "num_train_epochs")
"""Training length: a rerun may raise it to train on (recorded in the history like any training change)."""


def affects_training(key: str) -> bool:
    return key not in NON_TRAINING_FIELDS and not key.startswith(NON_TRAINING_PREFIXES)


def previous_settings(run_dir: str | os.PathLike, checkpoint: str | None) -> dict[str, Any] | None:
    """The settings the run to be resumed trained with: those beside `checkpoint` (or in `run_dir` when the run
    finished), or None when nothing was trained or they were not recorded."""
    folder = Path(checkpoint).parent if checkpoint else Path(run_dir) if completed(run_dir) else None
    if folder is None or not (folder / CONFIG_FILE).is_file():
        return None
    return read_json(folder / CONFIG_FILE)


def training_changes(old: dict[str, Any], recipe: Recipe) -> dict[str, tuple[Any, Any]]:
    """The fields that affect training and differ between `old` and `recipe`: key -> (old, new)."""
    new = as_json(recipe.resolved())  # as run_config.json stores them
    return {key: (old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
            if affects_training(key) and old.get(key) != new.get(key)}


def check_rerun(run_dir: str | os.PathLike, old: dict[str, Any], recipe: Recipe) -> dict[str, tuple[Any, Any]]:
    """The training changes since `old`; a one-line UsageError when any (other than a longer training length) was
    not allowed with `continue_with_changes`."""
    changes = training_changes(old, recipe)
    refused = [key for key in changes if key not in LENGTH_FIELDS]
    if refused and not recipe.run.continue_with_changes:
        listed = ", ".join(f"{key} {changes[key][0]!r} -> {changes[key][1]!r}" for key in refused)
        raise UsageError(f"{run_dir} was trained with other settings ({listed}); train them in a new --output_dir, "
                         f"start this run over with --auto_resume false, or continue it with the new values with "
                         f"--continue_with_changes true (both settings are then recorded in {HISTORY_FILE})")
    return changes


def record_settings_change(run_dir: str | os.PathLike, old: dict[str, Any], changes: dict, resume_step: int) -> None:
    """Before a resumed run's new settings replace run_config.json: append the old ones, with the steps they
    trained, to recipe_history.jsonl. Entries past `resume_step` (work that the resume discards) are cut."""
    path = Path(run_dir) / HISTORY_FILE
    history = [entry for entry in read_jsonl(path) if entry["first_step"] <= resume_step]
    for entry in history:
        entry["last_step"] = min(entry["last_step"], resume_step)
    first_step = history[-1]["last_step"] + 1 if history else 1
    if changes and resume_step >= first_step:
        history.append({"first_step": first_step, "last_step": resume_step, "changed_after": changes,
                        "settings": old})
    if history:
        write_jsonl(path, history)
    else:
        path.unlink(missing_ok=True)


def _recipe_header(run_dir: Path) -> str:
    """recipe.yaml's pointer to the history, when the run changed settings on the way."""
    history = list(read_jsonl(run_dir / HISTORY_FILE))
    if not history:
        return ""
    first_step = history[-1]["last_step"] + 1
    return (f"# These settings trained from step {first_step} on; steps 1-{first_step - 1} trained with those in "
            f"{HISTORY_FILE}.\n")


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
        atomic_write_text(run_dir / "recipe.yaml", _recipe_header(run_dir) + yaml.safe_dump(given, sort_keys=False))
        atomic_write_json(run_dir / CONFIG_FILE, recipe.resolved())
    return run_dir


def last_checkpoint(run_dir: str | os.PathLike) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(run_dir)) if Path(run_dir).is_dir() else None


def whole_run_loss(metrics_path: str | os.PathLike) -> float | None:
    """The mean training loss over every logged step of the run (each logged mean weighted by the steps it covers),
    as the Trainer's `train_loss`, but across resumes."""
    points = sorted((record["step"], record["loss"]) for record in read_jsonl(metrics_path) if "loss" in record)
    if not points:
        return None
    weighted, previous = 0.0, 0
    for step, loss in points:
        weighted += loss * (step - previous)
        previous = step
    return weighted / previous if previous else None


def _keep_steps_up_to(path: Path, step: int) -> None:
    """Drop the lines logged after `step` (a resumed checkpoint's), which the resumed run logs again, and earlier
    end-of-training summaries, which the resumed run's summary replaces with whole-run totals."""
    if path.exists():
        write_jsonl(path, [record for record in read_jsonl(path)
                           if record.get("step", 0) <= step and "train_loss" not in record])


def metrics_callback(run_dir: str | os.PathLike):
    """A TrainerCallback that appends every log event to metrics.jsonl (main process only), one line per step across
    resumes, and makes the end-of-training summary (`train_loss`, `train_runtime`) cover the whole run. The runtime
    before a resume travels in the checkpoints (the callback's exported state)."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    path = Path(run_dir) / METRICS_FILE

    class MetricsJsonlCallback(TrainerCallback, ExportableState):
        start_step, seconds_before, began = 0, 0.0, None

        def runtime(self) -> float:
            return self.seconds_before + (time.monotonic() - self.began if self.began is not None else 0.0)

        def state(self) -> dict:
            return {"args": {}, "attributes": {"seconds_before": self.runtime()}}

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_step, self.began = state.global_step, time.monotonic()
            saved = state.stateful_callbacks.get(type(self).__name__) if state.global_step else None
            attributes = saved.get("attributes", {}) if isinstance(saved, dict) else {}
            self.seconds_before = attributes.get("seconds_before", 0.0)
            if state.is_world_process_zero:
                _keep_steps_up_to(path, state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not (state.is_world_process_zero and logs):
                return
            if "train_loss" in logs:
                if state.global_step == self.start_step:
                    return  # rerun of a finished run: TRL logs a 0.0 summary for zero steps; keep the real one
                # in place, so the console and `train()`'s returned metrics report the whole run too
                logs["train_runtime"] = round(self.runtime(), 4)
                loss = whole_run_loss(path)
                if loss is not None:
                    logs["train_loss"] = loss
            append_jsonl(path, {"step": state.global_step, "epoch": state.epoch, **logs})

    return MetricsJsonlCallback()
