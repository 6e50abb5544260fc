r"""Is the learning-time tail a power law? Clauset–Shalizi–Newman likelihood-ratio tests on a window.

numpy and scipy only (never torch). Everything lives on a finite window ``[a, b]`` with
``0 < a < b`` (``a`` = τ_min, ``b`` = τ_max = end of the observed window: τ beyond it is
unobservable, so every model is truncated to the same window and normalised on it).

Models (each density is zero outside ``[a, b]`` and integrates to one on it)
----------------------------------------------------------------------------

* truncated power law      ``f(x) = x^{−β} / Z_pl(β)``,            ``Z_pl = ∫_a^b x^{−β} dx``
  ``= a^{1−β} (e^{(1−β)L} − 1)/(1−β)`` with ``L = ln(b/a)``, and ``Z_pl = L`` at β = 1; any real β.
* truncated lognormal      ``f(x) = (1/(xσ)) φ((ln x − μ)/σ) / D``, ``D = Φ(B) − Φ(A)``,
  ``A = (ln a − μ)/σ``, ``B = (ln b − μ)/σ``; σ > 0, any real μ. ``ln D`` is computed as a stable
  difference of ``scipy.special.log_ndtr`` (mirrored into the lower tail, Gauss–Legendre when the
  two CDF values nearly cancel), so windows far in a tail (``A = 30``) are fine.
* truncated power law with exponential cutoff  ``f(x) = x^{−β} e^{−γx} / Z_c(β, γ)``,
  ``Z_c = ∫_a^b x^{−β} e^{−γx} dx = γ^{β−1} [Γ(1−β, γa) − Γ(1−β, γb)]`` (upper incomplete
  gamma); γ ≥ 0 and β of either sign (the window is finite, so β ≤ 1 is allowed). Evaluated with
  ``gammaincc``/``gammainc`` for β < 1, ``exp1`` at β = 1, one downward recurrence
  ``Γ(s, z) = (Γ(s+1, z) − z^s e^{−z})/s`` for 1 < β < 2; each of these only where it does not
  lose more than ~4 digits to cancellation or underflow, else by adaptive quadrature of the
  log-concave integrand ``exp((1−β)y − γe^y)`` in ``y = ln x`` restricted to where it is within
  ``e^{−60}`` of its maximum. γ = 0 is the power law exactly.

Estimation
----------
Samples ``x_i ∈ [a, b]`` with optional nonnegative weights ``w_i`` (frequency weights: an integer
weight equals repeating the sample); ``W = Σ w_i`` (= n unweighted). Every fit maximises the
weighted log-likelihood ``ℓ = Σ w_i ln f(x_i)``:

* power law: ``ℓ(β) = −β Σ w_i ln x_i − W ln Z_pl(β)``; the score equation
  ``E_β[ln x] = Σ w_i ln x_i / W`` has one root (``E_β[ln x]`` decreases in β), found by
  ``brentq`` on a closed-form ``E_β[ln x]``; at β = 1 every quantity is taken analytically.
* lognormal: with ``y = ln x = c + h u``, ``c, h`` the centre and half-width of ``[ln a, ln b]``,
  the model is an exponential family ``∝ exp(θ₁u + θ₂u²)`` on ``u ∈ [−1, 1]``,
  ``θ₂ = −h²/(2σ²) ≤ 0``, ``θ₁ = h(μ − c)/σ²``; ``ℓ`` is concave in (θ₁, θ₂), maximised by
  L-BFGS-B in the same natural parameters taken per data standard deviation of u (a linear map,
  for conditioning). θ₂ = 0 is the σ → ∞ limit, which *is* a truncated power law
  (β = 1 − θ₁/h): if the MLE lands there, ``sigma = inf``, ``mu = ±inf`` and ``powerlaw_limit``
  is True. ``ln Z(θ) = ln ∫_{−1}^{1} e^{θ₁u + θ₂u²} du`` by 64-point Gauss–Legendre when
  ``|θ₁| + |θ₂| ≤ 20``, else by completing the square with ``erfcx`` (no cancellation).
* cutoff: ``ℓ(β, γ) = −β Σ w ln x − γ Σ w x − W ln Z_c`` is concave in (β, γ); L-BFGS-B on
  (β·sd(ln x), γ·sd(x)) with γ ≥ 0, started at the power-law MLE (γ = 0), and never reported
  below it, so ``ℓ_cutoff ≥ ℓ_pl`` always.

Each fit returns ``converged``: finite log-likelihood, projected gradient of ``ℓ/W`` below 1e-5,
and not resting on the numerical box (|natural parameter| ≤ 1000 per data sd) — only the model's
own boundaries γ = 0 and θ₂ = 0 count as an optimum. A False is reported, never raised.

Comparison (CSN 2009 §5 and App. C)
-----------------------------------
Pointwise ``l_i = ln f_pl(x_i) − ln f_alt(x_i)``; ``R = Σ w_i l_i`` (positive favours the power
law); ``σ² = Σ w_i (l_i − R/W)² / W``.

* power law vs lognormal, treated as non-nested (as in CSN): Vuong's statistic
  ``R/(σ√W)`` is asymptotically N(0, 1); two-sided p-value ``p = erfc(|R/(σ√W)|/√2)``. (The
  truncated lognormal contains the truncated power law as its σ → ∞ limit, so on power-law data
  the statistic is not exactly N(0,1); it is what CSN report. If the lognormal MLE is that limit
  then R = 0 and p = 1.)
* power law vs cutoff, nested (γ = 0): ``LR = 2(ℓ_cutoff − ℓ_pl) = −2R ≥ 0``. Under the power law
  γ = 0 sits on the boundary of γ ≥ 0, so LR is asymptotically ½χ²₀ + ½χ²₁ (Self & Liang 1987):
  the p-value is the χ²(1) tail probability **halved**, ``p = ½ P(χ²₁ > LR)`` (and p = 1 at
  LR = 0). The unhalved value is reported as ``p_unhalved``. A nested test can only reject the
  smaller model, so its verdict is "cutoff favoured" or "inconclusive". ``normalized_R`` is
  reported for this pair too (Vuong's form, for information only; the p-value is the LR one).

Verdict at significance 0.1: ``p < 0.1`` and R > 0 → "power law favoured"; ``p < 0.1`` and R < 0
→ "<alt> favoured"; otherwise "inconclusive (p=…)".
"""

