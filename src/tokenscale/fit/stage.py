"""The fit stages the workflow runs: ``fit`` (one trajectory shard -> fits HDF5, from the fit window's start),
``fit-window`` (where a series' fits start -> fit window JSON) and ``fit-table`` (per-shard fits -> one table)."""

from __future__ import annotations

import time

import numpy as np

from tokenscale import TokenscaleError, atomic
from tokenscale.data import TrainTokens
from tokenscale.fit.window import fit_window, read_window_start, target_counts
from tokenscale.io import read_run_trajectories, read_trajectories
from tokenscale.io.fits import concat_fits, load_fits, save_fits


def run_fit(*, trajectories, out, axis: str, transform: str, device: str, engine: str, window="") -> dict:
    """Fit every token trajectory of a shard on ``axis`` from the fit window's start (``window``: a fit window file;
    empty: every checkpoint) and write the fits HDF5. Returns {fits, start_index, n_points, seconds} (seconds: the
    fits' wall time, reading the shard excluded)."""
    from tokenscale.fit.api import fit_sigmoids  # torch: only the fit itself pays for it

    losses, axes, meta = read_trajectories(trajectories)
    t0 = time.time()
    if axis not in axes:
        raise TokenscaleError(f"{trajectories}: no axis {axis!r} in the shard (it has {', '.join(sorted(axes))})")
    a = np.asarray(axes[axis], dtype=np.float64)
    k0 = read_window_start(window, a) if window else 0
    res = fit_sigmoids(losses[:, k0:], a[k0:], transform=transform, device=device, engine=engine)
    dt = time.time() - t0
    attrs = {"trajectories": str(trajectories), "axis_name": axis, "fit_start_index": k0,
             "token_index_first": int(meta["token_index"][0]) if len(meta["token_index"]) else 0}
    save_fits(out, res, attrs=attrs, token_index=meta["token_index"])
    return {"fits": res, "start_index": k0, "n_points": losses.shape[1] - k0, "seconds": dt}


def run_fit_window(*, trajectories: list, axis: str, rule: str, out, train_data="") -> dict:
    """Write the fit window JSON of a series (every shard of it in ``trajectories``) and return it; ``train_data``
    (a training data folder) gives the unigram rule its target counts (empty: none, the rule falls back)."""
    losses, axes, meta = read_run_trajectories(trajectories)
    if axis not in axes:
        raise TokenscaleError(f"{trajectories[0]}: no axis {axis!r} in the shards "
                              f"(they have {', '.join(sorted(axes))})")
    counts = None
    if rule == "unigram" and train_data:
        counts = target_counts(TrainTokens(train_data))
    w = fit_window(rule, losses, axes[axis], counts=counts, target_ids=meta["token_id"] if counts is not None else None)
    atomic.write_json(out, w)
    return w


def run_fit_table(*, fits: list, out) -> None:
    """Concatenate per-shard fits (in shard order) into one fits table."""
    parts = [load_fits(p) for p in fits]
    save_fits(out, concat_fits(parts), attrs={"shards": [str(p) for p in fits]})
