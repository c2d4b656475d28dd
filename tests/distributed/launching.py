"""Shared by the distributed tests: paths, a free rendezvous port, and `accelerate launch` of a script on CPU."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from ..conftest import CPU_SETTINGS

REPO = Path(__file__).resolve().parents[2]
ZERO3 = REPO / "recipes" / "accelerate" / "cpu_deepspeed_zero3.yaml"
TRAIN = REPO / "scripts" / "train.py"
TIMEOUT_S = 600  # a hang (e.g. a collective only one rank joins) fails the test instead of blocking CI


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check(proc: subprocess.CompletedProcess, returncode: int = 0) -> subprocess.CompletedProcess:
    assert proc.returncode == returncode, (
        f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


def _run(cmd: list[str], env: dict[str, str] | None, returncode: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    return check(subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=TIMEOUT_S), returncode)


def launch(script: Path, *args: str, config: Path = ZERO3, num_processes: int | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`accelerate launch --config_file <config> <script> <args>` (2 CPU processes with the default config); exit 0."""
    processes = ["--num_processes", str(num_processes)] if num_processes else []
    return _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), *processes,
                 "--main_process_port", str(free_port()), str(script), *args], env, 0)


def run_plain(script: Path, *args: str, env: dict[str, str] | None = None,
              returncode: int = 0) -> subprocess.CompletedProcess:
    """`python <script> <args>` in one plain process (no accelerate launch, no DeepSpeed)."""
    return _run([sys.executable, str(script), *args], env, returncode)


def write_loop_recipe(folder: Path, model: Path, accelerate_config: Path) -> Path:
    """A one-iteration INPO `posttrain iterate` recipe on the tiny model whose train phase runs under
    `accelerate_config` (output in <folder>/loop, cache in <folder>/cache)."""
    values = {"method": "inpo", "model_name_or_path": str(model), "dataset_name": "pg:sort8/preference",
              "output_dir": str(folder / "loop"), "ref_logps_cache_dir": str(folder / "cache"), "eta": 0.1,
              "max_length": 64, "max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1,
              **CPU_SETTINGS, "iterations": 1, "prompt_dataset": "pg:sort8/sft", "prompts_per_iteration": 8,
              "samples_per_prompt": 3, "sample_max_new_tokens": 8, "judge": "rule-longer:sort8",
              "ranking": "all_pairs", "eval_num_prompts": 4, "generation_backend": "transformers",
              "accelerate_config": str(accelerate_config)}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(values))
    return path
