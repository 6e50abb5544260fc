"""Stage 1: validate the inputs, lay out the window's grids, and accumulate every sum in one chunked pass.

The pass reads the (N, K) losses once, ``chunk`` rows at a time; per chunk the largest temporaries are
``chunk × max(K, grid_points)``. Everything downstream works on the sums (:class:`Sums`) and on the fit arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from tokenscale import TokenscaleError

from tokenscale.analysis.numerics import derivative, onehot, pulse
from tokenscale.analysis.options import AnalysisOptions, selection_weights

__all__ = ["Inputs", "Layout", "Sums", "prepare", "layout", "accumulate", "STATUS_INVALID", "FINE_BINS"]

FINE_BINS = 1024  # fine τ histogram for the tail fit (bins across the window on x)
STATUS_INVALID = 2
PARAMS = ("tau", "tau_orig", "lam", "delta", "post", "status", "category", "r2")


@dataclass
class Inputs:
    """The validated fit arrays (N,), the axis (K,) and the selection of the main spectrum."""

    N: int
    K: int
    transform: str
    x: np.ndarray
    a_orig: np.ndarray
    par: dict  # PARAMS -> (N,) float64 (status, category int)
    fitvalid: np.ndarray  # (N,) bool: usable fit
    weight: np.ndarray  # (N,) main selection's weight in p(τ); 0 = not selected


@dataclass
class Layout:
    """Window geometry on x: spectrum bins, fine reconstruction grid, template u grid, per-token bin indices."""

    x0: float
    x1: float
    bin_edges: np.ndarray  # (B+1,)
    grid: np.ndarray  # (F,) uniform across the window
    u_half: np.ndarray  # (M+1,) u >= 0 (g is symmetric)
    u_grid: np.ndarray  # (2M+1,)
    ext0: float  # extended histogram grid for p: centres at ext0 + j h, j < n_ext
    n_ext: int
    fine_edges: np.ndarray  # (FINE_BINS+1,)
    in_win: np.ndarray  # (N,) selected, valid fit, τ inside the window
    bin_of: np.ndarray  # (N,) spectrum bin of in-window tokens, -1 elsewhere
    ext_of: np.ndarray  # (N,) extended-grid cell of selected tokens, -1 elsewhere
    ue: np.ndarray  # u points of the empirical template
    cols_e: np.ndarray  # (2M+1,) bool: u_grid points that are in ue

    @property
    def B(self) -> int:
        return self.bin_edges.size - 1

    @property
    def F(self) -> int:
        return self.grid.size

    @property
    def M(self) -> int:
        return self.u_half.size - 1

    @property
    def h(self) -> float:
        return float(self.grid[1] - self.grid[0])


@dataclass
class Sums:
    """Sums over the valid tokens (rows with a usable fit and finite losses) from :func:`accumulate`."""

    loss: np.ndarray  # (K,) Σ ℓ_i
    sig: np.ndarray  # (K,) Σ fitted sigmoid
    pk: np.ndarray  # (K,) Σ fitted pulse at the axis points
    grp: np.ndarray  # (G, K) Σ ℓ_i per random token group (power-law bootstrap)
    grp_n: np.ndarray  # (G,)
    bin_loss: np.ndarray  # (B, K) Σ ℓ_i per spectrum bin
    bin_pf: np.ndarray  # (B, F) Σ fitted pulse on the grid per bin
    bin_al: np.ndarray  # (B, M+1) Σ token-aligned fitted pulse per bin
    sig_grid: np.ndarray  # (F,) Σ fitted pulse on the grid
    g: np.ndarray  # (M+1,) Σ token-aligned fitted pulse of in-window tokens
    ge: np.ndarray  # (len ue,) Σ empirical derivative at τ_i + u
    ge_n: np.ndarray  # (len ue,)
    n_valid: int
    n_nonfinite: int
    final_valid: np.ndarray  # (N,) bool


def prepare(losses, fit, opts: AnalysisOptions) -> Inputs:
    """Check shapes and axis, read the fit arrays, mark the usable fits and weigh the main selection."""
    if not hasattr(losses, "shape") or len(losses.shape) != 2:
        raise TokenscaleError("losses must be a 2-D (N, K) array")
    N, K = (int(s) for s in losses.shape)
    transform = str(getattr(fit, "transform", ""))
    if transform not in ("log10", "linear"):
        raise TokenscaleError(f"fit.transform must be 'log10' or 'linear', got {transform!r}")
    x = np.asarray(fit.axis, dtype=float).ravel()
    a_orig = np.asarray(fit.axis_orig, dtype=float).ravel()
    if x.size != K or a_orig.size != K:
        raise TokenscaleError(f"fit axis has {x.size} points but losses have {K} columns")
    if K < 3:
        raise TokenscaleError(f"need at least 3 axis points, got {K}")
    if not (np.all(np.isfinite(x)) and np.all(np.diff(x) > 0)):
        raise TokenscaleError("fit.axis must be finite and strictly increasing")
    par = {}
    for name in PARAMS:
        if name == "r2" and not hasattr(fit, "r2"):  # duck-typed fits without R² (only a min_r2 selection needs it)
            par[name] = np.full(N, np.nan)
            continue
        arr = np.asarray(getattr(fit, name)).ravel()
        if arr.size != N:
            raise TokenscaleError(f"fit.{name} has {arr.size} entries but losses have {N} rows")
        par[name] = arr.astype(int) if name in ("status", "category") else arr.astype(float)
    fitvalid = (par["status"] != STATUS_INVALID) & np.isfinite(par["tau"]) & np.isfinite(par["lam"]) \
        & np.isfinite(par["delta"]) & np.isfinite(par["post"])
    if not opts.include_max_iter:
        fitvalid &= par["status"] != 1
    if not fitvalid.any():
        raise TokenscaleError(f"no valid token fits among {N} rows")
    weight = selection_weights(opts.main, par["delta"], par["r2"], fitvalid)
    if not np.any(weight > 0):
        raise TokenscaleError(f"selection {opts.selection!r} ({opts.main.describe()}) keeps none of the "
                              f"{int(fitvalid.sum())} valid token fits")
    return Inputs(N=N, K=K, transform=transform, x=x, a_orig=a_orig, par=par, fitvalid=fitvalid, weight=weight)


def layout(inp: Inputs, opts: AnalysisOptions) -> Layout:
    """Bins, grids and each token's bin on the window ``[x_0, x_{K-1}]``."""
    x, tau, lam = inp.x, inp.par["tau"], inp.par["lam"]
    x0, x1 = float(x[0]), float(x[-1])
    span, B, F = x1 - x0, int(opts.n_bins), int(opts.grid_points)
    grid = np.linspace(x0, x1, F)
    h = grid[1] - grid[0]
    M = F - 1  # template half-width = one window span (in grid steps)
    u_half = h * np.arange(M + 1)
    u_grid = h * np.arange(-M, M + 1)
    ext0, n_ext = x0 - M * h, F + 2 * M
    selected = inp.fitvalid & (inp.weight > 0)
    in_win = selected & (tau >= x0) & (tau <= x1)
    bin_of = np.where(in_win, np.clip(np.floor((tau - x0) / span * B).astype(np.int64), 0, B - 1), -1)
    ext_of = np.full(inp.N, -1, dtype=np.int64)
    with np.errstate(invalid="ignore"):
        je = np.rint((tau - ext0) / h)
    ok_e = selected & np.isfinite(je) & (je >= 0) & (je < n_ext)
    ext_of[ok_e] = je[ok_e].astype(np.int64)
    # u-range of the per-token empirical template: 12/median(λ) covers the pulse (sech² < 1e-4)
    lam_med = float(np.median(np.abs(lam[in_win]))) if in_win.any() else math.nan
    ue_half = min(u_half[-1], 12.0 / lam_med) if lam_med > 0 else u_half[-1]
    cols_e = np.abs(u_grid) <= ue_half + 1e-12
    return Layout(x0=x0, x1=x1, bin_edges=np.linspace(x0, x1, B + 1), grid=grid, u_half=u_half, u_grid=u_grid,
                  ext0=ext0, n_ext=n_ext, fine_edges=np.linspace(x0, x1, FINE_BINS + 1), in_win=in_win,
                  bin_of=bin_of, ext_of=ext_of, ue=u_grid[cols_e], cols_e=cols_e)


