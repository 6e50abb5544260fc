#!/usr/bin/env bash
# One device check of the fit engines (GPU machine without tokenscale installed): CUDA tests, a block-size
# sweep of the fused Triton kernel, then bench_fit with the torch engine as the in-run baseline.
# Usage from the repo root: bash benchmarks/gpu/fit.sh [OUT_DIR]   (carry .whl/ with jsonschema, pytest)
set -uo pipefail
out=${1:-/tmp/ts-gpu-out}; mkdir -p "$out"
if [ -d .whl ]; then python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; fi
export PYTHONPATH=$PWD/src:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/fit_gpu.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/fit_gpu.txt"
echo "== CUDA tests"; timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_fit.py -k "cuda" 2>&1 | tail -4 | tee -a "$out/fit_gpu.txt"
echo "== Triton block sweep (2M rows, input on the GPU)"
timeout 130 python3 - <<'PY' 2>&1 | tee -a "$out/fit_gpu.txt"
import os, time, numpy as np, torch
from tokenscale.fit import fit_sigmoids
from tokenscale.fit.planted import default_step_axis, planted_trajectories
axis = default_step_axis(64)
Y, _ = planted_trajectories(2_000_000, axis, seed=0)
Yd = torch.from_numpy(Y).cuda()
for blk in ["16,2", "16,4", "32,4", "64,8"]:
    os.environ["TOKENSCALE_TRITON_BLOCK"] = blk
    fit_sigmoids(Yd[:100_000], axis, device="cuda")
    best = 1e9
    for _ in range(2):
        torch.cuda.synchronize(); t0 = time.perf_counter()
        f = fit_sigmoids(Yd, axis, device="cuda")
        torch.cuda.synchronize(); best = min(best, time.perf_counter() - t0)
    print(f"block {blk}: {best:.3f}s = {len(Y) / best:,.0f} fits/s ({f.attrs['engine']})", flush=True)
os.environ.pop("TOKENSCALE_TRITON_BLOCK")
PY
echo "== bench_fit cuda (triton vs torch in the same run)"
timeout 190 python3 benchmarks/bench_fit.py --device cuda --n 4000000 --n-scipy 500 --n-scipy-bounded 100 --repeats 3 --baseline-engine torch 2>&1 | tee "$out/bench_fit_cuda.txt"
