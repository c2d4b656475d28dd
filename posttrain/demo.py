"""The proving-ground demo: tiny model -> SFT -> on-policy pairs -> DPO -> judged evaluation, per seed.

Every stage is resumable: a finished stage (its report.md exists) is skipped on rerun, and an interrupted
training stage resumes from its newest checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path

from posttrain.data.pairs import sample_preference_pairs
from posttrain.data.proving_ground import proving_ground_rows
from posttrain.data.tasks import get_task, tokenizer_corpus
from posttrain.generation import SamplingParams, TransformersGenerator
from posttrain.io import atomic_write_json, atomic_write_text, read_json, write_jsonl
from posttrain.models import load_causal_lm, load_tokenizer, make_tiny_model
from posttrain.recipe import load_recipe
from posttrain.train import train

RECIPE_DIR = Path(__file__).resolve().parents[1] / "recipes"
RECIPES = {"sft": str(RECIPE_DIR / "sft/sort8_tiny_cpu.yaml"), "dpo": str(RECIPE_DIR / "dpo/sort8_tiny_cpu.yaml")}


def train_stage(recipe_path: str, output_dir: Path, callbacks: list | None = None, **overrides) -> Path:
    """Train one recipe into `output_dir`, or do nothing when that stage already finished (report.md exists)."""
    if (output_dir / "report.md").exists():
        return output_dir
    return train(load_recipe(recipe_path, output_dir=str(output_dir), **overrides), callbacks)


def on_policy_pairs(sft_dir: Path, path: Path, task_name: str, num_prompts: int, seed: int) -> dict:
    """Sample 4 answers per prompt from the SFT model; pair a correct one (chosen) with a wrong one (rejected)."""
    stats_path = path.with_suffix(".stats.json")
    if path.exists() and stats_path.exists():
        return read_json(stats_path)
    task = get_task(task_name)
    generator = TransformersGenerator(load_causal_lm(str(sft_dir)), load_tokenizer(str(sft_dir)))
    rows = proving_ground_rows(f"{task_name}/sft", "train", num_prompts, seed=seed + 1)
    params = SamplingParams(n=4, temperature=1.0, top_k=10, max_new_tokens=task.num_digits + 4, seed=seed)
    pairs, stats = sample_preference_pairs(generator, rows, task.score, params, seed)
    write_jsonl(path, pairs)
    atomic_write_json(stats_path, stats)
    return stats


def _run_seed(root: Path, tiny: Path, seed: int, task_name: str, num_pair_prompts: int, eval_examples: int) -> dict:
    if (root / "result.json").exists():
        return read_json(root / "result.json")
    start = time.time()
    common = {"seed": seed, "eval_task": task_name, "eval_num_examples": eval_examples}
    sft = train_stage(RECIPES["sft"], root / "sft", model_name_or_path=str(tiny), **common)
    stats = on_policy_pairs(sft, root / "pairs.jsonl", task_name, num_pair_prompts, seed)
    dpo = train_stage(RECIPES["dpo"], root / "dpo", model_name_or_path=str(sft), dataset_name=str(root / "pairs.jsonl"),
                 eval_baseline_model=str(sft), dataset_num_examples=100000, **common)
    sft_eval, dpo_eval = read_json(sft / "eval.json"), read_json(dpo / "eval.json")
    result = {"seed": seed, "sft_accuracy": sft_eval["accuracy"], "dpo_accuracy": dpo_eval["accuracy"],
              "change_points": 100 * (dpo_eval["accuracy"] - sft_eval["accuracy"]),
              "dpo_win_rate_vs_sft": dpo_eval["vs_baseline"]["win_rate"],
              "pairs": stats["pairs"], "stage_seconds": round(time.time() - start, 1)}
    atomic_write_json(root / "result.json", result)
    return result


def demo_tiny_model(output: Path) -> Path:
    """The from-scratch starting point every demo seed shares: `<output>/tiny-llama`, built once."""
    tiny = output / "tiny-llama"
    if not tiny.exists():
        make_tiny_model(tiny, tokenizer_corpus(), family="llama", seed=0)
    return tiny


def run_demo(output: str = "runs/demo", seeds: tuple[int, ...] = (0, 1), task_name: str = "sort8",
             num_pair_prompts: int = 3000, eval_examples: int = 500) -> list[dict]:
    """Run the pipeline for each seed; return one result row per seed and write `<output>/report.md`."""
    output = Path(output)
    tiny = demo_tiny_model(output)
    results = [_run_seed(output / f"seed{seed}", tiny, seed, task_name, num_pair_prompts, eval_examples)
               for seed in seeds]
    _write_demo_report(output, task_name, results)
    return results


def _write_demo_report(output: Path, task_name: str, results: list[dict]) -> None:
    header = "| seed | SFT acc | DPO acc | change (pts) | DPO win rate vs SFT | pairs |"
    rows = [f"| {r['seed']} | {r['sft_accuracy']:.3f} | {r['dpo_accuracy']:.3f} | {r['change_points']:+.1f} | "
            f"{r['dpo_win_rate_vs_sft']:.1f} | {r['pairs']} |" for r in results]
    text = "\n".join([f"# Proving-ground demo: {task_name}", "",
                      "SFT from scratch, then DPO on the SFT model's own samples (chosen = correct, rejected = "
                      "wrong), judged by exact match on held-out prompts. Per-seed reports: `seed*/*/report.md`.",
                      "", header, "|---|---|---|---|---|---|", *rows, ""])
    atomic_write_text(output / "report.md", text)
    atomic_write_json(output / "results.json", results)
