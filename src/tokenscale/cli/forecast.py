"""Forecast command: ``forecast`` (the rest of a series' mean-loss curve from its spectrum, with a bootstrap band and
the power-law, naive-sigmoid and last-value baselines; :mod:`tokenscale.forecast`)."""

from __future__ import annotations

import sys

from tokenscale.cli.common import command, json_object


def register(sub) -> None:
    def run(args) -> int:
        from tokenscale.forecast.stage import run_forecast

        r = run_forecast(trajectories=args.trajectories, fits=args.fits, series=args.series, options=args.options,
                         out=args.out, figure=args.figure)
        what = (f"max rel err spectrum {r['errors']['spectrum']['max_rel_err']:.4f} power law "
                f"{r['errors']['power_law']['max_rel_err']:.4f}" if "errors" in r else
                f"loss {r['forecast'][-1]:.4f} [{r['lo'][-1]:.4f}, {r['hi'][-1]:.4f}] at {r['axis'][-1]:.4g}")
        print(f"forecast: {args.series}: from {r['k']} points, beta {r['beta']:.3f}: {what} -> {args.out}",
              file=sys.stderr)
        return 0

    p = command(sub, "forecast", run, "forecast a series' mean loss from its spectrum (with baselines)",
                "Learned tokens keep their sigmoids, partial ones are refitted with the learned tokens' shape, the "
                "rest learn at the rate of the spectrum's tail (beta and its CI); the band is a bootstrap over "
                "tokens and beta. With analysis.forecast_cut set, the prefix up to that fraction of the axis span "
                "is refitted and the rest predicted and scored (a backtest).")
    p.add_argument("--trajectories", nargs="+", required=True, help="trajectory shards of one series")
    p.add_argument("--fits", required=True, help="the series' fit table (fit-table output)")
    p.add_argument("--series", required=True, help="series name (stored in the output)")
    p.add_argument("--options", type=json_object, default={},
                   help="JSON of the config's analysis keys n_boot, seed, forecast_cut, forecast_horizon")
    p.add_argument("--out", required=True, help="output forecast.json")
    p.add_argument("--figure", default=None, help="output figure PNG (an SVG is written next to it)")
