"""Planted (synthetic) token-loss trajectories with known sigmoid parameters.

Used by tests and benchmarks of :mod:`tokenscale.fit`.  Every trajectory follows eq. (1) of the paper,

    loss(x) = post + delta * [1 - sigmoid(lam * (x - tau))],   x = f(a)  (log10 of the step by default),

plus i.i.d. Gaussian noise whose per-row standard deviation is drawn log-uniformly from ``noise``
(per-token cross-entropy between checkpoints fluctuates by roughly 0.05-0.3 nats).  Rows are a mixture
of kinds (codes into :data:`KIND_NAMES`):

* ``descending`` - a learning event inside the observed window (the paper's early/late-learning tokens);
  ``tau`` follows a heavy-tailed learning-time spectrum (``tau_dist="powerlaw"``: density of the
  original-unit learning time ``a`` proportional to ``a**-alpha``, i.e. many early and few late events)
  or is uniform on the transformed axis (``tau_dist="uniform"``);
* ``learned`` - the descent is (mostly) over before the first axis point (``tau`` before ``x_min``);
* ``unlearned`` - no event: ``delta = 0`` (a flat, noisy trajectory);
* ``ascending`` - ``delta < 0``: forgetting-like trajectories whose loss rises at ``tau``.

All parameters in the returned ``truth`` live on the transformed axis (``tau``, ``lam`` per transformed
unit) except ``tau_orig`` (original axis units).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tokenscale import TokenscaleError

__all__ = ["KIND_NAMES", "default_step_axis", "planted_trajectories", "sigmoid_curve"]

KIND_NAMES = ("descending", "learned", "unlearned", "ascending")


def default_step_axis(k: int = 64, lo: float = 10.0, hi: float = 1e5) -> np.ndarray:
    """``k`` checkpoint steps log-spaced from ``lo`` to ``hi`` (float64, shape (k,))."""
    return np.logspace(np.log10(lo), np.log10(hi), int(k))


def sigmoid_curve(x: np.ndarray, tau, lam, delta, post) -> np.ndarray:
    """Eq. (1) on the transformed axis: ``post + delta * sigmoid(lam * (tau - x))``.

    x: (K,); tau, lam, delta, post: (N,) or scalars.  Returns (N, K) float64 (or (K,) for scalars).
    """
    x = np.asarray(x, dtype=np.float64)
    scalar = all(np.ndim(v) == 0 for v in (tau, lam, delta, post))
    tau, lam, delta, post = (np.atleast_1d(np.asarray(v, dtype=np.float64))[:, None] for v in (tau, lam, delta, post))
    z = lam * (tau - x)
    e = np.exp(-np.abs(z))  # numerically stable logistic
    g = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    out = post + delta * g
    return out[0] if scalar else out


def planted_trajectories(
    n: int,
    axis: np.ndarray | None = None,
    *,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    transform: str = "log10",
    tau_dist: str = "powerlaw",
    alpha: float = 1.3,
    noise: float | tuple[float, float] = (0.05, 0.3),
    frac_learned: float = 0.10,
    frac_unlearned: float = 0.10,
    frac_ascending: float = 0.05,
    lam_range: tuple[float, float] = (2.0, 30.0),
    delta_range: tuple[float, float] = (0.5, 6.0),
    post_range: tuple[float, float] = (0.05, 4.0),
    dtype: Any = np.float32,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Generate ``n`` noisy token-loss trajectories with planted eq.-(1) parameters.

    Parameters
    ----------
    n : number of trajectories (rows).
    axis : (K,) strictly increasing original axis (e.g. checkpoint steps); default
        :func:`default_step_axis` (64 steps, 10..1e5, log-spaced).
    seed, rng : randomness; ``rng`` wins if both are given.
    transform : ``"log10"`` or ``"linear"``; the axis on which eq. (1) is planted.
    tau_dist : ``"powerlaw"`` (density of the original-unit learning time ~ a**-alpha; with
        ``transform="linear"`` this is a power law in x itself) or ``"uniform"`` on the transformed axis.
    noise : Gaussian noise sd in nats, a scalar or a (lo, hi) range sampled log-uniformly per row.
    frac_learned, frac_unlearned, frac_ascending : mixture fractions; the rest are ``descending`` rows.
    lam_range : (lo, hi) sharpness per transformed unit, sampled log-uniformly.
    delta_range : (lo, hi) |delta| in nats, sampled log-uniformly.
    post_range : (lo, hi) final plateau in nats, sampled log-uniformly.
    dtype : dtype of the returned losses (float32 by default).

    Returns
    -------
    losses : (n, K) array of ``dtype``.
    truth : dict of (n,) arrays: ``tau``, ``lam``, ``delta``, ``post``, ``pre`` (transformed units),
        ``tau_orig`` (original units), ``noise`` (sd per row), ``kind`` (int8 codes into
        :data:`KIND_NAMES`), and ``x`` (the (K,) transformed axis).
    """
    if rng is None:
        rng = np.random.default_rng(seed)
    n = int(n)
    if n < 0:
        raise TokenscaleError(f"n must be >= 0, got {n}")
    x = _transformed_axis(axis, transform)
    fr = _mixture(frac_learned, frac_unlearned, frac_ascending)
    x_min, x_max = float(x[0]), float(x[-1])
    kind = _draw_kinds(rng, n, fr)
    lam = _loguniform(rng, lam_range, n)
    delta = _loguniform(rng, delta_range, n)
    post = _loguniform(rng, post_range, n)
    tau = _draw_tau(rng, n, x_min, x_max, tau_dist=tau_dist, alpha=alpha, transform=transform)
    _plant_kinds(rng, kind, tau, delta, x_min, x_max - x_min)
    sd = np.full(n, float(noise)) if np.isscalar(noise) else _loguniform(rng, noise, n)
    clean = sigmoid_curve(x, tau, lam, delta, post)
    losses = (clean + sd[:, None] * rng.standard_normal((n, x.size))).astype(dtype, copy=False)
    tau_orig = 10.0**tau if transform == "log10" else tau.copy()
    truth = {
        "tau": tau,
        "lam": lam,
        "delta": delta,
        "post": post,
        "pre": post + delta,
        "tau_orig": tau_orig,
        "noise": sd,
        "kind": kind,
        "x": x,
    }
    return losses, truth


