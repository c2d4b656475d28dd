"""Proving-ground evidence for RPO (METHODS.md §1): DPO vs RPO (sum, mean, token) vs an SFT-on-chosen control.

Per seed, from one SFT checkpoint and one set of on-policy pairs (the `posttrain demo` stages), every variant is
trained with the same data, optimiser and schedule. Recorded over training: the chosen log-prob (from the trainer's
logs), held-out accuracy after each epoch, and the final rule-judge win rate against the SFT model.
The paper's claim to check: RPO keeps the chosen log-prob from collapsing where DPO lets it fall, with accuracy and
win rate at least DPO's. The SFT-on-chosen control separates the SFT term's own effect from preference learning.
Each variant is a resumable stage: rerunning skips finished ones.
"""

from __future__ import annotations

import json
from pathlib import Path

from posttrain.demo import RECIPE_DIR, RECIPES, demo_tiny_model, on_policy_pairs, train_stage
from posttrain.evaluation.proving_ground import epoch_accuracy_callback
from posttrain.io import atomic_write_json, atomic_write_text, read_json, read_jsonl, write_jsonl
from posttrain.models import load_tokenizer

RPO_RECIPE = str(RECIPE_DIR / "rpo/sort8_tiny_cpu.yaml")
# name -> (recipe, overrides). All share lr 1e-4, 2 epochs, batch 16, cosine (the DPO/RPO toy recipes' settings).
VARIANTS: dict[str, tuple[str, dict]] = {
    "dpo": (RECIPES["dpo"], {}),
    "rpo-sum": (RPO_RECIPE, {"sft_normalization": "sum"}),
    "rpo-mean": (RPO_RECIPE, {"sft_normalization": "mean"}),
    "rpo-token": (RPO_RECIPE, {"sft_normalization": "token"}),
    "sft-on-chosen": (RECIPES["sft"], {"num_train_epochs": 2, "per_device_train_batch_size": 16,
                                       "learning_rate": 1e-4, "warmup_steps": 0}),
}


def _chosen_as_sft(pairs: Path) -> Path:
    path = pairs.with_name("chosen_sft.jsonl")
    if not path.exists():
        write_jsonl(path, [{"prompt": row["prompt"], "completion": row["chosen"]} for row in read_jsonl(pairs)])
    return path


def _logged(run_dir: Path, key: str) -> list[float]:
    return [row[key] for row in read_jsonl(run_dir / "metrics.jsonl") if key in row]


def _train_variant(name: str, root: Path, sft: Path, pairs: Path, common: dict) -> dict:
    recipe, overrides = VARIANTS[name]
    data = _chosen_as_sft(pairs) if name == "sft-on-chosen" else pairs
    run_dir, points_file = root / name, root / name / "epoch_accuracy.json"
    points: list[dict] = []
    callback = epoch_accuracy_callback(common["eval_task"], load_tokenizer(str(sft)), common["eval_num_examples"],
                                       0, points)
    train_stage(recipe, run_dir, [callback], model_name_or_path=str(sft), dataset_name=str(data),
                eval_baseline_model=str(sft), dataset_num_examples=100000, **common, **overrides)
    if points:
        atomic_write_json(points_file, points)
    evaluation = read_json(run_dir / "eval.json")
    chosen = _logged(run_dir, "logps/chosen")
    return {"variant": name, "accuracy": evaluation["accuracy"],
            "accuracy_by_epoch": [p["accuracy"] for p in read_json(points_file)] if points_file.exists() else [],
            "win_rate_vs_sft": evaluation["vs_baseline"]["win_rate"],
            "win_rate_se": evaluation["vs_baseline"]["standard_error"],
            "chosen_logp_first": chosen[0] if chosen else None, "chosen_logp_last": chosen[-1] if chosen else None,
            "chosen_logp_min": min(chosen) if chosen else None}


def run_rpo_comparison(output: str = "runs/demo-rpo", seeds: tuple[int, ...] = (0, 1), task_name: str = "sort8",
                       num_pair_prompts: int = 3000, eval_examples: int = 500) -> list[dict]:
    """Train every variant for every seed; write `<output>/report.md` and `results.json`; return the rows."""
    output = Path(output)
    tiny = demo_tiny_model(output)
    rows = []
    for seed in seeds:
        root = output / f"seed{seed}"
        common = {"seed": seed, "eval_task": task_name, "eval_num_examples": eval_examples}
        sft = train_stage(RECIPES["sft"], root / "sft", model_name_or_path=str(tiny), **common)
        stats = on_policy_pairs(sft, root / "pairs.jsonl", task_name, num_pair_prompts, seed)
        sft_accuracy = read_json(sft / "eval.json")["accuracy"]
        for name in VARIANTS:
            row = _train_variant(name, root, sft, root / "pairs.jsonl", common)
            rows.append({"seed": seed, "sft_accuracy": sft_accuracy, "pairs": stats["pairs"], **row})
            _write_report(output, rows)
    return rows


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _write_report(output: Path, rows: list[dict]) -> None:
    header = ("| seed | variant | chosen logp start -> end (min) | acc by epoch | final acc | change vs SFT (pts) "
              "| win rate vs SFT |")
    lines = ["# RPO on the proving ground: DPO vs RPO (three SFT normalisations) vs SFT on chosen", "",
             "sort8; one SFT checkpoint and one set of on-policy pairs per seed; lr 1e-4, 2 epochs, batch 16, "
             "beta 0.1, RPO eta 1.0; rule-judge win rate over the seed's SFT model on 500 held-out prompts.", "",
             header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        trend = (f"{_fmt(r['chosen_logp_first'], '.2f')} -> {_fmt(r['chosen_logp_last'], '.2f')} "
                 f"({_fmt(r['chosen_logp_min'], '.2f')})")
        by_epoch = " / ".join(f"{a:.3f}" for a in r["accuracy_by_epoch"]) or "-"
        lines.append(f"| {r['seed']} | {r['variant']} | {trend} | {by_epoch} | {r['accuracy']:.3f} | "
                     f"{100 * (r['accuracy'] - r['sft_accuracy']):+.1f} | {r['win_rate_vs_sft']:.1f} "
                     f"± {r['win_rate_se']:.1f} |")
    lines += ["", "SFT accuracy per seed: " + ", ".join(sorted({f"seed {r['seed']}: {r['sft_accuracy']:.3f} "
                                                              f"({r['pairs']} pairs)" for r in rows})), ""]
    atomic_write_text(output / "report.md", "\n".join(lines))
    atomic_write_json(output / "results.json", rows)


if __name__ == "__main__":
    print(json.dumps(run_rpo_comparison(), indent=1))
