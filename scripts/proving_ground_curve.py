"""SFT learning curve on the proving ground: held-out accuracy after every epoch, with elapsed wall time.

Trains the SFT recipe from a fresh tiny model (built exactly as `posttrain demo` builds it) once per seed, and
judges the in-memory model by greedy exact match at each epoch end. Use it to pick SFT settings that leave the
task only partly learned, so later objectives have room to move.

    python scripts/proving_ground_curve.py --task sort8 --seeds 0 1 --epochs 10 --output runs/curve
    python scripts/proving_ground_curve.py --epochs 4 --set dataset_num_examples=800 --set learning_rate=1e-3

The cosine schedule decays over `--epochs`, so the accuracy after epoch k of a 10-epoch curve is not the accuracy
of a k-epoch run; confirm a chosen setting with a run of exactly that length (`--epochs k`).

Writes `<output>/curve.json` and `<output>/curve.md`. Training wall time excludes the evaluation passes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import yaml

RECIPE = str(Path(__file__).resolve().parents[1] / "recipes/sft/sort8_tiny_cpu.yaml")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="sort8", help="proving-ground sort task: sort6, sort8 or sort10")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=10, help="num_train_epochs (the cosine schedule's length)")
    parser.add_argument("--output", default="runs/curve")
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--eval-examples", type=int, default=500)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe override, e.g. --set learning_rate=5e-4 (repeatable)")
    return parser.parse_args(argv)


def run_seed(args: argparse.Namespace, tiny: Path, seed: int, overrides: dict) -> dict:
    from posttrain.evaluation.proving_ground import epoch_accuracy_callback
    from posttrain.recipe import load_recipe
    from posttrain.train import build_trainer

    recipe = load_recipe(args.recipe, **{
        "model_name_or_path": str(tiny), "dataset_name": f"pg:{args.task}/sft", "output_dir":
        str(Path(args.output) / f"seed{seed}"), "num_train_epochs": args.epochs, "seed": seed,
        "save_strategy": "no", "eval_task": args.task, "eval_num_examples": args.eval_examples, **overrides})
    points: list[dict] = []
    trainer = build_trainer(recipe)
    trainer.add_callback(epoch_accuracy_callback(args.task, trainer.processing_class, args.eval_examples,
                                                 recipe.run.dataset_seed, points))
    began = time.perf_counter()
    trainer.train()
    return {"seed": seed, "points": points, "total_seconds": round(time.perf_counter() - began, 1)}


def write_outputs(output: Path, args: argparse.Namespace, overrides: dict, runs: list[dict]) -> None:
    from posttrain.io import atomic_write_json, atomic_write_text

    settings = {"task": args.task, "epochs": args.epochs, "recipe": args.recipe, "overrides": overrides,
                "eval_examples": args.eval_examples}
    atomic_write_json(output / "curve.json", {"settings": settings, "runs": runs})
    seeds = [r["seed"] for r in runs]
    header = "| epoch | step | " + " | ".join(f"seed {s} acc | seed {s} train s" for s in seeds) + " |"
    lines = [f"# SFT learning curve: {args.task}", "",
             f"Recipe `{args.recipe}`, {args.epochs} epochs (cosine over all of them), overrides "
             f"`{overrides or {}}`; greedy exact match on {args.eval_examples} held-out prompts after each epoch. "
             "Training seconds exclude evaluation.", "", header, "|---|---|" + "---|---|" * len(runs)]
    for i in range(max(len(r["points"]) for r in runs)):
        cells = []
        for run in runs:
            p = run["points"][i] if i < len(run["points"]) else None
            cells += [f"{p['accuracy']:.3f}", f"{p['train_seconds']:.1f}"] if p else ["-", "-"]
        first = next(r["points"][i] for r in runs if i < len(r["points"]))
        lines.append(f"| {first['epoch']} | {first['step']} | " + " | ".join(cells) + " |")
    lines += ["", "Total seconds per seed (training + evaluations): "
              + ", ".join(f"seed {r['seed']}: {r['total_seconds']}" for r in runs), ""]
    atomic_write_text(output / "curve.md", "\n".join(lines))


def main(argv=None) -> list[dict]:
    from posttrain.data.tasks import tokenizer_corpus
    from posttrain.models import make_tiny_model

    args = parse_args(argv)
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    output = Path(args.output)
    tiny = output / "tiny-llama"
    if not tiny.exists():
        make_tiny_model(tiny, tokenizer_corpus(), family="llama", seed=0)  # the same model `posttrain demo` uses
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(args, tiny, seed, overrides))
        write_outputs(output, args, overrides, runs)
    print((output / "curve.md").read_text())
    return runs


if __name__ == "__main__":
    main()
