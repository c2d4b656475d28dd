"""Train one recipe: parse -> load model and data -> build the registered trainer -> train -> save -> report.

Launch with `posttrain train --config recipe.yaml` or `accelerate launch scripts/train.py --config recipe.yaml`.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path

from posttrain.console import print_summary, progress_options, quiet_libraries, use_console
from posttrain.data import load_any_dataset, tokenizer_corpus, validate_columns
from posttrain.errors import UsageError
from posttrain.guards import die_with_loop
from posttrain.io import atomic_write_json, file_modes_callback, restore_umask_modes
from posttrain.models import load_causal_lm, load_tokenizer, make_tiny_model, tune_lora_layers
from posttrain.preflight import check_data_format, preflight
from posttrain.recipe import Recipe, parse_recipe
from posttrain.recipe_help import train_help, wants_help
from posttrain.resume import (
    TiedWeightsNotMissing,
    apply_changed_settings_callback,
    batch_change_note,
    check_checkpoint_intact,
    check_resume,
    checkpoint_step,
    current_intervals_callback,
    current_topology,
    restore_schedule_callback,
    restore_token_count,
    topology_callback,
)
from posttrain.runs import (
    LENGTH_FIELDS,
    check_rerun,
    last_checkpoint,
    metrics_callback,
    prepare_run_dir,
    previous_settings,
    record_settings_change,
)

logger = logging.getLogger("posttrain")


def _ensure_model(recipe: Recipe, state) -> None:
    path = recipe.model.model_name_or_path
    if recipe.run.build_tiny_model_if_missing and not Path(path).exists():
        with state.main_process_first():
            if state.is_main_process:
                logger.info("building tiny %s model at %s", recipe.run.tiny_model_family, path)
                make_tiny_model(path, tokenizer_corpus(), family=recipe.run.tiny_model_family,
                                seed=recipe.training.seed, num_layers=recipe.run.tiny_model_num_layers)


def _load_model(recipe: Recipe):
    from accelerate import PartialState
    from trl import get_quantization_config

    model_args = recipe.model
    extra = {}
    quantization = get_quantization_config(model_args)
    if quantization is not None:  # QLoRA: each process holds its quantised copy on its own device
        extra = {"quantization_config": quantization, "device_map": {"": PartialState().local_process_index}}
    return load_causal_lm(model_args.model_name_or_path, revision=model_args.model_revision,
                          trust_remote_code=recipe.training.trust_remote_code, dtype=model_args.dtype,
                          attn_implementation=model_args.attn_implementation, **extra)


def _load_datasets(recipe: Recipe):
    run = recipe.run
    train = load_any_dataset(run.dataset_name, run.dataset_train_split, run.dataset_config,
                             run.dataset_num_examples, run.dataset_seed)
    validate_columns(train, recipe.method.dataset_kind, f"dataset {run.dataset_name!r}")
    evaluation = None
    if str(recipe.training.eval_strategy) not in ("no", "IntervalStrategy.NO"):
        evaluation = load_any_dataset(run.dataset_name, run.dataset_test_split, run.dataset_config,
                                      seed=run.dataset_seed)
    return train, evaluation


def _move_hub_token_to_environment(training) -> None:
    """transformers pickles the training arguments into every checkpoint and model folder (training_args.bin) and
    pushes that file to the hub, so a recipe's `hub_token` must not stay in them; huggingface_hub reads HF_TOKEN."""
    if training.hub_token:
        os.environ["HF_TOKEN"] = training.hub_token
        training.hub_token = None


def build_trainer(recipe: Recipe, callbacks: list | None = None):
    """The registered trainer for `recipe`, with model, tokenizer, data and run-directory logging wired in."""
    from accelerate import PartialState
    from trl import get_peft_config

    # cpu= matters under torchrun on CPU: without it every rank is a lone "main process" until the Trainer sets up.
    state = PartialState(cpu=bool(recipe.training.use_cpu))
    _ensure_model(recipe, state)
    tokenizer = load_tokenizer(recipe.model.model_name_or_path, recipe.model.model_revision,
                               recipe.training.trust_remote_code)
    train, evaluation = _load_datasets(recipe)  # before the model: a data mistake fails fast
    check_data_format(recipe, tokenizer, train, state.is_main_process)
    extra = recipe.method.extra_trainer_kwargs(recipe, tokenizer, train, evaluation)  # a hook's data checks too
    run_dir = prepare_run_dir(recipe, state.is_main_process)  # after the data checks: a mistake writes nothing
    _move_hub_token_to_environment(recipe.training)
    model = _load_model(recipe)
    trainer = recipe.method.trainer_class(
        model=model, args=recipe.training, train_dataset=train, eval_dataset=evaluation,
        processing_class=tokenizer, peft_config=get_peft_config(recipe.model),
        callbacks=[metrics_callback(run_dir), file_modes_callback(), *(callbacks or [])],
        **extra,
    )
    if recipe.model.use_peft:
        tune_lora_layers(trainer.model, _every_forward_autocast(recipe, trainer),
                         autocast_adapter_dtype=recipe.run.lora_autocast_adapter_dtype,
                         cast_input_dtype=recipe.run.lora_cast_input_dtype)
    trainer.add_callback(topology_callback(current_topology(trainer.accelerator)))
    use_console(trainer, recipe.method.report_metrics, recipe.run.verbose)
    return trainer


