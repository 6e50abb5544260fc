"""Per-token agreement of learning time τ between runs that differ only by seed (paper Fig. 2, hypothesis A).

numpy and scipy only. Token instances and τ as in :mod:`tokenscale.analysis.instances`; the rank correlation and
its CI from :mod:`tokenscale.analysis.bootstrap`.
"""

from __future__ import annotations

import numpy as np

from tokenscale import TokenscaleError
from tokenscale.analysis.bootstrap import spearman_json
from tokenscale.analysis.instances import first_bad, flat_array


def seed_agreement(tau_a, tau_b, valid_a, valid_b, *, n_boot: int = 1000, seed: int = 0,
                   confidence: float = 0.95) -> dict:
    """Per-token agreement of τ between two runs on the same token set (on the fit axis, e.g. decades).

    Over the instances valid in both: ``{"n", "n_only_a", "n_only_b", "spearman": spearman_ci(τa, τb),
    "median_abs_diff": median |τa − τb|, "median_diff", "diff_q25", "diff_q75", "diff_iqr"}``
    (diff = τa − τb; the spearman entry has None for NaN, like :func:`align`)."""
    a = flat_array("tau_a", tau_a).astype(np.float64)
    n = a.shape[0]
    b = flat_array("tau_b", tau_b, n).astype(np.float64)
    va, vb = flat_array("valid_a", valid_a, n), flat_array("valid_b", valid_b, n)
    for name, v in (("valid_a", va), ("valid_b", vb)):
        if v.dtype != bool:
            raise TokenscaleError(f"{name} must be boolean, got dtype {v.dtype}")
    both = va & vb
    if not both.any():
        raise TokenscaleError(f"no token instance is valid in both runs "
                              f"(valid: {int(va.sum())} in a, {int(vb.sum())} in b)")
    first_bad("tau_a", a, both & ~np.isfinite(a), "is not finite at a valid instance")
    first_bad("tau_b", b, both & ~np.isfinite(b), "is not finite at a valid instance")
    diff = a[both] - b[both]
    q25, med, q75 = np.quantile(diff, [0.25, 0.5, 0.75])
    return {"n": int(both.sum()), "n_only_a": int((va & ~vb).sum()), "n_only_b": int((vb & ~va).sum()),
            "spearman": spearman_json(a[both], b[both], n_boot=n_boot, seed=seed, confidence=confidence),
            "median_abs_diff": float(np.median(np.abs(diff))), "median_diff": float(med),
            "diff_q25": float(q25), "diff_q75": float(q75), "diff_iqr": float(q75 - q25)}