from __future__ import annotations

import math

import numpy as np
from scipy import integrate, optimize, special, stats

from tokenscale import TokenscaleError

__all__ = [
    "SIGNIFICANCE",
    "compare_tail",
    "fit_trunc_cutoff",
    "fit_trunc_lognormal",
    "fit_trunc_powerlaw",
    "log_norm_trunc_cutoff",
    "log_norm_trunc_lognormal",
    "log_norm_trunc_powerlaw",
    "logpdf_trunc_cutoff",
    "logpdf_trunc_lognormal",
    "logpdf_trunc_powerlaw",
]

SIGNIFICANCE = 0.1
MIN_SAMPLES = 10
_GL_U, _GL_W = np.polynomial.legendre.leggauss(64)  # nodes/weights on [-1, 1]
_LN_GL_W = np.log(_GL_W)
_GL_MAX_RANGE = 20.0  # Gauss–Legendre (64 nodes) when the exponent varies this little
_ETA_MAX = 1e3  # box on the natural parameters per data standard deviation (see the fits)
_GRAD_TOL = 1e-5


# ----------------------------------------------------------------------------------------------
# input checks


def _check(x, a, b, weights):
    """Validate the window and samples; returns (x, w or None, a, b). Raises TokenscaleError."""
    for name, v in (("a (tau_min)", a), ("b (tau_max)", b)):
        try:
            fv = float(v)
        except (TypeError, ValueError):
            raise TokenscaleError(f"{name} must be a number, got {v!r}") from None
        if not math.isfinite(fv) or fv <= 0:
            raise TokenscaleError(f"{name} must be a finite number > 0, got {v!r}")
    a, b = float(a), float(b)
    if not a < b:
        raise TokenscaleError(f"the window needs a < b, got a={a!r}, b={b!r}")
    try:
        x = np.asarray(x, dtype=float)
    except (TypeError, ValueError):
        raise TokenscaleError("x must be a 1-D array of numbers") from None
    if x.ndim != 1:
        raise TokenscaleError(f"x must be 1-D, got shape {x.shape}")
    bad = np.nonzero(~np.isfinite(x))[0]
    if bad.size:
        raise TokenscaleError(f"x[{bad[0]}] = {float(x[bad[0]])!r} is not finite")
    out = np.nonzero((x < a) | (x > b))[0]
    if out.size:
        i = out[0]
        raise TokenscaleError(f"x[{i}] = {float(x[i])!r} lies outside the window [a, b] = [{a!r}, {b!r}]")
    w = None
    if weights is not None:
        try:
            w = np.asarray(weights, dtype=float)
        except (TypeError, ValueError):
            raise TokenscaleError("weights must be a 1-D array of numbers") from None
        if w.shape != x.shape:
            raise TokenscaleError(f"weights has shape {w.shape}, x has shape {x.shape}")
        bad = np.nonzero(~np.isfinite(w))[0]
        if bad.size:
            raise TokenscaleError(f"weights[{bad[0]}] = {float(w[bad[0]])!r} is not finite")
        neg = np.nonzero(w < 0)[0]
        if neg.size:
            raise TokenscaleError(f"weights[{neg[0]}] = {float(w[neg[0]])!r} is negative")
        used = x[w > 0]
    else:
        used = x
    if used.size < MIN_SAMPLES:
        what = "samples with positive weight" if w is not None else "samples"
        raise TokenscaleError(f"need at least {MIN_SAMPLES} {what} in [a, b], got n = {used.size}")
    if np.all(used == used[0]):
        raise TokenscaleError(f"all {used.size} samples equal {float(used[0])!r}: no tail shape to fit")
    return x, w, a, b


