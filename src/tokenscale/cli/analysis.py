"""Analysis commands: ``analyze`` (spectrum, shared pulse, reconstruction, power law of a series), ``frontier``
(a D or M sweep's frontier table and figures) and ``figures`` (the decomposition figures of an analysis file)."""

from __future__ import annotations

import sys

from tokenscale.cli.common import command, json_object


def register(sub) -> None:
    _analyze(sub)
    _frontier(sub)
    _figures(sub)


def _analyze(sub) -> None:
    def run(args) -> int:
        from tokenscale.analysis.stage import run_analysis

        res, opts = run_analysis(trajectories=args.trajectories, fits=args.fits, run=args.run, options=args.options,
                                 analysis=args.analysis, summary=args.summary)
        s = res.summary()
        print(f"analyze: {args.run}: alpha {s['alpha_fit']} beta {s['tail']['beta']} (selection {opts.selection}) "
              f"R2 reconstruction {s['metrics']['r2_reconstruction']} -> {args.analysis}", file=sys.stderr)
        for note in res.notes:
            print(f"analyze: {args.run}: warning: {note}", file=sys.stderr)
        return 0

    p = command(sub, "analyze", run,
                "spectrum, shared pulse, reconstruction, power law -> analysis file + summary.json",
                "Options are the config's analysis section (schema defaults fill what is missing). The analysis "
                "file holds every curve and number the figures draw (tokenscale.analysis.result).")
    p.add_argument("--trajectories", nargs="+", required=True, help="trajectory shards of one run")
    p.add_argument("--fits", required=True, help="the run's fit table (fit-table output)")
    p.add_argument("--run", required=True, help="series name (stored in the summary)")
    p.add_argument("--options", type=json_object, default={}, help="JSON of the config's analysis section")
    p.add_argument("--analysis", required=True, help="output analysis file (HDF5)")
    p.add_argument("--summary", required=True, help="output summary.json")


def _frontier(sub) -> None:
    def run(args) -> int:
        from tokenscale.frontiers.stage import run_frontier

        r = run_frontier(series=args.series, options=args.options, manifest=args.manifest, curves=args.curves,
                         trajectories=args.trajectories, summary=args.summary, table=args.table,
                         figures=args.figures)
        flat = [row["run"] for row in r["table"] if not row["monotone"]]
        print(f"frontier: {args.series}: {len(r['table'])} points from {r['n_curves']} runs"
              + (f"; not monotone at {', '.join(flat)}" if flat else "; monotone") + f"; {len(r['figures'])} figures",
              file=sys.stderr)
        return 0

    p = command(sub, "frontier", run, "a D or M sweep's frontier: table and figures (paper Fig. 4/5 A-B)",
                "Writes which (run, checkpoint) defines each frontier point, checks that each point's loss equals "
                "the mean of the series' per-token losses (1e-4), and draws every run's curve with the envelope "
                "(A) and the frontier with the series' power law (B). Panel C is the series' analysis.")
    p.add_argument("--series", required=True, help="frontier series name (figure titles)")
    p.add_argument("--options", required=True, help="the series' resolver options JSON (sweep axis, run groups)")
    p.add_argument("--manifest", required=True, help="the series' manifest.json (members, axis, table)")
    p.add_argument("--curves", nargs="+", required=True,
                   help="val_loss.csv of every sweep run (and of a shared trunk, drawn dashed)")
    p.add_argument("--trajectories", nargs="+", required=True, help="the series' trajectory shards")
    p.add_argument("--summary", required=True, help="the series' analysis summary.json (power law)")
    p.add_argument("--table", required=True, help="output frontier.csv")
    p.add_argument("--figures", required=True, help="output folder of the figures")


def _figures(sub) -> None:
    def run(args) -> int:
        from tokenscale.analysis.figures import figures_from_file

        figs = figures_from_file(args.analysis, args.figures, axis_label=args.axis_label, run_name=args.run)
        print(f"figures: {args.run}: {len(figs)} figures -> {args.figures}", file=sys.stderr)
        return 0

    p = command(sub, "figures", run, "paper-style decomposition figures from an analysis file",
                "Reads the analysis file that `tokenscale analyze` wrote; writes PNG + SVG per figure.")
    p.add_argument("--analysis", required=True, help="analysis file (HDF5) of one series")
    p.add_argument("--run", required=True, help="series name (figure titles)")
    p.add_argument("--axis-label", default="training step", help="x-axis label of the figures")
    p.add_argument("--figures", required=True, help="output folder for PNG + SVG figures")
