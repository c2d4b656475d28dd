#!/usr/bin/env bash
# One prepared check for a single H100/H200 GPU machine without network access (about 7 minutes; stopped at 8):
# DPO and RPO training steps on a ~0.5B Qwen2-shaped model built from config (bf16, sdpa), beside TRL's own
# DPOTrainer, full-parameter and LoRA, plain / chunked / packed log-probs; prints tokens/s, MFU against 989 TFLOP/s,
# peak memory, the ratios against TRL and full fine-tuning, and the largest batch that fits (ours and TRL's); writes
# results.json / results.md (rewritten after every configuration, so a stopped run keeps what it measured).
#
#   bash scripts/gpu_check.sh [output_dir [gpu_check.py options]]    # default runs/gpu_check
#   bash scripts/gpu_check.sh runs/gpu_check_small --batch 8 --prompt_len 256 --completion_len 256 --repeats 2
#
# Uses the machine's python3 (override with PYTHON=...). Packages the machine lacks (e.g. trl, datasets) can be
# brought as wheels in $GPU_CHECK_WHEELS (default .whl/); they are installed into a temporary folder, not the system.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
out=${1:-runs/gpu_check}
if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU found (nvidia-smi -L failed); nothing to measure" >&2
  exit 2
fi
wheels=${GPU_CHECK_WHEELS:-.whl}
if compgen -G "$wheels/*.whl" >/dev/null; then
  site=$(mktemp -d)
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c 'import torch, transformers, trl, peft, accelerate, datasets
print("versions:", *(f"{m.__name__} {m.__version__}" for m in (torch, transformers, trl, peft, accelerate, datasets)))'
timeout 480 "$PY" scripts/gpu_check.py --output "$out" "${@:2}"
