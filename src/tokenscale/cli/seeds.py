"""Seed study command: ``seeds`` (per-token learning-time agreement between runs that differ only by seed, paper
Fig. 2, hypothesis A; :mod:`tokenscale.seeds`)."""

from __future__ import annotations

import sys

from tokenscale.cli.common import command, json_object


def register(sub) -> None:
    def run(args) -> int:
        from tokenscale.seeds.stage import run_seeds

        table = run_seeds(fits=args.fits, runs=args.runs, tokens=args.tokens, options=args.options, group=args.group,
                          out=args.out, figures=args.figures, axis_label=args.axis_label)
        for p in table["pairs"]:
            rho = p["spearman"]
            print(f"seeds: {p['run_a']} vs {p['run_b']}: n={p['n']} spearman={rho['rho']} "
                  f"median|dtau|={p['median_abs_diff']:.4g} (tau IQR {p['tau_iqr']:.4g})", file=sys.stderr)
        return 0

    p = command(sub, "seeds", run,
                "per-token learning-time agreement between runs that differ only by seed (paper Fig. 2, hypothesis A)",
                "Tokens: the spectrum's selection (analysis.selection) with tau inside each run's window; every pair "
                "of runs gets the Spearman rank correlation of tau (bootstrap CI) and the median |tau_a - tau_b| on "
                "the fit axis, next to the interquartile range of tau across tokens.")
    p.add_argument("--fits", nargs="+", required=True, help="fit tables of the runs, in --runs order")
    p.add_argument("--runs", nargs="+", required=True, help="run (series) names, the first is the reference")
    p.add_argument("--tokens", required=True, help="the validation token set the runs were evaluated on")
    p.add_argument("--options", type=json_object, default={}, help="JSON of the config's analysis section")
    p.add_argument("--group", required=True, help="seed group name (the output's label)")
    p.add_argument("--axis-label", default="training step", help="axis label of the figures")
    p.add_argument("--out", required=True, help="output agreement.json")
    p.add_argument("--figures", required=True, help="output folder for the figures")
