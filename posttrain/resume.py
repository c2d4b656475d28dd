"""Resuming across topologies: know what launch saved a checkpoint, and refuse or adapt when this one differs.

A DeepSpeed ZeRO checkpoint holds one optimizer shard per process, so it loads only under the same ZeRO stage and
process count. Plain (DDP or single-process) checkpoints hold one full optimizer state and load under any process
count. Without a check, transformers quietly resumes a ZeRO checkpoint under a plain launch with a fresh optimizer
and a restarted learning-rate schedule; here the user either gets a one-line error saying what to do, or asks for
that explicitly with `reset_optimizer_on_resume: true`, in which case the schedule is restored too.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from posttrain.errors import UsageError

TOPOLOGY_FILE = "posttrain_topology.json"
_ZERO_SHARD = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


@dataclass(frozen=True)
class Topology:
    processes: int | None  # None: not recorded (a plain checkpoint written by another tool)
    zero_stage: int  # 0 = no DeepSpeed

    def describe(self) -> str:
        count = "an unknown number of" if self.processes is None else str(self.processes)
        where = f"DeepSpeed ZeRO-{self.zero_stage}" if self.zero_stage else "no DeepSpeed"
        return f"{count} process{'es' if self.processes != 1 else ''} with {where}"


def current_topology(accelerator) -> Topology:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return Topology(accelerator.num_processes, int(plugin.zero_stage) if plugin is not None else 0)


def saved_topology(checkpoint: str | Path) -> Topology:
    """What the checkpoint was saved under: posttrain's record, else inferred from DeepSpeed's shard files."""
    checkpoint = Path(checkpoint)
    record = checkpoint / TOPOLOGY_FILE
    if record.is_file():
        return Topology(**json.loads(record.read_text()))
    latest = checkpoint / "latest"
    if latest.is_file():
        shards = [p for p in (checkpoint / latest.read_text().strip()).glob("*") if _ZERO_SHARD.search(p.name)]
        return Topology(len(shards) or None, -1)  # -1: some ZeRO stage, not recorded
    return Topology(None, 0)


def compatible(saved: Topology, current: Topology) -> bool:
    if not saved.zero_stage and not current.zero_stage:
        return True  # a full optimizer state loads under any process count
    stage_matches = saved.zero_stage == current.zero_stage or saved.zero_stage == -1 and current.zero_stage > 0
    return stage_matches and saved.processes == current.processes


def check_resume(checkpoint: str, accelerator, reset_optimizer: bool) -> bool:
    """Raise a one-line UsageError when `checkpoint` cannot be resumed by this launch. Returns True when the
    optimizer must be started fresh (the user asked for it and the topology differs)."""
    saved, current = saved_topology(checkpoint), current_topology(accelerator)
    if compatible(saved, current):
        return False
    what = f"checkpoint {checkpoint} was saved by {saved.describe()}, but this launch has {current.describe()}"
    relaunch = "relaunch with the accelerate config and --num_processes it was saved under"
    if current.zero_stage:
        raise UsageError(f"{what}, and DeepSpeed cannot load optimizer shards across topologies; {relaunch}, or "
                         f"resume without DeepSpeed and with --reset_optimizer_on_resume true")
    if not reset_optimizer:
        raise UsageError(f"{what}, so its optimizer shards cannot be loaded; {relaunch}, or add "
                         f"--reset_optimizer_on_resume true to continue from its weights, step and learning-rate "
                         f"schedule with a fresh optimizer state")
    if not any((Path(checkpoint) / name).is_file() for name in
               ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")):
        raise UsageError(f"{what}, and it holds only ZeRO shards (no full weights); {relaunch}, or save full weights "
                         f"with zero3_save_16bit_model: true in the accelerate config")
    return True


def batch_change_note(checkpoint: str, accelerator) -> str | None:
    """A plain checkpoint resumed on another process count trains on a different global batch from then on."""
    saved, current = saved_topology(checkpoint), current_topology(accelerator)
    if saved.zero_stage or current.zero_stage or saved.processes in (None, current.processes):
        return None
    return (f"posttrain: {checkpoint} was saved by {saved.processes} processes and resumes on {current.processes}: "
            f"the global batch changes by {current.processes}/{saved.processes} unless per_device_train_batch_size "
            f"or gradient_accumulation_steps is scaled by {saved.processes}/{current.processes}")


def topology_callback(topology: Topology):
    """Records the launch's topology in every checkpoint the Trainer saves."""
    from transformers import TrainerCallback

    from posttrain.io import atomic_write_json

    class RecordTopology(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if state.is_world_process_zero and checkpoint.is_dir():
                atomic_write_json(checkpoint / TOPOLOGY_FILE, asdict(topology))

    return RecordTopology()


def restore_schedule_callback(checkpoint: str):
    """After resuming weights with a fresh optimizer, move the (fresh) learning-rate schedule to the checkpoint's
    step; transformers restores the schedule only together with the optimizer. Fast-forwarding, rather than loading
    the saved scheduler state, follows this run's schedule (e.g. a longer max_steps), as a normal resume does."""
    import warnings

    from transformers import TrainerCallback

    step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]

    class RestoreSchedule(TrainerCallback):
        def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
            if lr_scheduler is None:
                return
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
                warnings.simplefilter("ignore")
                for _ in range(step):
                    lr_scheduler.step()

    return RestoreSchedule()
