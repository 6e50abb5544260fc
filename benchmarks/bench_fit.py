#!/usr/bin/env python
"""Benchmark: the batched sigmoid fit engine vs. a per-row ``scipy.optimize.curve_fit`` loop.

Both fit eq. (1), ``loss(x) = post + delta * [1 - sigmoid(lam * (x - tau))]`` on ``x = log10(step)``, to
the same planted trajectories (``tokenscale.fit.planted``: K=64 log-spaced checkpoints, per-row noise
0.05-0.3 nats, heavy-tailed learning times, 10% learned-before-start, 10% flat, 5% ascending rows).

* ``engine``: ``tokenscale.fit.fit_sigmoids`` on all ``--n`` rows (one warm-up on a small block first);
* ``scipy`` : ``curve_fit`` (Levenberg-Marquardt, MINPACK) row by row on the first ``--n-scipy`` rows, the
  loop researchers write today.  It gets the engine's own grid start (``fit.grid_init``) so it is
  compared at its best; ``--scipy-p0 naive`` gives it a data-derived start instead.  The speed ratio is
  against this loop (the fastest scipy baseline).
* ``scipy within the same bounds``: ``least_squares(method="trf")`` - what curve_fit runs when given
  bounds - on the first ``--n-scipy-bounded`` rows, inside the engine's own box (tau within tau_margin
  of the window, lam within lam_bounds, |delta| <= delta_max * range).  The engine solves this bounded
  problem (unbounded LM lowers the SSE of some rows by running tau far outside the window with
  astronomically large delta along an SSE ridge), so this is the like-for-like quality comparison; the
  unbounded one is printed too, split by whether scipy's optimum lies inside the box.

Prints fits/s of both, the speed ratio, and fit quality on the shared rows: SSE of the engine relative to
scipy's (median, 99th percentile, fraction of rows with SSE <= scipy's * (1 + 1e-3)) and the median
|tau_hat - tau| of both against the planted tau on rows with a learning event inside the window.

    python benchmarks/bench_fit.py                          # CPU: 200k engine rows, 2k scipy rows
    python benchmarks/bench_fit.py --device cuda --n 10000000
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from tokenscale.fit.engines import ENGINES  # the registry of engine names (no torch)


def _model(x, post, delta, tau, lam):
    z = np.clip(lam * (tau - x), -60.0, 60.0)
    return post + delta / (1.0 + np.exp(-z))


def scipy_loop(Y: np.ndarray, x: np.ndarray, p0: np.ndarray, box: dict | None = None
               ) -> tuple[np.ndarray, np.ndarray, int]:
    """curve_fit per row; returns (params (n, 4) as post, delta, tau, lam), SSE (n,), failures.

    ``box=None``: unbounded Levenberg-Marquardt (MINPACK).  Else the engine's own box, per row, with
    ``least_squares(method="trf")`` - what curve_fit runs when given bounds, but keeping the last iterate of
    rows that reach ``max_nfev`` instead of raising: ``|delta| <= box["delta_max"] * ptp(row)``, ``tau``
    within ``box["tau_margin"]`` of the window, ``lam`` within ``box["lam_bounds"]``."""
    from scipy.optimize import OptimizeWarning, curve_fit, least_squares

    n = len(Y)
    params = np.full((n, 4), np.nan)
    sse = np.full(n, np.inf)
    failed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(n):
            y = Y[i].astype(np.float64)
            try:
                if box is None:
                    p, _ = curve_fit(_model, x, y, p0=p0[i], maxfev=2000)
                else:
                    dm = box["delta_max"] * np.ptp(y)
                    lo = [-np.inf, -dm, x[0] - box["tau_margin"], box["lam_bounds"][0]]
                    hi = [np.inf, dm, x[-1] + box["tau_margin"], box["lam_bounds"][1]]
                    p = least_squares(lambda q, y=y: _model(x, *q) - y, np.clip(p0[i], lo, hi), bounds=(lo, hi),
                                      method="trf", max_nfev=2000).x
            except (RuntimeError, ValueError):
                failed += 1
                p = p0[i]
            r = _model(x, *p) - y
            params[i], sse[i] = p, float(r @ r)
    return params, sse, failed


def naive_p0(Y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A data-derived start: plateau levels from the ends, tau mid-window, slope ~ 4 / window."""
    post = Y[:, -4:].mean(1)
    pre = Y[:, :4].mean(1)
    return np.stack([post, pre - post, np.full(len(Y), x.mean()), np.full(len(Y), 4.0 / np.ptp(x))], 1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--n", type=int, default=200_000, help="rows fitted by the engine (default 200000)")
    ap.add_argument("--n-scipy", type=int, default=2_000, help="rows fitted by the scipy loop (default 2000)")
    ap.add_argument("--k", type=int, default=64, help="checkpoints per trajectory (default 64)")
    ap.add_argument("--device", default="cpu", help="engine device: cpu or cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="engine compute dtype")
    ap.add_argument("--engine", default="auto", choices=list(ENGINES),
                    help="LM implementation (default auto: native C kernel on CPU, Triton on CUDA)")
    ap.add_argument("--baseline-engine", choices=[e for e in ENGINES if e != "auto"],
                    help="also time this engine on the same rows in the same run and print the speed ratio")
    ap.add_argument("--repeats", type=int, default=3, help="engine timings, best reported (default 3)")
    ap.add_argument("--scipy-p0", default="grid", choices=["grid", "naive"], help="scipy's start (default: the engine's grid start)")
    ap.add_argument("--n-scipy-bounded", type=int, default=500,
                    help="rows also fitted by scipy within the engine's bounds (trf, ~10 fits/s; default 500, 0: skip)")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import torch

    from tokenscale.fit import fit_sigmoids, grid_init
    from tokenscale.fit.planted import default_step_axis, planted_trajectories

    if args.threads:
        torch.set_num_threads(args.threads)
    axis = default_step_axis(args.k)
    x = np.log10(axis)
    n_all = max(args.n, args.n_scipy)
    t0 = time.perf_counter()
    Y, truth = planted_trajectories(n_all, axis, seed=args.seed)
    print(f"planted: {n_all:,} x {args.k} float32 trajectories in {time.perf_counter() - t0:.1f}s "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")

    dtype = getattr(torch, args.dtype)
    cuda = args.device.startswith("cuda")
    sync = (lambda: torch.cuda.synchronize()) if cuda else (lambda: None)

    def timed(engine, rows):
        fit_sigmoids(Y[: min(20_000, args.n)], axis, device=args.device, dtype=dtype, engine=engine)  # warm-up
        best, res = np.inf, None
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            res = fit_sigmoids(rows, axis, device=args.device, dtype=dtype, engine=engine)
            sync()
            best = min(best, time.perf_counter() - t0)
        return best, res

    best, fit = timed(args.engine, Y[: args.n])
    eng_rate = args.n / best
    sc = fit.status_counts()
    print(f"engine [{args.device}, {args.dtype}, {fit.attrs['engine']}]: {args.n:,} rows in {best:.3f}s = "
          f"{eng_rate:,.0f} fits/s; status {sc}")
    if cuda:  # the same rows already in GPU memory (no host->device copy of the input)
        Yd = torch.from_numpy(Y[: args.n]).to(args.device)
        best_d, _ = timed(args.engine, Yd)
        print(f"engine, input already on {args.device}: {best_d:.3f}s = {args.n / best_d:,.0f} fits/s")
        del Yd
    if args.baseline_engine:
        best_b, fit_b = timed(args.baseline_engine, Y[: args.n])
        rel = np.abs(fit.sse - fit_b.sse) / np.maximum(fit_b.sse, 1e-12)
        print(f"baseline engine {fit_b.attrs['engine']}: {best_b:.3f}s = {args.n / best_b:,.0f} fits/s; "
              f"{fit.attrs['engine']}/{fit_b.attrs['engine']} speed ratio {best_b / best:.2f}x; SSE agree within 1e-4 "
              f"on {np.nanmean(rel <= 1e-4):.3%} of rows, categories on {np.mean(fit.category == fit_b.category):.3%}")
        del fit_b

    m = args.n_scipy
    Ys = Y[:m]
    if args.scipy_p0 == "grid":
        g = grid_init(Ys, axis)
        p0 = np.stack([g["post"], g["delta"], g["tau"], g["lam"]], 1)
    else:
        p0 = naive_p0(Ys.astype(np.float64), x)
    t0 = time.perf_counter()
    params, sse_sp, failed = scipy_loop(Ys, x, p0)
    sp_time = time.perf_counter() - t0
    sp_rate = m / sp_time
    print(f"scipy curve_fit loop (p0={args.scipy_p0}): {m:,} rows in {sp_time:.2f}s = {sp_rate:,.0f} fits/s; "
          f"{failed} rows raised (kept at p0)")
    print(f"speed ratio engine/scipy: {eng_rate / sp_rate:,.0f}x")

    # quality on the shared rows (engine SSE recomputed in float64 from its parameters)
    sse_en = np.array([float(((_model(x, fit.post[i], fit.delta[i], fit.tau[i], fit.lam[i]) - Ys[i]) ** 2).sum())
                       for i in range(m)])

    def quality(label, sse_ref):
        se = sse_en[: len(sse_ref)]  # the first rows are shared by all loops
        rel = (se - sse_ref) / np.maximum(sse_ref, 1e-12)
        ok = se <= sse_ref * (1 + 1e-3) + 1e-9
        print(f"quality vs {label}: SSE engine/scipy - 1: median {np.median(rel):+.2e}, "
              f"p99 {np.percentile(rel, 99):+.2e}, max {rel.max():+.2e}; "
              f"rows with SSE <= scipy*(1+1e-3): {ok.mean():.2%}")
        return ok

    ok = quality("unbounded scipy", sse_sp)
    # the engine is bounded (tau within tau_margin of the window, lam within lam_bounds, |delta| <=
    # delta_max * range); unbounded LM is not, and lowers the SSE by running off along an SSE ridge
    margin = fit.attrs["tau_margin"]
    lam_lo, lam_hi = fit.attrs["lam_bounds"]
    dmax = fit.attrs["delta_max"] * np.ptp(Ys.astype(np.float64), axis=1)
    inside_box = ((params[:, 2] >= x[0] - margin) & (params[:, 2] <= x[-1] + margin)
                  & (np.abs(params[:, 3]) >= lam_lo) & (np.abs(params[:, 3]) <= lam_hi)
                  & (np.abs(params[:, 1]) <= dmax))
    print(f"         rows where its optimum lies inside the engine's bounds ({inside_box.mean():.1%} of rows): "
          f"SSE <= scipy*(1+1e-3) on {ok[inside_box].mean():.2%}; outside them on {ok[~inside_box].mean():.2%}")
    mb = min(m, args.n_scipy_bounded)
    if mb:
        box = {"delta_max": fit.attrs["delta_max"], "tau_margin": margin, "lam_bounds": (lam_lo, lam_hi)}
        t0 = time.perf_counter()
        params_b, sse_b, failed_b = scipy_loop(Ys[:mb], x, p0[:mb], box)
        tb = time.perf_counter() - t0
        print(f"scipy least_squares(trf) loop within the engine's bounds: {mb:,} rows in {tb:.2f}s = "
              f"{mb / tb:,.0f} fits/s; {failed_b} rows raised (kept at p0)")
        quality("scipy within the same bounds (the problem the engine solves)", sse_b)
    inside = (truth["kind"][:m] == 0)
    err_en = np.abs(fit.tau[:m] - truth["tau"][:m])[inside]
    err_sp = np.abs(params[:, 2] - truth["tau"][:m])[inside]
    print(f"tau error vs planted (descending rows, n={inside.sum()}): median |dtau| engine {np.median(err_en):.4f}, "
          f"scipy {np.median(err_sp):.4f} (log10 units)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
