"""Defect 8 of issue 11: a short training run prints one bar per phase, metric lines and a summary, nothing else."""

from __future__ import annotations

import json
import re

from posttrain.recipe import parse_recipe
from posttrain.train import train

from ..conftest import CPU_SETTINGS

# What the quiet console may print: a phase's bar, a metric line, or a posttrain line.
ALLOWED = re.compile(r"^(train:|eval model:|eval baseline:|step \d+/\d+  loss |posttrain: )")


def test_short_run_prints_bars_metric_lines_and_a_summary_with_the_accuracy(tiny_model_dir, tmp_path,
                                                                            write_recipe, capfd):
    recipe = parse_recipe(["--config", write_recipe({
        "method": "sft", "model_name_or_path": str(tiny_model_dir), "dataset_name": "pg:sort8/sft",
        "dataset_num_examples": 32, "output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 8,
        "max_steps": 4, "logging_steps": 2, "save_strategy": "steps", "save_steps": 2, "max_length": 64,
        "eval_task": "sort8", "eval_num_examples": 8, "eval_baseline_model": str(tiny_model_dir), **CPU_SETTINGS})])
    capfd.readouterr()
    run_dir = train(recipe)
    captured = capfd.readouterr()
    printed = captured.out + captured.err
    pieces = [p.strip() for p in re.split(r"[\r\n]", printed) if p.strip()]
    assert [p for p in pieces if not ALLOWED.match(p)] == []  # no loading/shard/map bars, no metric dicts
    assert "{'loss'" not in printed and "Loading weights" not in printed and "Writing model shards" not in printed
    assert sum(p.startswith("step ") for p in pieces) == 2
    # 2 metric lines, the training bar, 2 eval bars, 3 summary lines
    assert printed.count("\n") == 8
    accuracy = json.loads((run_dir / "eval.json").read_text())["accuracy"]
    assert f"posttrain: eval sort8: accuracy {accuracy:.3f} on 8 held-out prompts" in printed
    assert "win rate vs baseline" in printed and f"posttrain: run folder {run_dir}" in printed


def test_importing_the_grpo_based_trainer_prints_nothing():
    """TRL's GRPO module imports vLLM, which logs a Triton line on CPU, and TRL warns about vLLM's version: neither
    reaches a quiet console (a fresh process, so the import really happens)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import posttrain.trainers.dypo"], capture_output=True, text=True,
                          check=True)
    assert done.stdout == "" and done.stderr == ""
