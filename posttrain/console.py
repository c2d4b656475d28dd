"""What a run prints: one progress bar per phase, a compact metric line per logging step, a final summary.

By default (`verbose: false`) the libraries are told to keep quiet while a run is on: transformers, datasets and the
Hub stop drawing their loading, shard-writing and dataset-map bars, their loggers (and TRL's, accelerate's, PEFT's
and DeepSpeed's) show errors only, and HF's dict-printing progress callback is replaced by `ConsoleCallback`.
`verbose: true` leaves every library as it is.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

# Loggers of libraries that use the standard `logging` tree (transformers and datasets have their own switches).
LIBRARY_LOGGERS = ("trl", "accelerate", "peft", "DeepSpeed")
VLLM_LEVEL_VARIABLE = "VLLM_LOGGING_LEVEL"
HIDDEN_METRICS = frozenset({"epoch", "num_tokens", "total_flos", "step"})
SHORT_NAMES = {"learning_rate": "lr"}
MAX_LINE_METRICS = 12  # the loss, the method's report metrics, lr and grad_norm come first
# Inside a demo or another pipeline that prints its own line per stage: no bars, metric lines or summaries.
_SILENT: ContextVar[bool] = ContextVar("posttrain_console_silent", default=False)


class _BelowError(logging.Filter):
    """Drops records under ERROR. A filter, not a level: DeepSpeed resets its logger's level when it is imported."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextmanager
def quiet_vllm_import() -> Iterator[None]:
    """Hide what importing vLLM (directly, or through TRL's GRPO) prints that is not an error: vLLM sets its logger
    up from VLLM_LOGGING_LEVEL when first imported (e.g. "Triton ... doesn't include CPU backend"), and TRL warns
    that it supports vLLM only up to an older version (the pinned vLLM is tested with it here)."""
    level = os.environ.get(VLLM_LEVEL_VARIABLE)
    os.environ.setdefault(VLLM_LEVEL_VARIABLE, "ERROR")
    # Some modules log before vLLM's logger is configured, through logging's last-resort handler: a handler on
    # the "vllm" logger takes those records instead.
    vllm_logger, no_output = logging.getLogger("vllm"), logging.NullHandler()
    vllm_logger.addHandler(no_output)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="TRL currently supports vLLM versions")
            yield
    finally:
        vllm_logger.removeHandler(no_output)
        if level is None:
            os.environ.pop(VLLM_LEVEL_VARIABLE, None)


@contextmanager
def quiet_libraries(verbose: bool = False) -> Iterator[None]:
    """While the block runs, libraries show errors only and draw no progress bars (unless `verbose`); the previous
    settings come back afterwards."""
    if verbose:
        yield
        return
    import datasets
    import huggingface_hub.utils as hub
    import transformers.utils.logging as hf_logging

    vllm_quiet = quiet_vllm_import()
    vllm_quiet.__enter__()
    hf_verbosity, hf_bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    datasets_verbosity, datasets_bars = datasets.utils.logging.get_verbosity(), datasets.is_progress_bar_enabled()
    hub_bars_disabled = hub.are_progress_bars_disabled()
    below_error = _BelowError()
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    for library_logger in loggers:
        library_logger.addFilter(below_error)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    hub.disable_progress_bars()
    try:
        yield
    finally:
        for library_logger in loggers:
            library_logger.removeFilter(below_error)
        hf_logging.set_verbosity(hf_verbosity)
        hf_logging.enable_progress_bar() if hf_bars else hf_logging.disable_progress_bar()
        datasets.utils.logging.set_verbosity(datasets_verbosity)
        datasets.enable_progress_bars() if datasets_bars else datasets.disable_progress_bars()
        hub.disable_progress_bars() if hub_bars_disabled else hub.enable_progress_bars()
        vllm_quiet.__exit__(None, None, None)


@contextmanager
def silent() -> Iterator[None]:
    """Runs inside the block print no bars, metric lines or summaries (the caller reports each stage)."""
    token = _SILENT.set(True)
    try:
        yield
    finally:
        _SILENT.reset(token)


def is_silent() -> bool:
    return _SILENT.get()


def format_value(name: str, value) -> str:
    if isinstance(value, int):  # bools too
        return str(value)
    if name == "learning_rate":
        return f"{value:.1e}"
    return f"{value:.4g}"


