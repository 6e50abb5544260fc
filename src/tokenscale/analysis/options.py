"""Options of the decomposition, and the token selections that define the learning-time spectrum p(τ).

A *selection* decides which valid token fits enter p(τ), the per-bin pulses, the template g and the
reconstruction p∗g, and with what weight they enter p(τ) and its tail fit. The aggregate curves (empirical and
sigmoid-implied mean loss and derivative) always average over every valid token: they are what is explained.

* ``min_delta`` (nats): keep fits with Δ ≥ min_delta (drops ascending rows and flat ones);
* ``min_r2``: keep fits whose sigmoid explains at least this fraction of the row's variance;
* ``weight``: ``count`` (each kept token counts 1) or ``delta`` (each kept token counts Δ_i, normalised to a mean
  of 1 over the kept tokens, so tail counts stay in token units). A weighted selection weights p(τ) and the tail
  fit only; the pulses, template and reconstruction use its kept tokens unweighted.

Pure-noise rows (σ = 0.2 nats on 36 log-spaced checkpoints) fit with median |Δ| ≈ 0.18 and R² ≤ 0.19 for 90 % of
rows, and τ inside the window 87 % of the time: without a selection they add a density ∝ τ⁻¹ to p(τ).

The default, ``quality`` (Δ ≥ 0.2 nats, R² ≥ 0.3), was chosen on planted sets on the demo's axis (36 log-spaced
checkpoints over 3.3 decades; β ∈ {1.5, 1.8, 2.0}; 10 % or 30 % pure-noise rows, σ = 0.2; 20k descending tokens
with Δ ∈ [0.5, 6] nats and noise σ ∈ [0.05, 0.3]; real fits): ``quality`` recovered β within 1.4 % in all 12
sets, ``delta_weighted`` within 5.2 %, ``all`` was 6-65 % low (tests/test_analysis_selection.py keeps one case).

The defaults of the options the config sets (``analysis.*``: bins, bootstrap, seed, transient, the selections and
the main one) are read from the config schema, their one source.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from tokenscale import TokenscaleError
from tokenscale.config import load_schema, schema_default

__all__ = ["AnalysisOptions", "Selection", "DEFAULT_SELECTIONS", "selections_of", "selection_weights", "ANALYSIS_USES", "analysis_slice"]

_SELECTION_SCHEMA = load_schema()["properties"]["analysis"]["properties"]["selections"]["additionalProperties"]
WEIGHTS = tuple(_SELECTION_SCHEMA["properties"]["weight"]["enum"])  # ("count", "delta")


@dataclass(frozen=True)
class Selection:
    """One token selection for p(τ) (see the module docstring)."""

    name: str
    min_delta: float | None = None
    min_r2: float | None = None
    weight: str = _SELECTION_SCHEMA["properties"]["weight"]["default"]  # "count"

    def __post_init__(self) -> None:
        if self.weight not in WEIGHTS:
            raise TokenscaleError(f"selection {self.name!r}: weight must be one of {WEIGHTS}, got {self.weight!r}")
        for k in ("min_delta", "min_r2"):
            v = getattr(self, k)
            if v is not None and not math.isfinite(float(v)):
                raise TokenscaleError(f"selection {self.name!r}: {k} must be a finite number, got {v!r}")

    @classmethod
    def from_dict(cls, name: str, d: dict) -> Selection:
        unknown = set(d) - {"min_delta", "min_r2", "weight"}
        if unknown:
            raise TokenscaleError(f"selection {name!r}: unknown keys {sorted(unknown)}")
        return cls(name=name, **d)

    def describe(self) -> str:
        parts = [f"Δ ≥ {self.min_delta:g}" if self.min_delta is not None else "",
                 f"R² ≥ {self.min_r2:g}" if self.min_r2 is not None else "",
                 "Δ-weighted" if self.weight == "delta" else ""]
        return ", ".join(p for p in parts if p) or "every valid fit"


def selections_of(section: dict) -> dict[str, Selection]:
    """The :class:`Selection` of each entry of a config's ``analysis.selections``, by name, in order."""
    return {n: Selection.from_dict(n, d) for n, d in section.items()}