def _every_forward_autocast(recipe: Recipe, trainer) -> bool:
    """Whether every forward of the policy runs under bf16/fp16 autocast. Trainers that generate in-process (the
    GRPO family) call the bare model outside it, so only preference and SFT trainers qualify."""
    import trl

    mixed = bool(recipe.training.bf16 or recipe.training.fp16)
    return mixed and isinstance(trainer, trl.DPOTrainer | trl.SFTTrainer)


@contextmanager
def _outside_zero3():
    """Treat this process as not under ZeRO-3 for the duration. Under ZeRO-3 `from_pretrained` partitions the model
    and `generate` defaults to `synced_gpus`; both issue collectives that the other ranks, which skip the main-process
    eval, never join, so the run hangs. Restores transformers' DeepSpeed config reference afterwards."""
    from transformers.integrations import deepspeed as hf_deepspeed

    saved = hf_deepspeed._hf_deepspeed_config_weak_ref
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = saved


def _post_training_eval(recipe: Recipe, run_dir: Path, tokenizer) -> dict | None:
    """Judge the saved model on held-out proving-ground prompts (main process; reloads from disk so it works
    the same after DeepSpeed ZeRO-3, where the in-memory weights are partitioned across processes)."""
    run = recipe.run
    if not run.eval_task:
        return None
    from posttrain.evaluation.proving_ground import evaluate_task
    from posttrain.generation import TransformersGenerator

    with _outside_zero3():
        model = TransformersGenerator(load_causal_lm(str(run_dir)), tokenizer, **progress_options("eval model"))
        baseline = TransformersGenerator(load_causal_lm(run.eval_baseline_model), tokenizer,
                                         **progress_options("eval baseline")) if run.eval_baseline_model else None
        return evaluate_task(model, run.eval_task, run.eval_num_examples, run.dataset_seed, baseline)


def _training_length(recipe: Recipe) -> dict:
    """The completion record's fingerprint: a rerun asking for more steps or epochs is not finished."""
    steps = recipe.training.max_steps
    return {"max_steps": steps} if steps > 0 else {"num_train_epochs": recipe.training.num_train_epochs}


def _already_complete(recipe: Recipe, run_dir: Path) -> bool:
    """Whether the run's completion record (`posttrain.pipeline`'s rule) says it finished at this training length.
    A rerun of a finished run must not train again (resuming at max_steps would take one extra step); otherwise a
    stale record is dropped, and `--auto_resume false` always starts over."""
    from posttrain.pipeline import begin

    return begin(run_dir, _training_length(recipe), rerun=not recipe.run.auto_resume) is not None


def _checkpoint_to_resume(recipe: Recipe, run_dir: Path) -> str | None:
    """The checkpoint this run resumes from (explicit, else the newest in run_dir), checked for damage."""
    resume = recipe.training.resume_from_checkpoint
    if resume is None and recipe.run.auto_resume:
        resume = last_checkpoint(run_dir)
    if resume:
        check_checkpoint_intact(resume)
    return resume


def _settings_changes(recipe: Recipe, run_dir: Path, resume: str | None) -> tuple[dict | None, dict]:
    """The settings the resumed (or finished) run trained with (None when there are none), and the training
    settings that differ from them; a rerun that changes them without `--continue_with_changes true` is refused
    (`posttrain.runs.check_rerun`)."""
    old = previous_settings(run_dir, resume) if resume or recipe.run.auto_resume else None
    return old, check_rerun(run_dir, old, recipe) if old is not None else {}


def _record_settings_history(recipe: Recipe, run_dir: Path, resume: str | None, old: dict | None,
                             changes: dict) -> None:
    """Main process: recipe_history.jsonl keeps the steps up to `resume` and gains `old` when settings changed."""
    from accelerate import PartialState

    if PartialState(cpu=bool(recipe.training.use_cpu)).is_main_process:
        record_settings_change(run_dir, old, changes, checkpoint_step(resume) if resume else 0)


@contextmanager
def _tied_weights_not_missing(model):
    """Silence transformers' false "missing lm_head.weight" on resuming a tied-embedding model (see the filter)."""
    trainer_logger, quiet = logging.getLogger("transformers.trainer"), TiedWeightsNotMissing(model)
    trainer_logger.addFilter(quiet)
    try:
        yield
    finally:
        trainer_logger.removeFilter(quiet)


