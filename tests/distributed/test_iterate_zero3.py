"""One iteration of `posttrain iterate` whose train phase runs as 2-process DeepSpeed ZeRO-3 on CPU (the recipe's
`accelerate_config`): the launched ranks read the log-probs the in-process precompute cached, and pi_1 is saved as a
full model (docs/methods.md §3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from posttrain.io import read_json

from ..conftest import CPU_SETTINGS
from .launching import REPO, TIMEOUT_S, ZERO3, check
from .test_deepspeed_cpu import _shapes, tiny_model  # noqa: F401 (the module's model fixture)

pytestmark = pytest.mark.distributed


def test_iterate_trains_under_zero3(tiny_model: Path, tmp_path: Path):  # noqa: F811
    values = {"method": "inpo", "model_name_or_path": str(tiny_model), "dataset_name": "pg:sort8/preference",
              "output_dir": str(tmp_path / "loop"), "ref_logps_cache_dir": str(tmp_path / "cache"), "eta": 0.1,
              "max_length": 64, "max_steps": 2, "per_device_train_batch_size": 2, "logging_steps": 1,
              **CPU_SETTINGS, "iterations": 1, "prompt_dataset": "pg:sort8/sft", "prompts_per_iteration": 8,
              "samples_per_prompt": 3, "sample_max_new_tokens": 8, "judge": "rule-longer:sort8",
              "ranking": "all_pairs", "eval_num_prompts": 4, "generation_backend": "transformers",
              "accelerate_config": str(ZERO3)}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(values))
    proc = check(subprocess.run([sys.executable, "-m", "posttrain.cli", "iterate", "--config", str(recipe)],
                                cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S))
    loop = tmp_path / "loop"
    assert read_json(loop / "iter0" / "precompute" / ".done.json")["result"]["forward_batches"] > 0
    assert "loaded from cache" in proc.stdout + proc.stderr  # the ZeRO-3 ranks did no frozen forward
    report = (loop / "iter0" / "train" / "report.md").read_text()
    assert "2 processes with DeepSpeed ZeRO-3" in report, report
    assert _shapes(loop / "iter0" / "train") == _shapes(tiny_model)  # gathered, not partitioned
    assert read_json(loop / "report.json")["points"][1]["win_rate"] is not None
