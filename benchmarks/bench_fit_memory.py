#!/usr/bin/env python
"""Benchmark: peak memory of a streamed fit pass (``tokenscale.fit.fit_file``) over a large trajectory file.

Writes an (N, K) float32 trajectory file of planted rows (``tokenscale.fit.planted``, generated block by block,
so writing it needs little memory either), then fits it in a child process with ``fit_file`` and prints
the child's peak resident memory (``ru_maxrss``), the file size and fits/s.  Target: N=10M, K=64 (2.6 GB
of float32 losses) with peak RSS under 3 GB.

    python benchmarks/bench_fit_memory.py --n 10000000 --path /tmp/traj10M.h5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

_CHILD = r"""
import json, sys, time
from tokenscale.fit import fit_file
t = time.perf_counter()
s = fit_file(sys.argv[1], sys.argv[2], block_rows=int(sys.argv[3]))
print(json.dumps({"n": s["n"], "seconds": time.perf_counter() - t, "status": s["status_counts"]}))
"""


def write_planted(path: str, n: int, k: int, block: int, seed: int) -> None:
    import h5py
    import numpy as np

    from tokenscale.fit.planted import default_step_axis, planted_trajectories

    axis = default_step_axis(k)
    tmp = path + ".tmp"
    with h5py.File(tmp, "w") as f:
        ds = f.create_dataset("loss", shape=(n, k), dtype="f4", chunks=(min(n, 4096), k))
        f.create_dataset("axis/step", data=axis)
        for i, lo in enumerate(range(0, n, block)):
            hi = min(n, lo + block)
            y, _ = planted_trajectories(hi - lo, axis, seed=seed + i)
            ds[lo:hi] = y
            print(f"\rwriting {hi:,}/{n:,} rows", end="", file=sys.stderr, flush=True)
        f.create_dataset("token_index", data=np.arange(n, dtype=np.int64), chunks=(min(n, 1 << 16),))
    os.replace(tmp, path)
    print(file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--n", type=int, default=10_000_000, help="trajectories (default 10M)")
    ap.add_argument("--k", type=int, default=64, help="checkpoints per trajectory (default 64)")
    ap.add_argument("--path", default="/tmp/tokenscale-bench-traj.h5", help="trajectory file (reused if it exists with this shape)")
    ap.add_argument("--block-rows", type=int, default=1 << 18, help="rows per streamed block (default 262144)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import h5py

    ok = False
    if os.path.exists(args.path):
        with h5py.File(args.path, "r") as f:
            ok = "loss" in f and f["loss"].shape == (args.n, args.k)
    if not ok:
        t0 = time.perf_counter()
        write_planted(args.path, args.n, args.k, 1 << 18, args.seed)
        print(f"wrote {args.path} in {time.perf_counter() - t0:.0f}s")
    size = os.path.getsize(args.path)
    out = args.path + ".fits.h5"
    proc = subprocess.run([sys.executable, "-c", _CHILD, args.path, out, str(args.block_rows)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
        return proc.returncode
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    print(f"fit_file: {res['n']:,} x {args.k} trajectories ({size / 1e9:.2f} GB file) in {res['seconds']:.0f}s = "
          f"{res['n'] / res['seconds']:,.0f} fits/s; peak RSS of the fitting process {peak_mb:,.0f} MB "
          f"(target < 3000 MB); status {res['status']}; fits file {os.path.getsize(out) / 1e9:.2f} GB")
    os.remove(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
