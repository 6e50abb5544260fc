#!/usr/bin/env bash
# One device check (GPU machine without tokenscale installed): fit engine, evaluator and bf16 training
# throughput. Usage from the repo root: bash benchmarks/gpu/run.sh [OUT_DIR]
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
echo "== training throughput"
cfg=benchmarks/gpu/train.yaml
t0=$(date +%s); timeout 150 python3 -m tokenscale.cli prepare-data --config $cfg --out /tmp/ts-gpu/data 2>&1 | tail -3; echo "prepare-data $(( $(date +%s) - t0 ))s"
for r in moe290m_bf16 dense410m_bf16 moe290m_fp32; do
  timeout 150 python3 -m tokenscale.cli train --config $cfg --run $r --data /tmp/ts-gpu/data --out /tmp/ts-gpu/runs/$r --threads 8 --quiet 2>&1 | tail -2
  python3 - "$r" <<'PY' | tee -a "$out/train.txt"
import json, sys, numpy as np
r = sys.argv[1]; d = f"/tmp/ts-gpu/runs/{r}"
s = json.load(open(f"{d}/train.json")); log = [json.loads(l) for l in open(f"{d}/log.jsonl")]
tps = np.array([x["tokens_per_s"] for x in log])[len(log) // 2:]
print(r, f"steps={s['steps']} wall={s['wall_s']:.1f}s overall={s['tokens_per_s']:,.0f} tok/s "
      f"steady(median 2nd half)={np.median(tps):,.0f} tok/s last_loss={log[-1]['loss']:.3f} "
      f"M={s['model_stats']['flops_per_token']:.3g} FLOPs/tok active={s['model_stats']['active_params']:,}")
PY
done
echo "== evaluate a real checkpoint"; ck=$(ls -d /tmp/ts-gpu/runs/moe290m_bf16/checkpoints/step* | tail -1)
timeout 60 python3 -m tokenscale.cli evaluate --checkpoint $ck --tokens /tmp/ts-gpu/data/valid_tokens.h5 --out /tmp/ts-gpu/e.h5 --batch-size 64 2>&1 | tail -1 | tee -a "$out/train.txt"
