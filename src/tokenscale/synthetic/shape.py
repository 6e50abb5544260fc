r"""The shape test: is an aggregate validation-loss curve closer to a straight line or to a power law in step?

Paper App. A.3.3 / A.3.7: under a uniform difficulty distribution the synthetic (Mano) loss falls "much more
nearly linearly" over training, under an ``L^-2`` distribution it looks like a power law. This module makes
that a number. numpy and scipy only (never torch).

Points.  The curve ``(s_k, L_k)``, ``k = 0..K-1``, steps strictly increasing and positive. The transient rule
is the one every other aggregate metric uses (:func:`tokenscale.analysis.curves.transient_start`, default
``"dpeak"`` on the ``log10`` axis): keep the points with ``x_k >= x_start`` where ``x = transform(s)``.
Both models are then fitted to the same ``n`` post-transient points on the *step* axis (original units).

Models (least squares, residuals ``r_k = L_k − f(s_k)``, ``RSS = Σ r_k²``)::

    linear      f(s) = a − b·s                 (a, b free;        p = 2 parameters)   closed form
    power law   f(s) = k·s^−α + E              (k, E ≥ 0, α ∈ [1e−3, 5]; p = 3)      fit_power_law

The power law is fitted by :func:`tokenscale.analysis.powerlaw.fit_power_law` (profile over α, bounded
refine), the very fit the decomposition reports, so the α here is the α elsewhere. Its constraints make it
convex and non-increasing: it cannot bend like a line that keeps falling at a constant rate.

Start.  The verdict depends on the first point kept (a curve that bends early looks like a power law from its
bend and like a line after it), so besides one start the report gives it from every checkpoint that leaves
``MIN_POINTS`` points (:func:`shape_over_starts`), and the series' own start is the ``fit.start`` rule's
(:mod:`tokenscale.fit.window`), as for every other series.

Model comparison (Gaussian errors of unknown common variance, maximum likelihood, constants dropped)::

    AIC   = n·ln(RSS/n) + 2p
    AICc  = AIC + 2p(p + 1)/(n − p − 1)        (NaN when n ≤ p + 1)
    ΔAIC  = AIC_linear − AIC_power             (> 0: the power law is preferred; < 0: the line is)
    w_m   = exp(−(AIC_m − AIC_min)/2) / Σ_j exp(−(AIC_j − AIC_min)/2)      (Akaike weights)
    R²    = 1 − RSS / Σ (L_k − mean L)²

An exact fit would give ``ln 0``: RSS is floored at ``n·(ε·max|L|)²`` (ε = float64 machine epsilon), the
rounding level of the data, so the AIC of a perfect fit is very negative but finite.
"""

from __future__ import annotations

import math

import numpy as np

from tokenscale import TokenscaleError

from tokenscale.analysis.curves import transient_start
from tokenscale.analysis.numerics import to_orig, to_x
from tokenscale.analysis.powerlaw import fit_power_law

__all__ = ["MIN_POINTS", "shape_test", "shape_over_starts", "gaussian_aic", "aicc", "akaike_weights"]

MIN_POINTS = 4  # post-transient points needed: the power law has 3 parameters


def gaussian_aic(rss: float, n: int, p: int) -> float:
    """``n·ln(RSS/n) + 2p``: AIC of a least-squares fit with ``p`` parameters under Gaussian errors."""
    return n * math.log(rss / n) + 2 * p


def aicc(aic: float, n: int, p: int) -> float:
    """Small-sample AIC ``AIC + 2p(p+1)/(n−p−1)``; NaN when ``n ≤ p + 1``."""
    return aic + 2 * p * (p + 1) / (n - p - 1) if n > p + 1 else math.nan


def akaike_weights(aics: dict[str, float]) -> dict[str, float]:
    """``exp(−Δ_m/2)`` normalised over the models, ``Δ_m = AIC_m − min AIC``."""
    best = min(aics.values())
    rel = {m: math.exp(-0.5 * (v - best)) for m, v in aics.items()}
    tot = sum(rel.values())
    return {m: r / tot for m, r in rel.items()}


def _check(steps: np.ndarray, loss: np.ndarray) -> None:
    if steps.ndim != 1 or loss.shape != steps.shape:
        raise TokenscaleError(f"shape test: steps {steps.shape} and loss {loss.shape} must be 1-D of equal length")
    bad = np.nonzero(~np.isfinite(loss))[0]
    if bad.size:
        raise TokenscaleError(f"shape test: loss[{bad[0]}]={float(loss[bad[0]])!r} is not finite")
    bad = np.nonzero(~(steps > 0))[0]
    if bad.size:
        raise TokenscaleError(f"shape test: steps[{bad[0]}]={float(steps[bad[0]])!r} is not a positive step "
                              "(drop step 0: the power law is undefined there)")
    bad = np.nonzero(~(np.diff(steps) > 0))[0]
    if bad.size:
        i = int(bad[0]) + 1
        raise TokenscaleError(f"shape test: steps must be strictly increasing, got steps[{i}]={float(steps[i])!r} "
                              f"after steps[{i - 1}]={float(steps[i - 1])!r}")


