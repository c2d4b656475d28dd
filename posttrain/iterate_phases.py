"""The phases of one iteration of `posttrain iterate` (docs/methods.md §3), each run in its stage folder by
`posttrain.iterate.run_loop`: sample -> judge -> pairs -> precompute -> train -> merge (LoRA only) -> evaluate.

Every phase writes its files atomically or through a resumable cache, so a kill inside a phase loses at most the
work in flight: sampling resumes per chunk of prompts (`generation.cache.generate_cached`), judging per batch of
annotations (`judges.annotate_cached`, inside `posttrain.ranking`), training from its newest checkpoint.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from posttrain.errors import UsageError
from posttrain.generation.cache import generate_cached
from posttrain.generation.decoding import request_seed
from posttrain.generation.loading import load_generator
from posttrain.generation.types import SamplingParams
from posttrain.io import atomic_write_json, read_jsonl, write_jsonl
from posttrain.pipeline import completed, finish

KILL_ENV = "POSTTRAIN_TEST_KILL_AT"  # tests: "iter<t>/<phase>" makes the loop SIGKILL itself inside that phase
SAMPLES, RANKING, PAIRS = "samples.jsonl", "ranking.jsonl", "pairs.jsonl"


def kill_point(label: str) -> None:
    """Fault injection for the resume tests: SIGKILL this process when $POSTTRAIN_TEST_KILL_AT names `label`."""
    if os.environ.get(KILL_ENV) == label:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)


class LazyModel:
    """A `Generator` for a model folder on `backend`, loaded on the first `generate` call (a phase served wholly from
    its cache loads nothing) and released by `close`."""

    def __init__(self, source: str, backend: str, **options):
        self.source, self.backend, self.options = source, backend, options
        self.model_id, self.generator = f"{backend}:{source}", None

    def generate(self, prompts, params, on_result=None):
        if self.generator is None:
            self.generator = load_generator(self.source, self.backend, **self.options)
        if on_result is None:
            return self.generator.generate(prompts, params)
        return self.generator.generate(prompts, params, on_result=on_result)

    def close(self) -> None:
        if hasattr(self.generator, "close"):
            self.generator.close()
        self.generator = None
        gc.collect()


def policy_generator(source: str, loop, trust_remote_code: bool = False) -> LazyModel:
    """pi_t's generator with the loop's backend options (`tensor_parallel_size` reaches vLLM)."""
    from posttrain.generation.loading import resolve_backend

    backend = resolve_backend(loop.generation_backend)
    options = {"batch_size": loop.sample_batch_size} if backend == "transformers" else \
        {"tensor_parallel_size": loop.tensor_parallel_size, "show_progress": False}
    if trust_remote_code:
        options["trust_remote_code"] = True
    return LazyModel(source, backend, **options)


# --- sample ----------------------------------------------------------------------------------------------------


def sample(stage_dir: Path, generator, rows: list[dict], loop, seed: int, label: str) -> dict:
    """K samples per prompt, in chunks of `sample_batch_size` prompts, each chunk one generation call with its own
    seed and its own cache file: a resumed phase draws exactly the samples an uninterrupted one would."""
    started, outputs = time.monotonic(), []
    size = loop.sample_batch_size
    try:
        for chunk, start in enumerate(range(0, len(rows), size)):
            params = SamplingParams(n=loop.samples_per_prompt, temperature=loop.sample_temperature,
                                    top_p=loop.sample_top_p, top_k=loop.sample_top_k,
                                    max_new_tokens=loop.sample_max_new_tokens, seed=request_seed(seed, chunk))
            prompts = [row["prompt"] for row in rows[start:start + size]]
            outputs += generate_cached(generator, prompts, params, stage_dir / f"chunk{chunk:04d}.cache.jsonl",
                                       progress=f"{label} ({chunk + 1}/{-(-len(rows) // size)})")
            kill_point(label)
    finally:
        generator.close()
    write_jsonl(stage_dir / SAMPLES, [
        {**row, "samples": [c.text for c in completions], "sample_tokens": [len(c.token_ids) for c in completions]}
        for row, completions in zip(rows, outputs)])
    tokens = [n for completions in outputs for n in (len(c.token_ids) for c in completions)]
    return {"prompts": len(rows), "samples": len(tokens), "mean_sample_tokens": sum(tokens) / len(tokens),
            "generation_seconds": round(time.monotonic() - started, 1)}


# --- judge and pairs ---------------------------------------------------------------------------------------------


def close_judge(judge) -> None:
    """Release an llm: judge's model (its `ModelPool`), so that the next phase's model has the memory."""
    pool = getattr(getattr(judge, "generator", None), "pool", None)
    if pool is not None:
        pool.close()


def judge_samples(stage_dir: Path, samples_file: Path, judge, judge_config: dict, loop, seed: int,
                  label: str) -> dict:
    """Rank each prompt's K samples with the judge (`posttrain.ranking`); ties and failed annotations are counted."""
    from posttrain.ranking import rank_samples

    rows = list(read_jsonl(samples_file))
    answers = [r.get("answer") for r in rows]
    try:
        ranked = rank_samples(judge, [r["instruction"] for r in rows], [r["samples"] for r in rows],
                              scheme=loop.ranking, answers=None if all(a is None for a in answers) else answers,
                              seed=seed, cache=stage_dir / "annotations.cache.jsonl", judge_config=judge_config,
                              progress=label)
    finally:
        close_judge(judge)
    kill_point(label)
    write_jsonl(stage_dir / RANKING, [r.to_dict() for r in ranked.prompts])
    return ranked.counts()


