"""The seeds stage: per-token learning-time agreement between runs that differ only by seed (paper Fig. 2,
hypothesis A) -> agreement.json and one figure per (reference run, other run) pair.

Tokens: the spectrum's selection (analysis.selection) with tau inside each run's window; every pair of runs gets
the Spearman rank correlation of tau (bootstrap CI) and the median |tau_a - tau_b| on the fit axis, next to the
interquartile range of tau across tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tokenscale import TokenscaleError, atomic
from tokenscale.analysis.instances import selected_tau
from tokenscale.seeds.compute import seed_agreement
from tokenscale.seeds.figures import plot_seed_agreement
from tokenscale.analysis.options import AnalysisOptions
from tokenscale.config import validate_config
from tokenscale.io import read_token_set
from tokenscale.io.fits import load_fits


def pair_agreement(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray], *, n_boot: int,
                   seed: int) -> dict:
    """Agreement of two runs' (tau (N,), valid (N,)): :func:`seed_agreement` plus the IQR of tau over the tokens
    valid in both."""
    (ta, va), (tb, vb) = a, b
    stats = seed_agreement(ta, tb, va, vb, n_boot=n_boot, seed=seed)
    both = va & vb
    q25, q75 = np.quantile(np.concatenate([ta[both], tb[both]]), [0.25, 0.75])
    stats.update(tau_iqr=float(q75 - q25))
    return stats


def run_seeds(*, fits: list, runs: list[str], tokens, options: dict, group: str, out, figures,
              axis_label: str = "training step") -> dict:
    """Write agreement.json (``out``) of a seed group and its figures; returns the table (``pairs``: one per pair
    of runs, in (i, j > i) order)."""
    if len(fits) != len(runs) or len(runs) < 2:
        raise TokenscaleError(f"seeds: need one --fits per --runs name and at least 2 runs, got "
                              f"{len(fits)} fit tables for {len(runs)} runs")
    section = validate_config({"analysis": options})["analysis"]
    opts = AnalysisOptions.from_config(section)
    ts = read_token_set(tokens, datasets=())
    N = int(ts["n_seqs"]) * int(ts["seq_len"])
    tables = [load_fits(path) for path in fits]
    taus = [selected_tau(f, N, opts.main) for f in tables]  # (tau (N,), valid (N,)) per run
    transforms = {f.transform for f in tables}
    if len(transforms) > 1:
        raise TokenscaleError(f"seeds: the fit tables use different axis transforms {sorted(transforms)}")
    pairs = []
    for i in range(len(runs)):
        for j in range(i + 1, len(runs)):
            stats = pair_agreement(taus[i], taus[j], n_boot=section["n_boot"], seed=section["seed"])
            stats.update(run_a=runs[i], run_b=runs[j])
            pairs.append(stats)
            if i == 0:  # the first run against each other: one figure per pair
                (ta, va), (tb, vb) = taus[i], taus[j]
                plot_seed_agreement(ta, tb, stats, Path(figures) / f"fig02_seeds_{runs[j]}", valid=va & vb,
                                    labels=(runs[i], runs[j]), axis_label=axis_label)
    table = {"group": group, "runs": list(runs), "transform": tables[0].transform, "selection": opts.selection,
             "selection_description": opts.main.describe(), "pairs": pairs}
    atomic.write_text(out, json.dumps(table, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return table
