#!/usr/bin/env bash
# Refresh requirements/cpu.lock: the exact version and sha256 hashes of every package `make demo` / `make test`
# install (tokenscale's dependencies with the workflow, test and train extras, plus pip/setuptools/wheel), for
# CPython 3.11 on Linux x86_64 with torch's CPU build. scripts/setup-venv.sh installs from it.
#
# Usage: scripts/lock.sh [CONSTRAINTS]
#   Resolves pyproject.toml's ranges to the newest releases they admit (pip-tools, in a throw-away venv), except
#   that torch stays at TORCH_VERSION (default 2.13.0+cpu). CONSTRAINTS (a pip constraints file, e.g. `pip freeze`
#   of a venv the tests passed in) holds other packages where they are. Then run `make test` and commit the lock.
#   On a machine without the local CPU wheel, set PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
set -euo pipefail
cd "$(dirname "$0")/.."
torch="torch==${TORCH_VERSION:-2.13.0+cpu}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q pip-tools "$torch" setuptools wheel
echo "$torch" > "$tmp/constraints.txt"
if [ $# -ge 1 ]; then grep -v -e '^-e ' -e '^torch==' "$1" >> "$tmp/constraints.txt"; fi
# deepspeed's metadata build imports torch: no build isolation (torch is in the throw-away venv)
"$tmp/venv/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --all-extras --strip-extras \
  --no-build-isolation --no-emit-index-url --no-emit-find-links --constraint "$tmp/constraints.txt" --output-file requirements/cpu.lock pyproject.toml
sed -i "s#$tmp/constraints.txt#constraints (scripts/lock.sh)#" requirements/cpu.lock
echo "requirements/cpu.lock: $(grep -c '^[a-zA-Z0-9_.-]*==' requirements/cpu.lock) packages pinned"
