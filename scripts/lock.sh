#!/usr/bin/env bash
# Refresh a lock file: the exact version and sha256 hashes of every package `make demo` / `make test` install
# (tokenscale's dependencies with every extra, plus pip/setuptools/wheel), for CPython 3.11 on Linux x86_64.
#   requirements/cpu.lock  torch's CPU build (scripts/setup-venv.sh installs it; CI and the embedded default)
#   requirements/gpu.lock  torch's CUDA build from PyPI with its nvidia-* wheels (GPU nodes; README "Reproducing")
#
# Usage: scripts/lock.sh [CONSTRAINTS]            (LOCK=gpu scripts/lock.sh [CONSTRAINTS] for the GPU lock)
#   Resolves pyproject.toml's ranges to the newest releases they admit (pip-tools, in a throw-away venv), except
#   that torch stays at TORCH_VERSION (default 2.13.0+cpu, or 2.13.0 for gpu). CONSTRAINTS (a pip constraints
#   file, e.g. `pip freeze` of a venv the tests passed in) holds other packages where they are: pass the same file
#   to both locks so the CPU and GPU stacks differ only in torch and its CUDA wheels. Then run `make test` and
#   commit the lock. On a machine without the local CPU wheel, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
flavor="${LOCK:-cpu}"
case "$flavor" in
  cpu) torch="torch==${TORCH_VERSION:-2.13.0+cpu}" ;;
  gpu) torch="torch==${TORCH_VERSION:-2.13.0}" ;;
  *) echo "lock.sh: LOCK must be cpu or gpu, got '$flavor'" >&2; exit 2 ;;
esac
out="requirements/$flavor.lock"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
# deepspeed's metadata build imports torch: the throw-away venv holds a torch (CPU is enough for metadata)
"$tmp/venv/bin/python" -m pip install -q pip-tools "torch==${CPU_TORCH_FOR_METADATA:-2.13.0+cpu}" setuptools wheel
echo "$torch" > "$tmp/constraints.txt"
if [ $# -ge 1 ]; then grep -v -e '^-e ' -e '^torch==' -e '^nvidia-' -e '^triton==' "$1" >> "$tmp/constraints.txt"; fi
resolve_env=()
if [ "$flavor" = gpu ]; then
  # resolve against PyPI only: this machine's pip config adds local CPU wheels that would shadow the CUDA build
  resolve_env=(env PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_EXTRA_INDEX_URL= PIP_CONSTRAINT=)
fi
"${resolve_env[@]}" "$tmp/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --all-extras --strip-extras \
  --no-build-isolation --no-emit-index-url --no-emit-find-links --constraint "$tmp/constraints.txt" --output-file "$out" pyproject.toml
sed -i "s#$tmp/constraints.txt#constraints (scripts/lock.sh)#" "$out"
echo "$out: $(grep -c '^[a-zA-Z0-9_.-]*==' "$out") packages pinned"
