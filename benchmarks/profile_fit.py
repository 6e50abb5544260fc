#!/usr/bin/env python
"""Where the fit engine's time goes: host->device copy, grid start + LM (``tokenscale.fit.chunks.fit_block``), post-processing
(numpy float64 parameters, R², categories), and the top torch operators (torch.profiler) of one block.

    python benchmarks/profile_fit.py --device cuda --n 2000000
"""

from __future__ import annotations

import argparse
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--chunk-size", type=int, default=None)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)

    import torch

    import tokenscale.fit.api as F  # the module whose functions are timed below
    from tokenscale.fit.planted import default_step_axis, planted_trajectories

    axis = default_step_axis(64)
    Y, _ = planted_trajectories(args.n, axis, seed=0)
    cuda = args.device.startswith("cuda")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    opts = dict(device=args.device, chunk_size=args.chunk_size, block_size=args.block_size)
    F.fit_sigmoids(Y[:20000], axis, **opts)  # warm-up

    phases = {"to_tensor": 0.0, "fit_block": 0.0, "fit_rows_total": 0.0}
    orig_tt, orig_fb, orig_fr = F._to_tensor, F.fit_block, F._Fitter.fit_rows

    def timed(name, fn):
        def wrap(*a, **k):
            sync()
            t = time.perf_counter()
            r = fn(*a, **k)
            sync()
            phases[name] += time.perf_counter() - t
            return r
        return wrap

    F._to_tensor = timed("to_tensor", orig_tt)
    F.fit_block = timed("fit_block", orig_fb)
    F._Fitter.fit_rows = timed("fit_rows_total", orig_fr)
    sync()
    t0 = time.perf_counter()
    fit = F.fit_sigmoids(Y, axis, **opts)
    sync()
    wall = time.perf_counter() - t0
    F._to_tensor, F.fit_block, F._Fitter.fit_rows = orig_tt, orig_fb, orig_fr
    other = phases["fit_rows_total"] - phases["to_tensor"] - phases["fit_block"]
    print(f"{args.n:,} rows on {args.device}: {wall:.3f}s = {args.n / wall:,.0f} fits/s; "
          f"to_tensor {phases['to_tensor']:.3f}s, fit_block {phases['fit_block']:.3f}s, "
          f"post-processing {other:.3f}s, outside fit_rows {wall - phases['fit_rows_total']:.3f}s; "
          f"iterations mean {fit.n_iter.mean():.2f}, max {fit.n_iter.max()}")

    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    blk = Y[: min(args.n, 1 << 18)]
    with profile(activities=acts) as prof:
        F.fit_sigmoids(blk, axis, **opts)
        sync()
    key = "cuda_time_total" if cuda else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.top, max_name_column_width=40))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
