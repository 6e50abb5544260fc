#!/usr/bin/env bash
# Create the project venv and install tokenscale with every dependency (CPU torch wheel pinned: an unpinned
# torch pulls a multi-GB CUDA build). Usage: scripts/setup-venv.sh [VENV_DIR] [PYTHON]
set -euo pipefail
venv=${1:-.venv}
py=${2:-python3}
[ -x "$venv/bin/python" ] || "$py" -m venv "$venv"
pip="$venv/bin/python -m pip"
$pip install -q --upgrade pip setuptools wheel 2>&1 | grep -v "is ignored" || true
$pip install -q "torch==${TORCH_VERSION:-2.13.0}" 2>&1 | grep -v "is ignored" || true
$pip install -q -e ".[workflow,test]" 2>&1 | grep -v "is ignored" || true
# deepspeed builds against the installed torch, so no build isolation
$pip install -q --no-build-isolation "deepspeed>=0.15" 2>&1 | grep -v "is ignored" || true
"$venv/bin/python" -c "import torch, transformers, deepspeed, snakemake, h5py, scipy, tokenizers; print('venv ready: torch', torch.__version__, '| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__, '| snakemake', snakemake.__version__)" 2>&1 | grep -v "real_accelerator"
