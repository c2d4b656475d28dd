"""A clean interrupt (issue 11, defect 7): SIGTERM during training saves a checkpoint at the step reached, prints
one resume line, exits 143 without a final model, and the rerun resumes with one metrics line per step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import yaml

from posttrain.recipe import parse_recipe
from posttrain.train import train

from ..conftest import CPU_SETTINGS


def _logged_steps(run_dir) -> list[int]:
    path = run_dir / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [json.loads(line)["step"] for line in lines if line.endswith("}") and '"loss"' in line]


def test_sigterm_checkpoints_the_step_reached_and_the_rerun_resumes(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    values = {"method": "sft", "model_name_or_path": str(tiny_model_dir), "dataset_name": "pg:sort8/sft",
              "dataset_num_examples": 32, "output_dir": str(run_dir), "per_device_train_batch_size": 8,
              "max_steps": 10_000, "logging_steps": 1, "save_steps": 100_000, "max_length": 64,
              "lr_scheduler_type": "constant", **CPU_SETTINGS}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values))
    process = subprocess.Popen([sys.executable, "-m", "posttrain.cli", "train", "--config", str(recipe)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    while process.poll() is None and len(_logged_steps(run_dir)) < 2:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate()
    assert process.returncode == 143, err
    last_line = err.replace("\r", "\n").strip().splitlines()[-1]
    step = int(last_line.split("interrupted at step ")[1].split(";")[0])
    resume_line = f"interrupted at step {step}; rerun the same command to resume from checkpoint-{step}"
    assert last_line == f"posttrain: {resume_line}"
    assert "Traceback" not in err
    assert (run_dir / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert not (run_dir / "model.safetensors").exists() and not (run_dir / ".done.json").exists()

    train(parse_recipe(["--config", str(recipe), "--max_steps", str(step + 2)]))  # a longer length may change
    assert _logged_steps(run_dir) == list(range(1, step + 3))
    assert (run_dir / "model.safetensors").exists()
