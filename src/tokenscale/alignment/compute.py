"""What learning time aligns with: mean τ by domain, training frequency and dependency length (paper App. A.2,
Fig. 7), and the per-token agreement of τ between runs that differ only by seed (Fig. 2, hypothesis A).

numpy and scipy only (never torch).  Definitions, used by every function here:

* **token instance** ``i = s*T + t`` of the validation token set (row-major over ``token_id`` (S, T)); every
  per-instance array is (N,) = (S*T,) in this order (an (S, T) array is accepted and flattened row-major).
* **τ** is the sigmoid fit's learning time on the fit's transformed axis ``x`` (``SigmoidFit.tau``; ``x =
  log10(step)`` for the ``log10`` transform).  Means and their CIs are computed on ``x``; the ``*_orig`` values
  are the same numbers mapped back to original units (``10**x``), i.e. a *geometric* mean of τ for ``log10``.
  Only instances in ``valid_mask`` count (e.g. fits with status != invalid and category early/late:
  :func:`instance_tau`).
* **training frequency** of an instance: the number of occurrences of its *target* token (``token_id``) in the
  training token stream (:func:`token_frequencies`).  Frequency bins (:func:`frequency_bins`) are log-spaced
  over the positive frequencies; instances whose target never occurs in training get their own bin 0.
* **dependency length** of an instance: the minimum context length reaching 90 % of the full-context
  probability (values 1, 2, 4, ..., seq_len; computed elsewhere).  One group per distinct value.
* **mean CI**: a percentile bootstrap over token instances (:func:`group_means`); **rank correlation**:
  Spearman ρ between τ and the (raw, unbinned) frequency or dependency length, with a percentile bootstrap CI
  over instance pairs (:func:`spearman_ci`).  Domains are nominal, so the domain panel reports a Kruskal–Wallis
  H test of "τ has the same distribution in every domain" instead of a ρ.
* **bootstrap size**: a sample of ``n <= max_n`` is bootstrapped with :func:`scipy.stats.bootstrap` (percentile,
  resamples of size n).  For ``n > max_n`` (millions of tokens) resamples have size ``m = max_n`` (the
  "m-out-of-n" bootstrap) and the percentile interval is rescaled to size n: ``est + sqrt(m/n)·(q − est)``
  with ``q`` the replicate quantiles.  This is valid for √n-consistent statistics (a mean, Spearman's ρ),
  costs ``n_boot·m`` instead of ``n_boot·n`` and scipy has no option for it, hence the own loop.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

from tokenscale import TokenscaleError

__all__ = [
    "token_frequencies",
    "instance_frequency",
    "instance_tau",
    "frequency_bins",
    "group_means",
    "spearman_ci",
    "align",
    "seed_agreement",
]

MAX_N_MEAN = 10_000  # largest group bootstrapped at full size by group_means (see module docstring)
MAX_N_SPEARMAN = 20_000  # largest sample bootstrapped at full size by spearman_ci
_BATCH_ELEMENTS = 1 << 22  # resampled elements held at once


# ----------------------------------------------------------------------------- input checks
def _flat(name: str, a, n: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 1:
        a = a.reshape(-1)
    if n is not None and a.shape[0] != n:
        raise TokenscaleError(f"{name} has {a.shape[0]} entries, expected {n} (one per token instance)")
    return a


def _ints(name: str, a, n: int | None = None) -> np.ndarray:
    a = _flat(name, a, n)
    if a.dtype.kind not in "iu":
        if a.dtype.kind != "f" or not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise TokenscaleError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _check_boot(n_boot: int, confidence: float) -> None:
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 10):
        raise TokenscaleError(f"n_boot must be an integer >= 10, got {n_boot!r}")
    if not 0.0 < confidence < 1.0:
        raise TokenscaleError(f"confidence must be in (0, 1), got {confidence!r}")


def _first_bad(name: str, a: np.ndarray, bad: np.ndarray, what: str) -> None:
    if bad.any():
        i = int(np.argmax(bad))
        raise TokenscaleError(f"{name}[{i}] = {a[i].item()!r} {what} ({int(bad.sum())} of {a.size} entries)")


# ----------------------------------------------------------------------------- frequencies
def token_frequencies(train_token_ids, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """Occurrences (V,) int64 of every token id in ``train_token_ids`` (e.g. ``TrainTokens(d).tokens``, a
    multi-GB uint16/uint32 memmap), counted ``chunk`` ids at a time."""
    if not (isinstance(vocab_size, (int, np.integer)) and vocab_size >= 1):
        raise TokenscaleError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if chunk < 1:
        raise TokenscaleError(f"chunk must be >= 1, got {chunk!r}")
    ids = train_token_ids if hasattr(train_token_ids, "dtype") else np.asarray(train_token_ids)
    ids = ids if ids.ndim == 1 else ids.reshape(-1)
    if np.asarray(ids[:0]).dtype.kind not in "iu":
        raise TokenscaleError(f"training token ids must be integers, got dtype {np.asarray(ids[:0]).dtype}")
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, ids.shape[0], chunk):
        part = np.asarray(ids[start:start + chunk]).astype(np.int64, copy=False)
        lo, hi = int(part.min()), int(part.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise TokenscaleError(f"training token id {bad} is outside the vocabulary [0, {vocab_size})")
        counts += np.bincount(part, minlength=vocab_size)
    return counts


def instance_frequency(token_id, counts) -> np.ndarray:
    """Training frequency (N,) int64 of every token instance's target: ``counts[token_id]`` flattened row-major."""
    tid = _ints("token_id", token_id)
    counts = _ints("counts", counts)
    v = counts.shape[0]
    _first_bad("token_id", tid, (tid < 0) | (tid >= v), f"is outside the vocabulary [0, {v})")
    return counts[tid]


