#!/usr/bin/env python
"""Benchmark: cut-and-predict backtest of the spectrum forecast against the power law (issue #33).

For every series of a results tree that has trajectories and a fit table (the default DAG: t_moe, d_moe, m_moe,
the reshape continuations rs_moe-*), at cuts of 25, 40, 55 and 70 % of its (transformed) axis span: refit the
prefix's tokens with the project's fit engine, predict the rest of the mean-loss curve with
``tokenscale.forecast`` (band: bootstrap over tokens and β), and score it and three baselines on the same prefix
(the power law L = k a^−α + E, the naive per-token sigmoid extrapolation, the last value) by the max and mean
relative error on the later points; the band's coverage of the truth. A cut that cannot be forecast (fewer than 4
points, no tail fit) is a row with its one-line reason. Writes backtest.json, backtest.md (the README table) and
one figure per series; prints the table.

    python benchmarks/bench_forecast.py --results /tmp/seeds-default/seed0 --out /tmp/forecast/bench
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from tokenscale.analysis.numerics import jsonable
from tokenscale.forecast.figures import backtest_figure
from tokenscale.forecast.stage import backtest, load_series

CUTS = (0.25, 0.4, 0.55, 0.7)
METHODS = ("spectrum", "power_law", "naive_sigmoids", "last_value")


def _series(results: Path, names: list[str] | None) -> list[Path]:
    dirs = sorted(p for p in (results / "series").iterdir() if (p / "fits.h5").exists())
    return [d for d in dirs if names is None or d.name in names]


def _row(r: dict) -> str:
    if "error" in r:
        return f"| {r['series']} | {r['frac']:g} | – | – | {r['error']} |  |  |  |"
    e = r["errors"]
    pct = lambda m, k: f"{100 * e[m][k]:.1f}"
    ratio = e["spectrum"]["max_rel_err"] / e["power_law"]["max_rel_err"]
    return (f"| {r['series']} | {r['frac']:g} | {r['k']}/{r['k'] + len(r['truth'])} | {r['beta']:.2f} | "
            + " | ".join(f"{pct(m, 'max_rel_err')} / {pct(m, 'mean_rel_err')}" for m in METHODS)
            + f" | {100 * e['spectrum']['coverage']:.0f} % | {ratio:.2f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", required=True, help="a results tree (series/*/trajectories, fits.h5)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--series", nargs="*", default=None, help="only these series")
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows, lines = [], []
    for d in _series(Path(args.results), args.series):
        t0 = time.time()
        s = load_series(sorted((d / "trajectories").glob("shard-*.h5")), d / "fits.h5")
        rs = backtest(s, CUTS, series=d.name, n_boot=args.n_boot, seed=args.seed)
        obs = {"axis": s["a"], "mean_loss": s["losses"].mean(0, dtype=np.float64)}
        backtest_figure(rs, obs, out / f"backtest_{d.name}.png")
        rows += rs
        lines += [_row(r) for r in rs]
        print(f"bench_forecast: {d.name}: {s['losses'].shape[0]} tokens x {s['x'].size} points, "
              f"{time.time() - t0:.1f} s", file=sys.stderr)
    head = ("| series | cut | points (prefix/all) | β (prefix) | " + " | ".join(f"{m} max / mean %" for m in METHODS)
            + " | band coverage | max-error ratio spectrum/power law |\n|" + "---|" * 11)
    table = "\n".join([head, *lines])
    (out / "backtest.md").write_text(table + "\n")
    (out / "backtest.json").write_text(json.dumps(jsonable(rows), indent=1, sort_keys=True))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
