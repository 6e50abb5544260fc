"""The sigmoid-fits file format: the :class:`SigmoidFit` container and its HDF5 layout (torch-free).

What one fit of eq. (1) per token trajectory produces (docs/fit.md), independent of how it was computed
(:mod:`tokenscale.fit`): per-row parameters, status and category codes, the axis, the category thresholds,
and the HDF5 file that holds them.  This module needs numpy and h5py only (h5py is imported when a file is
read or written), so analysis code can read fits without importing torch.

HDF5 layout (``format = "tokenscale-sigmoid-fits-v1"``), written atomically (:func:`tokenscale.atomic.atomic_output`)::

    tau tau_orig lam delta post pre sse r2   (N,) float64     per-row fields of SigmoidFit
    status category                          (N,) int8        codes into STATUS_NAMES / CATEGORY_NAMES
    n_iter                                   (N,) int32
    token_index                              (N,) int64       optional: global validation-token index
    axis axis_orig                           (K,) float64     transformed / original fit axis
    attrs: format, transform, status_names, category_names (JSON), category_rule (JSON thresholds),
           fit_options (JSON), tokenscale_version, user.<key> (user attributes; non-scalars as JSON),
           fits_sha256 (checksum of the datasets; see docs/formats.md#sigmoid-fits)

:func:`load_fits` verifies ``fits_sha256`` (when stored) and that every ``tau`` of a row not flagged
``invalid_input`` lies in the fit's bounds ``[axis[0] - tau_margin, axis[-1] + tau_margin]``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tokenscale import TokenscaleError, __version__
from tokenscale.atomic import atomic_output

__all__ = [
    "STATUS_NAMES",
    "CATEGORY_NAMES",
    "FITS_FORMAT",
    "ARRAY_FIELDS",
    "CategoryRule",
    "SigmoidFit",
    "logistic",
    "concat_fits",
    "result_arrays",
    "write_fits_file",
    "save_fits",
    "load_fits",
]

STATUS_NAMES = ("converged", "max_iter", "invalid_input")  # codes 0, 1, 2
CATEGORY_NAMES = ("learned", "early", "late", "unlearned")  # codes 0..3, the paper's Fig. 2 groups
FITS_FORMAT = "tokenscale-sigmoid-fits-v1"
FITS_SHA256 = "fits_sha256"  # sha256 of the datasets in _checksum_names order, each little-endian in its file dtype
_FITS_REMEDY = "delete it and rerun its fit job (fit_shard or fit_table)"

# the per-row (N,) fields of SigmoidFit, in file order, and their dtypes in the file (float64 unless listed)
ARRAY_FIELDS = (
    "tau", "tau_orig", "lam", "delta", "post", "pre", "sse", "r2", "status", "category", "n_iter",
)
DSET_DTYPES = {"status": np.int8, "category": np.int8, "n_iter": np.int32}


def _one_line(x: Any) -> str:
    return " ".join(str(x).split())


def logistic(z: np.ndarray) -> np.ndarray:
    """``1 / (1 + exp(-z))`` without overflow (float64 numpy)."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


