"""Frontiers of recipe sweeps: the D and M axes (paper §5, Fig. 4 and 5).

A D or M sweep trains many runs. Run r belongs to a *group* with axis value a_r and differs from the other
runs of its group only by its recipe (learning rate, batch, decay, seed ...):

* D axis: a_r = the run's training-token budget (``runs[].tokens``); its final checkpoint has seen
  ``steps * batch * seq_len`` of them (tokens seen, the value the frontier series is fitted on);
* M axis: a_r = the non-embedding training FLOPs per token of the run's model
  (:func:`tokenscale.training.model.nonembedding_flops_per_token`).

L_r(c) is the validation loss of run r at checkpoint c: the mean per-token loss of the evaluation of that
checkpoint on the shared validation token set (the run's ``val_loss.csv``).

* **Frontier point** of group a: F(a) = min over the group's runs of L_r(final_r), the best recipe's final
  (for WSD runs: decayed) checkpoint. The frontier *series* has these (run, final step) as members in
  increasing a; its per-token trajectories are the per-token losses at those checkpoints, fitted on log10 a
  and decomposed exactly like a T series.
* **Monotone**: F should fall as a grows. A point with F(a_i) >= F(a_{i-1}) is flagged (``monotone = False``)
  and reported, not dropped: at demo scale, recipe noise can exceed the gain of one grid step.
* **Envelope** (drawn in Fig. A): over every checkpoint (x, L) of every run of the sweep, with x = tokens seen
  (D) or training compute x = a_r * tokens seen (M), E(x) = min{L : (x', L) with x' <= x}, the lowest loss
  reached at no more than x.

This module is plain numpy (no torch, no h5py): the resolver runs in the workflow's ``series_manifest`` job.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from tokenscale import TokenscaleError
from tokenscale.atomic import write_text
from tokenscale.io.valloss import Curve, read_curve

__all__ = ["AXES", "FrontierPoint", "frontier_points", "envelope", "resolve",
           "frontier_options", "check_mean_loss", "write_frontier_csv", "read_frontier_csv"]

# sweep axis -> (the frontier series' fit axis name in the trajectory shards, what a group value is)
AXES = {"D": ("tokens", "training tokens"), "M": ("flops", "non-embedding FLOPs/token")}
FRONTIER_HEADER = ("axis_value", "run", "step", "tokens_seen", "val_loss", "n_candidates", "runner_up_loss",
                   "monotone")


@dataclass(frozen=True)
class FrontierPoint:
    axis_value: float  # the group's a (budget or FLOPs/token)
    run: str  # the best recipe's run
    step: int  # its final checkpoint
    tokens_seen: int
    val_loss: float
    n_candidates: int  # runs in the group
    runner_up_loss: float  # the second-best run's final loss (nan with one candidate)
    monotone: bool  # loss below every smaller group's frontier loss


def frontier_points(curves: Sequence[Curve]) -> list[FrontierPoint]:
    """The best final loss of each group, in increasing axis value (ties: the lexically first run)."""
    if not curves:
        raise TokenscaleError("frontier: no runs")
    groups: dict[float, list[Curve]] = {}
    for c in curves:
        groups.setdefault(c.group, []).append(c)
    points, best_so_far = [], np.inf
    for a in sorted(groups):
        ranked = sorted(groups[a], key=lambda c: (c.final[2], c.run))
        step, tokens, loss = ranked[0].final
        runner_up = ranked[1].final[2] if len(ranked) > 1 else float("nan")
        points.append(FrontierPoint(a, ranked[0].run, step, tokens, loss, len(ranked), runner_up, loss < best_so_far))
        best_so_far = min(best_so_far, loss)
    return points


def envelope(x: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower envelope E(x) = min{loss_j : x_j <= x} of scattered points, at the sorted distinct x (ties: min)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    loss = np.asarray(loss, dtype=np.float64).ravel()
    if x.shape != loss.shape or x.size == 0:
        raise TokenscaleError(f"envelope: x and loss must be non-empty and equal in size, got {x.size} and {loss.size}")
    xs, inv = np.unique(x, return_inverse=True)
    at_x = np.full(xs.size, np.inf)
    np.minimum.at(at_x, inv, loss)
    return xs, np.minimum.accumulate(at_x)


def frontier_options(axis: str, groups: dict[str, float]) -> str:
    """The JSON a frontier series carries for its resolver: the sweep axis and each run's group value."""
    if axis not in AXES:
        raise TokenscaleError(f"frontier: axis must be one of {sorted(AXES)}, got {axis!r}")
    return json.dumps({"axis": axis, "groups": groups}, sort_keys=True)


def _curves_from_inputs(runs: Sequence[str], groups: dict, inputs: Sequence[str]) -> list[Curve]:
    """Each run's curve from its ``runs/{run}/val_loss.csv`` among the resolver's input files."""
    by_run = {Path(p).parent.name: p for p in inputs if Path(p).name == "val_loss.csv"}
    missing = [r for r in runs if r not in by_run]
    if missing:
        raise TokenscaleError(f"frontier: no val_loss.csv for run {missing[0]!r} among the inputs")
    return [read_curve(by_run[r], r, groups[r]) for r in runs]


def resolve(series, sources: dict, inputs: Sequence[str]) -> dict:
    """Resolver of a frontier series (``tokenscale.series``): members, the fit axis and the frontier table."""
    opts = json.loads(series.options)
    axis_name = AXES[opts["axis"]][0]
    curves = _curves_from_inputs(series.sources, opts["groups"], inputs)
    for c in curves:
        last = sources[c.run].steps[-1]
        if c.final[0] != last:
            raise TokenscaleError(f"frontier {series.name}: run {c.run}'s val_loss.csv ends at step {c.final[0]}, "
                                  f"not at its final checkpoint {last}; rerun its val_loss job")
    points = frontier_points(curves)
    values = [p.tokens_seen if axis_name == "tokens" else p.axis_value for p in points]
    if np.any(np.diff(values) <= 0):
        raise TokenscaleError(f"frontier {series.name}: axis values {values} are not strictly increasing "
                              "(two budgets round to the same number of steps?)")
    return {"members": [(p.run, p.step) for p in points],
            "axis": {"name": axis_name, "values": [float(v) for v in values]},
            "table": [asdict(p) for p in points]}


def check_mean_loss(table: Sequence[dict], mean_loss: np.ndarray, where: str, tol: float = 1e-4) -> None:
    """Each frontier point's loss (val_loss.csv) equals the mean per-token loss of its member (trajectories)."""
    mean_loss = np.asarray(mean_loss, dtype=np.float64)
    if mean_loss.shape != (len(table),):
        raise TokenscaleError(f"{where}: {mean_loss.size} checkpoints but the frontier has {len(table)} points")
    for row, m in zip(table, mean_loss):
        if not abs(m - float(row["val_loss"])) <= tol:
            raise TokenscaleError(f"{where}: run {row['run']} step {row['step']}: mean per-token loss {m:.6f} differs "
                                  f"from its val_loss.csv {float(row['val_loss']):.6f} by more than {tol:g}")


def write_frontier_csv(path: str | Path, table: Sequence[dict]) -> Path:
    lines = [",".join(FRONTIER_HEADER)]
    for row in table:
        lines.append(",".join(str(row[k]) for k in FRONTIER_HEADER))
    return write_text(path, "\n".join(lines) + "\n")


def read_frontier_csv(path: str | Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
