"""Two "machines" on loopback, launched by `scripts/launch.slurm` itself. Stand-ins for Slurm's `scontrol` (the job's
first host is 127.0.0.1) and `srun` (runs the command once per node, concurrently, with SLURM_NODEID set) let the
real script run unchanged: it starts `scripts/launch_node.sh` as node ranks 0 and 1 of 2, one CPU process each,
DeepSpeed ZeRO-3. Both must rendezvous, train a few DPO steps and exit 0. The reference is a live second model here
(precompute off), so the run also checks that TRL prepares it for ZeRO-3 across nodes: at step 1 policy and
reference are the same weights, so the loss must be exactly log 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from posttrain.io import read_jsonl

from .launching import REPO, TIMEOUT_S, free_port

pytestmark = pytest.mark.distributed

FAKE_SCONTROL = "#!/usr/bin/env bash\necho 127.0.0.1\n"
FAKE_SRUN = """#!/usr/bin/env bash
while [[ "$1" == -* ]]; do shift; done
pids=()
for ((node = 0; node < SLURM_NNODES; node++)); do
  SLURM_NODEID=$node "$@" > "$NODE_LOGS/node$node.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


def _fake_slurm(bin_dir: Path) -> None:
    bin_dir.mkdir()
    for name, text in (("scontrol", FAKE_SCONTROL), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def test_slurm_script_trains_on_two_loopback_machines(tmp_path):
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny", tokenizer_corpus())
    run_dir = tmp_path / "run"
    recipe = ["--config", "recipes/dpo/sort8_tiny_cpu.yaml", "--model_name_or_path", str(model),
              "--output_dir", str(run_dir), "--max_steps", "2", "--logging_steps", "1", "--save_steps", "2",
              "--dataset_num_examples", "32", "--per_device_train_batch_size", "8", "--eval_task", "",
              "--build_tiny_model_if_missing", "false", "--precompute_ref_log_probs", "false"]
    _fake_slurm(tmp_path / "bin")
    path = os.pathsep.join([str(tmp_path / "bin"), str(Path(sys.executable).parent), os.environ["PATH"]])
    env = {**os.environ, "PATH": path, "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "loopback[0-1]",
           "SLURM_SUBMIT_DIR": str(REPO), "NODE_LOGS": str(tmp_path), "MASTER_PORT": str(free_port()),
           "GPUS_PER_NODE": "1", "ACCELERATE_CONFIG": "recipes/accelerate/cpu_deepspeed_zero3.yaml",
           "TOKENIZERS_PARALLELISM": "false", "POSTTRAIN_CACHE": str(tmp_path / "cache")}
    job = subprocess.run(["bash", str(REPO / "scripts" / "launch.slurm"), *recipe], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=TIMEOUT_S)
    logs = [(tmp_path / f"node{node}.log").read_text() for node in (0, 1)]
    tails = "\n".join(log[-4000:] for log in logs)
    assert job.returncode == 0, f"exit {job.returncode}\n{job.stderr[-2000:]}\n{tails}"
    assert "launch_node: node 0 of 2, 1 processes, rendezvous 127.0.0.1" in logs[0]
    assert "launch_node: node 1 of 2, 1 processes, rendezvous 127.0.0.1" in logs[1]
    assert "reference log-probs" not in logs[0]  # no cache: the live reference model runs every step
    rows = list(read_jsonl(run_dir / "metrics.jsonl"))
    assert [row["step"] for row in rows if "loss" in row] == [1, 2]
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-5
    assert json.loads((run_dir / "checkpoint-2" / "posttrain_topology.json").read_text()) == {
        "processes": 2, "zero_stage": 3}
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "report.md").is_file()
