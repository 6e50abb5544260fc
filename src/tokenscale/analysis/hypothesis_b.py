"""Hypothesis B tested token by token: does a token's loss follow a power law or a sigmoid? (paper §3, Fig. 2)

The paper argues that the smooth aggregate power law is not the sum of per-token power laws (hypothesis B) but of
per-token sigmoid steps (eq. (1)). Both models are fitted to every token on the SAME points: the checkpoints the
sigmoid fits used (from the fit window's start, ``fit.start``; :func:`tokenscale.analysis.stage.fit_columns`):

* sigmoid ``ℓ_post + Δ[1 − σ(λ(x − τ))]`` on ``x = log10(a)`` (or ``a`` for a ``linear`` fit axis), the
  series' fits, ``p = 4``;
* power law ``k a^−α + E`` on the original axis ``a`` (:mod:`tokenscale.fit.powerlaw_token`; α in [0.01, 5],
  k and E free), ``p = 3``.

Criterion, with Gaussian residuals of unknown variance (the variance parameter is common to both models and
cancels in the difference)::

    AIC  = n ln(RSS/n) + 2p,        AICc = AIC + 2p(p+1)/(n − p − 1)      (n = fitted points of the token)
    ΔAIC = AIC_power_law − AIC_sigmoid        (> 0: the sigmoid is preferred)

AICc is the reported criterion (``criterion``): the series have 8 to 40 points per token, where AIC's
penalty is too small for 4 parameters (Burnham & Anderson: use AICc when n/p < 40); AIC is given beside it. AICc
needs ``n > p + 2 = 6`` for both models; with fewer points only AIC is reported. An RSS below the input's
round-off (``16 n (eps (|mean| + range + 1))²``, eps of the losses' dtype) is raised to it, so two exact fits (a
flat row) differ by their penalties alone instead of by round-off.

Tokens compared: a valid sigmoid fit (as the decomposition's valid set: status not invalid_input, finite
parameters, a finite loss row) and a power-law fit with at least 3 points. Reported per series, over all compared
tokens (``all``) and over the analysis's main token selection (``selection``): the share won by each model (sign
of ΔAIC; ties apart), the share won by more than 2 (``*_clear``; Burnham & Anderson's "substantial support"),
the median ΔAIC with a percentile-bootstrap CI over tokens (:func:`scipy.stats.bootstrap`, the analysis's
``n_boot`` and ``seed``), and the median RSS ratio power law / sigmoid.

The figure (``fig13_hypothesis_b``, drawn by the figures stage from the analysis file) shows six tokens of the
selection at quantiles of ΔAICc: the loss points and both fitted curves.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
from scipy import stats

from tokenscale.analysis.options import AnalysisOptions, selection_weights
from tokenscale.fit.powerlaw_token import STATUS_NAMES as PL_STATUS_NAMES
from tokenscale.fit.powerlaw_token import fit_power_laws, power_law_curve
from tokenscale.io.fits import logistic

__all__ = ["P_SIGMOID", "P_POWER_LAW", "CRITERION", "EXAMPLE_QUANTILES", "FIGURE_NAME", "information_criteria",
           "sigmoid_rss", "compare_tokens", "hypothesis_b", "read_examples", "hypothesis_b_figure"]

P_SIGMOID, P_POWER_LAW = 4, 3
CRITERION = "aicc"
CLEAR = 2.0  # |ΔAIC| above which a win counts as clear
EXAMPLE_QUANTILES = (0.02, 0.2, 0.4, 0.6, 0.8, 0.98)
FIGURE_NAME = "fig13_hypothesis_b"
_EXAMPLES_KEY = "hypothesis_b_examples"  # key of the analysis file's ``extra`` attribute


def information_criteria(rss, n, p: int) -> tuple[np.ndarray, np.ndarray]:
    """(AIC, AICc) of Gaussian least squares: ``n ln(RSS/n) + 2p`` and ``+ 2p(p+1)/(n−p−1)`` (NaN where
    ``n <= p + 1``)."""
    rss, n = np.asarray(rss, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        aic = n * np.log(rss / n) + 2.0 * p
        aicc = np.where(n - p - 1 > 0, aic + 2.0 * p * (p + 1) / (n - p - 1), np.nan)
    return aic, aicc


def sigmoid_rss(losses: np.ndarray, fit, x: np.ndarray, chunk_rows: int = 1 << 15) -> np.ndarray:
    """(N,) RSS of every row's sigmoid on the points ``x`` (K,), chunked (NaN where a row or a parameter is not
    finite)."""
    par = [np.asarray(getattr(fit, k), dtype=np.float64) for k in ("tau", "lam", "delta", "post")]
    out = np.empty(losses.shape[0])
    for i0 in range(0, losses.shape[0], chunk_rows):
        tau, lam, delta, post = (p[i0:i0 + chunk_rows, None] for p in par)
        pred = post + delta * logistic(lam * (tau - x[None, :]))
        r = np.asarray(losses[i0:i0 + chunk_rows], dtype=np.float64) - pred
        out[i0:i0 + chunk_rows] = (r * r).sum(axis=1)
    return out


def _rss_floor(losses: np.ndarray) -> np.ndarray:
    eps = np.finfo(losses.dtype).eps if losses.dtype.kind == "f" else np.finfo(np.float64).eps
    y = np.asarray(losses, dtype=np.float64)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN floor, not compared anyway
        scale = np.abs(np.nanmean(y, axis=1)) + (np.nanmax(y, axis=1) - np.nanmin(y, axis=1)) + 1.0
    return 16.0 * y.shape[1] * (eps * scale) ** 2


def compare_tokens(losses, fit, opts: AnalysisOptions) -> dict:
    """Both fits of every row and their criteria: a dict of (N,) arrays ``rss_sigmoid``, ``rss_power_law``,
    ``delta_aic``, ``delta_aicc``, ``compared`` (bool), ``selected`` (bool: compared and in the main selection),
    and the power-law fits ``power_law`` (:class:`tokenscale.fit.powerlaw_token.PowerLawFits`)."""
    y = np.asarray(losses)
    x = np.asarray(fit.axis, dtype=np.float64)
    pl = fit_power_laws(y, np.asarray(fit.axis_orig, dtype=np.float64))
    rss_sig = sigmoid_rss(y, fit, x)
    status = np.asarray(fit.status)
    par = {k: np.asarray(getattr(fit, k), dtype=np.float64) for k in ("tau", "lam", "delta", "post", "r2")}
    valid = (status != 2) & np.all(np.isfinite(y), axis=1) & np.isfinite(rss_sig)
    if not opts.include_max_iter:
        valid &= status != 1
    for k in ("tau", "lam", "delta", "post"):
        valid &= np.isfinite(par[k])
    compared = valid & (pl.status != 2)
    floor = _rss_floor(y)
    n = np.full(y.shape[0], float(y.shape[1]))
    aic_s, aicc_s = information_criteria(np.maximum(rss_sig, floor), n, P_SIGMOID)
    aic_p, aicc_p = information_criteria(np.maximum(pl.rss, floor), n, P_POWER_LAW)
    selected = compared & (selection_weights(opts.main, par["delta"], par["r2"], valid) > 0)
    return {"rss_sigmoid": rss_sig, "rss_power_law": pl.rss, "delta_aic": aic_p - aic_s,
            "delta_aicc": aicc_p - aicc_s, "compared": compared, "selected": selected, "power_law": pl}


def _median_ci(d: np.ndarray, opts: AnalysisOptions) -> list:
    if d.size < 2 or opts.n_boot <= 0 or np.ptp(d) == 0:
        return [math.nan, math.nan]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = stats.bootstrap((d,), np.median, n_resamples=opts.n_boot, vectorized=True, method="percentile",
                            batch=max(1, (1 << 22) // d.size), rng=np.random.default_rng(opts.seed))
    return [float(r.confidence_interval.low), float(r.confidence_interval.high)]


def _shares(d: np.ndarray, opts: AnalysisOptions) -> dict:
    """Wins, clear wins, ties and the median ΔAIC (with its CI) of the ΔAIC values ``d``."""
    n = d.size
    if n == 0 or not np.all(np.isfinite(d)):
        return {"share_sigmoid": None, "share_power_law": None, "share_tie": None, "share_sigmoid_clear": None,
                "share_power_law_clear": None, "median_delta": None, "median_delta_ci": [None, None]}
    return {"share_sigmoid": float(np.mean(d > 0)), "share_power_law": float(np.mean(d < 0)),
            "share_tie": float(np.mean(d == 0)), "share_sigmoid_clear": float(np.mean(d > CLEAR)),
            "share_power_law_clear": float(np.mean(d < -CLEAR)), "median_delta": float(np.median(d)),
            "median_delta_ci": _median_ci(d, opts)}


def _group(cmp: dict, mask: np.ndarray, opts: AnalysisOptions) -> dict:
    ratio = cmp["rss_power_law"][mask] / np.maximum(cmp["rss_sigmoid"][mask], np.finfo(np.float64).tiny)
    return {"n_tokens": int(mask.sum()), "aicc": _shares(cmp["delta_aicc"][mask], opts),
            "aic": _shares(cmp["delta_aic"][mask], opts),
            "median_rss_ratio": float(np.median(ratio)) if ratio.size else None}


def _examples(losses, fit, cmp: dict, crit: str) -> dict:
    """Six tokens of the selection (or of all compared tokens) at quantiles of ΔAIC, with both fits' parameters."""
    pool = np.flatnonzero(cmp["selected"] if cmp["selected"].any() else cmp["compared"])
    if pool.size == 0:
        return {}
    d = cmp[f"delta_{crit}"][pool]
    order = pool[np.argsort(d, kind="stable")]
    pick = [int(order[min(order.size - 1, int(q * order.size))]) for q in EXAMPLE_QUANTILES]
    pl = cmp["power_law"]
    return {"criterion": crit, "quantiles": list(EXAMPLE_QUANTILES), "index": pick, "transform": str(fit.transform),
            "axis_orig": np.asarray(fit.axis_orig, dtype=np.float64).tolist(),
            "losses": np.asarray(losses[pick], dtype=np.float64).tolist(),
            "delta": cmp[f"delta_{crit}"][pick].tolist(),
            "sigmoid": {k: np.asarray(getattr(fit, k), dtype=np.float64)[pick].tolist()
                        for k in ("tau", "lam", "delta", "post")},
            "power_law": {k: getattr(pl, k)[pick].tolist() for k in ("k", "alpha", "E")}}