# ----------------------------------------------------------------------------- categories
@dataclass(frozen=True)
class CategoryRule:
    """Thresholds that assign each fit to one of :data:`CATEGORY_NAMES` (the paper's Fig. 2 groups).

    Rules, applied in this order (``x_min``/``x_max``: first/last transformed axis point;
    ``g(x) = sigmoid(lam*(tau - x))`` is the fraction of the event's ``delta`` still ahead at ``x``):

    1. ``unlearned`` if the fit is invalid (status ``invalid_input``), ``|delta| < min_delta`` (nats),
       or ``r2 < min_r2`` (the sigmoid explains too little of the row's variance);
    2. ``unlearned`` if ``delta < 0`` (ascending / forgetting-like) and ``ascending == "unlearned"``
       (with ``ascending == "by_tau"`` such rows are categorised by ``tau`` like descending rows);
    3. ``learned`` if at most ``learned_remaining`` of the event remains at the first axis point,
       ``g(x_min) <= learned_remaining`` (the default 0.5 is exactly ``tau <= x_min``; e.g. 0.1 asks
       for the descent to be 90 % over at the first point);
    4. ``unlearned`` if less than ``min_progress`` of the event has happened by the last axis point,
       ``1 - g(x_max) < min_progress`` (the default 0.5 is exactly ``tau > x_max``);
    5. ``early`` if ``tau < x_min + early_frac * (x_max - x_min)``, else ``late``.
    """

    min_delta: float = 0.2
    min_r2: float = 0.2
    learned_remaining: float = 0.5
    min_progress: float = 0.5
    early_frac: float = 0.5
    ascending: str = "unlearned"

    def __post_init__(self) -> None:
        if self.ascending not in ("unlearned", "by_tau"):
            raise TokenscaleError(
                f"CategoryRule.ascending must be 'unlearned' or 'by_tau', got {self.ascending!r}"
            )
        for name in ("learned_remaining", "min_progress", "early_frac"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise TokenscaleError(f"CategoryRule.{name} must be in [0, 1], got {v}")

    def assign(
        self,
        tau: np.ndarray,
        lam: np.ndarray,
        delta: np.ndarray,
        r2: np.ndarray,
        status: np.ndarray,
        x_min: float,
        x_max: float,
    ) -> np.ndarray:
        """Category codes (N,) int8 for fits given as (N,) arrays on the transformed axis (numpy arrays, or
        torch tensors on any device: then a tensor on that device is returned).

        Computed with torch (imported here, on call) so that the fit engine and a later re-assignment
        give bitwise the same codes."""
        import torch

        as_numpy = not isinstance(tau, torch.Tensor)
        t = [torch.as_tensor(np.asarray(v)) if as_numpy else v for v in (tau, lam, delta, r2, status)]
        tau_t, lam_t, delta_t, r2_t, status_t = t
        g_first = torch.sigmoid(lam_t * (tau_t - x_min))
        g_last = torch.sigmoid(lam_t * (tau_t - x_max))
        # int8 from the start: torch.where(mask, python int, int8 tensor) stays int8
        cat = torch.where(tau_t < x_min + self.early_frac * (x_max - x_min), 1, 2).to(torch.int8)
        cat = torch.where(1.0 - g_last < self.min_progress, 3, cat)
        cat = torch.where(g_first <= self.learned_remaining, 0, cat)
        if self.ascending == "unlearned":
            cat = torch.where(delta_t < 0, 3, cat)
        bad = (status_t == 2) | ~(delta_t.abs() >= self.min_delta) | ~(r2_t >= self.min_r2)
        cat = torch.where(bad, 3, cat)
        assert cat.dtype == torch.int8
        return cat.numpy() if as_numpy else cat


# ----------------------------------------------------------------------------- result
@dataclass
class SigmoidFit:
    """Per-row sigmoid fits; every per-row field is an (N,) array.

    ``tau``, ``lam`` are on the transformed axis (``lam`` per transformed unit); ``tau_orig`` is the
    learning time in original axis units.  ``status``/``category`` are int8 codes into
    :data:`STATUS_NAMES`/:data:`CATEGORY_NAMES`.  ``axis`` (K,) is the transformed axis used for the
    fit and ``axis_orig`` (K,) the original one.  Invalid rows have NaN parameters.  ``token_index``
    (N,) int64 is the global validation-token index of each row when known (set by :func:`load_fits`
    for files that store it, e.g. those written by the ``fit`` command), else ``None``.
    """

    tau: np.ndarray
    tau_orig: np.ndarray
    lam: np.ndarray
    delta: np.ndarray
    post: np.ndarray
    pre: np.ndarray
    sse: np.ndarray
    r2: np.ndarray
    status: np.ndarray
    category: np.ndarray
    axis: np.ndarray
    axis_orig: np.ndarray
    transform: str
    n_iter: np.ndarray
    rule: CategoryRule = field(default_factory=CategoryRule)
    attrs: dict = field(default_factory=dict)
    token_index: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.tau.shape[0])

    def _x(self, x) -> np.ndarray:
        x = self.axis if x is None else np.asarray(x, dtype=np.float64)
        if x.ndim != 1:
            raise TokenscaleError(f"x must be a 1-D transformed axis, got shape {x.shape}")
        return x

    def predict(self, x=None) -> np.ndarray:
        """Fitted losses (N, K') float64 at transformed positions ``x`` (K',), default ``self.axis``."""
        x = self._x(x)
        with np.errstate(invalid="ignore", over="ignore"):
            g = logistic(self.lam[:, None] * (self.tau[:, None] - x[None, :]))
            return self.post[:, None] + self.delta[:, None] * g

    def pulse(self, x=None) -> np.ndarray:
        """Learning pulse (N, K') = ``-dloss/dx = delta*lam/4 * sech^2(lam*(x - tau)/2)`` (eq. (2))."""
        x = self._x(x)
        with np.errstate(invalid="ignore", over="ignore"):
            h = 0.5 * self.lam[:, None] * (x[None, :] - self.tau[:, None])
            sech2 = 1.0 / np.cosh(np.clip(h, -350.0, 350.0)) ** 2
            return 0.25 * (self.delta * self.lam)[:, None] * sech2

    def status_counts(self) -> dict[str, int]:
        """Number of rows per status name."""
        return {n: int(np.count_nonzero(self.status == i)) for i, n in enumerate(STATUS_NAMES)}

    def category_counts(self) -> dict[str, int]:
        """Number of rows per category name."""
        return {n: int(np.count_nonzero(self.category == i)) for i, n in enumerate(CATEGORY_NAMES)}


