#!/usr/bin/env bash
# Start this node's part of a (multi-node) training run: one `accelerate launch` per node, one process per GPU,
# every node meeting at MASTER_ADDR:MASTER_PORT. scripts/launch.slurm runs it on each node through srun; without
# Slurm, run it on every node yourself with NODE_RANK set (0 on the node whose address is MASTER_ADDR):
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash scripts/launch_node.sh --config recipes/rpo/zephyr-7b_ultrafeedback_zero3.yaml
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=10.0.0.1 bash scripts/launch_node.sh --config recipes/rpo/zephyr-7b_ultrafeedback_zero3.yaml
#
# Both run:  accelerate launch --config_file $ACCELERATE_CONFIG --num_machines $NNODES --machine_rank $NODE_RANK \
#              --num_processes $((NNODES * GPUS_PER_NODE)) --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT \
#              scripts/train.py <recipe arguments>
# Environment (defaults): NNODES (SLURM_NNODES, else 1), NODE_RANK (SLURM_NODEID, else 0), MASTER_ADDR (required
# for more than one node), MASTER_PORT (29500), GPUS_PER_NODE (the GPUs nvidia-smi lists),
# ACCELERATE_CONFIG (recipes/accelerate/deepspeed_zero3.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
nnodes=${NNODES:-${SLURM_NNODES:-1}}
node_rank=${NODE_RANK:-${SLURM_NODEID:-0}}
port=${MASTER_PORT:-29500}
config=${ACCELERATE_CONFIG:-recipes/accelerate/deepspeed_zero3.yaml}
if [ -z "${GPUS_PER_NODE:-}" ]; then
  GPUS_PER_NODE=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
if [ "${GPUS_PER_NODE:-0}" -lt 1 ]; then
  echo "launch_node: no GPUs found on $(hostname); set GPUS_PER_NODE" >&2; exit 2
fi
if [ "$nnodes" -gt 1 ] && [ -z "${MASTER_ADDR:-}" ]; then
  echo "launch_node: MASTER_ADDR is not set; export the address of node 0 (launch.slurm sets it)" >&2; exit 2
fi
if [ ! -f "$config" ]; then
  echo "launch_node: accelerate config $config not found; set ACCELERATE_CONFIG" >&2; exit 2
fi
echo "launch_node: node $node_rank of $nnodes, $GPUS_PER_NODE processes, rendezvous ${MASTER_ADDR:-127.0.0.1}:$port, $config"
exec accelerate launch --config_file "$config" --num_machines "$nnodes" --machine_rank "$node_rank" \
  --num_processes "$((nnodes * GPUS_PER_NODE))" --main_process_ip "${MASTER_ADDR:-127.0.0.1}" \
  --main_process_port "$port" scripts/train.py "$@"