def hypothesis_b(losses, fit, opts: AnalysisOptions) -> tuple[dict, dict]:
    """(summary, figure examples) of the per-token comparison (module docstring); the summary is what goes under
    ``hypothesis_b`` in summary.json."""
    cmp = compare_tokens(losses, fit, opts)
    n = int(np.asarray(losses).shape[1])
    crit = CRITERION if n - P_SIGMOID - 1 > 0 else "aic"
    pl_status = np.asarray(cmp["power_law"].status)
    summary = {
        "criterion": crit,
        "description": "per-token sigmoid (4 parameters, fit axis) vs power law k a^-alpha + E (3 parameters, "
                       "original axis) on the sigmoid fits' points; delta = AIC(power law) - AIC(sigmoid), > 0: "
                       "sigmoid preferred; Gaussian residuals",
        "n_points": n,
        "n_params": {"sigmoid": P_SIGMOID, "power_law": P_POWER_LAW},
        "clear_margin": CLEAR,
        "bootstrap": f"percentile, {opts.n_boot} resamples of tokens (median delta)",
        "all": _group(cmp, cmp["compared"], opts),
        "selection": {"name": opts.selection, "description": opts.main.describe(),
                      **_group(cmp, cmp["selected"], opts)},
        "power_law_status": {name: int(np.sum(pl_status == i)) for i, name in enumerate(PL_STATUS_NAMES)},
    }
    return summary, _examples(np.asarray(losses), fit, cmp, crit)


