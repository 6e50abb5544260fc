#!/usr/bin/env bash
# Create the project venv and install tokenscale with every dependency at the versions and hashes of
# requirements/cpu.lock (refresh it with scripts/lock.sh). TOKENSCALE_LOCK=requirements/gpu.lock installs the GPU
# stack instead (torch's CUDA build from PyPI with its nvidia-* wheels; the other packages at the CPU lock's
# versions). TOKENSCALE_UNLOCKED=1 installs from pyproject.toml's ranges (newest releases; torch pinned to the CPU
# build: an unpinned torch pulls a multi-GB CUDA build).
# Usage: scripts/setup-venv.sh [VENV_DIR] [PYTHON]
set -euo pipefail
venv=${1:-.venv}
py=${2:-python3}
lock=${TOKENSCALE_LOCK:-requirements/cpu.lock}
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip="$venv/bin/python -m pip"
quiet() { "$@" 2>&1 | grep -v "is ignored" || true; }
filtered() { "$@" 2>&1 | { grep -v "is ignored" || true; }; }  # pip's exit status survives (pipefail)
if [ -f "$lock" ] && [ "${TOKENSCALE_UNLOCKED:-0}" != 1 ]; then
  # deepspeed builds against the installed torch (no build isolation), so it goes in a second pass
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$venv/bin/python" - "$lock" "$tmp" <<'PY'
import re, sys
from pathlib import Path
blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", Path(sys.argv[1]).read_text())
first = [b for b in blocks if not b.startswith("deepspeed==")]
Path(sys.argv[2], "first.txt").write_text("\n".join(first) + "\n")
Path(sys.argv[2], "deepspeed.txt").write_text("\n".join(b for b in blocks if b.startswith("deepspeed==")) + "\n")
PY
  filtered $pip install -q --require-hashes --no-deps -r "$tmp/first.txt"
  filtered $pip install -q --require-hashes --no-deps --no-build-isolation -r "$tmp/deepspeed.txt"
  filtered $pip install -q --no-deps --no-build-isolation -e .
  $pip check
else
  quiet $pip install -q --upgrade pip setuptools wheel
  quiet $pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  quiet $pip install -q -e ".[workflow,test]"
  quiet $pip install -q --no-build-isolation "deepspeed>=0.15"
fi
"$venv/bin/python" -c "import torch, transformers, deepspeed, snakemake, h5py, scipy, tokenizers; print('venv ready: torch', torch.__version__, '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__, '| snakemake', snakemake.__version__)" 2>&1 | grep -v "real_accelerator"