def train(recipe: Recipe, callbacks: list | None = None) -> Path:
    """Run (or resume) the recipe's training; return the run directory. Libraries keep quiet unless `verbose`."""
    with quiet_libraries(recipe.run.verbose):
        return _train(recipe, callbacks)


def _train(recipe: Recipe, callbacks: list | None) -> Path:
    from posttrain.evaluation.report import run_setup, write_report
    from posttrain.guards import StopOnNonFinite, stop_on_signal
    from posttrain.pipeline import finish

    run_dir = Path(recipe.training.output_dir)
    preflight(recipe)  # paths and LoRA targets, before any file is written or any weights load
    resume = _checkpoint_to_resume(recipe, run_dir)
    old, changes = _settings_changes(recipe, run_dir, resume)  # before any model loads or any file is rewritten
    if _already_complete(recipe, run_dir):
        print(f"posttrain: {run_dir} already finished; nothing to do (--auto_resume false starts over)")
        return run_dir
    _record_settings_history(recipe, run_dir, resume, old, changes)
    trainer = build_trainer(recipe, [*(callbacks or []), StopOnNonFinite()])
    if resume:
        restore_token_count(trainer, resume)
        trainer.add_callback(current_intervals_callback())
        if set(changes) - set(LENGTH_FIELDS):  # a longer length alone: the resumed schedule follows it already
            trainer.add_callback(apply_changed_settings_callback())
        if check_resume(resume, trainer.accelerator, recipe.run.reset_optimizer_on_resume):
            trainer.add_callback(restore_schedule_callback(resume))
            trainer.accelerator.print(f"posttrain: resuming weights, step and schedule from {resume} with a fresh "
                                      f"optimizer state (reset_optimizer_on_resume)")
        note = batch_change_note(resume, trainer.accelerator)
        if note:
            trainer.accelerator.print(note)
        trainer.accelerator.print(f"posttrain: resuming from {resume}")
    with stop_on_signal() as stopper, _tied_weights_not_missing(trainer.model):
        trainer.add_callback(stopper)
        try:
            result = trainer.train(resume_from_checkpoint=resume)
        except BaseException:  # e.g. the non-finite guard: end the progress bars so the error gets a line of its own
            trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)
            raise
    stopper.raise_if_stopped(run_dir, trainer.state.global_step)  # never save an interrupted run as final
    trainer.save_model(str(run_dir))
    if trainer.accelerator.is_main_process:
        restore_umask_modes(run_dir)  # safetensors writes the weights 0600
        evaluation = _post_training_eval(recipe, run_dir, trainer.processing_class)
        summary = {"method": recipe.method.name, "model": recipe.model.model_name_or_path,
                   "dataset": recipe.run.dataset_name, "steps": trainer.state.global_step,
                   "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
                   "resumed_from": resume or "-"}
        sections = []
        if evaluation:
            atomic_write_json(run_dir / "eval.json", evaluation)
            summary["eval_accuracy"] = evaluation["accuracy"]
            if "vs_baseline" in evaluation:
                summary["win_rate_vs_baseline"] = evaluation["vs_baseline"]["win_rate"]
            sections.append(_eval_section(evaluation))
        setup = run_setup(recipe.model, recipe.training, current_topology(trainer.accelerator))
        write_report(run_dir, f"{recipe.method.name} run: {run_dir.name}", summary, sections,
                     recipe.method.report_metrics, setup)
        finish(run_dir, summary, _training_length(recipe))  # last: the run's outputs are all written
        print_summary(run_dir, trainer.state.global_step, result.metrics, evaluation)
    trainer.accelerator.wait_for_everyone()
    return run_dir


def _eval_section(evaluation: dict) -> str:
    lines = ["## Proving-ground evaluation", "", f"Task `{evaluation['task']}`, {evaluation['n']} held-out prompts, "
             f"greedy decoding: accuracy **{evaluation['accuracy']:.3f}**."]
    if "vs_baseline" in evaluation:
        wr = evaluation["vs_baseline"]
        lines.append(f"Against the baseline (accuracy {evaluation['baseline_accuracy']:.3f}): win rate "
                     f"{wr['win_rate']:.1f} ± {wr['standard_error']:.1f} ({wr['n_wins']} wins, "
                     f"{wr['n_wins_base']} losses, {wr['n_draws']} ties).")
    return "\n".join(lines)


def main(argv: list[str]) -> Path | None:
    die_with_loop()  # a no-op unless `posttrain iterate` started this process
    if not argv:
        raise UsageError("usage: posttrain train --config <recipe.yaml> [--key value ...] (posttrain train --help)")
    if wants_help(argv):
        print(train_help(argv))
        return None
    run_dir = train(parse_recipe(argv))
    _end_process_group()
    return run_dir


def _end_process_group() -> None:
    """Tear the launched ranks' process group down before the interpreter exits: left to the destructors, a gloo
    worker thread still joinable at exit aborts a rank now and then (`terminate called without an active exception`,
    exit -6) after the run has finished and saved."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
