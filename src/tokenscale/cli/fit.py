"""Fit commands: ``fit`` (sigmoid fit of every token trajectory of a shard), ``fit-window`` (where a series' fits
start) and ``fit-table`` (per-shard fits -> one table per series); docs/fit.md."""

from __future__ import annotations

import sys

import numpy as np

from tokenscale.cli.common import add_threads, command, device, set_threads
from tokenscale.config import schema_default
from tokenscale.fit.engines import ENGINES  # the one registry of fit engines
from tokenscale.fit.window import RULES  # the one list of fit window rules (schema enum tested against it)


def register(sub) -> None:
    _fit(sub)
    _fit_window(sub)
    _fit_table(sub)


def _fit(sub) -> None:
    def run(args) -> int:
        from tokenscale.fit.stage import run_fit

        set_threads(args.threads)
        r = run_fit(trajectories=args.trajectories, out=args.out, axis=args.axis, transform=args.transform,
                    device=device(args.device), engine=args.engine, window=args.window)
        res, dt = r["fits"], r["seconds"]
        conv = float(np.mean(res.status == 0)) if len(res) else float("nan")
        print(f"fit: {len(res):,} trajectories x {r['n_points']} points (from checkpoint {r['start_index']}) in "
              f"{dt:.2f}s ({len(res) / max(dt, 1e-9):,.0f}/s, {res.attrs['engine']} engine), converged {conv:.3f}",
              file=sys.stderr)
        return 0

    p = command(sub, "fit", run, "sigmoid fit of every token trajectory in a shard -> fits HDF5",
                "Model: loss = post + delta * (1 - sigmoid(lambda * (x - tau))), x = transformed axis (docs/fit.md).")
    p.add_argument("--trajectories", required=True, help="trajectory shard HDF5")
    p.add_argument("--out", required=True, help="output fits HDF5")
    p.add_argument("--axis", default=schema_default("fit.axis"),
                   help="axis the trajectories are fitted on: step, tokens, or another axis/<name> of the shard "
                        "(flops for an M frontier)")
    p.add_argument("--transform", choices=["log10", "linear"], default=schema_default("fit.transform"),
                   help="x = transform(axis)")
    p.add_argument("--device", default=schema_default("fit.device"), choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available")
    p.add_argument("--engine", default=schema_default("fit.engine"), choices=list(ENGINES),
                   help="fit implementation: " + "; ".join(f"{name} = {what}" for name, what in ENGINES.items()))
    p.add_argument("--window", default="",
                   help="fit window JSON from `tokenscale fit-window`: fit the checkpoints from its start_index on "
                        "(default: every checkpoint)")
    add_threads(p)


def _fit_window(sub) -> None:
    def run(args) -> int:
        from tokenscale.fit.stage import run_fit_window

        w = run_fit_window(trajectories=args.trajectories, axis=args.axis, rule=args.rule, out=args.out,
                           train_data=args.train_data)
        h = "" if w["h_unigram"] is None else f" (unigram cross-entropy {w['h_unigram']:.4f} nats)"
        print(f"fit-window: rule {w['rule']}: the fits start at checkpoint {w['start_index']} ({args.axis} "
              f"{w['start']:g}) of {len(w['axis'])}{h}" + (f"; {w['note']}" if w["note"] else ""), file=sys.stderr)
        return 0

    p = command(sub, "fit-window", run, "where a series' token fits start -> fit window JSON",
                "Rule unigram: the first checkpoint at which the series' mean loss is at or below the unigram "
                "cross-entropy of its targets under the training target counts (the model beats every "
                "context-free predictor); rule first: every checkpoint (docs/fit.md).")
    p.add_argument("--trajectories", nargs="+", required=True, help="every trajectory shard of the series")
    p.add_argument("--axis", default=schema_default("fit.axis"),
                   help="the series' fit axis (axis/<name> in the shards)")
    p.add_argument("--rule", choices=list(RULES), default=schema_default("fit.start"), help="fit window rule")
    p.add_argument("--train-data", default="",
                   help="training data folder (train_tokens.bin/.json) whose targets give the unigram distribution; "
                        "empty: none (an external model), the rule falls back to every checkpoint")
    p.add_argument("--out", required=True, help="output fit window JSON")


def _fit_table(sub) -> None:
    def run(args) -> int:
        from tokenscale.fit.stage import run_fit_table

        run_fit_table(fits=args.fits, out=args.out)
        return 0

    p = command(sub, "fit-table", run, "concatenate per-shard fits into one table per series",
                "Rows keep the shards' token order.")
    p.add_argument("--fits", nargs="+", required=True, help="per-shard fits HDF5 files, in shard order")
    p.add_argument("--out", required=True, help="output fits table HDF5")