def metric_line(step: int, max_steps: int, logs: dict, report_metrics: Sequence[str] = ()) -> str:
    """`step 4/10  loss 4.981  <the method's report metrics>  lr 7.9e-04  grad_norm 3.539  <the rest>`, at most
    `MAX_LINE_METRICS` values (every value is in metrics.jsonl)."""
    numbers = {k: v for k, v in logs.items() if k not in HIDDEN_METRICS and isinstance(v, int | float)
               and not (isinstance(v, float) and math.isnan(v))}
    order = [k for k in ("loss", *report_metrics, "learning_rate", "grad_norm") if k in numbers]
    order += [k for k in numbers if k not in order]
    fields = [f"{SHORT_NAMES.get(k, k)} {format_value(k, numbers[k])}" for k in order[:MAX_LINE_METRICS]]
    if len(order) > MAX_LINE_METRICS:  # GRPO logs some 25 values a step; the line stays readable
        fields.append(f"(+{len(order) - MAX_LINE_METRICS} more in metrics.jsonl)")
    return "  ".join([f"step {step}/{max_steps}", *fields])


def summary_lines(run_dir: str | Path, steps: int, train_metrics: dict, evaluation: dict | None) -> list[str]:
    """The lines a finished run ends with: steps, runtime, train loss, eval accuracy and win rate, run folder."""
    trained = f"posttrain: trained {steps} steps in {train_metrics.get('train_runtime', 0.0):.1f} s"
    if "train_loss" in train_metrics:
        trained += f", train loss {train_metrics['train_loss']:.4g}"
    lines = [trained]
    if evaluation:
        line = (f"posttrain: eval {evaluation['task']}: accuracy {evaluation['accuracy']:.3f} on {evaluation['n']} "
                "held-out prompts")
        if "vs_baseline" in evaluation:
            wins = evaluation["vs_baseline"]
            line += (f"; baseline accuracy {evaluation['baseline_accuracy']:.3f}, win rate vs baseline "
                     f"{wins['win_rate']:.1f} ± {wins['standard_error']:.1f}")
        lines.append(line)
    lines.append(f"posttrain: run folder {run_dir} (report.md)")
    return lines


def print_summary(run_dir: str | Path, steps: int, train_metrics: dict, evaluation: dict | None) -> None:
    if not is_silent():
        print("\n".join(summary_lines(run_dir, steps, train_metrics, evaluation)), flush=True)


def console_callback(report_metrics: Sequence[str] = ()):
    """A TrainerCallback drawing one training bar (and one per evaluation) and writing a metric line per log."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class ConsoleCallback(TrainerCallback):
        def __init__(self):
            self.bar, self.eval_bar, self.step = None, None, 0

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.step = state.global_step
                self.bar = tqdm(total=state.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
                                disable=args.disable_tqdm or is_silent())

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(state.global_step - self.step)
                self.step = state.global_step

        def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
            if state.is_world_process_zero and eval_dataloader is not None and hasattr(eval_dataloader, "__len__"):
                if self.eval_bar is None:
                    self.eval_bar = tqdm(total=len(eval_dataloader), desc="eval", leave=False, dynamic_ncols=True,
                                         disable=args.disable_tqdm or is_silent())
                self.eval_bar.update(1)

        def on_evaluate(self, args, state, control, **kwargs):
            if self.eval_bar is not None:
                self.eval_bar.close()
                self.eval_bar = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs or "train_runtime" in logs or is_silent():
                return  # the end-of-training totals go into the summary instead
            tqdm.write(metric_line(state.global_step, state.max_steps, logs, report_metrics))

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return ConsoleCallback()


def use_console(trainer, report_metrics: Sequence[str] = (), verbose: bool = False) -> None:
    """Unless `verbose`, swap the trainer's dict-printing progress callbacks for `console_callback`."""
    if verbose:
        return
    from transformers.trainer import DEFAULT_PROGRESS_CALLBACK  # the notebook bar under Jupyter
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for default in {DEFAULT_PROGRESS_CALLBACK, ProgressCallback, PrinterCallback}:
        trainer.remove_callback(default)
    trainer.add_callback(console_callback(report_metrics))


def progress_options(desc: str) -> dict:
    """`TransformersGenerator` keyword arguments for a generation bar labelled `desc` (none when silent)."""
    return {"show_progress": not is_silent(), "progress_desc": desc}


def resumed_bar(label: str | None, reused: int, what: str, cache, remaining: int):
    """A tqdm bar labelled `label` for the `remaining` items a cache did not hold, after a line saying how many
    `what` the `cache` served (no line and no bar without a label, no bar with nothing remaining)."""
    from tqdm.auto import tqdm

    if label and reused:
        print(f"{label}: reused {reused} cached {what} from {cache}", flush=True)
    return tqdm(total=remaining, desc=label, disable=label is None or not remaining)