def _transformed_axis(axis: np.ndarray | None, transform: str) -> np.ndarray:
    """The (K,) axis on which eq. (1) is planted: ``log10`` of the original axis, or the axis itself."""
    a = default_step_axis() if axis is None else np.asarray(axis, dtype=np.float64)
    if a.ndim != 1 or a.size < 2 or not np.all(np.diff(a) > 0):
        raise TokenscaleError(f"axis must be a strictly increasing 1-D array, got shape {a.shape}")
    if transform == "log10":
        if a[0] <= 0:
            raise TokenscaleError(f"axis must be positive for transform='log10', got axis[0]={a[0]}")
        return np.log10(a)
    if transform == "linear":
        return a.copy()
    raise TokenscaleError(f"unknown transform {transform!r} (expected 'log10' or 'linear')")


def _mixture(frac_learned: float, frac_unlearned: float, frac_ascending: float) -> np.ndarray:
    """The checked mixture fractions of the ``learned``, ``unlearned`` and ``ascending`` kinds."""
    fr = np.array([frac_learned, frac_unlearned, frac_ascending], dtype=np.float64)
    if np.any(fr < 0) or fr.sum() > 1:
        raise TokenscaleError(f"mixture fractions must be >= 0 and sum to <= 1, got {fr.tolist()}")
    return fr


def _loguniform(rng: np.random.Generator, lo_hi, size: int) -> np.ndarray:
    lo, hi = lo_hi
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def _draw_kinds(rng: np.random.Generator, n: int, fr: np.ndarray) -> np.ndarray:
    """(n,) int8 codes into :data:`KIND_NAMES`, each row's kind drawn with the mixture fractions ``fr``."""
    u = rng.random(n)
    kind = np.zeros(n, dtype=np.int8)
    c1, c2, c3 = np.cumsum(fr)
    kind[u < c1] = 1
    kind[(u >= c1) & (u < c2)] = 2
    kind[(u >= c2) & (u < c3)] = 3
    return kind


def _draw_tau(rng: np.random.Generator, n: int, x_min: float, x_max: float, *, tau_dist: str, alpha: float,
              transform: str) -> np.ndarray:
    """(n,) learning times inside the window ``[x_min, x_max]`` (those of the descending and ascending rows)."""
    span = x_max - x_min
    if tau_dist == "powerlaw":
        # density over transformed x proportional to exp((1 - alpha) * ln(10) * x) for log10,
        # i.e. a**-alpha in original units; inverse-CDF sampling on [x_min, x_max].
        if transform == "log10":
            beta = (1.0 - alpha) * np.log(10.0)
        else:
            beta = -alpha / max(abs(x_max), abs(x_min), 1e-12) * 3.0
        v = rng.random(n)
        if abs(beta) < 1e-12:
            return x_min + v * span
        return x_min + np.log1p(v * np.expm1(beta * span)) / beta
    if tau_dist == "uniform":
        return rng.uniform(x_min, x_max, n)
    raise TokenscaleError(f"unknown tau_dist {tau_dist!r} (expected 'powerlaw' or 'uniform')")


def _plant_kinds(rng: np.random.Generator, kind: np.ndarray, tau: np.ndarray, delta: np.ndarray, x_min: float,
                 span: float) -> None:
    """Overwrite ``tau`` / ``delta`` in place for the learned, unlearned and ascending rows."""
    # learned rows: descent centred before the window, at most ~half visible
    m = kind == 1
    tau[m] = x_min - rng.uniform(0.0, 0.15, m.sum()) * span
    # unlearned rows: no event
    m = kind == 2
    delta[m] = 0.0
    # ascending rows: forgetting-like, smaller amplitude
    m = kind == 3
    delta[m] = -np.minimum(delta[m], 2.0)