def _wsum(v, w):
    return float(np.sum(v)) if w is None else float(np.dot(w, v))


def _total_weight(x, w):
    return x.size if w is None else float(np.sum(w))


# ----------------------------------------------------------------------------------------------
# normalisers (log), stable


def _log_abs_expm1(y: float) -> float:
    """ln |e^y − 1| for y ≠ 0 without overflow."""
    if y > 0:
        return y + math.log(-math.expm1(-y))
    return math.log(-math.expm1(y))


def log_norm_trunc_powerlaw(beta: float, a: float, b: float) -> float:
    """``ln ∫_a^b x^−β dx`` (``ln ln(b/a)`` at β = 1 exactly; stable for any real β)."""
    s = 1.0 - float(beta)
    L = math.log(b / a)
    if s == 0.0:
        return math.log(L)
    return s * math.log(a) + _log_abs_expm1(s * L) - math.log(abs(s))


def _mean_unit_exp(y: float) -> float:
    """Mean of v on [0, 1] with density ∝ e^{y v}: 1/(1 − e^{−y}) − 1/y (0.5 at y = 0)."""
    if abs(y) < 1e-4:
        return 0.5 + y / 12.0 - y**3 / 720.0
    if y > 0:
        return 1.0 / (-math.expm1(-y)) - 1.0 / y
    # y < 0: e^{-y} may overflow; 1/(1 − e^{−y}) = −e^{y}/(1 − e^{y})
    return -math.exp(y) / (-math.expm1(y)) - 1.0 / y


def _log_gl_phi(lo: float, hi: float) -> float:
    """ln ∫_lo^hi φ(z) dz by 64-point Gauss–Legendre (for short intervals)."""
    half, mid = 0.5 * (hi - lo), 0.5 * (hi + lo)
    z = mid + half * _GL_U
    return math.log(half) - 0.5 * math.log(2 * math.pi) + float(special.logsumexp(-0.5 * z * z + _LN_GL_W))


def _log_ndtr_diff(lo: float, hi: float) -> float:
    """ln(Φ(hi) − Φ(lo)) for lo < hi, accurate far in either tail."""
    if lo > 0:  # mirror into the lower tail
        lo, hi = -hi, -lo
    if hi <= 0:
        la, lb = float(special.log_ndtr(lo)), float(special.log_ndtr(hi))
        d = la - lb
        if d < -0.1:
            return lb + math.log(-math.expm1(d))
        return _log_gl_phi(lo, hi)  # Φ(lo)/Φ(hi) > 0.9: short interval, φ nearly flat
    tails = float(special.ndtr(lo)) + float(special.ndtr(-hi))
    if tails < 0.9:
        return math.log1p(-tails)
    return _log_gl_phi(lo, hi)


