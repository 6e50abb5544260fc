"""Decomposition figures (paper Fig. 1–3, 10–12) of a :class:`tokenscale.analysis.SpectrumResult` (PNG + SVG
each), e.g. read back from the analysis file with :func:`tokenscale.analysis.read_analysis`.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend change); colours, axis labels and
the PNG + SVG writer are shared with the other figure modules (:mod:`tokenscale.plotting`).
Files written to ``outdir`` (one PNG and one SVG per name):

* ``fig01_overview`` – paper Fig 1: (A, top) sample token trajectories with their sigmoid fits;
  (A, bottom) the same tokens aligned by learning time, ``(ℓ−post)/Δ`` against ``u = x − τ``,
  collapsing onto ``1 − σ(λ u)``; (B) learning-time spectrum, empirical loss derivative and the
  pulse–spectrum reconstruction on one axis (twin y axes: rate and token density).
* ``fig02_token_trajectories`` – paper Fig 2: sampled trajectories with sigmoid fits, one panel per
  category (learned / early / late / unlearned).
* ``fig03_step_axis`` – paper Fig 3 A–D in one file (2 × 2; B is split into raw and aligned
  pulses). The name is fixed whatever the axis; pass ``axis_label`` for the D / M axes.
* ``fig10_shape_vs_tau`` – Δ vs τ and λ vs τ (hexbin of up to 20 000 sampled valid tokens with
  the binned median overlaid).
* ``fig11_pulse_svd`` – aligned pulses (raw / aligned), singular-value spectrum with cumulative
  energy, top four singular vectors.
* ``fig12_reconstruction`` – true vs sigmoid mean loss; true rate vs p(τ) on the same axis; true /
  sigmoid-implied / reconstructed rate.

Units: losses are in nats; rates are per unit of the fit axis (per decade on a ``log10`` axis).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from matplotlib import cm, colormaps, colors
from matplotlib.figure import Figure

from tokenscale import TokenscaleError
from tokenscale.analysis.result import read_analysis
from tokenscale.io.fits import CATEGORY_NAMES
from tokenscale.plotting import (C_EMP, C_REC, C_SIG, C_SPEC, AxisLabels, fmt_ci, positive, save_figure, set_xscale,
                                 to_original)

__all__ = ["FIGURE_NAMES", "make_figures"]

FIGURE_NAMES = ("fig01_overview", "fig02_token_trajectories", "fig03_step_axis",
                "fig10_shape_vs_tau", "fig11_pulse_svd", "fig12_reconstruction")


def _sig(xg, p):
    return p["post"] + p["delta"] / (1.0 + np.exp(np.clip(p["lam"] * (xg - p["tau"]), -500, 500)))


def _tau_norm(res):
    return colors.Normalize(vmin=res.bin_edges_x[0], vmax=res.bin_edges_x[-1])


def _cbar_tau(fig, ax, res, lab):
    sm = cm.ScalarMappable(norm=_tau_norm(res), cmap="viridis")
    cb = fig.colorbar(sm, ax=ax, pad=0.01, fraction=0.05)
    cb.set_label(("log10 τ" if lab.log else "τ") + " (bin)")
    return cb


def _pulse_panels(fig, ax_raw, ax_al, res, lab, *, source="emp"):
    """Raw per-bin pulses on the axis and the same pulses aligned on u; colour = bin τ.

    Bins whose aligned pulse is incomplete within the SVD window (pulse cut by the window edge)
    are drawn faint; late bins are drawn first so the well-populated early bins stay visible."""
    cmap = colormaps["viridis"]
    norm = _tau_norm(res)
    use = res.bin_count >= res.settings["min_bin_count"]
    full = res.svd.get("bins_used" if source == "emp" else "bins_used_fit", use)
    xo = to_original(res.axis_x, res.transform)
    xg = to_original(res.grid_x, res.transform)
    for b in np.nonzero(use)[0][::-1]:
        col = cmap(norm(res.bin_mean_tau_x[b]))
        kw = dict(color=col, lw=0.9, alpha=1.0 if full[b] else 0.3)
        if source == "emp":
            ax_raw.plot(xo, res.pulse_emp[b], **kw)
            ax_al.plot(res.u_grid, res.aligned_emp[b], **kw)
        else:
            ax_raw.plot(xg, res.pulse_fit_grid[b], **kw)
            ax_al.plot(res.u_grid, res.aligned_fit[b], **kw)
    ax_al.plot(res.u_grid, res.template, color="k", lw=2.0, ls="--",
               label="shared template g(u), Eq. 4 (fitted pulses)")
    te = getattr(res, "template_emp", None)
    if te is not None and np.any(np.isfinite(te)):
        ax_al.plot(res.u_grid, te, color="0.45", lw=2.0,
                   label="Eq. 4 from empirical per-token −dℓ/dx")
    ax_al.plot([], [], color="0.5", lw=0.9, alpha=0.3, label="pulse cut by window edge")
    set_xscale(ax_raw, lab)
    ax_raw.set_xlabel(lab.axis)
    ax_raw.set_ylabel(lab.pulse)
    ax_al.set_xlabel(lab.u)
    ax_al.set_ylabel(lab.pulse)
    us = res.svd.get("u_svd", np.max(np.abs(res.u_grid)))
    ax_al.set_xlim(-us, us)
    ax_al.legend(loc="upper right", fontsize=7)
    for a in (ax_raw, ax_al):
        a.axhline(0, color="0.7", lw=0.5)
    src = "−d/dx of bin-mean loss" if source == "emp" else "fitted sigmoid pulses"
    ax_raw.set_title(f"per-bin mean pulses ({int(use.sum())} of {res.settings['n_bins']} bins "
                     f"with ≥{res.settings['min_bin_count']} tokens; {src})", fontsize=8)
    ax_al.set_title(f"centre-aligned: shifted by each bin's mean τ ({int(np.sum(full))} complete)",
                    fontsize=8)


def _post_span(ax, res, lab):
    x0 = to_original(res.axis_x[0], res.transform)
    xs = to_original(res.transient_start_x, res.transform)
    if xs > x0:
        ax.axvspan(x0, xs, color="0.9", zorder=0, label="transient (excluded)")


def _rate_axes(ax, res, lab, title: str, title_size: int) -> None:
    """Style of a loss-rate panel: transient span, axis scale, log rate axis, labels, legend, title."""
    _post_span(ax, res, lab)
    set_xscale(ax, lab)
    ax.set_yscale("log")
    ax.set_xlabel(lab.axis)
    ax.set_ylabel(lab.rate)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(title, fontsize=title_size)



# ----------------------------------------------------------------------------------------------


def _fig01(res, lab, outdir, title):
    fig = Figure(figsize=(14, 7.5), layout="constrained")
    gs = fig.add_gridspec(2, 2, width_ratios=[1, 1.15])
    ax_t = fig.add_subplot(gs[0, 0])
    ax_c = fig.add_subplot(gs[1, 0])
    ax_b = fig.add_subplot(gs[:, 1])
    sp = res.sample_params
    x = res.axis_x
    xo = to_original(x, res.transform)
    xf = np.linspace(x[0], x[-1], 400)
    coll = sp.get("collapse", np.zeros(0, int))
    # A top: a few tokens with spread-out τ
    if coll.size:
        order = coll[np.argsort(sp["tau"][coll])]
        show = order[np.unique(np.linspace(0, order.size - 1, min(6, order.size)).round().astype(int))]
        pal = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
        for j, i in enumerate(show):
            p = {k: sp[k][i] for k in ("tau", "lam", "delta", "post")}
            c = pal[j % len(pal)]
            ax_t.plot(xo, res.sample_losses[i], color=c, lw=0.8, alpha=0.55)
            ax_t.plot(to_original(xf, res.transform), _sig(xf, p), color=c, lw=1.8, ls="--",
                      label=f"τ = {to_original(p['tau'], res.transform):.3g}")
        ax_t.plot([], [], color="0.3", lw=0.8, label="token loss (data)")
        ax_t.plot([], [], color="0.3", lw=1.8, ls="--", label="sigmoid fit")
        ax_t.legend(fontsize=7, ncol=2, loc="lower left")
    set_xscale(ax_t, lab)
    ax_t.set_xlabel(lab.axis)
    ax_t.set_ylabel("token loss (nats)")
    ax_t.set_title("A. token-level loss trajectories and sigmoid fits", fontsize=10)
    # A bottom: collapse
    if coll.size:
        for i in coll:
            d = sp["delta"][i]
            if abs(d) < 1e-9:
                continue
            ax_c.plot(x - sp["tau"][i], (res.sample_losses[i] - sp["post"][i]) / d, color=C_EMP,
                      lw=0.5, alpha=0.25)
        lam_med = float(np.median(sp["lam"][coll]))
        uu = np.linspace(-6 / lam_med, 6 / lam_med, 300)
        ax_c.plot(uu, 1 / (1 + np.exp(lam_med * uu)), color="k", lw=2, ls="--",
                  label=f"1 − σ(λ u), median λ = {lam_med:.3g}")
        ax_c.set_xlim(-8 / lam_med, 8 / lam_med)
        ax_c.set_ylim(-0.5, 1.5)
        ax_c.plot([], [], color=C_EMP, lw=0.8, label=f"{coll.size} tokens, aligned by τ")
        ax_c.legend(fontsize=7, loc="upper right")
    ax_c.set_xlabel(lab.u)
    ax_c.set_ylabel("normalised loss (ℓ − post)/Δ")
    ax_c.set_title("A (continued). aligned by learning time: trajectories collapse", fontsize=10)
    # B: spectrum + derivative + reconstruction
    _spectrum_vs_rate(fig, ax_b, res, lab, with_rec=True)
    ax_b.set_title("B. learning-time spectrum, empirical derivative and reconstruction (p∗g)",
                   fontsize=10)
    fig.suptitle(title, fontsize=11)
    return save_figure(fig, outdir, "fig01_overview")


def _spectrum_vs_rate(fig, ax, res, lab, *, with_rec, with_sig=False):
    xo = to_original(res.axis_x, res.transform)
    ax.plot(xo, positive(res.deriv_emp), "o", ms=3.5, color=C_EMP, label="empirical −dL/dx")
    if with_sig:
        ax.plot(xo, positive(res.deriv_sig), "-", lw=1.8, color=C_SIG,
                label="sigmoid-implied (mean of fitted pulses)")
    if with_rec:
        ax.plot(to_original(res.grid_x, res.transform), positive(res.deriv_rec_grid), "-", lw=1.8,
                color=C_REC, label="reconstruction (p∗g)")
    ax.set_yscale("log")
    set_xscale(ax, lab)
    ax.set_xlabel(lab.axis)
    ax.set_ylabel(lab.rate)
    ax2 = ax.twinx()
    ce = to_original(0.5 * (res.bin_edges_x[:-1] + res.bin_edges_x[1:]), res.transform)
    ax2.step(ce, positive(res.density_x), where="mid", color=C_SPEC, lw=1.5)
    ax2.plot([], [], color=C_SPEC, lw=1.5)
    ax2.set_yscale("log")
    ax2.set_ylabel(lab.density, color=C_SPEC)
    ax2.tick_params(axis="y", colors=C_SPEC)
    _post_span(ax, res, lab)
    h1, l1 = ax.get_legend_handles_labels()
    h1.append(ax2.lines[-1])
    l1.append(f"p(τ), {res.settings['n_bins']} bins (right axis)")
    ax.legend(h1, l1, fontsize=7, loc="lower left")
    # same number of decades on both y axes so slopes are comparable
    y1 = np.array(ax.get_ylim())
    d2 = positive(res.density_x)
    if np.any(np.isfinite(d2)):
        top = np.nanmax(d2) * 2
        ax2.set_ylim(top * y1[0] / y1[1], top)
    return ax2


def _fig02(res, lab, outdir, title):
    fig = Figure(figsize=(13, 8.5), layout="constrained")
    axs = fig.subplots(2, 2)
    sp = res.sample_params
    x = res.axis_x
    xo = to_original(x, res.transform)
    xf = np.linspace(x[0], x[-1], 400)
    pal = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    for ax, name in zip(axs.ravel(), CATEGORY_NAMES):
        idx = res.category_examples.get(name, np.zeros(0, int))
        cc = res.category_counts.get(name, {}).get("valid", 0)
        for j, i in enumerate(idx):
            p = {k: sp[k][i] for k in ("tau", "lam", "delta", "post")}
            c = pal[j % len(pal)]
            ax.plot(xo, res.sample_losses[i], color=c, lw=0.8, alpha=0.6)
            ax.plot(to_original(xf, res.transform), _sig(xf, p), color=c, lw=1.8, ls="--",
                    label=f"τ = {to_original(p['tau'], res.transform):.3g}, λ = {p['lam']:.3g}, "
                          f"Δ = {p['delta']:.2f}")
            if x[0] <= p["tau"] <= x[-1]:
                ax.axvline(to_original(p["tau"], res.transform), color=c, lw=0.6, ls=":")
        if idx.size == 0:
            ax.text(0.5, 0.5, "no valid token in this category", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
            ax.set_yticks([])
        else:
            ax.plot([], [], color="0.3", lw=0.8, label="data")
            ax.plot([], [], color="0.3", lw=1.8, ls="--", label="sigmoid fit")
            ax.legend(fontsize=7, loc="best")
        ax.set_xlim(xo[0], xo[-1])
        ax.set_title(f"{name} ({cc} valid tokens)", fontsize=10)
        set_xscale(ax, lab)
        ax.set_xlabel(lab.axis)
        ax.set_ylabel("token loss (nats)")
    fig.suptitle(f"{title}: sampled token trajectories and sigmoid fits by category "
                 "(dotted: τ inside the window)", fontsize=11)
    return save_figure(fig, outdir, "fig02_token_trajectories")


def _fig03(res, lab, outdir, title):
    fig = Figure(figsize=(14, 10.5), layout="constrained")
    outer = fig.add_gridspec(2, 2)
    axA = fig.add_subplot(outer[0, 0])
    gB = outer[0, 1].subgridspec(2, 1)
    axB1 = fig.add_subplot(gB[0])
    axB2 = fig.add_subplot(gB[1])
    axC = fig.add_subplot(outer[1, 0])
    axD = fig.add_subplot(outer[1, 1])
    xo = to_original(res.axis_x, res.transform)
    pl = res.powerlaw
    # A
    axA.plot(xo, res.loss_emp, "o", ms=3.5, color=C_EMP, label="empirical mean loss")
    axA.plot(xo, res.loss_sig, "-", lw=1.8, color=C_SIG, label="sigmoid-implied mean loss")
    if np.isfinite(pl["alpha"]):
        pm = res.post_mask
        axA.plot(xo[pm], res.loss_pl[pm], "--", lw=1.8, color="k",
                 label=f"power law k·a^−α + E: α = {fmt_ci(pl['alpha'], pl['alpha_ci'])}, "
                       f"E = {pl['E']:.3g}")
    _post_span(axA, res, lab)
    set_xscale(axA, lab)
    axA.set_yscale("log")
    axA.set_xlabel(lab.axis)
    axA.set_ylabel("mean validation loss (nats, log scale)")
    axA.legend(fontsize=7, loc="lower left")
    axA.set_title("A. empirical vs sigmoid-implied mean loss, power-law fit", fontsize=10)
    # B
    _pulse_panels(fig, axB1, axB2, res, lab, source="emp")
    _cbar_tau(fig, [axB1, axB2], res, lab)
    axB1.set_title("B. " + axB1.get_title(), fontsize=8)
    # C
    _spectrum_panel(axC, res, lab)
    axC.set_title("C. learning-time spectrum with power-law tail fit", fontsize=10)
    # D
    axD.plot(xo, positive(res.deriv_emp), "o", ms=3.5, color=C_EMP, label="empirical −dL/dx")
    axD.plot(xo, positive(res.deriv_sig), "-", lw=1.8, color=C_SIG, label="sigmoid-implied")
    if np.isfinite(pl["alpha"]):
        axD.plot(xo[res.post_mask], positive(res.deriv_pl[res.post_mask]), "--", lw=1.5,
                 color="k", label="power-law fit (derivative)")
    axD.plot(to_original(res.grid_x, res.transform), positive(res.deriv_rec_grid), "-", lw=1.8,
             color=C_REC, label="spectrum-dominated reconstruction p∗g")
    m = res.metrics
    axD.text(0.98, 0.97, f"post-transient R² vs empirical:\n sigmoid {m['r2_sigmoid_deriv']:.3f}"
             f"\n reconstruction {m['r2_reconstruction']:.3f}\n power law "
             f"{m['r2_powerlaw_deriv']:.3f}", transform=axD.transAxes, ha="right", va="top",
             fontsize=7, bbox=dict(fc="white", ec="0.8"))
    _rate_axes(axD, res, lab, "D. loss derivative: empirical, sigmoid, power law, reconstruction", 10)
    fig.suptitle(f"{title}: decomposition on the {lab.name} axis", fontsize=11)
    return save_figure(fig, outdir, "fig03_step_axis")


def _spectrum_panel(ax, res, lab):
    ce = to_original(0.5 * (res.bin_edges_x[:-1] + res.bin_edges_x[1:]), res.transform)
    ax.plot(ce, positive(res.density_orig), "o", ms=4, color=C_SPEC,
            label=f"empirical p(τ), {res.settings['n_bins']} bins")
    tl = res.tail
    if tl["beta"] is not None and np.isfinite(tl["beta"]):
        g = tl["beta"] - 1.0
        tmin, tmax = tl["xmin"], tl["xmax"]
        tt = np.geomspace(tmin, tmax, 100) if tmin > 0 else np.linspace(tmin, tmax, 100)
        frac = tl["n_tail"] / res.counts["n_valid"]
        if abs(g) > 1e-9:
            pdf = g * tmin**g * tt ** (-(1 + g)) / (1 - (tmin / tmax) ** g)
        else:
            pdf = 1.0 / (tt * math.log(tmax / tmin))
        ax.plot(tt, frac * pdf, "-", color="k", lw=1.8,
                label=f"truncated power-law MLE: β = {fmt_ci(tl['beta'], tl['beta_ci'])}")
        ax.axvline(tmin, color="k", ls=":", lw=1, label=f"τ_min (KS) = {tmin:.3g}")
    ax.set_yscale("log")
    set_xscale(ax, lab)
    ax.set_xlabel(lab.tau)
    unit = lab.name
    ax.set_ylabel(f"p(τ): fraction of tokens per unit {unit} (log scale)")
    a_fit = res.powerlaw["alpha"]
    extra = (f"\npredicted α = β − 1 = {tl['beta'] - 1:.3f}; fitted α = {a_fit:.3f}"
             if np.isfinite(tl["beta"]) else "")
    ax.legend(fontsize=7, loc="lower left", title=f"{res.counts['n_in_window']} τ in window"
              + extra, title_fontsize=7)


def _fig10(res, lab, outdir, title):
    fig = Figure(figsize=(13, 5), layout="constrained")
    axs = fig.subplots(1, 2)
    sc = res.scatter
    w = sc["in_window"]
    tau_o = to_original(sc["tau"][w], res.transform)
    for ax, key, ylab in ((axs[0], "delta", "loss drop Δ (nats)"), (axs[1], "lam", lab.lam)):
        y = sc[key][w]
        ylog = key == "lam" and lab.log and np.all(y > 0) and y.size > 0
        if y.size:
            hb = ax.hexbin(tau_o, y, gridsize=50, bins="log", cmap="Blues", mincnt=1,
                           xscale="log" if lab.log else "linear",
                           yscale="log" if ylog else "linear")
            cb = fig.colorbar(hb, ax=ax, pad=0.01)
            cb.set_label("tokens per hexagon (log scale)")
            # binned medians
            edges = res.bin_edges_x[::4] if res.bin_edges_x.size > 8 else res.bin_edges_x
            xb = sc["tau"][w]
            med, cen = [], []
            for lo, hi in zip(edges[:-1], edges[1:]):
                s = (xb >= lo) & (xb < hi)
                if s.sum() >= 5:
                    med.append(np.median(y[s]))
                    cen.append(to_original(0.5 * (lo + hi), res.transform))
            ax.plot(cen, med, "o-", color=C_SIG, lw=1.5, ms=4, label="binned median")
            ax.legend(fontsize=7, loc="upper right")
        ax.set_xlabel(lab.tau)
        ax.set_ylabel(ylab)
    axs[0].set_title("Δ vs learning time", fontsize=10)
    axs[1].set_title("λ vs learning time", fontsize=10)
    fig.suptitle(f"{title}: token shape parameters vs learning time ({int(w.sum())} sampled "
                 "tokens with τ in the window)", fontsize=11)
    return save_figure(fig, outdir, "fig10_shape_vs_tau")


def _svd_rows(sv: dict) -> str:
    """What the SVD's rows are: the learning-time groups (with their half-width u_r), else the spectrum's bins."""
    if "n_groups_svd" in sv:
        return f"{sv['n_groups_svd']} τ groups, |u| ≤ {sv['u_groups']:.2g}"
    rng = (f", |u| ≤ {sv['u_svd_emp']:.2g} holding {100 * sv['template_energy_in_u_svd_emp']:.0f}% of g²"
           if "u_svd_emp" in sv else "")
    return f"{sv['n_bins_used']} bins{rng}"


def _null_text(sv: dict) -> str:
    """The null's mode-1 energy beside the data's (random pulse widths and shapes, the same groups)."""
    null = sv.get("svd_null_energy1")
    if not isinstance(null, dict) or null.get("mean") is None:
        return ""
    return f" (null {100 * null['mean']:.1f}%)"


def _fig11(res, lab, outdir, title):
    fig = Figure(figsize=(16, 6.5), layout="constrained")
    gs = fig.add_gridspec(2, 3, width_ratios=[1.2, 1, 1])
    axr = fig.add_subplot(gs[0, 0])
    axa = fig.add_subplot(gs[1, 0])
    axs = fig.add_subplot(gs[:, 1])
    axv = fig.add_subplot(gs[:, 2])
    _pulse_panels(fig, axr, axa, res, lab, source="emp")
    _cbar_tau(fig, [axr, axa], res, lab)
    sv = res.svd
    S = sv.get("singular_values", np.zeros(0))
    if S.size:
        j = np.arange(1, S.size + 1)
        axs.semilogy(j, S, "o-", color=C_EMP, label="singular value")
        axs.set_xlabel("mode index")
        axs.set_ylabel("singular value (log scale)")
        ax2 = axs.twinx()
        cum = np.cumsum(S**2) / np.sum(S**2)
        ax2.plot(j, cum, "s--", color=C_SIG, ms=4, label="cumulative energy Σ s²/Σ s²")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("cumulative energy fraction", color=C_SIG)
        ax2.tick_params(axis="y", colors=C_SIG)
        h1, l1 = axs.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        axs.legend(h1 + h2, l1 + l2, fontsize=7, loc="center right")
        axs.set_title(f"singular values of the aligned pulse matrix ({_svd_rows(sv)})\n"
                      f"mode 1: {100 * sv['svd_energy1']:.1f}% energy{_null_text(sv)}, modes 1–2: "
                      f"{100 * sv['svd_energy2']:.1f}%", fontsize=9)
        V = sv["vectors"]
        for k in range(min(4, V.shape[0])):
            axv.plot(sv["u"], V[k], lw=1.8 if k == 0 else 1.0,
                     label=f"mode {k + 1} ({100 * S[k] ** 2 / np.sum(S ** 2):.3g}% energy)")
        axv.axhline(0, color="0.7", lw=0.5)
        axv.legend(fontsize=7)
    else:
        for a in (axs, axv):
            a.text(0.5, 0.5, "fewer than 2 complete bins: no SVD", ha="center", va="center",
                   transform=a.transAxes)
    axv.set_xlabel(lab.u)
    axv.set_ylabel("singular vector component (unit norm)")
    axv.set_title("top singular vectors", fontsize=9)
    fig.suptitle(f"{title}: similarity of learning pulses across learning times", fontsize=11)
    return save_figure(fig, outdir, "fig11_pulse_svd")


def _fig12(res, lab, outdir, title):
    fig = Figure(figsize=(17, 5.2), layout="constrained")
    axs = fig.subplots(1, 3)
    xo = to_original(res.axis_x, res.transform)
    ax = axs[0]
    ax.plot(xo, res.loss_emp, "o", ms=3.5, color=C_EMP, label="true mean loss")
    ax.plot(xo, res.loss_sig, "-", lw=1.8, color=C_SIG, label="mean of token sigmoid fits")
    _post_span(ax, res, lab)
    set_xscale(ax, lab)
    ax.set_xlabel(lab.axis)
    ax.set_ylabel("mean validation loss (nats)")
    ax.legend(fontsize=7)
    ax.set_title(f"mean loss; max rel. error after transient "
                 f"{100 * res.metrics['mean_loss_max_rel_err']:.2f}%", fontsize=9)
    _spectrum_vs_rate(fig, axs[1], res, lab, with_rec=False)
    axs[1].set_title("loss decrease rate and p(τ) on the same axis", fontsize=9)
    ax = axs[2]
    ax.plot(xo, positive(res.deriv_emp), "o", ms=3.5, color=C_EMP, label="true rate")
    ax.plot(xo, positive(res.deriv_sig), "-", lw=1.8, color=C_SIG,
            label=f"sigmoid-implied (R² {res.metrics['r2_sigmoid_deriv']:.3f})")
    ax.plot(to_original(res.grid_x, res.transform), positive(res.deriv_rec_grid), "--", lw=1.8,
            color=C_REC, label=f"reconstructed p∗g (R² {res.metrics['r2_reconstruction']:.3f})")
    _rate_axes(ax, res, lab, "true, sigmoid-implied and reconstructed rate", 9)
    fig.suptitle(f"{title}: reconstruction of aggregate dynamics from token fits", fontsize=11)
    return save_figure(fig, outdir, "fig12_reconstruction")


def make_figures(result, outdir=".", *, axis_label: str = "training step",
                 run_name: str | None = None) -> dict[str, str]:
    """Write all figures for ``result`` into ``outdir``; returns ``{name: png_path}``.

    Every plotted quantity (including the sampled token trajectories) is stored on ``result``.
    """
    if not hasattr(result, "axis_x") or not hasattr(result, "sample_params"):
        raise TokenscaleError("make_figures needs a SpectrumResult from tokenscale.analysis")
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    lab = AxisLabels(result.transform, axis_label)
    title = run_name or "tokenscale"
    out = {}
    for name, fn in zip(FIGURE_NAMES, (_fig01, _fig02, _fig03, _fig10, _fig11, _fig12)):
        out[name] = fn(result, lab, outdir, title)
    return out


def figures_from_file(analysis_path, outdir, *, axis_label: str = "training step",
                      run_name: str | None = None) -> dict[str, str]:
    """The ``figures`` stage: :func:`make_figures` of the analysis file that ``tokenscale analyze`` wrote, and the
    hypothesis-B figure (:mod:`tokenscale.analysis.hypothesis_b`) where the file holds its examples."""
    from tokenscale.analysis.hypothesis_b import FIGURE_NAME, hypothesis_b_figure, read_examples

    out = make_figures(read_analysis(analysis_path), outdir, axis_label=axis_label, run_name=run_name)
    png = hypothesis_b_figure(read_examples(analysis_path), outdir, axis_label=axis_label,
                              title=run_name or "tokenscale")
    return {**out, FIGURE_NAME: png} if png else out