def frequency_bins(freq_of_token, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Log-spaced bins of per-instance training frequency.

    Returns ``(bin_index (N,) int64, edges)``.  Bin 0 holds the instances whose target never occurs in training
    (frequency 0).  Bins ``k = 1 .. len(edges) - 1`` cover ``[edges[k-1], edges[k])`` log-spaced from the
    smallest to the largest positive frequency (the last bin closed).  For integer counts the edges are integers
    (duplicates merged, so there may be fewer than ``n_bins`` bins) and the last edge is ``max + 1``."""
    f = _flat("frequency", freq_of_token).astype(np.float64)
    if not (isinstance(n_bins, (int, np.integer)) and n_bins >= 1):
        raise TokenscaleError(f"n_bins must be a positive integer, got {n_bins!r}")
    _first_bad("frequency", f, ~np.isfinite(f), "is not finite")
    _first_bad("frequency", f, f < 0, "is negative")
    pos = f[f > 0]
    if pos.size == 0:
        return np.zeros(f.shape[0], np.int64), np.zeros(0)
    lo, hi = float(pos.min()), float(pos.max())
    if np.all(pos == np.round(pos)):
        edges = np.unique(np.ceil(np.geomspace(lo, hi + 1.0, n_bins + 1)))
    else:
        edges = np.geomspace(lo, hi, n_bins + 1) if hi > lo else np.array([lo, hi])
    k = np.clip(np.searchsorted(edges, f, side="right"), 1, max(len(edges) - 1, 1))
    return np.where(f > 0, k, 0).astype(np.int64), edges


def instance_tau(fit, n_tokens: int, categories=("early", "late")) -> tuple[np.ndarray, np.ndarray]:
    """``(tau (N,), valid (N,))`` on the token instances from a :class:`tokenscale.io.fits.SigmoidFit`.

    Rows are placed by ``fit.token_index`` when present (else the fit must have one row per instance); an
    instance is valid when it has a fit with status != invalid_input, a finite τ and a category in
    ``categories`` (default: tokens learned inside the observed window)."""
    from tokenscale.io.fits import CATEGORY_NAMES

    unknown = [c for c in categories if c not in CATEGORY_NAMES]
    if unknown:
        raise TokenscaleError(f"unknown category {unknown[0]!r} (expected one of {list(CATEGORY_NAMES)})")
    codes = [CATEGORY_NAMES.index(c) for c in categories]
    rows = np.arange(len(fit)) if fit.token_index is None else _ints("fit.token_index", fit.token_index)
    if fit.token_index is None and len(fit) != n_tokens:
        raise TokenscaleError(f"fit has {len(fit)} rows and no token_index, expected {n_tokens} (one per instance)")
    _first_bad("fit.token_index", rows, (rows < 0) | (rows >= n_tokens), f"is outside [0, {n_tokens})")
    tau = np.full(n_tokens, np.nan)
    valid = np.zeros(n_tokens, bool)
    tau[rows] = fit.tau
    valid[rows] = (np.asarray(fit.status) != 2) & np.isin(fit.category, codes) & np.isfinite(fit.tau)
    return tau, valid


def selected_tau(fit, n_tokens: int, selection) -> tuple[np.ndarray, np.ndarray]:
    """``(tau (N,), valid (N,))`` like :func:`instance_tau`, with the spectrum's token selection (an
    :class:`tokenscale.analysis.options.Selection`) instead of categories, and τ inside the fitted window (an
    extrapolated τ is no learning time that was observed)."""
    rows = np.arange(len(fit)) if fit.token_index is None else _ints("fit.token_index", fit.token_index)
    if fit.token_index is None and len(fit) != n_tokens:
        raise TokenscaleError(f"fit has {len(fit)} rows and no token_index, expected {n_tokens} (one per instance)")
    _first_bad("fit.token_index", rows, (rows < 0) | (rows >= n_tokens), f"is outside [0, {n_tokens})")
    tau = np.full(n_tokens, np.nan)
    valid = np.zeros(n_tokens, bool)
    tau[rows] = np.asarray(fit.tau, dtype=float)
    valid[rows] = selected_rows(fit, selection)
    return tau, valid


def selected_rows(fit, selection) -> np.ndarray:
    """(len(fit),) bool: the fit rows in the spectrum's token selection whose τ lies inside the fitted window."""
    from tokenscale.analysis.options import selection_weights

    t = np.asarray(fit.tau, dtype=float)
    x = np.asarray(fit.axis, dtype=float)
    ok = (np.asarray(fit.status) != 2) & np.isfinite(t) & np.isfinite(np.asarray(fit.delta, dtype=float))
    w = selection_weights(selection, np.asarray(fit.delta, float), np.asarray(fit.r2, float), ok)
    return (w > 0) & (t >= x[0]) & (t <= x[-1])