def log_norm_trunc_lognormal(mu: float, sigma: float, a: float, b: float) -> float:
    """``ln ∫_a^b (1/(xσ)) φ((ln x − μ)/σ) dx = ln(Φ(B) − Φ(A))`` (stable far in the tails)."""
    if not sigma > 0:
        raise TokenscaleError(f"sigma must be > 0, got {sigma!r}")
    A = (math.log(a) - mu) / sigma
    B = (math.log(b) - mu) / sigma
    return _log_ndtr_diff(A, B)


def _log_z_quad_exp(t1: float, t2: float) -> float:
    """ln ∫_{−1}^{1} exp(t1 u + t2 u²) du for t2 ≤ 0 (the lognormal on the unit window)."""
    if abs(t1) + abs(t2) <= _GL_MAX_RANGE:
        return float(special.logsumexp(t1 * _GL_U + t2 * _GL_U * _GL_U + _LN_GL_W))
    t1 = abs(t1)  # Z(t1, t2) = Z(−t1, t2)
    if t2 == 0.0:
        return t1 + math.log(-math.expm1(-2 * t1)) - math.log(t1)
    k = -t2
    u0 = t1 / (2 * k)  # mode, >= 0
    s = math.sqrt(2 * k)
    z_hi, z_lo = s * (1 - u0), s * (-1 - u0)
    base = 0.5 * math.log(math.pi / k)
    if z_hi > 0:  # mode inside the window (z_lo < 0 since u0 >= 0)
        tails = float(special.ndtr(z_lo)) + float(special.ndtr(-z_hi))
        return base + k * u0 * u0 + math.log1p(-tails)
    # mode at/after u = 1: Φ(z) = ½ erfcx(−z/√2) e^{−z²/2}; k u0² − z_hi²/2 = t1 + t2 = E(1)
    e1 = t1 + t2
    r = float(special.erfcx(-z_lo / math.sqrt(2))) * math.exp(-2 * t1)
    return base - math.log(2) + e1 + math.log(float(special.erfcx(-z_hi / math.sqrt(2))) - r)


def _log_norm_cutoff_detail(beta: float, gamma: float, a: float, b: float) -> tuple[float, str]:
    """(ln Z_c, method) with method in powerlaw | gammainc | exp1 | recurrence | quad."""
    beta, gamma = float(beta), float(gamma)
    if gamma == 0.0:
        return log_norm_trunc_powerlaw(beta, a, b), "powerlaw"
    s = 1.0 - beta
    za, zb = gamma * a, gamma * b
    if s > 0:
        d = _log_gamma_diff_reg(s, za, zb)
        if d is not None:
            return -s * math.log(gamma) + float(special.gammaln(s)) + d, "gammainc"
    elif s == 0.0:
        ea, eb = float(special.exp1(za)), float(special.exp1(zb))
        if ea > 1e-290 and eb < (1 - 1e-4) * ea:
            return math.log(ea - eb), "exp1"
    elif s > -1.0:
        # Z = γ^{−s}/|s| (T2 − T1), T2 = (γa)^s e^{−γa} − (γb)^s e^{−γb},
        #                          T1 = Γ(s+1)[Q(s+1, γa) − Q(s+1, γb)]
        ln_t2 = s * math.log(za) - za + math.log(-math.expm1(s * math.log(b / a) - (zb - za)))
        d1 = _log_gamma_diff_reg(s + 1.0, za, zb)
        if d1 is not None and math.isfinite(ln_t2):
            ln_t1 = float(special.gammaln(s + 1.0)) + d1
            r = math.exp(ln_t1 - ln_t2)
            if r < 1 - 1e-4:
                return -s * math.log(gamma) - math.log(-s) + ln_t2 + math.log1p(-r), "recurrence"
    return _log_norm_cutoff_quad(beta, gamma, a, b), "quad"