def _post_points(steps, loss, transient, transform) -> tuple[np.ndarray, str, float]:
    """Post-transient mask, the rule's name and its start on the step axis."""
    x = to_x(steps, transform)
    ts_x, rule = transient_start(transient, x, loss, transform)
    post = x >= ts_x - 1e-12
    start = float(to_orig(ts_x, transform))
    if post.sum() < MIN_POINTS:
        raise TokenscaleError(f"shape test: transient rule {rule} (start step {start:g}) leaves {int(post.sum())} "
                              f"post-transient points; need >= {MIN_POINTS}")
    return post, rule, start


def _rss_floor(y: np.ndarray) -> float:
    return y.size * (np.finfo(float).eps * float(np.max(np.abs(y)))) ** 2


def _summary(params: dict, rss: float, p: int, y: np.ndarray) -> dict:
    n = y.size
    rss = max(float(rss), _rss_floor(y))
    aic = gaussian_aic(rss, n, p)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return {"params": params, "rss": rss, "k": p, "aic": aic, "aicc": aicc(aic, n, p),
            "r2": 1.0 - rss / ss_tot if ss_tot > 0 else math.nan}


def _fit_linear(s: np.ndarray, y: np.ndarray) -> dict:
    """``y = a − b·s`` by least squares (centred closed form)."""
    sc = s - s.mean()
    slope = float(np.dot(sc, y - y.mean()) / np.dot(sc, sc))
    a = float(y.mean() - slope * s.mean())
    rss = float(np.sum((y - (a + slope * s)) ** 2))
    return _summary({"a": a, "b": -slope}, rss, 2, y)


def _fit_power(s: np.ndarray, y: np.ndarray) -> dict:
    """``y = k·s^−α + E`` (k, E ≥ 0) with :func:`fit_power_law`."""
    r = fit_power_law(s, y)
    if not math.isfinite(r["sse"]):
        raise TokenscaleError(f"shape test: the power-law fit failed on {y.size} points (sse={r['sse']!r})")
    return _summary({name: float(r[name]) for name in ("k", "alpha", "E")}, r["sse"], 3, y)


def shape_test(steps, loss, *, transient="dpeak", transform: str = "log10") -> dict:
    """Linear vs power-law shape of an aggregate loss curve on the step axis, by AIC (module docstring).

    ``steps`` (K,) strictly increasing positive steps, ``loss`` (K,) finite mean validation loss.
    ``transient``/``transform``: the transient rule and the axis it is applied on (as in the analysis).

    Returns a JSON-ready dict: ``n_points``, ``transient_rule``, ``transient_step`` (where the rule starts, in
    steps; the first kept step for "dpeak"/"peak"), ``transform``, ``linear`` and ``power_law`` (each
    ``{"params", "rss", "k", "aic", "aicc", "r2"}``; params ``{a, b}`` of ``a − b·s`` and ``{k, alpha, E}`` of
    ``k·s^−α + E``),
    ``delta_aic`` and ``delta_aicc`` (linear − power law: positive ⇒ power law preferred),
    ``akaike_weights`` ``{"linear", "power_law"}`` (from AIC) and ``preferred`` (the lower-AIC model).
    """
    s = np.asarray(steps, dtype=np.float64)
    y = np.asarray(loss, dtype=np.float64)
    _check(s, y)
    post, rule, start = _post_points(s, y, transient, transform)
    lin, pl = _fit_linear(s[post], y[post]), _fit_power(s[post], y[post])
    d_aic = lin["aic"] - pl["aic"]
    return {"n_points": int(post.sum()), "transient_rule": rule, "transient_step": start, "transform": transform,
            "linear": lin, "power_law": pl, "delta_aic": d_aic, "delta_aicc": lin["aicc"] - pl["aicc"],
            "akaike_weights": akaike_weights({"linear": lin["aic"], "power_law": pl["aic"]}),
            "preferred": "power_law" if d_aic > 0 else "linear"}


def shape_over_starts(steps, loss, starts=None) -> dict:
    """The shape test from each start step (default: every step that leaves :data:`MIN_POINTS` points), as flat
    arrays: ``start_step`` (S,), ``n_points`` (S,), ``delta_aic`` (S,), ``preferred`` (S,) ("linear" /
    "power_law"), and ``share_power_law`` (the share of starts whose verdict is the power law)."""
    s = np.asarray(steps, dtype=np.float64)
    y = np.asarray(loss, dtype=np.float64)
    _check(s, y)
    starts = s[: max(0, s.size - MIN_POINTS + 1)] if starts is None else np.asarray(starts, dtype=np.float64).ravel()
    out = {"start_step": [], "n_points": [], "delta_aic": [], "preferred": []}
    for s0 in starts:
        post = s >= s0 - 1e-12
        if post.sum() < MIN_POINTS:
            continue
        lin, pl = _fit_linear(s[post], y[post]), _fit_power(s[post], y[post])
        d = lin["aic"] - pl["aic"]
        for k, v in (("start_step", float(s[post][0])), ("n_points", int(post.sum())), ("delta_aic", d),
                     ("preferred", "power_law" if d > 0 else "linear")):
            out[k].append(v)
    n = len(out["preferred"])
    out["share_power_law"] = sum(p == "power_law" for p in out["preferred"]) / n if n else None
    return out