def _empty_sums(inp: Inputs, lay: Layout, G: int) -> Sums:
    K, B, F, M = inp.K, lay.B, lay.F, lay.M
    z = np.zeros
    return Sums(loss=z(K), sig=z(K), pk=z(K), grp=z((G, K)), grp_n=z(G), bin_loss=z((B, K)), bin_pf=z((B, F)),
                bin_al=z((B, M + 1)), sig_grid=z(F), g=z(M + 1), ge=z(lay.ue.size), ge_n=z(lay.ue.size),
                n_valid=0, n_nonfinite=0, final_valid=np.zeros(inp.N, dtype=bool))


def _add_curves(s: Sums, Lv, sel, inp: Inputs, lay: Layout, rng) -> None:
    """Mean-loss, sigmoid and pulse sums of the valid rows ``sel`` (losses ``Lv``)."""
    p = inp.par
    t_, l_, d_, q_ = (p[k][sel][:, None] for k in ("tau", "lam", "delta", "post"))
    s.loss += Lv.sum(0)
    grp = rng.integers(0, s.grp_n.size, size=sel.size)
    s.grp += onehot(grp, s.grp_n.size) @ Lv
    s.grp_n += np.bincount(grp, minlength=s.grp_n.size)
    e = expit(-l_ * (inp.x[None, :] - t_))
    s.sig += (q_ + d_ * e).sum(0)
    s.pk += (d_ * l_ * e * (1.0 - e)).sum(0)
    pf = pulse(lay.grid[None, :], t_, l_, d_)
    s.sig_grid += pf.sum(0)
    b = lay.bin_of[sel]
    inw = b >= 0
    if inw.any():
        Hb = onehot(b, lay.B)
        s.bin_loss += Hb @ Lv
        s.bin_pf += Hb @ pf
        pa = pulse(lay.u_half[None, :], 0.0, l_[inw], d_[inw])  # token-aligned fitted pulses, u >= 0
        s.g += pa.sum(0)
        s.bin_al += onehot(b[inw], lay.B) @ pa