def make_pairs(stage_dir: Path, samples_file: Path, ranking_file: Path) -> dict:
    """The iteration's preference data: per ranked prompt, its best sample (chosen) and its worst (rejected)."""
    pairs, lengths = [], []
    for row, ranked in zip(read_jsonl(samples_file), read_jsonl(ranking_file), strict=True):
        if ranked.get("chosen") is None:
            continue
        chosen, rejected = row["samples"][ranked["chosen"]], row["samples"][ranked["rejected"]]
        pairs.append({"prompt": row["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
                      "rejected": [{"role": "assistant", "content": rejected}]})
        lengths.append((len(chosen), len(rejected)))
    if not pairs:
        raise UsageError(f"no preference pair in {ranking_file}: the judge ranked no prompt's samples apart (all "
                         f"tied or failed); raise samples_per_prompt or sample_temperature, or use another judge")
    write_jsonl(stage_dir / PAIRS, pairs)
    return {"pairs": len(pairs), "mean_chosen_chars": sum(c for c, _ in lengths) / len(pairs),
            "mean_rejected_chars": sum(r for _, r in lengths) / len(pairs)}


# --- precompute, train, merge ------------------------------------------------------------------------------------


def precompute(stage_dir: Path, recipe_file: Path, label: str) -> dict:
    """Build the iteration's trainer once in this process and drop it: its construction scores the pairs under the
    frozen models (pi_t, and pi_0 for INPO) into the N-way log-prob cache, which the train phase then reads."""
    from accelerate.utils.memory import clear_device_cache

    from posttrain.recipe import load_recipe
    from posttrain.train import build_trainer

    recipe = load_recipe(str(recipe_file), output_dir=str(stage_dir))
    args = recipe.training
    if not getattr(args, "precompute_ref_log_probs", False) or not getattr(args, "ref_logps_cache_dir", None):
        return {"skipped": "no disk cache of frozen log-probs (precompute_ref_log_probs false or "
                           "ref_logps_cache_dir ''): the train phase scores the frozen models itself"}
    trainer = build_trainer(recipe)
    batches = trainer.reference_forward_batches
    del trainer
    clear_device_cache(garbage_collection=True)
    kill_point(label)
    return {"forward_batches": batches}


def train_command(recipe_file: Path, accelerate_config: str | None) -> list[str]:
    """`posttrain train` on the iteration's recipe: under `accelerate launch` with the loop's accelerate config, or
    as one plain process without one."""
    train = ["-m", "posttrain.cli", "train", "--config", str(recipe_file)]
    if not accelerate_config:
        return [sys.executable, *train]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
            *_free_port_option(accelerate_config), *train]


def _free_port_option(accelerate_config: str) -> list[str]:
    """A free rendezvous port for a one-machine launch whose config names none (two loops on one machine would
    otherwise meet on the default port); a multi-node config keeps its own."""
    import socket

    import yaml

    config = yaml.safe_load(Path(accelerate_config).read_text()) or {}
    if config.get("num_machines", 1) != 1 or config.get("main_process_port"):
        return []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return ["--main_process_port", str(s.getsockname()[1])]


def train(stage_dir: Path, recipe_file: Path, accelerate_config: str | None, label: str) -> dict:
    """Run `posttrain train` as a child process into `stage_dir`; it checkpoints, resumes from its newest
    checkpoint when rerun and records its own completion (the record this phase keeps, with the phase's seconds).
    Every process of the phase dies with the loop: the child (plain trainer or launcher) by `die_with_parent` before
    exec, each launched rank by `guards.die_with_loop`, so a killed loop leaves nothing writing into the run."""
    from posttrain.guards import die_with_parent, loop_environment

    started = time.monotonic()
    env = {**{k: v for k, v in os.environ.items() if k != KILL_ENV}, **loop_environment()}
    command = train_command(recipe_file, accelerate_config)
    returncode = subprocess.call(command, env=env, preexec_fn=die_with_parent)
    record = completed(stage_dir)
    if returncode != 0 or record is None:
        raise UsageError(f"the train phase of {label.split('/')[0]} failed ({' '.join(command)} exited with code "
                         f"{returncode}; its output is above); fix the cause and rerun posttrain iterate: finished "
                         f"phases are kept and training resumes from its newest checkpoint")
    return finish(stage_dir, record["result"], record["fingerprint"], time.monotonic() - started)["result"]