def _log_gamma_diff_reg(s: float, za: float, zb: float) -> float | None:
    """ln(Q(s, za) − Q(s, zb)) (regularised), or None where cancellation/underflow would hurt."""
    qa = float(special.gammaincc(s, za))
    if qa <= 0.5:
        qb = float(special.gammaincc(s, zb))
        if qa > 1e-290 and qb < (1 - 1e-4) * qa:
            return math.log(qa - qb)
        return None
    pa, pb = float(special.gammainc(s, za)), float(special.gammainc(s, zb))
    if pb > 1e-290 and pa < (1 - 1e-4) * pb:
        return math.log(pb - pa)
    return None


def _log_norm_cutoff_quad(beta: float, gamma: float, a: float, b: float) -> float:
    """ln ∫ exp(g(y)) dy on [ln a, ln b], g(y) = (1−β)y − γe^y concave; quad near the maximum."""
    s = 1.0 - beta
    ya, yb = math.log(a), math.log(b)

    def g(y):
        return s * y - gamma * math.exp(y)

    ym = math.log(s / gamma) if s > 0 else -math.inf
    ym = min(max(ym, ya), yb)
    gm = g(ym)
    drop = 60.0

    def h(y):
        return g(y) - gm + drop

    lo = ya if h(ya) >= 0 else optimize.brentq(h, ya, ym, xtol=1e-14, rtol=1e-14)
    hi = yb if h(yb) >= 0 else optimize.brentq(h, ym, yb, xtol=1e-14, rtol=1e-14)
    pts = [ym] if lo < ym < hi else None
    val, _ = integrate.quad(lambda y: math.exp(g(y) - gm), lo, hi, points=pts, epsabs=0.0,
                            epsrel=1e-13, limit=400)
    return gm + math.log(val)


def log_norm_trunc_cutoff(beta: float, gamma: float, a: float, b: float) -> float:
    """``ln ∫_a^b x^−β e^{−γx} dx`` for γ ≥ 0 and any real β (see the module docstring)."""
    if not (gamma >= 0 and math.isfinite(gamma)):
        raise TokenscaleError(f"gamma must be a finite number >= 0, got {gamma!r}")
    return _log_norm_cutoff_detail(beta, gamma, a, b)[0]


# ----------------------------------------------------------------------------------------------
# log densities


def logpdf_trunc_powerlaw(x, beta: float, a: float, b: float) -> np.ndarray:
    """ln f(x) of the truncated power law on [a, b] (x assumed inside)."""
    return -beta * np.log(np.asarray(x, float)) - log_norm_trunc_powerlaw(beta, a, b)


def logpdf_trunc_lognormal(x, mu: float, sigma: float, a: float, b: float) -> np.ndarray:
    """ln f(x) of the truncated lognormal on [a, b] (x assumed inside)."""
    y = np.log(np.asarray(x, float))
    z = (y - mu) / sigma
    return (-y - math.log(sigma) - 0.5 * math.log(2 * math.pi) - 0.5 * z * z
            - log_norm_trunc_lognormal(mu, sigma, a, b))


def logpdf_trunc_cutoff(x, beta: float, gamma: float, a: float, b: float) -> np.ndarray:
    """ln f(x) of the truncated power law with exponential cutoff on [a, b] (x assumed inside)."""
    x = np.asarray(x, float)
    return -beta * np.log(x) - gamma * x - log_norm_trunc_cutoff(beta, gamma, a, b)


# ----------------------------------------------------------------------------------------------
# fits


def _powerlaw_mle(mean_ln: float, a: float, b: float) -> tuple[float, bool]:
    """Root of E_β[ln x] = mean_ln (closed form E via _mean_unit_exp), β = 1 − y/L."""
    L = math.log(b / a)
    q = (mean_ln - math.log(a)) / L
    if not 0.0 < q < 1.0:
        return math.nan, False
    f = lambda y: _mean_unit_exp(y) - q  # noqa: E731 — increasing in y
    lo, hi = -1.0 / q - 10.0, 1.0 / (1.0 - q) + 10.0
    try:
        y, res = optimize.brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps,
                                 maxiter=500, full_output=True)
    except ValueError:
        return math.nan, False
    return 1.0 - y / L, bool(res.converged)