def _add_template_emp(s: Sums, Lv, sel, inp: Inputs, lay: Layout, opts: AnalysisOptions) -> None:
    """Eq. 4 with the empirical per-token derivative: −dℓ_i/dx sampled at τ_i + u (in-window rows)."""
    inw = lay.bin_of[sel] >= 0
    if not inw.any():
        return
    x, K = inp.x, inp.K
    Dw = derivative(Lv[inw], x, opts.smoothing, savgol_window=opts.savgol_window,
                    savgol_polyorder=opts.savgol_polyorder)
    P = inp.par["tau"][sel][inw][:, None] + lay.ue[None, :]
    okp = (P >= lay.x0) & (P <= lay.x1)
    j = np.clip(np.searchsorted(x, P.ravel(), side="right").reshape(P.shape) - 1, 0, K - 2)
    wgt = (P - x[j]) / (x[j + 1] - x[j])
    rows = np.arange(Dw.shape[0])[:, None]
    val = Dw[rows, j] * (1.0 - wgt) + Dw[rows, j + 1] * wgt
    s.ge += np.where(okp, val, 0.0).sum(0)
    s.ge_n += okp.sum(0)


def accumulate(losses, inp: Inputs, lay: Layout, opts: AnalysisOptions) -> Sums:
    """One chunked pass over the losses: every sum of :class:`Sums`."""
    G = max(int(opts.n_groups), 2)
    s = _empty_sums(inp, lay, G)
    rng = np.random.default_rng(opts.seed)
    chunk = max(64, int(opts.chunk_elems // max(inp.K, lay.F, lay.M + 1, lay.ue.size)))
    for i0 in range(0, inp.N, chunk):
        i1 = min(inp.N, i0 + chunk)
        L = np.asarray(losses[i0:i1], dtype=float)
        rowfin = np.all(np.isfinite(L), axis=1)
        fv = inp.fitvalid[i0:i1]
        s.n_nonfinite += int(np.sum(fv & ~rowfin))
        v = fv & rowfin
        s.final_valid[i0:i1] = v
        if not v.any():
            continue
        sel = np.nonzero(v)[0] + i0
        s.n_valid += sel.size
        _add_curves(s, L[v], sel, inp, lay, rng)
        _add_template_emp(s, L[v], sel, inp, lay, opts)
    if s.n_valid == 0:
        raise TokenscaleError(f"no valid tokens: {int(inp.fitvalid.sum())} valid fits but every such "
                              f"loss row has non-finite values")
    return s
