"""One iteration of `posttrain iterate` whose train phase runs as 2-process DeepSpeed ZeRO-3 on CPU (the recipe's
`accelerate_config`): the launched ranks read the log-probs the in-process precompute cached, and pi_1 is saved as a
full model (docs/methods.md §3)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.io import read_json

from .launching import REPO, TIMEOUT_S, ZERO3, check, write_loop_recipe
from .test_deepspeed_cpu import _shapes, tiny_model  # noqa: F401 (the module's model fixture)

pytestmark = pytest.mark.distributed


def test_iterate_trains_under_zero3(tiny_model: Path, tmp_path: Path):  # noqa: F811
    recipe = write_loop_recipe(tmp_path, tiny_model, ZERO3)
    proc = check(subprocess.run([sys.executable, "-m", "posttrain.cli", "iterate", "--config", str(recipe)],
                                cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S))
    loop = tmp_path / "loop"
    assert read_json(loop / "iter0" / "precompute" / ".done.json")["result"]["forward_batches"] > 0
    assert "loaded from cache" in proc.stdout + proc.stderr  # the ZeRO-3 ranks did no frozen forward
    report = (loop / "iter0" / "train" / "report.md").read_text()
    assert "2 processes with DeepSpeed ZeRO-3" in report, report
    assert _shapes(loop / "iter0" / "train") == _shapes(tiny_model)  # gathered, not partitioned
    assert read_json(loop / "report.json")["points"][1]["win_rate"] is not None
