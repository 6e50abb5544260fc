"""The decomposition's result: :class:`SpectrumResult`, its JSON summary, and the analysis file.

Analysis file (HDF5, ``format = "tokenscale-analysis-v1"``, written atomically), one per series; the figures
rule reads it, so a figure change never reruns the analysis::

    <array field>              every ndarray field of SpectrumResult (axis_x, loss_emp, template, ...)
    svd/<name>                 the SVD's arrays (singular values, vectors, u ranges, bins used)
    sample_params/<name>  scatter/<name>  category_examples/<name>     the token samples
    attrs: format, tokenscale_version, transform, transient_start_x, summary (JSON of summary()),
           and JSON of the dict fields (counts, category_counts, powerlaw, tail, selections, svd_scalars,
           metrics, settings)
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np

from tokenscale import TokenscaleError, __version__, atomic
from tokenscale.atomic import atomic_output

from tokenscale.analysis.numerics import jsonable, to_orig

__all__ = ["SpectrumResult", "ANALYSIS_FORMAT", "write_summary", "write_analysis", "read_analysis"]

ANALYSIS_FORMAT = "tokenscale-analysis-v1"
_DICTS = ("counts", "category_counts", "powerlaw", "tail", "selections", "metrics", "settings", "notes")
_GROUPS = ("sample_params", "scatter", "category_examples")


@dataclass
class SpectrumResult:
    """All arrays of the decomposition; ``summary()`` gives the JSON-able numbers."""

    transform: str
    axis_x: np.ndarray  # (K,)
    axis_orig: np.ndarray  # (K,)
    post_mask: np.ndarray  # (K,) bool, post-transient points
    transient_start_x: float
    counts: dict  # token bookkeeping
    category_counts: dict  # all rows / valid rows per category name
    # aggregate curves on the axis points
    loss_emp: np.ndarray
    loss_sig: np.ndarray
    deriv_emp: np.ndarray  # −dL/dx
    deriv_sig: np.ndarray
    deriv_rec: np.ndarray
    deriv_pl: np.ndarray
    loss_pl: np.ndarray
    # fine uniform grid across the window
    grid_x: np.ndarray  # (F,)
    deriv_sig_grid: np.ndarray
    deriv_rec_grid: np.ndarray
    # power law
    powerlaw: dict
    # spectrum (n_bins equal-width x bins over the window)
    bin_edges_x: np.ndarray  # (B+1,)
    bin_count: np.ndarray  # (B,)
    bin_mean_tau_x: np.ndarray  # (B,) NaN for empty bins
    density_x: np.ndarray  # fraction of valid tokens per unit x
    density_orig: np.ndarray  # fraction of valid tokens per original unit
    tail: dict
    # pulses
    pulse_emp: np.ndarray  # (B, K) per-bin mean empirical pulse at the axis points
    pulse_fit_grid: np.ndarray  # (B, F) per-bin mean fitted pulse on grid_x
    u_grid: np.ndarray  # (U,) relative axis u = x − τ
    aligned_emp: np.ndarray  # (B, U) bin-aligned empirical pulses (NaN outside the window)
    aligned_fit: np.ndarray  # (B, U) token-aligned fitted pulses per bin
    template: np.ndarray  # (U,) g(u), Eq. 4 from fitted pulses of in-window tokens
    template_emp: np.ndarray  # (U,) Eq. 4 from empirical per-token derivatives (NaN off-range)
    deriv_rec_emp: np.ndarray  # (K,) p∗g with the empirical template
    svd: dict
    # metrics and settings
    metrics: dict
    settings: dict
    selections: dict = field(default_factory=dict)  # name -> tail numbers of each configured selection
    # token-level views (small samples)
    notes: list = field(default_factory=list)  # why some numbers are null (e.g. too few post-transient points)
    sample_idx: np.ndarray = field(default_factory=lambda: np.zeros(0, int))
    sample_losses: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    sample_params: dict = field(default_factory=dict)  # tau, lam, delta, post, category
    category_examples: dict = field(default_factory=dict)  # name -> indices into sample_*
    scatter: dict = field(default_factory=dict)  # tau, tau_orig, lam, delta subsample

    def summary(self) -> dict:
        """JSON-serialisable numbers (NaN/inf become None)."""
        pl, tl = self.powerlaw, self.tail
        out = {
            "transform": self.transform,
            "n_axis_points": int(self.axis_x.size),
            "n_post_transient_points": int(self.post_mask.sum()),
            "transient_start": float(to_orig(self.transient_start_x, self.transform)),
            "transient_start_x": self.transient_start_x,
            "tokens": dict(self.counts),
            "category_counts": dict(self.category_counts),
            "power_law": {k: pl[k] for k in ("k", "alpha", "E", "r2", "alpha_ci", "E_ci",
                                              "k_ci", "n_points", "n_boot_ok", "bootstrap")},
            "tail": {k: tl.get(k) for k in ("beta", "beta_ci", "xmin", "xmax", "ks", "n_tail",
                                            "n_boot_ok", "note", "method", "comparison")},
            "alpha_fit": pl["alpha"],
            "alpha_fit_ci": pl["alpha_ci"],
            "alpha_predicted": tl["beta"] - 1.0,
            "alpha_predicted_ci": [c - 1.0 for c in tl["beta_ci"]],
            "svd": {k: v for k, v in self.svd.items() if not isinstance(v, np.ndarray)},
            "metrics": dict(self.metrics),
            "settings": dict(self.settings),
        }
        if self.notes:
            out["notes"] = list(self.notes)
        if self.selections:
            out["selections"] = {n: {k: t.get(k) for k in ("description", "beta", "beta_ci", "xmin", "n_tail",
                                                             "n_selected", "n_selected_in_window", "note",
                                                             "comparison")}
                                 for n, t in self.selections.items()}
        return jsonable(out)


def write_summary(result: SpectrumResult, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Atomically write ``result.summary()`` merged with ``extra`` (top level) as JSON.

    Keys of ``extra`` must not collide with summary keys."""
    data = result.summary()
    for k, v in (extra or {}).items():
        if k in data:
            raise TokenscaleError(f"extra key {k!r} collides with a summary key")
        data[k] = jsonable(v)
    atomic.write_text(path, json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n")


def _dumps(d) -> str:
    return json.dumps(jsonable(d), sort_keys=True)


def write_analysis(result: SpectrumResult, path: str | os.PathLike, extra: dict | None = None) -> None:
    """Write the analysis file (module docstring) atomically."""
    import h5py

    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        for fld in dataclasses.fields(result):
            v = getattr(result, fld.name)
            if isinstance(v, np.ndarray):
                f.create_dataset(fld.name, data=v)
        for grp in _GROUPS:
            g = f.create_group(grp)
            for k, v in getattr(result, grp).items():
                g.create_dataset(k, data=np.asarray(v))
        sv = f.create_group("svd")
        for k, v in result.svd.items():
            if isinstance(v, np.ndarray):
                sv.create_dataset(k, data=v)
        f.attrs.update(format=ANALYSIS_FORMAT, tokenscale_version=__version__, transform=result.transform,
                       transient_start_x=float(result.transient_start_x), summary=_dumps(result.summary()),
                       svd_scalars=_dumps({k: v for k, v in result.svd.items() if not isinstance(v, np.ndarray)}),
                       extra=_dumps(extra or {}), **{k: _dumps(getattr(result, k)) for k in _DICTS})


def _nan(d):
    """JSON null back to NaN inside the dict fields (the writer maps NaN to null)."""
    if isinstance(d, dict):
        return {k: _nan(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_nan(v) for v in d]
    return float("nan") if d is None else d


def read_analysis(path: str | os.PathLike) -> SpectrumResult:
    """Read an analysis file back into a :class:`SpectrumResult` (what the figures rule draws)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise TokenscaleError(f"{path}: cannot read the analysis file ({e})") from None
    with f:
        if f.attrs.get("format") != ANALYSIS_FORMAT:
            raise TokenscaleError(f"{path}: not a {ANALYSIS_FORMAT} file (format {f.attrs.get('format')!r})")
        kw = {fld.name: f[fld.name][()] for fld in dataclasses.fields(SpectrumResult) if fld.name in f
              and isinstance(f[fld.name], h5py.Dataset)}
        for grp in _GROUPS:
            kw[grp] = {k: f[grp][k][()] for k in f[grp]}
        kw["svd"] = {**_nan(json.loads(f.attrs["svd_scalars"])), **{k: f["svd"][k][()] for k in f["svd"]}}
        optional = {"notes"}  # written since 80155c2; an earlier file has none
        kw.update({k: _nan(json.loads(f.attrs[k])) for k in _DICTS if k in f.attrs or k not in optional})
        kw.update(transform=str(f.attrs["transform"]), transient_start_x=float(f.attrs["transient_start_x"]))
    return SpectrumResult(**kw)
