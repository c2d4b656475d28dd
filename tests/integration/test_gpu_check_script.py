"""`scripts/gpu_check.py` runs end to end (on CPU, with its 2-layer smoke-test shape) and `gpu_check.sh` refuses
to run without a GPU. The real measurement needs a GPU; this keeps the prepared script from rotting in CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_script_runs_every_configuration(tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "scripts/gpu_check.py", "--cpu_smoke_test", "--batch", "2", "--prompt_len", "12",
           "--completion_len", "8", "--warmup", "1", "--steps", "1", "--repeats", "1", "--max_batch", "4",
           "--output", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    written = json.loads((out / "results.json").read_text())
    results = {r["config"]: r for r in written["results"]}
    assert set(results) == {"trl-dpo-full", "dpo-full", "dpo-full-chunked", "dpo-full-packed", "rpo-full",
                            "rpo-full-live", "trl-dpo-lora", "dpo-lora-peft-defaults", "dpo-lora", "dpo-lora-bf16",
                            "rpo-lora"}
    for name, row in results.items():
        assert row["reference_model_loaded"] is (name == "rpo-full-live")
        assert row["tokens_per_step"] == 2 * 2 * (12 + 8 + 1)  # pairs x (chosen, rejected) x (prompt + answer + EOS)
        assert row["median_step_s"] > 0 and row["tokens_per_s"] > 0 and 0 <= row["mfu"] < 1  # tiny: rounds to 0
    assert 0 < results["dpo-lora"]["trainable_params"] == results["trl-dpo-lora"]["trainable_params"] \
        < results["dpo-full"]["trainable_params"] == results["trl-dpo-full"]["trainable_params"]
    # the doubling batch search ran for TRL's trainer and ours, up to --max_batch (CPU memory never runs out here)
    assert {name: found["largest"] for name, found in written["batch_search"].items()} == \
        {"trl-dpo-full": 4, "dpo-full-chunked": 4}
    report = (out / "results.md").read_text()
    for line in ("dpo-full-chunked / trl-dpo-full", "dpo-lora / dpo-full", "rpo-full / rpo-full-live",
                 "Targets: MFU >= 45%", "Largest batch that fits, trl-dpo-full: 4 pairs"):
        assert line in report
    recipe = written["recipe_check"]  # the single-GPU LoRA recipe through accelerate launch, then resumed
    assert recipe["launch_6_steps"]["exit_code"] == 0 and not recipe["launch_6_steps"]["resumed"]
    assert recipe["launch_8_steps"]["exit_code"] == 0 and recipe["launch_8_steps"]["resumed"]
    assert recipe["adapter_saved"] and len(recipe["losses"]) == 8


def test_gpu_check_shell_script_exits_2_without_a_gpu(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")  # what nvidia-smi does when it finds no GPU/driver
    (fake / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", "scripts/gpu_check.sh", str(tmp_path / "out")], cwd=REPO, capture_output=True,
                          text=True, env=env)
    assert proc.returncode == 2
    assert "no NVIDIA GPU found" in proc.stderr and not (tmp_path / "out").exists()
