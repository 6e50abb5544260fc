"""Small numerical helpers shared by the analysis stages: axis transforms, the sigmoid pulse, derivatives,
goodness of fit (definitions in :mod:`tokenscale.analysis`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import sparse
from scipy.interpolate import PchipInterpolator
from scipy.signal import savgol_filter

from tokenscale import TokenscaleError

__all__ = ["to_x", "to_orig", "pulse", "fit_quality", "derivative", "onehot", "fwhm", "jsonable"]


def to_x(a: np.ndarray | float, transform: str) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    if transform == "log10":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log10(a)
    return a


def to_orig(x: np.ndarray | float, transform: str) -> np.ndarray:
    x = np.asarray(x, dtype=float)
    return 10.0**x if transform == "log10" else x


def pulse(x: np.ndarray, tau: np.ndarray, lam: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Δλ/4 sech²(λ(x−τ)/2) for column vectors of parameters (n,1) and a row grid (1,F)."""
    z = np.abs(lam * (x - tau))
    e = np.exp(-z)
    return delta * lam * e / (1.0 + e) ** 2


def fit_quality(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """(R², ‖pred − ref‖₂/‖ref‖₂) over points where both are finite."""
    pred = np.asarray(pred, float)
    ref = np.asarray(ref, float)
    ok = np.isfinite(pred) & np.isfinite(ref)
    if ok.sum() < 2:
        return float("nan"), float("nan")
    p, r = pred[ok], ref[ok]
    ss_tot = float(np.sum((r - r.mean()) ** 2))
    ss_res = float(np.sum((p - r) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else float("nan")
    nrm = float(np.linalg.norm(r))
    return r2, (float(np.linalg.norm(p - r)) / nrm if nrm > 0 else float("nan"))


def derivative(
    y: np.ndarray,
    x: np.ndarray,
    smoothing: str = "none",
    *,
    savgol_window: int = 5,
    savgol_polyorder: int = 2,
) -> np.ndarray:
    """−dy/dx along the last axis of ``y`` at the (strictly increasing) points ``x``.

    ``"none"``: ``numpy.gradient`` (second order, non-uniform spacing aware). ``"savgol"``:
    PCHIP-resample onto a uniform grid of the same length, Savitzky–Golay derivative, PCHIP back.
    Rows containing NaN give NaN rows.
    """
    y = np.asarray(y, dtype=float)
    x = np.asarray(x, dtype=float)
    if smoothing not in ("none", "savgol"):
        raise TokenscaleError(f"smoothing must be 'none' or 'savgol', got {smoothing!r}")
    flat = y.reshape(-1, y.shape[-1])
    out = np.full_like(flat, np.nan)
    ok = np.all(np.isfinite(flat), axis=1)
    K = x.size
    if K < 3 or not ok.any():
        if K >= 2 and ok.any():
            out[ok] = -np.gradient(flat[ok], x, axis=1)
        return out.reshape(y.shape)
    yy = flat[ok]
    if smoothing == "none" or K < savgol_window:
        out[ok] = -np.gradient(yy, x, axis=1)
        return out.reshape(y.shape)
    win = savgol_window if savgol_window % 2 == 1 else savgol_window + 1
    xu = np.linspace(x[0], x[-1], K)
    uniform = np.allclose(np.diff(x), xu[1] - xu[0], rtol=1e-6, atol=0)
    yu = yy if uniform else PchipInterpolator(x, yy, axis=1)(xu)
    du = savgol_filter(yu, win, min(savgol_polyorder, win - 1), deriv=1, delta=xu[1] - xu[0],
                       axis=1, mode="interp")
    out[ok] = -(du if uniform else PchipInterpolator(xu, du, axis=1)(x))
    return out.reshape(y.shape)


def onehot(idx: np.ndarray, n_rows: int) -> sparse.csr_matrix:
    """(n_rows × len(idx)) 0/1 matrix; entries with idx < 0 are dropped."""
    keep = idx >= 0
    cols = np.nonzero(keep)[0]
    return sparse.csr_matrix((np.ones(cols.size), (idx[keep], cols)), shape=(n_rows, idx.size))


def fwhm(u: np.ndarray, g: np.ndarray) -> float:
    if g.size == 0 or not np.any(np.isfinite(g)):
        return math.nan
    gm = float(np.nanmax(g))
    if gm <= 0:
        return math.nan
    above = np.nonzero(g >= gm / 2)[0]
    return float(u[above[-1]] - u[above[0]]) if above.size else math.nan


def jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return [jsonable(v) for v in o.tolist()]
    if isinstance(o, (np.bool_, bool)):
        return bool(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else None
    return o