# all (every valid fit), quality (Δ ≥ 0.2, R² ≥ 0.3: the default, module docstring), delta_weighted (Δ ≥ 0, Δ-weighted)
DEFAULT_SELECTIONS = selections_of(schema_default("analysis.selections"))


@dataclass(frozen=True)
class AnalysisOptions:
    """Every option of :func:`tokenscale.analysis.analyze` (definitions in the package docstring)."""

    n_bins: int = schema_default("analysis.n_bins")
    transient: object = schema_default("analysis.transient")
    smoothing: str = "none"
    savgol_window: int = 5
    savgol_polyorder: int = 2
    n_boot: int = schema_default("analysis.n_boot")
    seed: int = schema_default("analysis.seed")
    grid_points: int = 256
    n_groups: int = 100
    min_bin_count: int = 20
    min_tail: int = 50
    min_tail_span: float = 10.0
    include_max_iter: bool = True
    chunk_elems: int = 1 << 21
    n_samples: int = 120
    n_scatter: int = 20000
    selection: str = schema_default("analysis.selection")
    svd_groups: int | None = schema_default("analysis.svd_groups")
    selections: dict = field(default_factory=lambda: dict(DEFAULT_SELECTIONS))

    def __post_init__(self) -> None:
        if self.n_bins < 2:
            raise TokenscaleError(f"n_bins must be >= 2, got {self.n_bins}")
        if self.grid_points < 16:
            raise TokenscaleError(f"grid_points must be >= 16, got {self.grid_points}")
        if self.selection not in self.selections:
            raise TokenscaleError(f"selection {self.selection!r} is not defined; defined: {sorted(self.selections)}")

    @classmethod
    def from_config(cls, section: dict, **overrides) -> AnalysisOptions:
        """From the config's (validated, defaults-filled) ``analysis`` section."""
        sels = selections_of(section["selections"])
        keys = ("n_bins", "n_boot", "seed", "transient", "selection", "svd_groups")
        return cls(**{k: section[k] for k in keys}, selections=sels, **overrides)

    @property
    def main(self) -> Selection:
        return self.selections[self.selection]

    def settings(self) -> dict:
        skip = {"chunk_elems", "n_samples", "n_scatter", "selections"}
        out = {k: getattr(self, k) for k in self.__dataclass_fields__ if k not in skip}
        out["selections"] = {n: s.describe() for n, s in self.selections.items()}
        return out


def selection_weights(sel: Selection, delta: np.ndarray, r2: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(N,) float64 weight of every row in p(τ): 0 where the row is not kept (see the module docstring)."""
    keep = np.asarray(valid, bool).copy()
    with np.errstate(invalid="ignore"):
        if sel.min_delta is not None:
            keep &= delta >= sel.min_delta
        if sel.min_r2 is not None:
            keep &= r2 >= sel.min_r2
    w = keep.astype(np.float64)
    if sel.weight == "delta" and keep.any():
        w[keep] = delta[keep] / np.mean(delta[keep])
    return w


# What each command reads of the config's ``analysis`` section (its --options): the workflow passes a rule only
# these, so a change to any other option reruns none of its jobs (rule dependency reads dependency_sequences).
# "selection" brings the main selection's definition along; "selections" is every selection.
ANALYSIS_USES = {
    "analyze": ("n_bins", "n_boot", "seed", "transient", "selection", "selections", "svd_groups"),
    "align": ("n_boot", "seed", "selection"),
    "seeds": ("n_boot", "seed", "selection"),
    "forecast": ("n_boot", "seed", "forecast_cut", "forecast_horizon"),
    "synthetic-report": ("transient", "selection"),
    "reshape-scores": ("selection",),  # scores the candidates the reshape arms train on
    "reshape-report": ("n_boot", "seed", "selection"),
}


def analysis_slice(section: dict, command: str) -> str:
    """JSON of what ``tokenscale <command>`` reads of a validated ``analysis`` section (ANALYSIS_USES)."""
    keys = ANALYSIS_USES[command]
    out = {k: section[k] for k in keys}
    if "selection" in keys and "selections" not in keys:
        out["selections"] = {section["selection"]: section["selections"][section["selection"]]}
    return json.dumps(out, sort_keys=True)
