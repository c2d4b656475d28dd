"""Resuming a run: across topologies, from an intact checkpoint, with whole-run counts and this run's settings.

Topologies: know what launch saved a checkpoint, and refuse or adapt when this one differs.

A DeepSpeed ZeRO checkpoint holds one optimizer shard per process, so it loads only under the same ZeRO stage and
process count. Plain (DDP or single-process) checkpoints hold one full optimizer state and load under any process
count. Without a check, transformers quietly resumes a ZeRO checkpoint under a plain launch with a fresh optimizer
and a restarted learning-rate schedule; here the user either gets a one-line error saying what to do, or asks for
that explicitly with `reset_optimizer_on_resume: true`, in which case the schedule is restored too.

Also here: a damaged checkpoint is named before anything loads (`check_checkpoint_intact`), TRL's token count
continues across a resume, transformers' false "missing tied weights" warning is dropped, and a rerun's changed
settings and logging/save intervals apply from the resumed step on.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from posttrain.errors import UsageError
from posttrain.io import read_json

TOPOLOGY_FILE = "posttrain_topology.json"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
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
        return Topology(**read_json(record))
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
    if not any((Path(checkpoint) / name).is_file() for name in _WEIGHT_FILES):
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

    step = checkpoint_step(checkpoint)

    class RestoreSchedule(TrainerCallback):
        def on_train_begin(self, args, state, control, lr_scheduler=None, **kwargs):
            if lr_scheduler is None:
                return
            with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended here
                warnings.simplefilter("ignore")
                for _ in range(step):
                    lr_scheduler.step()

    return RestoreSchedule()


def checkpoint_step(checkpoint: str | Path) -> int:
    """The global step `checkpoint` was saved at (its trainer_state.json)."""
    return read_json(Path(checkpoint) / "trainer_state.json")["global_step"]


def _checkpoint_problem(checkpoint: Path) -> str | None:
    """What makes `checkpoint` unloadable (a missing or garbled state file, truncated weights or optimizer), else
    None. Reads only headers and zip directories, not the tensors."""
    import zipfile

    from safetensors import safe_open

    try:
        if not isinstance(checkpoint_step(checkpoint), int):
            return "trainer_state.json has no step"
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except (ValueError, KeyError, TypeError):
        return "trainer_state.json is not readable JSON with a global_step"
    for weights in (checkpoint / name for name in _WEIGHT_FILES if name.endswith(".safetensors")):
        if weights.is_file():
            try:
                with safe_open(str(weights), "pt") as handle:  # checks the header against the file's length
                    handle.keys()
            except Exception as err:  # safetensors raises its own error types for every kind of damage
                return f"{weights.name} is truncated or damaged ({str(err).splitlines()[0][:80]})"
    for state in [*checkpoint.glob("*.pt"), *checkpoint.glob("*.pth")]:
        if not zipfile.is_zipfile(state):  # torch.save writes a zip; a cut file loses its central directory
            return f"{state.name} is truncated or damaged"
    return None


def check_checkpoint_intact(checkpoint: str) -> int:
    """The checkpoint's step, or a one-line UsageError naming what is damaged and how to go on (nothing is
    deleted: the user decides)."""
    problem = _checkpoint_problem(Path(checkpoint))
    if problem:
        raise UsageError(f"checkpoint {checkpoint} cannot be resumed: {problem}; delete that folder to resume from "
                         f"the previous checkpoint, or pass --auto_resume false to start the run over")
    return checkpoint_step(checkpoint)


def restore_token_count(trainer, checkpoint: str) -> None:
    """TRL's trainers count `num_tokens` from zero in every `train()` call; continue the count the checkpoint logged,
    so the logged total covers the whole run."""
    history = read_json(Path(checkpoint) / "trainer_state.json").get("log_history", [])
    counts = [entry["num_tokens"] for entry in history if "num_tokens" in entry]
    if counts and hasattr(trainer, "_total_train_tokens"):
        trainer._total_train_tokens = counts[-1]


class TiedWeightsNotMissing:
    """A logging filter for transformers' trainer logger: on resume it reports a model's tied output weights (e.g.
    `lm_head.weight`, which shares the embedding and is not saved on its own) as "missing keys". Drops exactly that
    message when every key it names is tied; any other missing key is still reported."""

    def __init__(self, model):
        self.tied = set(getattr(model, "all_tied_weights_keys", None) or {})

    def filter(self, record) -> bool:
        import ast

        message = record.getMessage()
        if not message.startswith("There were missing keys in the checkpoint model loaded: "):
            return True
        try:
            keys = ast.literal_eval(message.split(": ", 1)[1].rstrip("."))
        except (ValueError, SyntaxError):
            return True
        return not (keys and set(keys) <= self.tied)


def apply_changed_settings_callback():
    """Resuming restores the optimizer's hyperparameters and the schedule's base learning rate from the checkpoint;
    with `continue_with_changes` the run's new values must apply from the next step on. Sets them after the
    checkpoint is loaded (the schedule's shape already follows the new settings)."""
    import warnings

    from transformers import Trainer, TrainerCallback

    class ApplyChangedSettings(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
            if optimizer is None or lr_scheduler is None:
                return
            _, new = Trainer.get_optimizer_cls_and_kwargs(args, model)
            schedule = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
            for group in optimizer.param_groups:
                group.update({k: v for k, v in new.items() if k in group and k != "lr"})
                if group.get("weight_decay"):  # the no-decay group (biases, norms) keeps 0
                    group["weight_decay"] = args.weight_decay
                group["initial_lr"] = args.learning_rate
            schedule.base_lrs = [args.learning_rate] * len(optimizer.param_groups)
            with warnings.catch_warnings():  # get_lr() outside step() warns; it is the closed form here
                warnings.simplefilter("ignore")
                lrs = schedule.get_lr()
            for group, lr in zip(optimizer.param_groups, lrs):
                group["lr"] = lr
            schedule._last_lr = list(lrs)

    return ApplyChangedSettings()


def current_intervals_callback():
    """A resumed Trainer takes `logging_steps`, `eval_steps` and `save_steps` from the checkpoint's trainer state
    (transformers only warns about the difference); a rerun may change them freely, so this run's values apply."""
    from transformers import TrainerCallback

    class UseCurrentIntervals(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            state.compute_steps(args, state.max_steps)

    return UseCurrentIntervals()
