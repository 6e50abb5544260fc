"""What learning time aligns with: mean τ by domain, training frequency and dependency length (paper App. A.2,
Fig. 7).

numpy and scipy only (never torch). Token instances, τ and the validity of an instance as in
:mod:`tokenscale.analysis.instances`; means and their CIs are computed on the fit axis ``x``; the ``*_orig``
values are the same numbers mapped back to original units (``10**x``), i.e. a *geometric* mean of τ for
``log10``. Definitions:

* **training frequency** of an instance: the number of occurrences of its *target* token (``token_id``) in the
  training token stream (:func:`tokenscale.data.tokensets.token_frequencies`). Frequency bins
  (:func:`frequency_bins`) are log-spaced over the positive frequencies; instances whose target never occurs in
  training get their own bin 0.
* **dependency length** of an instance: the minimum context length reaching 90 % of the full-context
  probability (values 1, 2, 4, ..., seq_len; :mod:`tokenscale.alignment.dependency`). One group per value.
* **mean CI** and **rank correlation** (Spearman ρ between τ and the raw frequency or dependency length): the
  bootstraps of :mod:`tokenscale.analysis.bootstrap`. Domains are nominal, so the domain panel reports a
  Kruskal–Wallis H test of "τ has the same distribution in every domain" instead of a ρ.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from tokenscale import TokenscaleError
from tokenscale.analysis.bootstrap import group_means, spearman_json
from tokenscale.analysis.instances import check_bootstrap, first_bad, flat_array, int_array, none_if_nan

__all__ = ["instance_frequency", "frequency_bins", "align"]


# ----------------------------------------------------------------------------- frequencies


def instance_frequency(token_id, counts) -> np.ndarray:
    """Training frequency (N,) int64 of every token instance's target: ``counts[token_id]`` flattened row-major."""
    tid = int_array("token_id", token_id)
    counts = int_array("counts", counts)
    v = counts.shape[0]
    first_bad("token_id", tid, (tid < 0) | (tid >= v), f"is outside the vocabulary [0, {v})")
    return counts[tid]


def frequency_bins(freq_of_token, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Log-spaced bins of per-instance training frequency.

    Returns ``(bin_index (N,) int64, edges)``.  Bin 0 holds the instances whose target never occurs in training
    (frequency 0).  Bins ``k = 1 .. len(edges) - 1`` cover ``[edges[k-1], edges[k])`` log-spaced from the
    smallest to the largest positive frequency (the last bin closed).  For integer counts the edges are integers
    (duplicates merged, so there may be fewer than ``n_bins`` bins) and the last edge is ``max + 1``."""
    f = flat_array("frequency", freq_of_token).astype(np.float64)
    if not (isinstance(n_bins, (int, np.integer)) and n_bins >= 1):
        raise TokenscaleError(f"n_bins must be a positive integer, got {n_bins!r}")
    first_bad("frequency", f, ~np.isfinite(f), "is not finite")
    first_bad("frequency", f, f < 0, "is negative")
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


# ----------------------------------------------------------------------------- bootstrap


# ----------------------------------------------------------------------------- the A.2 table


def _rows(means: dict, labels: dict, transform: str, extra: dict | None = None) -> list[dict]:
    back = (lambda v: 10.0 ** v) if transform == "log10" else (lambda v: v)
    rows = []
    for key, m in means.items():
        row = {"code": int(key), "label": labels[key], **(extra or {}).get(key, {}), **m}
        row.update({f"{k}_orig": back(m[k]) for k in ("mean", "ci_low", "ci_high")})
        rows.append({k: none_if_nan(v) for k, v in row.items()})
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
        eps2 = none_if_nan(float((h - k + 1) / (n - k))) if n > k else None  # effect size of H
        out.update(statistic=none_if_nan(float(h)), p_value=none_if_nan(float(p)), epsilon_squared=eps2)
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
    x = flat_array("tau", tau).astype(np.float64)
    n = x.shape[0]
    valid = flat_array("valid_mask", valid_mask, n)
    if valid.dtype != bool:
        raise TokenscaleError(f"valid_mask must be boolean, got dtype {valid.dtype}")
    if transform not in ("log10", "linear"):
        raise TokenscaleError(f"unknown transform {transform!r} (expected 'log10' or 'linear')")
    if not valid.any():
        raise TokenscaleError(f"valid_mask selects no token instance (of {n})")
    first_bad("tau", x, valid & ~np.isfinite(x), "is not finite at a valid instance")
    names = list(domain_names)
    dom = int_array("domain", domain, n)
    first_bad("domain", dom, (dom < 0) | (dom >= len(names)), f"is not a code into domain_names ({len(names)} names)")
    check_bootstrap(n_boot, confidence)
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
        f = flat_array("freq_of_instance", freq_of_instance, n).astype(np.float64)
        fv = f[valid]
        b, edges = frequency_bins(fv, n_freq_bins)
        keys = range(len(edges)) if len(edges) else [0]
        means = group_means(xv, b, seed=seeds[1], keys=keys, **kw)
        extra = {k: {"lo": none_if_nan(float(edges[k - 1])) if k else 0, "hi": none_if_nan(float(edges[k])) if k else 0}
                 for k in keys}
        table["frequency"] = {
            "groups": _rows(means, {k: _freq_label(k, edges) for k in keys}, transform, extra),
            "edges": [float(e) for e in edges],
            "spearman": spearman_json(fv, xv, n_boot=n_boot, seed=seeds[1], confidence=confidence),
            "variable": "training count of the target token (bin 0: never seen in training)"}

    table["dependency"] = None
    if dependency is not None:
        d = int_array("dependency", dependency, n)
        vd = valid if dependency_mask is None else valid & flat_array("dependency_mask", dependency_mask, n).astype(bool)
        dv, xd = d[vd], x[vd]
        first_bad("dependency", dv, dv < 1, "is not a dependency length >= 1")
        means = group_means(xd, dv, seed=seeds[2], **kw)
        table["dependency"] = {
            "groups": _rows(means, {k: str(k) for k in means}, transform),
            "spearman": spearman_json(dv, xd, n_boot=n_boot, seed=seeds[2], confidence=confidence),
            "variable": "minimum context length reaching 90% of the full-context probability"}
    return table


# ----------------------------------------------------------------------------- seeds
