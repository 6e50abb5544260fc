#!/usr/bin/env bash
# Device check for training throughput (issue: MFU of the fast paths). One prepared script for a lent GPU:
# baseline vs the default fast path through the whole trainer (benchmarks/bench_train.py) for moe-290m,
# dense-410m and moe-1.5b in bf16 (vocab 8192, seq 512, batch 32), then a torch.compile arm for moe-290m.
# About 6-8 minutes on an H100/H200. Usage from the repo root: bash benchmarks/gpu/train.sh [OUT_DIR]
# DRY_RUN=1 runs the same steps on a CPU with nano models (tests/test_fastpath.py), so the script cannot rot.
set -uo pipefail
out=${1:-/tmp/ts-gpu-out}; mkdir -p "$out"
work=${WORK:-/tmp/ts-gpu-train}
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
if [ -n "${DRY_RUN:-}" ]; then
  models=(moe-nano dense-nano moe-nano); common=(--device cpu --precision fp32 --vocab 512 --seq-len 16 --corpus-chars 200000
    --batch-size 8 --steps 3 --rounds 1 --checkpoints 1 --threads 1); limit=300; compile_model=""
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  models=(moe-290m dense-410m moe-1.5b); common=(--device cuda --precision bf16 --vocab 8192 --seq-len 512
    --corpus-chars 3000000 --batch-size 32 --steps 40 --rounds 1 --checkpoints 1 --threads 8); limit=240; compile_model=moe-290m
fi
$py -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee "$out/train.txt"
rm -rf "$work"; mkdir -p "$work"
for m in "${models[@]}"; do
  echo "== $m" | tee -a "$out/train.txt"
  data=(); [ -f "$work/data/train_tokens.json" ] && data=(--data "$work/data")
  timeout $limit $py benchmarks/bench_train.py --model "$m" "${common[@]}" "${data[@]}" --work "$work" \
    --json "$out/train-$m.json" 2>>"$out/train.err" | tee -a "$out/train.txt"
done
if [ -n "$compile_model" ]; then
  echo "== $compile_model, torch.compile" | tee -a "$out/train.txt"
  timeout $limit $py benchmarks/bench_train.py --model "$compile_model" "${common[@]}" --data "$work/data" --work "$work" \
    --no-baseline --arm compiled='{"compile": true}' --json "$out/train-compile.json" 2>>"$out/train.err" | tee -a "$out/train.txt"
fi
tail -5 "$out/train.err"
