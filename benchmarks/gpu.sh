#!/usr/bin/env bash
# The GPU measurements of the README's speed section, in one go (a CUDA machine with
# python3 + torch; fisherlab from this checkout's src/): issue 14's E1 and E3 (P1 at
# N = 128 and 5,000 for every model, the 50k-image FP epoch with evaluation, P2), P3.
# About 5-10 minutes on an H100/H200. Writes to ${OUT:-.}/gpu_bench.txt.
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
out=${OUT:-.}/gpu_bench.txt
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__)"
  python3 benchmarks/curvature.py --device cuda --only E1 E3
  python3 benchmarks/curvature.py --device cuda --n 512 --models simple_cnn vgg11 --only P3
  python3 -m pytest -q -p no:cacheprovider tests/test_data.py -k cuda
} 2>&1 | tee "$out"