def fit_trunc_powerlaw(x, a: float, b: float, weights=None) -> dict:
    """MLE of β for ``f(x) ∝ x^−β`` on ``[a, b]``: ``{beta, loglik, n, converged}`` (n = Σ w)."""
    x, w, a, b = _check(x, a, b, weights)
    return _fit_powerlaw(x, w, a, b)


def _fit_powerlaw(x, w, a, b):
    W = _total_weight(x, w)
    s_ln = _wsum(np.log(x), w)
    beta, ok = _powerlaw_mle(s_ln / W, a, b)
    ll = -beta * s_ln - W * log_norm_trunc_powerlaw(beta, a, b) if ok else math.nan
    return {"beta": float(beta), "loglik": float(ll), "n": W, "converged": bool(ok and math.isfinite(ll))}


def _proj_grad(fun, p, bounds, step=1e-6):
    """Central-difference gradient projected on the box (one-sided at an active bound)."""
    g = np.zeros(len(p))
    for i in range(len(p)):
        e = np.zeros(len(p))
        hstep = step * max(1.0, abs(p[i]))
        e[i] = hstep
        lo, hi = bounds[i]
        if p[i] - hstep < lo:
            gi = (fun(p + e) - fun(p)) / hstep
            g[i] = min(gi, 0.0)  # at the lower bound only a negative slope could still improve
        elif p[i] + hstep > hi:
            gi = (fun(p) - fun(p - e)) / hstep
            g[i] = max(gi, 0.0)
        else:
            g[i] = (fun(p + e) - fun(p - e)) / (2 * hstep)
    return g


def _stationary(fun, p, bounds, genuine):
    """Projected gradient below tolerance and no coordinate resting on an artificial bound."""
    for i, (lo, hi) in enumerate(bounds):
        tol = 1e-6 * max(1.0, abs(p[i]))
        if (p[i] - lo < tol and not genuine[i][0]) or (hi - p[i] < tol and not genuine[i][1]):
            return False
    try:
        g = _proj_grad(fun, p, bounds)
    except (ValueError, FloatingPointError, ZeroDivisionError, OverflowError):
        return False
    return bool(np.all(np.isfinite(g)) and np.max(np.abs(g)) < _GRAD_TOL)


def _minimise(fun, starts, bounds, genuine):
    """L-BFGS-B from each start; the best point, whether it is a stationary point, and its value.

    ``genuine[i] = (lower, upper)`` says which bounds belong to the model (γ ≥ 0, θ₂ ≤ 0); an
    optimum on any other (box) bound is reported as not converged.
    """
    best_p, best_f = None, math.inf
    for p0 in starts:
        p0 = np.clip(np.asarray(p0, float), [lo for lo, _ in bounds], [hi for _, hi in bounds])
        try:
            r = optimize.minimize(fun, p0, method="L-BFGS-B", jac="3-point", bounds=bounds,
                                  options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 2000})
        except (ValueError, FloatingPointError, ZeroDivisionError, OverflowError):
            continue
        if np.isfinite(r.fun) and r.fun < best_f:
            best_p, best_f = np.asarray(r.x, float), float(r.fun)
    if best_p is None or best_f >= 1e299:
        return None, False, math.nan
    return best_p, _stationary(fun, best_p, bounds, genuine), best_f


def _safe(fun):
    def wrapped(p):
        try:
            v = fun(p)
        except (ValueError, FloatingPointError, ZeroDivisionError, OverflowError):
            return 1e300
        return v if math.isfinite(v) else 1e300
    return wrapped


def _wmean_sd(v, w, W):
    m = _wsum(v, w) / W
    return m, math.sqrt(max(_wsum((v - m) ** 2, w) / W, 0.0))


def fit_trunc_lognormal(x, a: float, b: float, weights=None) -> dict:
    """MLE of the truncated lognormal on ``[a, b]``: ``{mu, sigma, loglik, converged, powerlaw_limit}``."""
    x, w, a, b = _check(x, a, b, weights)
    return _fit_lognormal(x, w, a, b, _fit_powerlaw(x, w, a, b))


def _lognormal_geometry(a, b):
    ya, yb = math.log(a), math.log(b)
    return 0.5 * (ya + yb), 0.5 * (yb - ya)


