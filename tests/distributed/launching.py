"""Shared by the distributed tests: paths, a free rendezvous port, and `accelerate launch` of a script on CPU."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

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