def merge(stage_dir: Path, adapter_dir: Path) -> dict:
    """Fold the iteration's LoRA adapter into pi_t (its base): pi_{t+1} is a plain model (merged, not stacked)."""
    from posttrain.export import export

    output = export(adapter_dir, stage_dir / "model", merge_lora_adapter=True, overwrite=True)
    return {"model": str(output)}


# --- evaluate ----------------------------------------------------------------------------------------------------


def greedy_outputs(stage_dir: Path, generator, rows: list[dict], max_new_tokens: int, what: str) -> dict:
    """Greedy outputs on the eval prompts through a resumable cache: texts, token counts and generation seconds."""
    started = time.monotonic()
    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    completions = generate_cached(generator, [r["prompt"] for r in rows], params,
                                  stage_dir / "outputs.cache.jsonl", progress=f"generate {what}")
    texts, tokens = [c[0].text for c in completions], [len(c[0].token_ids) for c in completions]
    write_jsonl(stage_dir / "outputs.jsonl", [{"instruction": r["instruction"], "output": t, "tokens": n}
                                              for r, t, n in zip(rows, texts, tokens)])
    return {"texts": texts, "mean_length_tokens": sum(tokens) / len(tokens),
            "mean_length_chars": sum(map(len, texts)) / len(texts), "seconds": time.monotonic() - started}


def task_accuracy(generator, run) -> tuple[float | None, float]:
    """(the proving-ground accuracy of `posttrain train`'s eval when `eval_task` is set, else None; seconds)."""
    if not run.eval_task:
        return None, 0.0
    from posttrain.evaluation.proving_ground import evaluate_task

    started = time.monotonic()
    accuracy = evaluate_task(generator, run.eval_task, run.eval_num_examples, run.dataset_seed)["accuracy"]
    return accuracy, time.monotonic() - started


def describe_model(stage_dir: Path, generator, rows: list[dict], run, loop) -> dict:
    """Greedy outputs, their mean length and the task accuracy of one model (pi_0, or pi_{t+1} before judging)."""
    try:
        outputs = greedy_outputs(stage_dir, generator, rows, loop.sample_max_new_tokens, generator.source)
        accuracy, seconds = task_accuracy(generator, run)
    finally:
        generator.close()
    return {"accuracy": accuracy, "mean_length_tokens": outputs["mean_length_tokens"],
            "mean_length_chars": outputs["mean_length_chars"],
            "generation_seconds": round(outputs["seconds"] + seconds, 1)}


def evaluate(stage_dir: Path, generator, rows: list[dict], reference_dir: Path, judge, judge_config: dict, run,
             loop, label: str) -> dict:
    """pi_{t+1} against pi_0: accuracy, mean length, and the eval judge's win rate (AlpacaEval conventions) over
    pi_0's greedy outputs on the same held-out prompts."""
    from posttrain.evaluation.winrate import winrate_metrics
    from posttrain.judges import annotate_cached

    described = describe_model(stage_dir, generator, rows, run, loop)
    kill_point(label)
    outputs = [r["output"] for r in read_jsonl(stage_dir / "outputs.jsonl")]
    references = [r["output"] for r in read_jsonl(reference_dir / "outputs.jsonl")]
    started = time.monotonic()
    try:
        judged = annotate_cached(judge, [r["instruction"] for r in rows], references, outputs,
                                 stage_dir / "annotations.cache.jsonl", judge_config,
                                 answers=[r.get("answer") for r in rows], progress="judge vs pi_0")
    finally:
        close_judge(judge)
    preferences = [j["preference"] for j in judged]
    if all(p is None for p in preferences):
        raise UsageError(f"the eval judge failed on all {len(rows)} prompts ({stage_dir}); use another eval_judge")
    metrics = winrate_metrics(preferences, outputs, references)
    atomic_write_json(stage_dir / "winrate.json", metrics)
    return {**described, "win_rate": metrics["win_rate"], "standard_error": metrics["standard_error"],
            "n_failed": metrics["n_failed"], "judge_seconds": round(time.monotonic() - started, 1)}
