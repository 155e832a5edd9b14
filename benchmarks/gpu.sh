#!/usr/bin/env bash
# The GPU measurements of the README's speed table, in one go (a CUDA machine with
# python3 + torch; fisherlab from this checkout's src/). Writes to ${OUT:-.}/gpu_bench.txt.
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
out=${OUT:-.}/gpu_bench.txt
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__)"
  python3 benchmarks/curvature.py --device cuda --n 512 --models simple_cnn vgg11 --fp-epoch-50k
  python3 benchmarks/curvature.py --device cuda --n 128 --models wrn44_3 densenet40_12 wrn44_3_skipinit resnet56 --only P1 --no-references
  python3 -m pytest -q -p no:cacheprovider tests/test_data.py -k cuda
} 2>&1 | tee "$out"
