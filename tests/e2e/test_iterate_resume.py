"""`posttrain iterate` survives a SIGKILL in every phase (docs/methods.md §3): a real process is killed inside each
phase in turn, each rerun resumes in the killed phase without redoing a finished one, and the final pairs, model and
report equal an uninterrupted run's (CPU runs are deterministic).

The loop's in-process phases die at `posttrain.iterate_phases.kill_point`; the train phase's child process kills the
loop and itself right after saving checkpoint-2, through a `sitecustomize` that adds that callback to the trainer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from posttrain.io import read_json

from ..conftest import CPU_SETTINGS, REPO

pytestmark = pytest.mark.e2e

# (where the loop dies, a line the rerun must print: the evidence that it resumed inside that phase)
KILLS = [("iter0/sample", "reused 4 cached generations"), ("iter0/judge", "reused"),
         ("iter0/pairs", None), ("iter0/precompute", "loaded from cache"), ("iter0/train", "resuming from"),
         ("iter1/evaluate", "reused 8 cached generations")]

KILL_IN_TRAIN = '''import os, signal
if os.environ.get("KILL_LOOP_AT_STEP"):
    import posttrain.train as train_module
    from transformers import TrainerCallback

    class KillLoop(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == int(os.environ["KILL_LOOP_AT_STEP"]):
                os.kill(os.getppid(), signal.SIGKILL)
                os.kill(os.getpid(), signal.SIGKILL)

    build = train_module.build_trainer
    train_module.build_trainer = lambda recipe, callbacks=None: build(recipe, [*(callbacks or []), KillLoop()])
'''


def _recipe(folder: Path, model: Path) -> Path:
    values = {"method": "inpo", "model_name_or_path": str(model), "dataset_name": "pg:sort8/preference",
              "output_dir": str(folder / "loop"), "ref_logps_cache_dir": str(folder / "cache"), "eta": 0.1,
              "learning_rate": 1e-3, "max_length": 64, "max_steps": 4, "save_steps": 2, "logging_steps": 1,
              "per_device_train_batch_size": 2, "seed": 0, "eval_task": "sort8", "eval_num_examples": 8,
              **CPU_SETTINGS, "iterations": 2, "prompt_dataset": "pg:sort8/sft", "prompts_per_iteration": 8,
              "samples_per_prompt": 3, "sample_batch_size": 4, "sample_max_new_tokens": 8,
              "judge": "rule-longer:sort8", "ranking": "all_pairs", "eval_num_prompts": 8,
              "generation_backend": "transformers"}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def _iterate(recipe: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(recipe.parent / "hooks")}
    if kill == "iter0/train":
        env["KILL_LOOP_AT_STEP"] = "2"
    elif kill:
        env["POSTTRAIN_TEST_KILL_AT"] = kill
    return subprocess.run([sys.executable, "-m", "posttrain.cli", "iterate", "--config", str(recipe)], cwd=REPO,
                          env=env, capture_output=True, text=True)


def _records(loop: Path) -> dict[str, int]:
    """Every finished stage (folder relative to the loop) -> its completion record's mtime."""
    return {str(p.parent.relative_to(loop)): p.stat().st_mtime_ns for p in loop.rglob(".done.json")}


def _results(loop: Path) -> dict:
    """What must not depend on the kills: the pairs, the final model's weights and the report's numbers."""
    report = read_json(loop / "report.json")
    return {"pairs": [(loop / f"iter{t}" / "pairs" / "pairs.jsonl").read_bytes() for t in (0, 1)],
            "points": report["points"],
            "counts": [(d["results"]["judge"], d["results"]["pairs"]) for d in report["details"]],
            "model": {k: v.tolist() for k, v in load_file(loop / "iter1" / "train" / "model.safetensors").items()}}


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("uninterrupted")
    proc = _iterate(_recipe(folder, tiny_model_dir))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return _results(folder / "loop")


def test_a_kill_in_any_phase_resumes_in_that_phase(uninterrupted, tiny_model_dir, tmp_path):
    recipe = _recipe(tmp_path, tiny_model_dir)
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(KILL_IN_TRAIN)
    loop, evidence = tmp_path / "loop", None
    for kill, expect in KILLS:
        finished = _records(loop)
        proc = _iterate(recipe, kill)
        output = proc.stdout + proc.stderr
        assert proc.returncode == -signal.SIGKILL, output[-3000:]
        if evidence:
            assert evidence in output, (kill, output[-3000:])
        assert {stage: _records(loop).get(stage) for stage in finished} == finished  # no finished phase redone
        assert all(f"stage {loop / stage} finished earlier; skipped" in output for stage in finished)
        assert not (loop / kill / ".done.json").exists()
        evidence = expect
    proc = _iterate(recipe)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert evidence in proc.stdout + proc.stderr
    assert _results(loop) == uninterrupted