def result_arrays(n: int) -> dict[str, np.ndarray]:
    """Uninitialised (n,) result arrays, one per field of :class:`SigmoidFit` (the fits-file dtypes)."""
    return {name: np.empty((n,), dtype=DSET_DTYPES.get(name, np.float64)) for name in ARRAY_FIELDS}


def concat_fits(fits: Sequence[SigmoidFit]) -> SigmoidFit:
    """Concatenate fits of row chunks that share axis, transform and rule (e.g. a streamed pass).

    ``token_index`` is concatenated when every part has one, and is ``None`` when none has.
    """
    fits = list(fits)
    if not fits:
        raise TokenscaleError("concat_fits needs at least one SigmoidFit")
    f0 = fits[0]
    for i, f in enumerate(fits[1:], 1):
        if f.transform != f0.transform or not np.array_equal(f.axis_orig, f0.axis_orig):
            raise TokenscaleError(f"concat_fits: fit {i} has a different axis or transform than fit 0")
        if f.rule != f0.rule:
            raise TokenscaleError(f"concat_fits: fit {i} has a different category rule than fit 0")
        if f.attrs.get("tau_margin") != f0.attrs.get("tau_margin"):
            raise TokenscaleError(f"concat_fits: fit {i} has tau_margin {f.attrs.get('tau_margin')} but fit 0 has "
                                  f"{f0.attrs.get('tau_margin')}")
    has_ti = [f.token_index is not None for f in fits]
    if any(has_ti) and not all(has_ti):
        raise TokenscaleError(f"concat_fits: fit {has_ti.index(not has_ti[0])} "
                              f"{'lacks' if has_ti[0] else 'has'} token_index but fit 0 does not")
    cols = {name: np.concatenate([getattr(f, name) for f in fits]) for name in ARRAY_FIELDS}
    ti = np.concatenate([np.asarray(f.token_index, dtype=np.int64) for f in fits]) if all(has_ti) else None
    return SigmoidFit(axis=f0.axis, axis_orig=f0.axis_orig, transform=f0.transform, rule=f0.rule,
                      attrs=dict(f0.attrs), token_index=ti, **cols)


# ----------------------------------------------------------------------------- integrity
def _fits_check(path):
    """The checksum of a fits file's datasets (:class:`tokenscale.io.LossCheck` over raw arrays)."""
    from tokenscale.io._h5 import LossCheck

    return LossCheck(path, attr=FITS_SHA256, what="fit arrays", hint=_FITS_REMEDY)


def _checksum_names(with_token_index: bool) -> tuple[str, ...]:
    return ARRAY_FIELDS + (("token_index",) if with_token_index else ()) + ("axis", "axis_orig")


def _store_checksum(f, path, block: int = 1 << 20) -> None:
    """Checksum the datasets as written (read back in row blocks: memory stays bounded) into ``fits_sha256``."""
    check = _fits_check(path)
    for name in _checksum_names("token_index" in f):
        ds = f[name]
        for r0 in range(0, ds.shape[0], block):
            check.feed(ds[r0:r0 + block])
    f.attrs[FITS_SHA256] = check.hexdigest()