def _lognormal_theta_to_mu_sigma(t1, t2, c, h):
    if t2 == 0.0:
        return (math.copysign(math.inf, t1) if t1 != 0 else math.nan), math.inf
    sigma = h / math.sqrt(-2.0 * t2)
    return c + t1 * sigma * sigma / h, sigma


def _lognormal_pointwise(x, t1, t2, a, b):
    """ln f(x_i) in natural parameters (also valid at the power-law limit t2 = 0)."""
    c, h = _lognormal_geometry(a, b)
    y = np.log(x)
    u = (y - c) / h
    return -y - math.log(h) + t1 * u + t2 * u * u - _log_z_quad_exp(t1, t2)


def _fit_lognormal(x, w, a, b, pl):
    c, h = _lognormal_geometry(a, b)
    W = _total_weight(x, w)
    y = np.log(x)
    u = (y - c) / h
    su, su2, sy = _wsum(u, w) / W, _wsum(u * u, w) / W, _wsum(y, w) / W
    mu_u, sd_u = _wmean_sd(u, w, W)
    const = -sy - math.log(h)

    def theta(eta):  # optimise on the data-standardised v = (u − mean)/sd: well-conditioned
        t2 = eta[1] / (sd_u * sd_u)
        return eta[0] / sd_u - 2.0 * t2 * mu_u, t2

    def negll(eta):  # −ℓ/W
        t1, t2 = theta(eta)
        return -(const + t1 * su + t2 * su2 - _log_z_quad_exp(t1, t2))

    bounds = [(-_ETA_MAX, _ETA_MAX), (-_ETA_MAX, 0.0)]
    genuine = [(False, False), (False, True)]  # θ₂ = 0 (σ = ∞, the power law) is part of the model
    starts = [(0.0, -0.5)]  # a normal in ln x with the data's mean and sd
    if pl["converged"]:
        starts.append((sd_u * (1.0 - pl["beta"]) * h, 0.0))  # the power law (σ → ∞)
    p, ok, f = _minimise(_safe(negll), starts, bounds, genuine)
    if p is None:
        return {"mu": math.nan, "sigma": math.nan, "loglik": math.nan, "converged": False,
                "powerlaw_limit": False, "theta": [math.nan, math.nan]}
    t1, t2 = theta(p)
    t1, t2 = float(t1), float(t2)
    mu, sigma = _lognormal_theta_to_mu_sigma(t1, t2, c, h)
    return {"mu": float(mu), "sigma": float(sigma), "loglik": float(-W * f), "converged": bool(ok),
            "powerlaw_limit": t2 == 0.0, "theta": [t1, t2]}


def fit_trunc_cutoff(x, a: float, b: float, weights=None) -> dict:
    """MLE of ``f(x) ∝ x^−β e^{−γx}`` (γ ≥ 0) on ``[a, b]``: ``{beta, gamma, loglik, converged}``."""
    x, w, a, b = _check(x, a, b, weights)
    return _fit_cutoff(x, w, a, b, _fit_powerlaw(x, w, a, b))


def _fit_cutoff(x, w, a, b, pl):
    W = _total_weight(x, w)
    lx = np.log(x)
    m_ln, s1 = _wmean_sd(lx, w, W)
    m_x, s2 = _wmean_sd(x, w, W)

    def negll(p):  # −ℓ/W with p = (β·sd(ln x), γ·sd(x)): the natural parameters per data sd
        beta, gamma = p[0] / s1, p[1] / s2
        return beta * m_ln + gamma * m_x + _log_norm_cutoff_detail(beta, gamma, a, b)[0]

    bounds = [(-_ETA_MAX, _ETA_MAX), (0.0, _ETA_MAX)]
    genuine = [(False, False), (True, False)]  # γ = 0 (the power law) is part of the model
    beta0 = pl["beta"] if pl["converged"] else 1.0
    starts = [(beta0 * s1, 0.0), ((beta0 - 1.0) * s1, s2 / m_x)]
    fun = _safe(negll)
    p, ok, f = _minimise(fun, starts, bounds, genuine)
    if p is None:
        return {"beta": math.nan, "gamma": math.nan, "loglik": math.nan, "converged": False}
    beta, gamma, ll = float(p[0]) / s1, float(p[1]) / s2, -W * f
    if pl["converged"] and not ll >= pl["loglik"]:  # γ = 0 is admissible: never worse than it
        beta, gamma, ll = pl["beta"], 0.0, pl["loglik"]
        ok = _stationary(fun, np.array([beta * s1, 0.0]), bounds, genuine)
    return {"beta": beta, "gamma": gamma, "loglik": float(ll), "converged": bool(ok)}


