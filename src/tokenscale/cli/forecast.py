"""Forecast commands: ``forecast`` (the rest of a series' mean-loss curve from its spectrum, with a bootstrap band and
the power-law, naive-sigmoid and last-value baselines; :mod:`tokenscale.forecast`) and ``watch`` (follow a run while
it trains: evaluate each new checkpoint once, refit, spectrum, forecast, one figure; :mod:`tokenscale.forecast.watch`)."""

from __future__ import annotations

import sys

from tokenscale import TokenscaleError
from tokenscale.cli.common import command, default_config, json_object, positive_int, set_threads


def register(sub) -> None:
    _forecast(sub)
    _watch(sub)


def _forecast(sub) -> None:
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


def _watch(sub) -> None:
    def run(args) -> int:
        from tokenscale.config import load_config
        from tokenscale.forecast.watch import watch

        set_threads(args.threads)
        path = default_config(args.config)
        if path is None:
            raise TokenscaleError("watch: give --config FILE (the config the run is trained with)")
        watch(args.run, load_config(path), once=args.once, interval=args.interval, nice=args.nice,
              tokens=args.tokens, out=args.out)
        return 0

    p = command(sub, "watch", run, "follow a training run: evaluate new checkpoints, refit, forecast, one figure",
                "Reads the run folder only (locally or on a cluster's shared filesystem) at a lower priority. Each "
                "new complete checkpoint is evaluated once into results/evals/{tokens}/{run}/watch-cache/ (the "
                "workflow's evaluate jobs reuse these files), then every token is refitted and the spectrum so far, "
                "the forecast of the mean loss at the remaining checkpoints and one figure are written to "
                "results/watch/{run}/ (watch.json, watch.png). Safe to stop and restart.")
    p.add_argument("run", help="the run folder (results/runs/{run}; its results root is two folders up)")
    p.add_argument("--config", default=None,
                   help="the config the run is trained with (default: config/config.yaml when it exists here)")
    p.add_argument("--once", action="store_true", help="process the checkpoints there now and exit (no polling)")
    p.add_argument("--interval", type=float, default=30.0,
                   help="seconds between polls of the run folder; polling stops once train.json exists and every "
                        "scheduled checkpoint is processed")
    p.add_argument("--nice", type=int, default=10, help="os.nice increment, so the trainer keeps its CPU (0: none)")
    p.add_argument("--tokens", default=None,
                   help="token set HDF5 to evaluate on (default: the run's series' token set in the results tree)")
    p.add_argument("--out", default=None, help="output folder (default: results/watch/{run})")
    p.add_argument("--threads", type=positive_int, default=1,
                   help="CPU threads for torch (default 1: leave the cores to the trainer)")