def _verify_checksum(p: Path, data: dict, stored) -> None:
    check = _fits_check(p)
    for name in _checksum_names(data.get("token_index") is not None):
        check.feed(data[name])
    check.verify(stored)  # files written before the checksum have none: not checked


def _tau_bounds(p: Path, axis: np.ndarray, fit_options: dict) -> tuple[float, float] | None:
    """The fit's bounds of ``tau``, ``[axis[0] - tau_margin, axis[-1] + tau_margin]``; None if it records no margin."""
    margin = fit_options.get("tau_margin")
    if margin is None or axis.size == 0:
        return None
    try:
        m = float(margin)
    except (TypeError, ValueError):
        raise TokenscaleError(f"{p}: fit_options tau_margin {margin!r} is not a number; {_FITS_REMEDY}") from None
    return float(axis[0]) - m, float(axis[-1]) + m


def _check_tau(p: Path, data: dict, token_index, bounds: tuple[float, float] | None) -> None:
    """Every ``tau`` of a row not flagged ``invalid_input`` lies within ``bounds`` (plus float round-off)."""
    if bounds is None:
        return
    lo, hi = bounds
    slack = 1e-6 * (hi - lo)  # the engines clamp tau in float32 on the standardised axis
    tau, status = data["tau"], data["status"]
    with np.errstate(invalid="ignore"):
        inside = (tau >= lo - slack) & (tau <= hi + slack)
    bad = np.flatnonzero((status != STATUS_NAMES.index("invalid_input")) & ~inside)
    if bad.size:
        i = int(bad[0])
        code = int(status[i])
        name = STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else f"code {code}"
        token = f" (token {int(token_index[i])})" if token_index is not None else ""
        raise TokenscaleError(f"{p}: {bad.size} fitted rows have tau outside the fit's bounds [{lo:g}, {hi:g}], the "
                              f"first row {i}{token} tau = {float(tau[i])!r} ({name}); the file is altered or "
                              f"corrupt: {_FITS_REMEDY}")


