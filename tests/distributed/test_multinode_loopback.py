"""Two "machines" on loopback: `scripts/launch_node.sh` (what `scripts/launch.slurm` runs on every node) started
twice, as node ranks 0 and 1 of 2 with MASTER_ADDR 127.0.0.1, one CPU process each, DeepSpeed ZeRO-3. Both must
rendezvous, train a few DPO steps and exit 0. The reference is a live second model here (precompute off), so the
run also checks that TRL prepares it for ZeRO-3 across nodes: at step 1 policy and reference are the same weights,
so the loss must be exactly log 2."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .launching import REPO, TIMEOUT_S, free_port

pytestmark = pytest.mark.distributed

def test_two_machines_on_loopback_train_with_the_slurm_node_script(tmp_path):
    from posttrain.data import tokenizer_corpus
    from posttrain.models import make_tiny_model

    model = make_tiny_model(tmp_path / "tiny", tokenizer_corpus())
    run_dir = tmp_path / "run"
    recipe = ["--config", "recipes/dpo/sort8_tiny_cpu.yaml", "--model_name_or_path", str(model),
              "--output_dir", str(run_dir), "--max_steps", "2", "--logging_steps", "1", "--save_steps", "2",
              "--dataset_num_examples", "32", "--per_device_train_batch_size", "8", "--eval_task", "",
              "--build_tiny_model_if_missing", "false", "--precompute_ref_log_probs", "false"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "GPUS_PER_NODE": "1",
           "ACCELERATE_CONFIG": "recipes/accelerate/cpu_deepspeed_zero3.yaml", "TOKENIZERS_PARALLELISM": "false",
           "POSTTRAIN_CACHE": str(tmp_path / "cache")}
    nodes = [subprocess.Popen(["bash", "scripts/launch_node.sh", *recipe], cwd=REPO,
                              env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for rank in (0, 1)]
    try:
        logs = [node.communicate(timeout=TIMEOUT_S)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for rank, (node, log) in enumerate(zip(nodes, logs, strict=True)):
        assert node.returncode == 0, f"node {rank} exited {node.returncode}\n{log[-6000:]}"
    assert "launch_node: node 0 of 2, 1 processes, rendezvous 127.0.0.1" in logs[0]
    assert "launch_node: node 1 of 2" in logs[1]
    assert "reference log-probs" not in logs[0]  # no cache: the live reference model runs every step
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [row["step"] for row in rows if "loss" in row] == [1, 2]
    assert abs(rows[0]["loss"] - math.log(2)) < 1e-5
    assert json.loads((run_dir / "checkpoint-2" / "posttrain_topology.json").read_text()) == {
        "processes": 2, "zero_stage": 3}
    assert (run_dir / "model.safetensors").is_file() and (run_dir / "report.md").is_file()
