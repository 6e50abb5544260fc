#!/usr/bin/env bash
# One device check (GPU machine without tokenscale installed): fit engine, evaluator and training throughput
# (benchmarks/gpu/fit.sh and benchmarks/gpu/train.sh are the parts on their own). Usage from the repo root: bash benchmarks/gpu/run.sh [OUT_DIR]
set -uo pipefail
out=${1:-/tmp/ts-gpu-out}; mkdir -p "$out"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
if [ -z "${ONLY_TRAIN:-}" ]; then
echo "== fit engine (cuda) vs scipy"; timeout 200 python3 benchmarks/bench_fit.py --device cuda --n 4000000 --n-scipy 500 --repeats 3 2>&1 | tee "$out/bench_fit_cuda.txt"
echo "== evaluator vs bare forward (cuda, bf16)"; timeout 120 python3 benchmarks/bench_eval.py --device cuda --hidden 768 --layers 12 --heads 12 --vocab 50304 --seq-len 1024 --n-seqs 256 --batch-size 32 --repeats 3 2>&1 | tee "$out/bench_eval_cuda.txt"
fi
echo "== training throughput (benchmarks/gpu/train.sh)"; bash benchmarks/gpu/train.sh "$out"
