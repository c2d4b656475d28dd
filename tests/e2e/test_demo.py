"""End to end: the shipped toy recipes through the `posttrain` console command, and a short demo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.demo import CONTROL, demo_methods, run_demo
from posttrain.errors import UsageError

REPO = Path(__file__).resolve().parents[2]


def _posttrain(*args, cwd):
    exe = shutil.which("posttrain", path=str(Path(sys.executable).parent)) or "posttrain"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=cwd)


def test_toy_recipes_run_from_the_command_line(tmp_path):
    """`posttrain train --config recipes/{sft,dpo,rpo}/...` as a user types it (shortened with overrides)."""
    sft = _posttrain("train", "--config", str(REPO / "recipes/sft/sort8_tiny_cpu.yaml"), "--max_steps", "6",
                     "--eval_num_examples", "20", cwd=tmp_path)
    assert sft.returncode == 0, sft.stderr[-2000:]
    assert (tmp_path / "runs/tiny/sort8-llama/config.json").exists()  # built because it was missing
    dpo = _posttrain("train", "--config", str(REPO / "recipes/dpo/sort8_tiny_cpu.yaml"), "--max_steps", "4",
                     "--eval_num_examples", "20", cwd=tmp_path)
    assert dpo.returncode == 0, dpo.stderr[-2000:]
    assert "ref log-probs for train (512 rows, 2 sequences each) computed and cached" in dpo.stdout
    rpo = _posttrain("train", "--config", str(REPO / "recipes/rpo/sort8_tiny_cpu.yaml"), "--max_steps", "4",
                     "--eval_num_examples", "20", cwd=tmp_path)
    assert rpo.returncode == 0, rpo.stderr[-2000:]
    # Same reference model and pairs as the DPO run: RPO reuses its reference log-probs from the disk cache.
    assert "ref log-probs for train (512 rows, 2 sequences each) loaded from cache" in rpo.stdout
    for stage in ("sft", "dpo", "rpo"):
        run_dir = tmp_path / "runs/toy" / stage
        assert (run_dir / "report.md").exists() and (run_dir / "loss.png").exists()
    assert "vs_baseline" in json.loads((tmp_path / "runs/toy/dpo/eval.json").read_text())
    rpo_report = (tmp_path / "runs/toy/rpo/report.md").read_text()
    assert "| loss/sft |" in rpo_report and "| logps/chosen |" in rpo_report and "win rate" in rpo_report


def model_files(seed_dir: Path, stages: list[str]) -> dict[str, int]:
    """Every saved weights file under the stages' folders (a loop stage keeps one per iteration) -> its mtime."""
    return {str(path.relative_to(seed_dir)): path.stat().st_mtime_ns
            for name in stages for path in (seed_dir / name).rglob("model.safetensors")}


def test_demo_headline_table_covers_every_preference_method_and_rerun_skips_stages(tmp_path):
    output = tmp_path / "demo"
    results = run_demo(str(output), seeds=(0,), num_pair_prompts=200, eval_examples=100)
    methods = list(demo_methods())  # preference methods with a toy recipe, then the custom stages (DYPO's)
    assert {"dpo", "rpo", "dypo"} <= set(methods)
    expected = ["sft", *methods, CONTROL]
    assert [r["method"] for r in results["rows"]] == expected == [r["method"] for r in results["means"]]
    sft, *trained = results["rows"]
    assert sft["accuracy"] > 0.05  # an untrained model scores 0: SFT learned the task
    assert results["pairs"][0] > 0
    for row in trained:
        assert 0 <= row["accuracy"] <= 1 and 0 <= row["win_rate_vs_sft"] <= 100
        assert row["change_points"] == pytest.approx(100 * (row["accuracy"] - sft["accuracy"]))
    report = (output / "report.md").read_text()
    assert report.count("| sft | ") == 2 and f"| {CONTROL} (control) | mean |" in report
    assert all(f"| {name} | 0 | " in report and f"| {name} | mean | " in report for name in methods)
    assert json.loads((output / "results.json").read_text())["rows"] == results["rows"]
    weights = model_files(output / "seed0", expected)
    assert all(any(str(path).startswith(f"{name}/") for path in weights) for name in expected)
    (output / "seed0/eval/.done.json").unlink()  # the judged rows are recomputed from the stages' outputs
    again = run_demo(str(output), seeds=(0,), num_pair_prompts=200, eval_examples=100)
    assert again["rows"] == results["rows"]
    assert weights == model_files(output / "seed0", expected)  # no stage trained again, INPO's iterates included
    with pytest.raises(UsageError, match="other settings"):
        run_demo(str(output), seeds=(0,), num_pair_prompts=300, eval_examples=100)


def test_rpo_demo_compares_every_variant_from_one_sft_model(tmp_path):
    from posttrain.demo_rpo import VARIANTS, run_rpo_comparison

    rows = run_rpo_comparison(str(tmp_path / "rpo"), seeds=(0,), num_pair_prompts=200, eval_examples=40)
    assert [r["variant"] for r in rows] == list(VARIANTS)
    assert len({r["sft_accuracy"] for r in rows}) == 1 and len({r["pairs"] for r in rows}) == 1
    for row in rows:
        assert len(row["accuracy_by_epoch"]) == 2 and row["accuracy_by_epoch"][-1] == row["accuracy"]
        assert (row["chosen_logp_last"] is None) == (row["variant"] == "sft-on-chosen")
    report = (tmp_path / "rpo/report.md").read_text()
    assert all(f"| 0 | {name} |" in report for name in VARIANTS)