# ----------------------------------------------------------------------------------------------
# comparison


def _verdict(p: float, R: float, alt: str) -> str:
    if not math.isfinite(p):
        return f"inconclusive ({alt} fit did not converge)"
    if p < SIGNIFICANCE and R > 0:
        return "power law favoured"
    if p < SIGNIFICANCE and R < 0:
        return f"{alt} favoured"
    return f"inconclusive (p={p:.3g})"


def _vuong(l, w, W):
    R = _wsum(l, w)
    mean = R / W
    var = _wsum((l - mean) ** 2, w) / W
    sd = math.sqrt(var) if var > 0 else 0.0
    if sd == 0.0:
        return R, 0.0, 1.0
    z = R / (sd * math.sqrt(W))
    return R, z, float(special.erfc(abs(z) / math.sqrt(2)))


def compare_tail(x, a: float, b: float, weights=None) -> dict:
    """CSN likelihood-ratio comparison of the truncated power law against truncated alternatives.

    Returns ``{a, b, n, significance, powerlaw: fit, lognormal: {...}, cutoff: {...}}`` where each
    alternative holds its fitted parameters, ``loglik``, ``converged``, ``R`` (power law minus
    alternative), ``normalized_R`` (R/(σ√n)), ``p``, ``test`` and ``verdict`` (the lognormal also
    ``powerlaw_limit`` and its natural ``theta``; the cutoff also ``p_unhalved``). An alternative
    whose fit did not converge gets ``p = nan`` and an "inconclusive (… did not converge)" verdict.
    """
    x, w, a, b = _check(x, a, b, weights)
    W = _total_weight(x, w)
    pl = _fit_powerlaw(x, w, a, b)
    if not pl["converged"]:
        raise TokenscaleError(f"power-law fit on [{a!r}, {b!r}] failed (mean ln x outside the window?)")
    l_pl = logpdf_trunc_powerlaw(x, pl["beta"], a, b)
    out = {"a": a, "b": b, "n": W, "significance": SIGNIFICANCE, "powerlaw": pl}

    ln = _fit_lognormal(x, w, a, b, pl)
    res = dict(ln)
    if not ln["converged"]:
        R, z, p = math.nan, math.nan, math.nan
    elif ln["powerlaw_limit"]:
        R, z, p = 0.0, 0.0, 1.0
    else:
        R, z, p = _vuong(l_pl - _lognormal_pointwise(x, *ln["theta"], a, b), w, W)
    res.update(R=R, normalized_R=z, p=p, test="vuong_two_sided", verdict=_verdict(p, R, "lognormal"))
    out["lognormal"] = res

    cu = _fit_cutoff(x, w, a, b, pl)
    res = dict(cu)
    if not cu["converged"]:
        R, z, p, p1 = math.nan, math.nan, math.nan, math.nan
    elif cu["gamma"] == 0.0:
        R, z, p, p1 = 0.0, 0.0, 1.0, 1.0
    else:
        R_, z, _ = _vuong(l_pl - logpdf_trunc_cutoff(x, cu["beta"], cu["gamma"], a, b), w, W)
        R = min(pl["loglik"] - cu["loglik"], 0.0)  # from the fitted logliks (≤ 0: nested)
        lr = -2.0 * R
        p1 = float(stats.chi2.sf(lr, 1)) if lr > 0 else 1.0
        p = 0.5 * p1 if lr > 0 else 1.0
    res.update(R=R, normalized_R=z, p=p, p_unhalved=p1, test="lr_nested_chi2_1_halved",
               verdict=_verdict(p, R, "cutoff"))
    out["cutoff"] = res
    return out
