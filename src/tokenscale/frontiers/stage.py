"""The frontier stage (paper Fig. 4/5 A-B): a D or M sweep's frontier table and figures from its series manifest,
its runs' validation-loss curves, the series' trajectory shards and its analysis summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tokenscale import TokenscaleError
from tokenscale.frontiers.compute import check_mean_loss, write_frontier_csv
from tokenscale.io.valloss import read_curve
from tokenscale.frontiers.figures import frontier_figures
from tokenscale.io import read_run_trajectories
from tokenscale.series import read_manifest_data


def run_frontier(*, series: str, options: str, manifest, curves: list, trajectories: list, summary, table,
                 figures) -> dict:
    """Write frontier.csv (``table``) and the figures; check each frontier point's loss against the mean of the
    series' per-token losses. Returns {table (rows), n_curves, figures (paths)}.

    ``options``: the series' resolver options JSON ({axis, groups}); a curve whose run is in no group is a shared
    trunk's (drawn dashed)."""
    opts = json.loads(options)
    man = read_manifest_data(manifest)
    rows, axis = man.get("table"), man.get("axis")
    if not rows or not axis:
        raise TokenscaleError(f"{manifest}: not a frontier manifest (no table or axis); rerun its series_manifest job")
    runs, trunks = [], []
    for path in curves:
        run = Path(path).parent.name
        if run in opts["groups"]:
            runs.append(read_curve(path, run, opts["groups"][run]))
        else:
            trunks.append(read_curve(path, run, float("nan")))
    losses, _, _ = read_run_trajectories(trajectories)
    check_mean_loss(rows, losses.astype(np.float64).mean(axis=0), trajectories[0])
    power_law = json.loads(Path(summary).read_text())
    write_frontier_csv(table, rows)
    figs = frontier_figures(runs, trunks, rows, axis["values"], power_law, opts["axis"], figures, title=series)
    return {"table": rows, "n_curves": len(runs), "figures": figs}