# ----------------------------------------------------------------------------- bootstrap
def _mean_stat(x, axis=-1):
    return np.mean(x, axis=axis)


def _wmean_stat(x, w, axis=-1):
    return np.sum(x * w, axis=axis) / np.sum(w, axis=axis)


def _spearman_stat(x, y, axis=-1):
    """Spearman ρ along ``axis`` (average ranks for ties, as scipy.stats.spearmanr), vectorised over rows."""
    rx = stats.rankdata(x, axis=axis)
    ry = stats.rankdata(y, axis=axis)
    rx -= rx.mean(axis=axis, keepdims=True)
    ry -= ry.mean(axis=axis, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sum(rx * ry, axis=axis) / np.sqrt(np.sum(rx * rx, axis=axis) * np.sum(ry * ry, axis=axis))


def _boot_ci(stat, data: tuple, est: float, *, n_boot: int, rng, confidence: float, max_n: int):
    """Percentile-bootstrap CI (low, high) of ``stat`` over paired samples ``data`` (see module docstring)."""
    n = data[0].shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # degenerate resamples give NaN replicates / CI, reported as NaN
        if n <= max_n:
            r = stats.bootstrap(data, stat, n_resamples=n_boot, batch=max(1, _BATCH_ELEMENTS // n), vectorized=True,
                                paired=True, confidence_level=confidence, method="percentile", rng=rng)
            return float(r.confidence_interval.low), float(r.confidence_interval.high)
        # own m-out-of-n loop: resamples of size max_n, interval rescaled by sqrt(m/n) (module docstring)
        batch = max(1, _BATCH_ELEMENTS // max_n)
        reps = []
        for b in range(0, n_boot, batch):
            idx = rng.integers(0, n, size=(min(batch, n_boot - b), max_n))
            reps.append(stat(*(d[idx] for d in data), axis=-1))
        reps = np.concatenate(reps)
        if not np.all(np.isfinite(reps)):
            return math.nan, math.nan
        alpha = 1.0 - confidence
        q = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
        lo, hi = est + math.sqrt(max_n / n) * (q - est)
        return float(lo), float(hi)


def group_means(tau, groups, *, weights=None, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
                min_count: int = 20, keys=None, max_n: int = MAX_N_MEAN) -> dict:
    """Mean τ per group with a bootstrap CI: ``{group: {"n", "mean", "ci_low", "ci_high"}}`` (floats, NaN when
    undefined), for every group present in ``groups`` plus every code in ``keys`` (reported even when empty).

    ``weights`` (N,) > 0 gives weighted means ``Σwτ / Σw``, resampled with their τ.  Groups with fewer than
    ``min_count`` instances get a NaN CI.  Percentile bootstrap over instances; groups larger than ``max_n``
    use the rescaled m-out-of-n bootstrap (module docstring)."""
    x = _flat("tau", tau).astype(np.float64)
    n = x.shape[0]
    g = _ints("groups", groups, n)
    _check_boot(n_boot, confidence)
    _first_bad("tau", x, ~np.isfinite(x), "is not finite")
    w = None
    if weights is not None:
        w = _flat("weights", weights, n).astype(np.float64)
        _first_bad("weights", w, ~(np.isfinite(w) & (w > 0)), "is not a finite positive weight")
    rng = np.random.default_rng(seed)
    order = np.argsort(g, kind="stable")
    uniq, starts = np.unique(g[order], return_index=True)
    bounds = dict(zip(uniq.tolist(), zip(starts.tolist(), np.append(starts[1:], n).tolist())))
    out = {}
    for key in sorted(set(bounds) | set(int(k) for k in (keys or ()))):
        a, b = bounds.get(key, (0, 0))
        sel = order[a:b]
        data = (x[sel],) if w is None else (x[sel], w[sel])
        stat = _mean_stat if w is None else _wmean_stat
        est = float(stat(*data)) if sel.size else math.nan
        lo = hi = math.nan
        if sel.size >= max(min_count, 2):
            lo, hi = _boot_ci(stat, data, est, n_boot=n_boot, rng=rng, confidence=confidence, max_n=max_n)
        out[key] = {"n": int(sel.size), "mean": est, "ci_low": lo, "ci_high": hi}
    return out


def spearman_ci(x, y, *, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
                max_n: int = MAX_N_SPEARMAN) -> dict:
    """Spearman ρ of (x, y) with a percentile-bootstrap CI over pairs: ``{"rho", "ci_low", "ci_high", "n",
    "p_value"}``.  ρ and its p-value are scipy.stats.spearmanr on all n pairs; for n > ``max_n`` the bootstrap
    resamples ``max_n`` pairs per replicate and rescales the interval (module docstring).  ρ is NaN when x or y
    is constant."""
    x = _flat("x", x).astype(np.float64)
    y = _flat("y", y, x.shape[0]).astype(np.float64)
    _check_boot(n_boot, confidence)
    _first_bad("x", x, ~np.isfinite(x), "is not finite")
    _first_bad("y", y, ~np.isfinite(y), "is not finite")
    n = x.shape[0]
    if n < 3:
        raise TokenscaleError(f"spearman_ci needs at least 3 pairs, got {n}")
    if np.all(x == x[0]) or np.all(y == y[0]):
        return {"rho": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": n, "p_value": math.nan}
    r = stats.spearmanr(x, y)
    rho, p = float(r.statistic), float(r.pvalue)
    lo, hi = _boot_ci(_spearman_stat, (x, y), rho, n_boot=n_boot, rng=np.random.default_rng(seed),
                      confidence=confidence, max_n=max_n)
    return {"rho": rho, "ci_low": max(lo, -1.0), "ci_high": min(hi, 1.0), "n": n, "p_value": p}


# ----------------------------------------------------------------------------- the A.2 table
def _spearman_json(x, y, **kw) -> dict:
    if x.shape[0] < 3:
        return {"rho": None, "ci_low": None, "ci_high": None, "n": int(x.shape[0]), "p_value": None}
    return {k: _none(v) for k, v in spearman_ci(x, y, **kw).items()}


def _none(v):
    """JSON-clean scalar: NaN -> None, numpy -> python."""
    v = v.item() if isinstance(v, np.generic) else v
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _rows(means: dict, labels: dict, transform: str, extra: dict | None = None) -> list[dict]:
    back = (lambda v: 10.0 ** v) if transform == "log10" else (lambda v: v)
    rows = []
    for key, m in means.items():
        row = {"code": int(key), "label": labels[key], **(extra or {}).get(key, {}), **m}
        row.update({f"{k}_orig": back(m[k]) for k in ("mean", "ci_low", "ci_high")})
        rows.append({k: _none(v) for k, v in row.items()})
    return rows


def _freq_label(k: int, edges: np.ndarray) -> str:
    if k == 0:
        return "0 (unseen)"
    lo, hi = edges[k - 1], edges[k]
    if np.all(edges == np.round(edges)):
        return f"{int(lo)}" if hi - lo == 1 else f"{int(lo)}–{int(hi) - 1}"
    return f"{lo:.3g}–{hi:.3g}"


def _kruskal(samples: list[np.ndarray]) -> dict:
    samples = [s for s in samples if s.size]
    n, k = sum(s.size for s in samples), len(samples)
    out = {"name": "kruskal-wallis", "statistic": None, "p_value": None, "epsilon_squared": None,
           "n_groups": k, "n": n}
    if k >= 2:
        try:
            h, p = stats.kruskal(*samples)
        except ValueError:  # all values identical
            return out
        eps2 = _none(float((h - k + 1) / (n - k))) if n > k else None  # effect size of H
        out.update(statistic=_none(float(h)), p_value=_none(float(p)), epsilon_squared=eps2)
    return out


def align(tau, valid_mask, *, domain, domain_names, freq_of_instance=None, dependency=None,
          dependency_mask=None, n_boot: int = 1000, seed: int = 0, confidence: float = 0.95,
          transform: str = "log10", n_freq_bins: int = 10, min_count: int = 20) -> dict:
    """The App. A.2 / Fig. 7 table (JSON-serialisable: NaN written as ``None``).

    ``tau`` (N,) on the fit axis; ``valid_mask`` (N,) bool selects the instances used; ``domain`` (N,) or (S, T)
    codes into ``domain_names`` (builtin and user domains alike); ``freq_of_instance`` (N,) training frequency
    of each instance's target (:func:`instance_frequency`); ``dependency`` (N,) dependency lengths >= 1, computed
    where ``dependency_mask`` (N,) bool is true (default: everywhere; the dependency panel uses only those).
    Returns ``{"transform", "n_tokens", "n_valid", "n_boot", "seed", "confidence", "min_count", "domain",
    "frequency", "dependency"}``; each panel is ``{"groups": [row, ...], "test" or "spearman": {...}, ...}`` or
    ``None`` when its input was not given.  A row is ``{"code", "label", "n", "mean", "ci_low", "ci_high",
    "mean_orig", "ci_low_orig", "ci_high_orig"}`` (means on the fit axis and in original units).  Domains
    report a Kruskal–Wallis test (ρ has no meaning for nominal categories); frequency and dependency report
    Spearman ρ of τ against the raw value (unseen targets, frequency 0, included)."""
    x = _flat("tau", tau).astype(np.float64)
    n = x.shape[0]
    valid = _flat("valid_mask", valid_mask, n)
    if valid.dtype != bool:
        raise TokenscaleError(f"valid_mask must be boolean, got dtype {valid.dtype}")
    if transform not in ("log10", "linear"):
        raise TokenscaleError(f"unknown transform {transform!r} (expected 'log10' or 'linear')")
    if not valid.any():
        raise TokenscaleError(f"valid_mask selects no token instance (of {n})")
    _first_bad("tau", x, valid & ~np.isfinite(x), "is not finite at a valid instance")
    names = list(domain_names)
    dom = _ints("domain", domain, n)
    _first_bad("domain", dom, (dom < 0) | (dom >= len(names)), f"is not a code into domain_names ({len(names)} names)")
    _check_boot(n_boot, confidence)
    seeds = np.random.SeedSequence(seed).spawn(3)
    xv = x[valid]
    kw = dict(n_boot=n_boot, confidence=confidence, min_count=min_count)
    table = {"transform": transform, "n_tokens": n, "n_valid": int(valid.sum()), "n_boot": n_boot, "seed": seed,
             "confidence": confidence, "min_count": min_count}

    dv = dom[valid]
    means = group_means(xv, dv, seed=seeds[0], keys=range(len(names)), **kw)
    table["domain"] = {"groups": _rows(means, dict(enumerate(names)), transform),
                       "test": _kruskal([xv[dv == k] for k in range(len(names))]),
                       "note": "Kruskal–Wallis H test across domains (Spearman ρ is not defined for nominal groups)"}

    table["frequency"] = None
    if freq_of_instance is not None:
        f = _flat("freq_of_instance", freq_of_instance, n).astype(np.float64)
        fv = f[valid]
        b, edges = frequency_bins(fv, n_freq_bins)
        keys = range(len(edges)) if len(edges) else [0]
        means = group_means(xv, b, seed=seeds[1], keys=keys, **kw)
        extra = {k: {"lo": _none(float(edges[k - 1])) if k else 0, "hi": _none(float(edges[k])) if k else 0}
                 for k in keys}
        table["frequency"] = {
            "groups": _rows(means, {k: _freq_label(k, edges) for k in keys}, transform, extra),
            "edges": [float(e) for e in edges],
            "spearman": _spearman_json(fv, xv, n_boot=n_boot, seed=seeds[1], confidence=confidence),
            "variable": "training count of the target token (bin 0: never seen in training)"}

    table["dependency"] = None
    if dependency is not None:
        d = _ints("dependency", dependency, n)
        vd = valid if dependency_mask is None else valid & _flat("dependency_mask", dependency_mask, n).astype(bool)
        dv, xd = d[vd], x[vd]
        _first_bad("dependency", dv, dv < 1, "is not a dependency length >= 1")
        means = group_means(xd, dv, seed=seeds[2], **kw)
        table["dependency"] = {
            "groups": _rows(means, {k: str(k) for k in means}, transform),
            "spearman": _spearman_json(dv, xd, n_boot=n_boot, seed=seeds[2], confidence=confidence),
            "variable": "minimum context length reaching 90% of the full-context probability"}
    return table


# ----------------------------------------------------------------------------- seeds
def seed_agreement(tau_a, tau_b, valid_a, valid_b, *, n_boot: int = 1000, seed: int = 0,
                   confidence: float = 0.95) -> dict:
    """Per-token agreement of τ between two runs on the same token set (on the fit axis, e.g. decades).

    Over the instances valid in both: ``{"n", "n_only_a", "n_only_b", "spearman": spearman_ci(τa, τb),
    "median_abs_diff": median |τa − τb|, "median_diff", "diff_q25", "diff_q75", "diff_iqr"}``
    (diff = τa − τb; the spearman entry has None for NaN, like :func:`align`)."""
    a = _flat("tau_a", tau_a).astype(np.float64)
    n = a.shape[0]
    b = _flat("tau_b", tau_b, n).astype(np.float64)
    va, vb = _flat("valid_a", valid_a, n), _flat("valid_b", valid_b, n)
    for name, v in (("valid_a", va), ("valid_b", vb)):
        if v.dtype != bool:
            raise TokenscaleError(f"{name} must be boolean, got dtype {v.dtype}")
    both = va & vb
    if not both.any():
        raise TokenscaleError(f"no token instance is valid in both runs "
                              f"(valid: {int(va.sum())} in a, {int(vb.sum())} in b)")
    _first_bad("tau_a", a, both & ~np.isfinite(a), "is not finite at a valid instance")
    _first_bad("tau_b", b, both & ~np.isfinite(b), "is not finite at a valid instance")
    diff = a[both] - b[both]
    q25, med, q75 = np.quantile(diff, [0.25, 0.5, 0.75])
    return {"n": int(both.sum()), "n_only_a": int((va & ~vb).sum()), "n_only_b": int((vb & ~va).sum()),
            "spearman": _spearman_json(a[both], b[both], n_boot=n_boot, seed=seed, confidence=confidence),
            "median_abs_diff": float(np.median(np.abs(diff))), "median_diff": float(med),
            "diff_q25": float(q25), "diff_q75": float(q75), "diff_iqr": float(q75 - q25)}