# ----------------------------------------------------------------------------- HDF5 I/O
def _attr_json(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool, np.integer, np.floating)):
        return v
    return json.dumps(v, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def write_fits_file(path, n: int, meta: SigmoidFit, user_attrs: dict | None, *, with_token_index: bool,
                    fill: Callable[[Any], None]) -> None:
    """Create the fits file at ``path`` atomically: the (n,) datasets (chunked by rows), the axis and the
    attributes of ``meta`` (its per-row fields are not read), then ``fill(h5file)`` writes the rows - all
    at once (:func:`save_fits`) or block by block (a streamed fit)."""
    import h5py

    chunks = (min(max(n, 1), 1 << 16),) if n else None
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        for name in ARRAY_FIELDS:
            f.create_dataset(name, shape=(n,), dtype=DSET_DTYPES.get(name, np.float64), chunks=chunks)
        if with_token_index:
            f.create_dataset("token_index", shape=(n,), dtype=np.int64, chunks=chunks)
        f.create_dataset("axis", data=np.asarray(meta.axis, dtype=np.float64))
        f.create_dataset("axis_orig", data=np.asarray(meta.axis_orig, dtype=np.float64))
        f.attrs["format"] = FITS_FORMAT
        f.attrs["transform"] = meta.transform
        f.attrs["status_names"] = json.dumps(STATUS_NAMES)
        f.attrs["category_names"] = json.dumps(CATEGORY_NAMES)
        f.attrs["category_rule"] = json.dumps(asdict(meta.rule))
        f.attrs["fit_options"] = json.dumps({k: v for k, v in meta.attrs.items() if k != "user"}, default=str)
        f.attrs["tokenscale_version"] = __version__
        for key, v in (user_attrs or {}).items():
            f.attrs[f"user.{key}"] = _attr_json(v)
        fill(f)
        _store_checksum(f, path)
        f.flush()


def save_fits(path, fit: SigmoidFit, attrs: dict | None = None, token_index=None) -> None:
    """Write ``fit`` to HDF5 at ``path`` atomically (``path + ".tmp"`` then ``os.replace``).

    One dataset per field (``tau``, ``tau_orig``, ``lam``, ``delta``, ``post``, ``pre``, ``sse``, ``r2``,
    ``status``, ``category``, ``n_iter``: (N,); ``axis``, ``axis_orig``: (K,)), optionally ``token_index``
    (N,) int64 - the global validation-token index of each row, from the ``token_index`` argument or else
    ``fit.token_index`` -, plus file attributes: ``format``, ``transform``, ``status_names``,
    ``category_names``, ``category_rule`` (JSON thresholds), ``fit_options`` (JSON),
    ``tokenscale_version``, and ``attrs`` (user attributes as ``user.<key>``; non-scalar values are
    stored as JSON strings).
    """
    n = len(fit)
    ti = fit.token_index if token_index is None else token_index
    if ti is not None:
        ti = np.asarray(ti)
        if ti.shape != (n,):
            raise TokenscaleError(f"token_index has shape {ti.shape}, expected ({n},) like the fit")
        if ti.dtype.kind not in "iu":
            raise TokenscaleError(f"token_index must be integers, got dtype {ti.dtype}")
    for name in ARRAY_FIELDS:
        if np.shape(getattr(fit, name)) != (n,):
            raise TokenscaleError(f"fit.{name} has shape {np.shape(getattr(fit, name))}, expected ({n},)")

    def fill(f):
        for name in ARRAY_FIELDS:
            f[name][...] = np.asarray(getattr(fit, name))
        if ti is not None:
            f["token_index"][...] = ti.astype(np.int64)

    write_fits_file(path, n, fit, attrs, with_token_index=ti is not None, fill=fill)


def load_fits(path) -> SigmoidFit:
    """Read a file written by :func:`save_fits` or :func:`tokenscale.fit.fit_file`.

    User attributes come back in ``fit.attrs["user"]``; the ``token_index`` dataset, when present, as
    ``fit.token_index`` (else ``None``).  A missing, truncated or otherwise corrupt file, arrays that do not
    match the stored ``fits_sha256`` (files without one, from before it, are not checked) and a ``tau`` outside
    the fit's bounds on a row not flagged ``invalid_input`` raise :class:`tokenscale.TokenscaleError` with a
    one-line message naming the file.
    """
    import h5py

    p = Path(path)
    if not p.is_file():
        raise TokenscaleError(f"{p}: sigmoid-fits file not found")
    try:
        with h5py.File(p, "r") as f:
            if f.attrs.get("format") != FITS_FORMAT:
                raise TokenscaleError(f"{p}: not a sigmoid-fits file (format={f.attrs.get('format')!r})")
            data = {name: f[name][()] for name in ARRAY_FIELDS + ("axis", "axis_orig")}
            token_index = f["token_index"][()] if "token_index" in f else None
            transform = str(f.attrs["transform"])
            rule = CategoryRule(**json.loads(f.attrs["category_rule"]))
            opts = json.loads(f.attrs.get("fit_options", "{}"))
            stored = f.attrs.get(FITS_SHA256)
            user = {}
            for key, v in f.attrs.items():
                if key.startswith("user."):
                    user[key[5:]] = v.item() if isinstance(v, np.generic) else v
    except TokenscaleError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
        raise TokenscaleError(_one_line(f"{p}: cannot read sigmoid-fits file (truncated or corrupt?): {e}")) from None
    n = data["tau"].shape[0]
    k = data["axis"].shape[0]
    for name in ARRAY_FIELDS:
        if data[name].shape != (n,):
            raise TokenscaleError(f"{p}: dataset {name!r} has shape {data[name].shape}, expected ({n},)")
    if data["axis_orig"].shape != (k,):
        raise TokenscaleError(f"{p}: dataset 'axis_orig' has shape {data['axis_orig'].shape}, expected ({k},)")
    if token_index is not None and token_index.shape != (n,):
        raise TokenscaleError(f"{p}: dataset 'token_index' has shape {token_index.shape}, expected ({n},)")
    _verify_checksum(p, {**data, "token_index": token_index}, stored)
    _check_tau(p, data, token_index, _tau_bounds(p, data["axis"], opts))
    if user:
        opts["user"] = user
    return SigmoidFit(transform=transform, rule=rule, attrs=opts, token_index=token_index, **data)
