#!/usr/bin/env bash
# Everything a GPU session checks, in one call: GPU tests, the attention
# benchmark, training MFU and the PyTorch comparison. Results (at most 10
# files) go to $1. The default time limits add up to 570 s of the device's
# 600 s per call.
#   bash benchmarks/gpu_suite.sh OUTDIR
# On the lent GPU machine, grain is missing: its wheels travel in .whl/.
set -uo pipefail
out=${1:-benchmarks/results/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
if ! python3 -c "import grain" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())"; } 2>&1 | tee "$out/env.txt"
# One process (-o addopts=: no xdist workers sharing the GPU, nor xdist needed).
timeout "${TEST_TIMEOUT:-130}" python3 -m pytest -q -x -o addopts= tests/test_attention.py \
  tests/test_flash_attention.py 2>&1 | tail -40 | tee "$out/tests.txt"
timeout "${MFU_TIMEOUT:-150}" python3 benchmarks/mfu.py --experiment gpt2_small \
  --attention xla cudnn pallas --batch_size 16 --out "$out/mfu.json" 2>&1 | tail -15 \
  | tee "$out/mfu.txt"
timeout "${ATTN_TIMEOUT:-180}" python3 benchmarks/attention.py --out "$out/attention.json" 2>&1 \
  | tail -40 | tee "$out/attention.txt"
timeout "${TORCH_TIMEOUT:-110}" python3 benchmarks/train_throughput.py \
  --out "$out/train_throughput.json" 2>&1 | tail -12 | tee "$out/train_throughput.txt"
