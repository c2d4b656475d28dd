"""Two-process DeepSpeed ZeRO-3 training on CPU through `accelerate launch`, on a tiny model built in a tmp dir.

Checks that the run finishes, writes its run directory, saves a full (gathered, not partitioned) HF checkpoint,
runs the main-process post-training eval without hanging the other rank, and resumes when rerun.
The first DeepSpeed run on a machine compiles a small shared-memory op (about a minute, then cached).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.distributed

REPO = Path(__file__).resolve().parents[2]
ZERO3 = REPO / "recipes" / "accelerate" / "cpu_deepspeed_zero3.yaml"
TIMEOUT_S = 600  # a hang (e.g. a collective only one rank joins) fails the test instead of blocking CI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(method: str, model: Path, output_dir: Path, *extra: str, cache: Path | None = None
            ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ZERO3),
           "--main_process_port", str(_free_port()), str(REPO / "scripts" / "train.py"),
           "--config", str(REPO / "recipes" / method / "sort8_tiny_cpu.yaml"),
           "--model_name_or_path", str(model), "--output_dir", str(output_dir),
           "--max_steps", "3", "--save_steps", "3", "--logging_steps", "1", "--dataset_num_examples", "64",
           "--build_tiny_model_if_missing", "false", *extra]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **({"POSTTRAIN_CACHE": str(cache)} if cache else {})}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def _shapes(path: Path) -> dict[str, tuple[int, ...]]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path)
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def _check_run_dir(run_dir: Path, input_model: Path) -> None:
    assert (run_dir / "report.md").is_file()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    losses = [row["loss"] for row in rows if "loss" in row]
    assert losses and all(math.isfinite(loss) for loss in losses), rows
    # ZeRO-3 partitions parameters across ranks; the saved model must be gathered to full shapes.
    assert (run_dir / "model.safetensors").is_file()
    assert _shapes(run_dir) == _shapes(input_model)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny", tokenizer_corpus())


def test_dpo_zero3_trains_saves_full_model_evaluates_and_resumes(tiny_model, tmp_path):
    run_dir = tmp_path / "dpo"
    args = ("--eval_task", "sort8", "--eval_num_examples", "8", "--eval_baseline_model", str(tiny_model))
    _launch("dpo", tiny_model, run_dir, *args)
    _check_run_dir(run_dir, tiny_model)
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["n"] == 8 and "vs_baseline" in evaluation
    assert (run_dir / "checkpoint-3").is_dir()

    rerun = _launch("dpo", tiny_model, run_dir, *args, "--max_steps", "5")  # extend the finished run
    assert f"resuming from {run_dir / 'checkpoint-3'}" in rerun.stdout + rerun.stderr
    assert f"| resumed_from | {run_dir / 'checkpoint-3'} |" in (run_dir / "report.md").read_text()


def test_sft_zero3_trains_and_saves_full_model(tiny_model, tmp_path):
    run_dir = tmp_path / "sft"
    _launch("sft", tiny_model, run_dir, "--eval_task", "")
    _check_run_dir(run_dir, tiny_model)
    assert not (run_dir / "eval.json").exists()


def test_rpo_zero3_trains_and_reuses_the_reference_cache(tiny_model, tmp_path):
    """The RPO toy recipe under ZeRO-3; a second run on the same model and data skips the reference forward."""
    first = _launch("rpo", tiny_model, tmp_path / "rpo1", "--eval_task", "", cache=tmp_path / "cache")
    second = _launch("rpo", tiny_model, tmp_path / "rpo2", "--eval_task", "", cache=tmp_path / "cache")
    _check_run_dir(tmp_path / "rpo1", tiny_model)
    assert "computed and cached at" in first.stdout and "loaded from cache" not in first.stdout
    assert "loaded from cache" in second.stdout and "computed and cached" not in second.stdout
    rows = [json.loads(line) for line in (tmp_path / "rpo2" / "metrics.jsonl").read_text().splitlines()]
    assert {"loss/dpo", "loss/sft"} <= set(rows[0])
