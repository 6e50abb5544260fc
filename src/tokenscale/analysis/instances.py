"""Per-token-instance arrays from a fits table: τ and validity on the validation token instances, input checks.

A **token instance** ``i = s*T + t`` of a validation token set is one position of ``token_id`` (S, T), row-major;
every per-instance array is (N,) = (S*T,) in this order (an (S, T) array is accepted and flattened row-major).
τ is the sigmoid fit's learning time on the fit's transformed axis (``SigmoidFit.tau``). Shared by the studies
that compare τ across tokens (App. A.2 alignment, seeds, reshaping, synthetic); numpy only.
"""

from __future__ import annotations

import math

import numpy as np

from tokenscale import TokenscaleError
from tokenscale.analysis.options import selection_weights
from tokenscale.io.fits import CATEGORY_NAMES


def flat_array(name: str, a, n: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        a = a.reshape(-1)
    if n is not None and a.shape[0] != n:
        raise TokenscaleError(f"{name} has {a.shape[0]} entries, expected {n} (one per token instance)")
    return a


def int_array(name: str, a, n: int | None = None) -> np.ndarray:
    a = flat_array(name, a, n)
    if a.dtype.kind not in "iu":
        if a.dtype.kind != "f" or not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise TokenscaleError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def check_bootstrap(n_boot: int, confidence: float) -> None:
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 10):
        raise TokenscaleError(f"n_boot must be an integer >= 10, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise TokenscaleError(f"confidence must be in (0, 1), got {confidence!r}")


def first_bad(name: str, a: np.ndarray, bad: np.ndarray, what: str) -> None:
    if bad.any():
        i = int(np.argmax(bad))
        raise TokenscaleError(f"{name}[{i}] = {a[i].item()!r} {what} ({int(bad.sum())} of {a.size} entries)")


def none_if_nan(v):
    """JSON-clean scalar: NaN -> None, numpy -> python."""
    v = v.item() if isinstance(v, np.generic) else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


def instance_tau(fit, n_tokens: int, categories=("early", "late")) -> tuple[np.ndarray, np.ndarray]:
    """``(tau (N,), valid (N,))`` on the token instances from a :class:`tokenscale.io.fits.SigmoidFit`.

    Rows are placed by ``fit.token_index`` when present (else the fit must have one row per instance); an
    instance is valid when it has a fit with status != invalid_input, a finite τ and a category in
    ``categories`` (default: tokens learned inside the observed window)."""
    unknown = [c for c in categories if c not in CATEGORY_NAMES]
    if unknown:
        raise TokenscaleError(f"unknown category {unknown[0]!r} (expected one of {list(CATEGORY_NAMES)})")
    codes = [CATEGORY_NAMES.index(c) for c in categories]
    return _on_instances(fit, n_tokens, (np.asarray(fit.status) != 2) & np.isin(fit.category, codes)
                         & np.isfinite(fit.tau))


def _on_instances(fit, n_tokens: int, row_valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(tau (N,), valid (N,))``: the fit's τ and ``row_valid`` (len(fit),) placed on the token instances by
    ``fit.token_index`` (else the fit must have one row per instance); instances without a row are NaN / False."""
    rows = np.arange(len(fit)) if fit.token_index is None else int_array("fit.token_index", fit.token_index)
    if fit.token_index is None and len(fit) != n_tokens:
        raise TokenscaleError(f"fit has {len(fit)} rows and no token_index, expected {n_tokens} (one per instance)")
    first_bad("fit.token_index", rows, (rows < 0) | (rows >= n_tokens), f"is outside [0, {n_tokens})")
    tau = np.full(n_tokens, np.nan)
    valid = np.zeros(n_tokens, bool)
    tau[rows] = np.asarray(fit.tau, dtype=float)
    valid[rows] = row_valid
    return tau, valid


def selected_tau(fit, n_tokens: int, selection) -> tuple[np.ndarray, np.ndarray]:
    """``(tau (N,), valid (N,))`` like :func:`instance_tau`, with the spectrum's token selection (an
    :class:`tokenscale.analysis.options.Selection`) instead of categories, and τ inside the fitted window (an
    extrapolated τ is no learning time that was observed)."""
    return _on_instances(fit, n_tokens, selected_rows(fit, selection))


def selected_rows(fit, selection) -> np.ndarray:
    """(len(fit),) bool: the fit rows in the spectrum's token selection whose τ lies inside the fitted window."""
    t = np.asarray(fit.tau, dtype=float)
    x = np.asarray(fit.axis, dtype=float)
    ok = (np.asarray(fit.status) != 2) & np.isfinite(t) & np.isfinite(np.asarray(fit.delta, dtype=float))
    w = selection_weights(selection, np.asarray(fit.delta, float), np.asarray(fit.r2, float), ok)
    return (w > 0) & (t >= x[0]) & (t <= x[-1])
