"""Figure of a reshaping experiment (:mod:`tokenscale.reshaping.compute`; paper Fig. 6 A–E), PNG + SVG, matplotlib object API.

``fig06_reshape`` has five panels:

* A – the reference run's validation loss over all its checkpoints with the target window shaded, and the
  learning-time histogram of the selected candidate tokens (right axis);
* B – mean candidate-token loss per score bucket at the reference's checkpoints (bucket 0 = lowest score);
* C – per bucket: its sampling weight in the reshaped arm and its mean score;
* D – training loss of each arm over the window (mean over seeds of a running mean of the per-step loss);
* E – validation loss of each arm over the window (mean over seeds, min–max band), with the acceleration;
* F – (beyond the paper; when the arms' continuations were fitted) the learning-time histogram of the selected
  validation tokens in each arm's continuation series (mean over seeds), with the paired τ shift vs uniform.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from tokenscale.plotting import C_EMP, save_figure

__all__ = ["RESHAPE_FIGURE_NAME", "plot_reshape"]

RESHAPE_FIGURE_NAME = "fig06_reshape"
ARM_COLORS = {"reshaped": "#d62728", "uniform": "#1f77b4", "original": "#7f7f7f"}


def _window(ax, window):
    ax.axvspan(*window, color="#ffd27f", alpha=0.35, lw=0, label="target window")


def _panel_reference(ax, d: dict):
    ax.plot(d["reference_steps"], d["reference_loss"], "-", color=C_EMP, lw=1.5, label="validation loss")
    _window(ax, d["window"])
    ax.set_xscale("log")
    ax.set_xlabel("step (reference run)")
    ax.set_ylabel("validation loss (nats)")
    tau = np.asarray(d["candidate_tau_steps"], dtype=float)
    if tau.size:
        tw = ax.twinx()
        edges = np.geomspace(max(tau.min(), 1.0), tau.max() * 1.001, 30)
        tw.hist(tau, bins=edges, color="#2ca02c", alpha=0.35)
        tw.set_ylabel("candidate tokens per τ bin")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("A. reference run, target window, candidate τ", fontsize=9)


def _panel_buckets(ax, d: dict):
    curves = np.asarray(d["bucket_curves"], dtype=float)  # (B, K)
    cmap = colormaps["viridis"]
    for b, c in enumerate(curves):
        ax.plot(d["candidate_steps"], c, color=cmap(b / max(1, len(curves) - 1)), lw=1.2,
                label=f"bucket {b}" if b in (0, len(curves) - 1) else None)
    _window(ax, d["window"])
    ax.set_xscale("log")
    ax.set_xlabel("step (reference run)")
    ax.set_ylabel("mean candidate-token loss")
    ax.legend(fontsize=7)
    ax.set_title("B. candidate loss per score bucket", fontsize=9)


def _panel_weights(ax, d: dict):
    B = len(d["bucket_weights"])
    ax.bar(np.arange(B), d["bucket_weights"], color="#d62728", alpha=0.7, label="reshaped weight")
    ax.set_xticks(np.arange(B))
    ax.set_xlabel("score bucket (low → high)")
    ax.set_ylabel("sampling weight")
    tw = ax.twinx()
    tw.plot(np.arange(B), d["bucket_mean_score"], "o-", color="k", ms=3, label="mean score")
    tw.set_ylabel("mean score (fraction of tokens with τ in window)")
    ax.set_title("C. reshaped distribution", fontsize=9)


def _panel_train(ax, d: dict):
    for arm, runs in d["train_loss"].items():
        steps = np.asarray(runs["steps"], dtype=float)
        loss = np.asarray(runs["loss"], dtype=float)  # (n_seeds, steps) running means
        ax.plot(steps, loss.mean(0), color=ARM_COLORS.get(arm, "k"), lw=1.2, label=arm)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (running mean)")
    ax.legend(fontsize=7)
    ax.set_title("D. training loss over the window (each arm's own data)", fontsize=9)


def _panel_valid(ax, d: dict):
    steps = np.asarray(d["arm_steps"], dtype=float)
    for arm, c in d["arm_curves"].items():
        c = np.atleast_2d(np.asarray(c, dtype=float))
        col = ARM_COLORS.get(arm, "k")
        ax.plot(steps, c.mean(0), "o-", color=col, ms=3, lw=1.2, label=f"{arm} ({c.shape[0]} seed(s))")
        if c.shape[0] > 1:
            ax.fill_between(steps, c.min(0), c.max(0), color=col, alpha=0.15, lw=0)
    m = d["metrics"].get("acceleration_vs_uniform", {})
    if m.get("value") is not None:
        lo, hi = m.get("ci_low"), m.get("ci_high")
        ci = f" [{lo:+.1%}, {hi:+.1%}]" if lo is not None and hi is not None else ""
        ax.text(0.02, 0.04, f"acceleration vs uniform: {m['value']:+.1%}{ci}", transform=ax.transAxes, fontsize=8)
    else:
        ax.text(0.02, 0.04, "acceleration vs uniform: n/a (the uniform arm's loss did not fall over the window)",
                transform=ax.transAxes, fontsize=8)
    ax.set_xlabel("step")
    ax.set_ylabel("validation loss (nats)")
    ax.legend(fontsize=7)
    ax.set_title("E. validation loss over the window", fontsize=9)


def _panel_shift(ax, d: dict):
    if "shift_hist" not in d:
        ax.text(0.5, 0.5, "continuations not fitted", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    edges = np.asarray(d["shift_edges"], dtype=float)
    for arm, h in d["shift_hist"].items():
        ax.stairs(h, edges, color=ARM_COLORS.get(arm, "k"), lw=1.3, label=arm)
    _window(ax, d["window"])
    ax.set_xscale("log")
    ax.set_xlabel("learning time τ (step)")
    ax.set_ylabel("validation tokens per τ bin (mean over seeds)")
    m = d["spectrum_shift"]["shift"].get("uniform", {})
    if m.get("value") is not None:
        lo, hi = m.get("ci_low"), m.get("ci_high")
        ci = f" [{lo:+.4f}, {hi:+.4f}]" if lo is not None and hi is not None else ""
        ax.text(0.02, 0.96, f"mean Δlog10 τ (reshaped − uniform),\ntokens learned in the window: {m['value']:+.4f}{ci}",
                transform=ax.transAxes, fontsize=7, va="top")
    ax.legend(fontsize=7, loc="center left")
    ax.set_title("F. validation-token learning times in the continuations", fontsize=9)


def plot_reshape(d: dict, outdir: str | Path) -> list[Path]:
    """Fig. 6 A–F from the report dict of ``tokenscale reshape-report`` (its ``figure`` entry); PNG + SVG."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(16, 7.5), layout="constrained")
    axes = fig.subplot_mosaic([["A", "B", "C"], ["D", "E", "F"]])
    _panel_reference(axes["A"], d)
    _panel_buckets(axes["B"], d)
    _panel_weights(axes["C"], d)
    _panel_train(axes["D"], d)
    _panel_valid(axes["E"], d)
    _panel_shift(axes["F"], d)
    fig.suptitle(f"Reshaping with learning times: {d['experiment']} (reference {d['reference']}, "
                 f"window {d['window'][0]}–{d['window'][1]})", fontsize=10)
    png = Path(save_figure(fig, outdir, RESHAPE_FIGURE_NAME))
    return [png, png.with_suffix(".svg")]
