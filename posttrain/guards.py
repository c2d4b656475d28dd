"""Stopping training cleanly: on SIGINT/SIGTERM (checkpoint, one line, exit 130/143) and on a non-finite gradient;
and not outliving `posttrain iterate` (`die_with_parent`, `die_with_loop`).

    with stop_on_signal() as stopper:
        trainer.add_callback(stopper)
        trainer.train()
    stopper.raise_if_stopped(run_dir, trainer.state.global_step)   # after a signal: `Interrupted`, no final model
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from transformers import TrainerCallback

from posttrain.errors import Interrupted, UsageError

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _checkpoint_name(run_dir: str | Path) -> str | None:
    from posttrain.runs import last_checkpoint

    checkpoint = last_checkpoint(run_dir)
    return Path(checkpoint).name if checkpoint else None


def _any_process(flag: bool, args) -> bool:
    """Whether any process has `flag` set: every rank must take the same save/stop decision, or a collective save
    waits forever for the ranks that kept training."""
    if args.world_size <= 1:
        return flag
    import torch
    import torch.distributed as dist

    value = torch.tensor(int(flag), device=args.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class StopOnSignal(TrainerCallback):
    """The first SIGINT or SIGTERM finishes the current step, saves a checkpoint and stops training; a second
    one aborts at once."""

    def __init__(self):
        self.signum: int | None = None
        self.stopped = False

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise Interrupted(signum, "interrupted twice; stopped without saving; rerun the same command to resume "
                                      "from the newest checkpoint")
        self.signum = signum

    def on_step_end(self, args, state, control, **kwargs):
        if _any_process(self.signum is not None, args):
            self.signum = self.signum or signal.SIGTERM  # a rank that was not signalled itself exits as SIGTERM
            self.stopped = control.should_save = control.should_training_stop = True

    def raise_if_stopped(self, run_dir: str | Path, step: int) -> None:
        """After `train()` returned: raise `Interrupted` with the resume line if a signal stopped it."""
        if not self.stopped:
            return
        checkpoint = _checkpoint_name(run_dir)
        resume = f"resume from {checkpoint}" if checkpoint else "start again"
        raise Interrupted(self.signum, f"interrupted at step {step}; rerun the same command to {resume}")


@contextlib.contextmanager
def stop_on_signal() -> Iterator[StopOnSignal]:
    """A `StopOnSignal` whose handlers are installed while inside (main thread only; elsewhere signals keep their
    handlers and the callback never fires)."""
    stopper = StopOnSignal()
    if threading.current_thread() is not threading.main_thread():
        yield stopper
        return
    previous = {signum: signal.signal(signum, stopper._handle) for signum in _SIGNALS}
    try:
        yield stopper
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class StopOnNonFinite(TrainerCallback):
    """Stops with a one-line `UsageError` when a step's gradients are not finite, before the optimizer applies them:
    the weights stay those of the last good step and no checkpoint or final model is written from a diverged one.
    Gradients are reduced across processes before this point, so every rank stops at the same step."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        import torch

        if args.fp16:  # fp16's loss scaler expects occasional inf gradients: it skips that step and rescales
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None] if model is not None else []
        if not grads:  # e.g. DeepSpeed keeps its gradients outside the parameters
            return
        norm = torch.nn.utils.get_total_norm(grads)
        if torch.isfinite(norm):
            return
        checkpoint = _checkpoint_name(args.output_dir) or "none (no checkpoint saved yet)"
        raise UsageError(f"non-finite loss or gradient at step {state.global_step + 1} (gradient norm "
                         f"{norm.item()}); nothing from this step was saved; last good checkpoint: {checkpoint}; "
                         f"lower learning_rate (now {args.learning_rate:g}), keep max_grad_norm > 0, or check the "
                         f"data, then rerun with --continue_with_changes true (or --auto_resume false to start "
                         f"over)")


# --- dying with `posttrain iterate` (docs/methods.md §3) -------------------------------------------------------

DIE_WITH_LOOP_ENV = "POSTTRAIN_DIE_WITH_LOOP"  # set by the loop for its train phase: "<process table> <loop pid>"


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the thread that started it exits (PR_SET_PDEATHSIG; Linux only,
    elsewhere a no-op). A child does not inherit it: every process that must die with its parent asks for itself."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


def _process_table() -> str:
    """Which process table a pid refers to: this boot of this machine and this pid namespace ('' if unknown)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() + os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")  # a zombie has died, only not been reaped yet


def loop_environment() -> dict[str, str]:
    """The loop's train phase gets this in its environment: `die_with_loop` in each of its processes reads it."""
    return {DIE_WITH_LOOP_ENV: f"{_process_table()} {os.getpid()}"}


def die_with_loop() -> None:
    """In `posttrain train` started by `posttrain iterate`: die with the parent, as the launched child does. Under
    `accelerate launch` that child is only the launcher and the ranks are its children, which the kernel would
    otherwise leave training into the stage folder that the loop's rerun resumes. A rank whose launcher already died
    before this call (the loop was killed while it started up) is an orphan: it kills itself here."""
    value = os.environ.get(DIE_WITH_LOOP_ENV)
    if not value or not sys.platform.startswith("linux"):
        return
    die_with_parent()
    table, _, pid = value.rpartition(" ")
    if table and table == _process_table() and not _alive(int(pid)):  # another machine's pid says nothing here
        os.kill(os.getpid(), signal.SIGKILL)
