"""Train one recipe: parse -> load model and data -> build the registered trainer -> train -> save -> report.

Launch with `posttrain train --config recipe.yaml` or `accelerate launch scripts/train.py --config recipe.yaml`.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

from posttrain.data import load_any_dataset, tokenizer_corpus, validate_columns
from posttrain.errors import UsageError
from posttrain.models import load_causal_lm, load_tokenizer, make_tiny_model
from posttrain.recipe import Recipe, parse_recipe
from posttrain.resume import (
    batch_change_note,
    check_resume,
    current_topology,
    restore_schedule_callback,
    topology_callback,
)
from posttrain.runs import last_checkpoint, metrics_callback, prepare_run_dir

logger = logging.getLogger("posttrain")


def _ensure_model(recipe: Recipe, state) -> None:
    path = recipe.model.model_name_or_path
    if recipe.run.build_tiny_model_if_missing and not Path(path).exists():
        with state.main_process_first():
            if state.is_main_process:
                logger.info("building tiny %s model at %s", recipe.run.tiny_model_family, path)
                make_tiny_model(path, tokenizer_corpus(), family=recipe.run.tiny_model_family,
                                seed=recipe.training.seed)


def _load_model(recipe: Recipe):
    from accelerate import PartialState
    from trl import get_quantization_config

    model_args = recipe.model
    if model_args.load_in_4bit or model_args.load_in_8bit:  # bitsandbytes' quantised layers run on CUDA only
        import importlib.util

        import torch

        flag = "load_in_4bit" if model_args.load_in_4bit else "load_in_8bit"
        lacking = [reason for reason, missing in (
            ("the recipe sets use_cpu: true", recipe.training.use_cpu),
            ("no CUDA GPU is visible", not recipe.training.use_cpu and not torch.cuda.is_available()),
            ("bitsandbytes is not installed", importlib.util.find_spec("bitsandbytes") is None)) if missing]
        if lacking:
            raise UsageError(f"{flag} (QLoRA) needs a CUDA GPU and the bitsandbytes package, but "
                             f"{' and '.join(lacking)}; set {flag} false (plain LoRA) or run on a GPU with "
                             f"`pip install bitsandbytes` and --use_cpu false")
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


def build_trainer(recipe: Recipe, callbacks: list | None = None):
    """The registered trainer for `recipe`, with model, tokenizer, data and run-directory logging wired in."""
    from accelerate import PartialState
    from trl import get_peft_config

    # cpu= matters under torchrun on CPU: without it every rank is a lone "main process" until the Trainer sets up.
    state = PartialState(cpu=bool(recipe.training.use_cpu))
    run_dir = prepare_run_dir(recipe, state.is_main_process)
    _ensure_model(recipe, state)
    tokenizer = load_tokenizer(recipe.model.model_name_or_path, recipe.model.model_revision,
                               recipe.training.trust_remote_code)
    train, evaluation = _load_datasets(recipe)  # before the model: a data mistake fails fast
    model = _load_model(recipe)
    trainer = recipe.method.trainer_class(
        model=model, args=recipe.training, train_dataset=train, eval_dataset=evaluation,
        processing_class=tokenizer, peft_config=get_peft_config(recipe.model),
        callbacks=[metrics_callback(run_dir), *(callbacks or [])],
        **recipe.method.extra_trainer_kwargs(recipe, tokenizer, train, evaluation),
    )
    trainer.add_callback(topology_callback(current_topology(trainer.accelerator)))
    return trainer


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
        model = TransformersGenerator(load_causal_lm(str(run_dir)), tokenizer)
        baseline = TransformersGenerator(load_causal_lm(run.eval_baseline_model), tokenizer) \
            if run.eval_baseline_model else None
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


def train(recipe: Recipe, callbacks: list | None = None) -> Path:
    """Run (or resume) the recipe's training; return the run directory."""
    from posttrain.evaluation.report import write_report
    from posttrain.io import atomic_write_json
    from posttrain.pipeline import finish

    run_dir = Path(recipe.training.output_dir)
    resume = recipe.training.resume_from_checkpoint
    if resume is None and recipe.run.auto_resume:
        resume = last_checkpoint(run_dir)
    if _already_complete(recipe, run_dir):
        print(f"posttrain: {run_dir} already finished; nothing to do (--auto_resume false starts over)")
        return run_dir
    trainer = build_trainer(recipe, callbacks)
    if resume:
        if check_resume(resume, trainer.accelerator, recipe.run.reset_optimizer_on_resume):
            trainer.add_callback(restore_schedule_callback(resume))
            trainer.accelerator.print(f"posttrain: resuming weights, step and schedule from {resume} with a fresh "
                                      f"optimizer state (reset_optimizer_on_resume)")
        note = batch_change_note(resume, trainer.accelerator)
        if note:
            trainer.accelerator.print(note)
        trainer.accelerator.print(f"posttrain: resuming from {resume}")
    result = trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(run_dir))
    if trainer.accelerator.is_main_process:
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
        write_report(run_dir, f"{recipe.method.name} run: {run_dir.name}", summary, sections,
                     recipe.method.report_metrics)
        finish(run_dir, summary, _training_length(recipe))  # last: the run's outputs are all written
        trainer.accelerator.print(f"posttrain: run directory {run_dir} (report.md written)")
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


def main(argv: list[str]) -> Path:
    if "--config" not in " ".join(argv) and not argv:
        raise UsageError("usage: posttrain train --config <recipe.yaml> [--key value ...]")
    return train(parse_recipe(argv))
