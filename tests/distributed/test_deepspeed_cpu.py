"""Two-process DeepSpeed ZeRO-3 training on CPU through `accelerate launch`, on a tiny model built in a tmp dir.

Checks that every method's run finishes, writes its run directory, saves a full (gathered, not partitioned) HF
checkpoint, runs the main-process post-training eval without hanging the other rank, and resumes when rerun; that the
step-1 loss equals a single-process run's on the same global batch; and that a 2-process ZeRO-3 checkpoint resumed by
one plain process fails with a clear error, or continues when asked to with a fresh optimizer.
The first DeepSpeed run on a machine compiles a small shared-memory op (about a minute, then cached).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from posttrain.io import read_jsonl
from posttrain.registry import METHODS

from .launching import REPO, TRAIN, launch, run_plain

pytestmark = pytest.mark.distributed

PER_DEVICE_BATCH = 8


# What a method's toy recipe needs changed for the 2-layer tiny model: unlearning's traced layers are those of the
# 8-layer facts model, and its rows must hold retain people as well as the 60 forget facts pg:facts/all starts with.
TOY_OVERRIDES = {"unlearn": ("--unlearn_layers", "1", "--dataset_num_examples", "96")}


def _recipe_args(method: str, model: Path, output_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(REPO / METHODS[method].toy_recipe),
            "--model_name_or_path", str(model), "--output_dir", str(output_dir),
            "--max_steps", "3", "--save_steps", "3", "--logging_steps", "1", "--dataset_num_examples", "64",
            "--per_device_train_batch_size", str(PER_DEVICE_BATCH), "--build_tiny_model_if_missing", "false",
            *TOY_OVERRIDES.get(method, ()), *extra]


def _launch(method: str, model: Path, output_dir: Path, *extra: str, cache: Path | None = None
            ) -> subprocess.CompletedProcess:
    """2 processes, DeepSpeed ZeRO-3, PER_DEVICE_BATCH each."""
    return launch(TRAIN, *_recipe_args(method, model, output_dir, *extra),
                  env={"POSTTRAIN_CACHE": str(cache)} if cache else None)


def _single_process(method: str, model: Path, output_dir: Path, *extra: str, returncode: int = 0,
                    cache: Path | None = None) -> subprocess.CompletedProcess:
    """One plain process (no accelerate launch, no DeepSpeed)."""
    return run_plain(TRAIN, *_recipe_args(method, model, output_dir, *extra), returncode=returncode,
                     env={"POSTTRAIN_CACHE": str(cache)} if cache else None)


def _metrics(run_dir: Path) -> list[dict]:
    return list(read_jsonl(run_dir / "metrics.jsonl"))


def _step_loss(run_dir: Path, step: int) -> float:
    return next(row["loss"] for row in _metrics(run_dir) if row.get("step") == step and "loss" in row)


def _assert_step1_loss_matches_single_process(method: str, model: Path, zero3_dir: Path, tmp_path: Path) -> None:
    """Same data, seed and global batch (2 x PER_DEVICE_BATCH) in one process: the step-1 loss must agree."""
    single = tmp_path / f"{method}-single"
    _single_process(method, model, single, "--per_device_train_batch_size", str(2 * PER_DEVICE_BATCH),
                    "--max_steps", "1", "--eval_task", "", cache=tmp_path / "single-cache")
    assert abs(_step_loss(zero3_dir, 1) - _step_loss(single, 1)) <= 1e-4


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def _check_run_dir(run_dir: Path, input_model: Path) -> None:
    assert (run_dir / "report.md").is_file()
    losses = [row["loss"] for row in _metrics(run_dir) if "loss" in row]
    assert losses and all(math.isfinite(loss) for loss in losses), _metrics(run_dir)
    # ZeRO-3 partitions parameters across ranks; the saved model must be gathered to full shapes.
    assert (run_dir / "model.safetensors").is_file()
    assert _shapes(run_dir) == _shapes(input_model)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", tokenizer_corpus())


def test_dpo_zero3_trains_saves_full_model_evaluates_and_resumes(tiny_model, tmp_path):
    """Then resumes on the same topology, and (refused, then with an explicit optimizer reset) on one process."""
    run_dir = tmp_path / "dpo"
    args = ("--eval_task", "sort8", "--eval_num_examples", "8", "--eval_baseline_model", str(tiny_model))
    _launch("dpo", tiny_model, run_dir, *args)
    _check_run_dir(run_dir, tiny_model)
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["n"] == 8 and "vs_baseline" in evaluation
    assert (run_dir / "checkpoint-3").is_dir()

    rerun = _launch("dpo", tiny_model, run_dir, "--eval_task", "", "--max_steps", "4")  # extend the finished run
    assert f"resuming from {run_dir / 'checkpoint-3'}" in rerun.stdout + rerun.stderr
    assert f"| resumed_from | {run_dir / 'checkpoint-3'} |" in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "checkpoint-4" / "posttrain_topology.json").read_text()) == {
        "processes": 2, "zero_stage": 3}

    single = ("--max_steps", "6", "--save_steps", "2", "--eval_task", "")
    refused = _single_process("dpo", tiny_model, run_dir, *single, returncode=2)
    assert "was saved by 2 processes with DeepSpeed ZeRO-3, but this launch has 1 process with no DeepSpeed" \
        in refused.stderr
    assert "--reset_optimizer_on_resume true" in refused.stderr and "Traceback" not in refused.stderr
    assert not (run_dir / "checkpoint-6").exists()  # nothing trained, nothing overwritten

    resumed = _single_process("dpo", tiny_model, run_dir, *single, "--reset_optimizer_on_resume", "true")
    assert "with a fresh optimizer state" in resumed.stdout
    rows = {row["step"]: row for row in _metrics(run_dir) if "loss" in row}
    assert {5, 6} <= set(rows)
    # The cosine schedule continues at step 5 of 6 (step k trains at 1e-4 * (1 + cos(pi * (k-1) / 6)) / 2), not at
    # its start (1e-4).
    for step in (5, 6):
        expected = 1e-4 * (1 + math.cos(math.pi * (step - 1) / 6)) / 2
        assert rows[step]["learning_rate"] == pytest.approx(expected, rel=1e-3)
    assert json.loads((run_dir / "checkpoint-6" / "posttrain_topology.json").read_text()) == {
        "processes": 1, "zero_stage": 0}


# dpo and rpo have their own tests below; every other registered method (a new one too) runs this one.
@pytest.mark.parametrize("method", [name for name in METHODS if name not in ("dpo", "rpo")])
def test_method_zero3_trains_saves_full_model_and_matches_single_process_loss(method, tiny_model, tmp_path):
    run_dir = tmp_path / method
    _launch(method, tiny_model, run_dir, "--eval_task", "")
    _check_run_dir(run_dir, tiny_model)
    assert not (run_dir / "eval.json").exists()
    _assert_step1_loss_matches_single_process(method, tiny_model, run_dir, tmp_path)


def test_rpo_zero3_trains_and_reuses_the_reference_cache(tiny_model, tmp_path):
    """The RPO toy recipe under ZeRO-3; a second run on the same model and data skips the reference forward."""
    first = _launch("rpo", tiny_model, tmp_path / "rpo1", "--eval_task", "", cache=tmp_path / "cache")
    second = _launch("rpo", tiny_model, tmp_path / "rpo2", "--eval_task", "", cache=tmp_path / "cache")
    _check_run_dir(tmp_path / "rpo1", tiny_model)
    assert "computed and cached at" in first.stdout and "loaded from cache" not in first.stdout
    assert "loaded from cache" in second.stdout and "computed and cached" not in second.stdout
    assert {"loss/dpo", "loss/sft"} <= set(_metrics(tmp_path / "rpo2")[0])
    _assert_step1_loss_matches_single_process("rpo", tiny_model, tmp_path / "rpo1", tmp_path)


def test_dpo_zero3_trains_after_a_single_reference_batch_per_rank(tiny_model, tmp_path):
    """16 examples over 2 ranks of 8: the reference precompute is one forward per rank. Its scoring engine's ZeRO-3
    hooks must be gone before training (left behind, they failed step 1 with `pop from an empty deque`)."""
    run_dir = tmp_path / "dpo16"
    _launch("dpo", tiny_model, run_dir, "--eval_task", "", "--dataset_num_examples", "16")
    _check_run_dir(run_dir, tiny_model)
    assert _step_loss(run_dir, 1) == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at step 1
