"""The analyze stage: a series' trajectory shards and fit table -> analysis file (HDF5) + summary.json
(spectrum, shared pulse, reconstruction, power law; :mod:`tokenscale.analysis.pipeline`)."""

from __future__ import annotations

import numpy as np

from tokenscale import TokenscaleError
from tokenscale.analysis import AnalysisOptions, analyze, write_analysis, write_summary
from tokenscale.analysis.methods import format_table, method_table, whole_axis
from tokenscale.analysis.alpha_gap import alpha_gap
from tokenscale.analysis.hypothesis_b import hypothesis_b
from tokenscale.config import validate_config
from tokenscale.io import read_run_trajectories
from tokenscale.io.fits import load_fits


def fit_columns(losses, axis: dict, fit, fits_path):
    """The trajectory columns the fits were made on: the checkpoints from the fit window's start on (the fit's axis is
    the end of one of the shards' axes)."""
    fa = np.asarray(fit.axis_orig, dtype=np.float64)
    k0 = losses.shape[1] - fa.size
    if k0 < 0 or not any(np.array_equal(np.asarray(a, dtype=np.float64)[k0:], fa) for a in axis.values()):
        raise TokenscaleError(f"{fits_path}: the fits' axis ({fa.size} points) is not the end of the trajectories' "
                              f"axis ({losses.shape[1]} points); rerun the fit rules")
    return losses[:, k0:]


def run_analysis(*, trajectories: list, fits, run: str, options: dict, analysis, summary):
    """Analyse one series (options: the config's analysis section, schema defaults fill the rest) and write its
    analysis file and summary.json; returns (result, options)."""
    opts = AnalysisOptions.from_config(validate_config({"analysis": options})["analysis"])
    losses, axis, meta = read_run_trajectories(trajectories)
    fit = load_fits(fits)
    if len(fit) != losses.shape[0]:
        raise TokenscaleError(f"{fits}: {len(fit)} fits but {losses.shape[0]} trajectories; rerun the fit rules")
    whole, losses = losses, fit_columns(losses, axis, fit, fits)
    res = analyze(losses, fit, opts)
    extra = {"run": run, "config_sha256": meta["attrs"].get("config_sha256", "")}
    extra["methods"] = method_table(whole, whole_axis(axis, fit), fit, opts, res)  # paper vs default (#31)
    print(format_table(extra["methods"]))
    extra["alpha_gap"] = alpha_gap(losses, fit, res, opts)  # alpha_fit vs beta - 1, effect by effect (#31)
    hyp_b, hyp_b_examples = hypothesis_b(losses, fit, opts)  # per-token sigmoid vs power law (analysis.hypothesis_b)
    write_analysis(res, analysis, extra={**extra, "hypothesis_b_examples": hyp_b_examples})
    write_summary(res, summary, extra={**extra, "hypothesis_b": hyp_b})
    return res, opts