def read_examples(analysis_path) -> dict:
    """The figure examples stored in an analysis file's ``extra`` attribute ({} for a file without them)."""
    import h5py

    with h5py.File(analysis_path, "r") as f:
        extra = json.loads(f.attrs.get("extra", "{}"))
    return extra.get(_EXAMPLES_KEY) or {}


def _curves(ex: dict, i: int, a_fine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s, p = ex["sigmoid"], ex["power_law"]
    x = np.log10(a_fine) if ex["transform"] == "log10" else a_fine
    sig = s["post"][i] + s["delta"][i] * logistic(s["lam"][i] * (s["tau"][i] - x))
    return sig, power_law_curve(a_fine, p["k"][i], p["alpha"][i], p["E"][i])[0]


def hypothesis_b_figure(ex: dict, outdir, *, axis_label: str = "training step", title: str = "tokenscale"):
    """Six tokens at quantiles of ΔAIC, loss points with the sigmoid and the power-law fit; returns the PNG path
    (None without examples)."""
    from matplotlib.figure import Figure

    from tokenscale.plotting import C_EMP, C_PL, C_SIG, AxisLabels, save_figure, set_xscale

    if not ex:
        return None
    lab = AxisLabels(ex["transform"], axis_label)
    a = np.asarray(ex["axis_orig"], dtype=np.float64)
    a_fine = np.geomspace(a[0], a[-1], 200) if lab.log else np.linspace(a[0], a[-1], 200)
    fig = Figure(figsize=(12, 6.5), layout="constrained")
    axs = fig.subplots(2, 3).ravel()
    name = "ΔAICc" if ex["criterion"] == "aicc" else "ΔAIC"
    for i, ax in enumerate(axs[:len(ex["index"])]):
        sig, pl = _curves(ex, i, a_fine)
        ax.plot(a, ex["losses"][i], "o", ms=3.5, color=C_EMP, label="token loss")
        ax.plot(a_fine, sig, "-", lw=1.8, color=C_SIG, label="sigmoid (4 par.)")
        ax.plot(a_fine, pl, "--", lw=1.8, color=C_PL, label="power law k a^−α + E (3 par.)")
        set_xscale(ax, lab)
        ax.set_title(f"q = {ex['quantiles'][i]:.2f}: {name} = {ex['delta'][i]:+.1f} (token {ex['index'][i]})",
                     fontsize=9)
        ax.set_xlabel(lab.axis, fontsize=8)
        ax.set_ylabel("loss (nats)", fontsize=8)
    axs[0].legend(fontsize=7)
    fig.suptitle(f"{title}: tokens at quantiles of {name} = {name[1:]}(power law) − {name[1:]}(sigmoid) "
                 f"(> 0: sigmoid preferred)", fontsize=11)
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out, FIGURE_NAME)
