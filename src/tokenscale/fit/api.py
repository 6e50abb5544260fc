"""The fit's public API: :func:`fit_sigmoids`, :func:`iter_fit_sigmoids`, :func:`fit_file` and :func:`grid_init`.

Input handling (shapes, axis, dtype, device, options: one-line :class:`tokenscale.TokenscaleError` for bad
values), the choice of engine (:data:`tokenscale.fit.engines.ENGINES`), blocks of rows converted to the compute
dtype/device and fitted (:func:`tokenscale.fit.chunks.fit_block`), and the assembly of the results into a
:class:`tokenscale.io.fits.SigmoidFit` (derived parameters, ``r2``, categories) - in memory, or streamed
block by block into a fits file.  The math is in :mod:`tokenscale.fit.problem`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tokenscale import TokenscaleError
from tokenscale.fit.chunks import fit_block
from tokenscale.fit.engines import ENGINES, native
from tokenscale.fit.engines.torch_lm import TorchProblem, closed_form, grid_start
from tokenscale.fit.problem import DEFER_AFTER, TRANSFORMS
from tokenscale.io.fits import (
    ARRAY_FIELDS,
    CATEGORY_NAMES,
    STATUS_NAMES,
    CategoryRule,
    SigmoidFit,
    result_arrays,
    write_fits_file,
)

__all__ = ["fit_sigmoids", "iter_fit_sigmoids", "fit_file", "grid_init"]


# ----------------------------------------------------------------------------- axis helpers
def _one_line(x: Any) -> str:
    return " ".join(str(x).split())


def _transform_axis(axis, transform: str, k: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Validate ``axis`` and return (axis_orig, x) as float64 (K,) arrays."""
    if transform not in TRANSFORMS:
        raise TokenscaleError(f"unknown transform {transform!r} (expected one of {TRANSFORMS})")
    if isinstance(axis, torch.Tensor):
        axis = axis.detach().cpu().numpy()
    try:
        a = np.asarray(axis, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise TokenscaleError(_one_line(f"axis is not numeric: {e}")) from None
    if a.ndim != 1:
        raise TokenscaleError(f"axis must be 1-D (K,), got shape {a.shape}")
    if k is not None and a.shape[0] != k:
        raise TokenscaleError(f"axis has {a.shape[0]} points but losses have K={k} columns")
    if a.shape[0] < 4:
        raise TokenscaleError(f"need at least 4 axis points for 4 parameters, got K={a.shape[0]}")
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        raise TokenscaleError(f"axis must be finite, got axis[{bad[0]}]={a[bad[0]]}")
    d = np.diff(a)
    bad = np.flatnonzero(d <= 0)
    if bad.size:
        i = int(bad[0]) + 1
        raise TokenscaleError(
            f"axis must be strictly increasing, got axis[{i}]={float(a[i])!r} <= axis[{i - 1}]={float(a[i - 1])!r}"
        )
    if transform == "log10":
        if a[0] <= 0:
            raise TokenscaleError(f"axis must be positive for transform='log10', got axis[0]={float(a[0])!r}")
        x = np.log10(a)
    else:
        x = a.copy()
    return a, x



# ----------------------------------------------------------------------------- input handling
def _resolve_device_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    try:
        dev = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as e:
        raise TokenscaleError(_one_line(f"bad device {device!r}: {e}")) from None
    if dtype is None:
        dt = torch.float32
    elif isinstance(dtype, torch.dtype):
        dt = dtype
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            raise TokenscaleError(f"dtype must be float32 or float64, got {dtype!r}") from None
        dt = {"float32": torch.float32, "float64": torch.float64}.get(name)
        if dt is None:
            raise TokenscaleError(f"dtype must be float32 or float64, got {dtype!r}")
    if dt not in (torch.float32, torch.float64):
        raise TokenscaleError(f"dtype must be float32 or float64 (no half precision for the fit), got {dt}")
    return dev, dt


def _shape_of(losses) -> tuple[int, ...]:
    shape = getattr(losses, "shape", None)
    if shape is None:
        raise TokenscaleError(f"losses must be an (N, K) array, got {type(losses).__name__}")
    return tuple(int(s) for s in shape)


def _check_numeric(block):
    """``block`` as a torch tensor or numpy array of a real numeric dtype (one line error otherwise)."""
    if isinstance(block, torch.Tensor):
        if block.is_complex() or block.dtype == torch.bool:
            raise TokenscaleError(f"losses must be real numbers, got dtype {block.dtype}")
        return block
    arr = np.asarray(block)
    if arr.dtype.kind not in "fiu":
        raise TokenscaleError(f"losses must be numeric, got dtype {arr.dtype}")
    return arr


def _to_tensor(block, dev, dt) -> torch.Tensor:
    if isinstance(block, torch.Tensor):
        return block.detach().to(device=dev, dtype=dt)
    return torch.from_numpy(np.ascontiguousarray(block)).to(device=dev, dtype=dt)


def _default_chunk(dev: torch.device, k: int) -> int:
    if dev.type == "cpu":
        # ~20 (chunk, K) float32 scratch buffers stay within a few MB of cache
        return max(256, (1 << 18) // max(k, 1))
    # GPU: per-op launch overhead (~10 us of host time per torch op, ~150 ops per LM iteration) must be
    # small next to the kernels, so chunks are large: up to 2**21 rows, within 1/32 of the free memory
    # per (row, K) element of float64 (the workspace holds ~20 planes of (chunk, K) plus temporaries)
    rows = 1 << 21
    try:
        free, _ = torch.cuda.mem_get_info(dev)
        rows = min(rows, int(free) // (32 * 8 * max(k, 1)))
    except Exception:  # noqa: BLE001 - non-CUDA accelerators: keep the cap
        pass
    return max(4096, rows)


_ENGINES = tuple(ENGINES)  # the registry's names, in its order


def _resolve_engine(engine, dev: torch.device) -> str:
    """``"native"`` (the C kernel, CPU), ``"triton"`` (the fused GPU kernel) or ``"torch"`` for ``engine``."""
    if engine not in _ENGINES:
        raise TokenscaleError(f"engine must be one of {_ENGINES}, got {engine!r}")
    if engine == "torch":
        return "torch"
    if engine == "triton" or (engine == "auto" and dev.type == "cuda"):
        from tokenscale.fit.engines import triton_lm

        why = triton_lm.available(dev)
        if why is None:
            return "triton"
        if engine == "triton":
            raise TokenscaleError(f"engine='triton' unavailable: {why}")
        return "torch"
    if dev.type != "cpu":
        if engine == "native":
            raise TokenscaleError(f"engine='native' runs on CPU only, got device {str(dev)!r}")
        return "torch"
    if native.available():
        return "native"
    if engine == "native":
        raise TokenscaleError(f"engine='native' requested but {native.build_error()}")
    if not _ENGINE_WARNED:
        _ENGINE_WARNED.append(True)
        import warnings

        warnings.warn(f"tokenscale.fit: {native.build_error()}; using the (slower) torch engine on CPU",
                      RuntimeWarning, stacklevel=4)
    return "torch"


_ENGINE_WARNED: list = []


# ----------------------------------------------------------------------------- public API
class _Fitter:
    """Validated options + axis constants; fits blocks of rows into numpy result arrays."""

    def __init__(self, k: int, axis, *, transform, device, dtype, chunk_size, max_iter, tol, tau_margin,
                 lam_bounds, categories, delta_max, grid, workers=None, engine="auto", defer_after=DEFER_AFTER,
                 refine=True):
        self.axis_orig, self.x = _transform_axis(axis, transform, k)
        self.transform = transform
        self.dev, self.dt = _resolve_device_dtype(device, dtype)
        if self.dev.type == "cuda" and not torch.cuda.is_available():
            raise TokenscaleError(f"device={str(device)!r} requested but CUDA is not available")
        if chunk_size is None:
            chunk_size = _default_chunk(self.dev, k)
        try:
            chunk_size = int(chunk_size)
            max_iter = int(max_iter)
            tol = float(tol)
        except (TypeError, ValueError) as e:
            raise TokenscaleError(_one_line(f"bad numeric option: {e}")) from None
        if chunk_size < 1:
            raise TokenscaleError(f"chunk_size must be >= 1, got {chunk_size}")
        if max_iter < 0:
            raise TokenscaleError(f"max_iter must be >= 0, got {max_iter}")
        if not (tol > 0 and math.isfinite(tol)):
            raise TokenscaleError(f"tol must be finite and > 0, got {tol}")
        try:
            n_tau, n_lam = (int(v) for v in grid)
        except (TypeError, ValueError):
            raise TokenscaleError(f"grid must be (n_tau, n_lam), got {grid!r}") from None
        if n_tau < 2 or n_lam < 1:
            raise TokenscaleError(f"grid must have n_tau >= 2 and n_lam >= 1, got {grid!r}")
        rule = CategoryRule() if categories is None else categories
        if not isinstance(rule, CategoryRule):
            raise TokenscaleError(f"categories must be a CategoryRule, got {type(rule).__name__}")
        self.rule = rule
        self.P = TorchProblem(self.x, tau_margin, lam_bounds, (n_tau, n_lam), delta_max, self.dev, self.dt)
        if workers is None:
            workers = torch.get_num_threads() if self.dev.type == "cpu" else 1
        workers = _positive_int("workers", workers)
        if self.dev.type != "cpu":
            workers = 1
        engine = _resolve_engine(engine, self.dev)
        box = native.Box(**self.P.kernel_constants(tol=tol, max_iter=max_iter, refine=refine))
        self.opts = {"chunk": chunk_size, "max_iter": max_iter, "tol": tol, "defer_after": defer_after,
                     "refine": bool(refine), "workers": workers, "engine": engine, "box": box}
        self.attrs = {
            "tau_margin": self.P.tau_margin,
            "lam_bounds": list(self.P.lam_bounds),
            "max_iter": max_iter,
            "tol": tol,
            "compute_dtype": str(self.dt).replace("torch.", ""),
            "grid": [n_tau, n_lam],
            "delta_max": self.P.delta_max,
            "engine": engine,
        }
        self.wss: list = []

    def fit_rows(self, block, dest: dict[str, np.ndarray] | None = None, lo: int = 0) -> dict[str, np.ndarray]:
        """Fit an (n, K) block (numpy / torch / array-like already sliced); numpy float64 results.

        With ``dest`` (a dict of (N,) numpy arrays, one per result field) the results are copied straight
        into ``dest[name][lo:lo + n]`` (one device->host copy per field) and views of those slices returned.
        """
        P = self.P
        with torch.no_grad():
            Y = _to_tensor(block, self.dev, self.dt)
            if Y.ndim != 2 or Y.shape[1] != P.k:
                raise TokenscaleError(f"losses block has shape {tuple(Y.shape)}, expected (n, {P.k})")
            if self.opts["engine"] == "native":
                Y = Y.contiguous()
            res = fit_block(Y, P, self.opts, self.wss)
            # derived parameters in float64 on the compute device (no per-row numpy pass on the host)
            status = res["status"]
            invalid = status == 2
            f64 = {name: res[name].double() for name in ("tau", "rho", "sse", "delta", "gbar", "ybar", "sst")}
            tau = P.c + P.h * f64["tau"]
            lam = torch.exp(f64["rho"]) / P.h
            delta = f64["delta"]
            post = f64["ybar"] - delta * f64["gbar"]
            sse = f64["sse"]
            sst = f64["sst"]
            r2 = torch.where(sst > 0, 1.0 - sse / torch.where(sst > 0, sst, 1.0), 0.0)
            nan = torch.tensor(math.nan, dtype=torch.float64, device=tau.device)
            tau, lam, delta, post, sse, r2 = (torch.where(invalid, nan, a) for a in (tau, lam, delta, post, sse, r2))
            n_iter = torch.where(invalid, 0, res["n_iter"]).to(torch.int32)
            category = self.rule.assign(tau, lam, delta, r2, status, P.x_min, P.x_max)
            cols = {"tau": tau, "lam": lam, "delta": delta, "post": post,
                    "pre": post + delta, "sse": sse, "r2": r2, "status": status.to(torch.int8),
                    "category": category, "n_iter": n_iter}
            on_host = Y.device.type == "cpu"
            if not on_host:  # elementwise on the GPU: one thread per row, independent of the blocking
                cols["tau_orig"] = torch.pow(10.0, tau) if self.transform == "log10" else tau
            n = Y.shape[0]
            if dest is None:  # numpy allocates large arrays with huge pages: fewer page faults on first touch
                dest, lo = result_arrays(n), 0
            out = {name: dest[name][lo:lo + n] for name in ARRAY_FIELDS}
            for name, v in cols.items():
                torch.from_numpy(out[name]).copy_(v)
        if on_host:  # numpy's elementwise power does not depend on how the rows were blocked
            with np.errstate(over="ignore", invalid="ignore"):
                if self.transform == "log10":
                    np.power(10.0, out["tau"], out=out["tau_orig"])
                else:
                    out["tau_orig"][...] = out["tau"]
        return out

    def make_fit(self, cols: dict[str, np.ndarray], token_index=None) -> SigmoidFit:
        return SigmoidFit(axis=self.x, axis_orig=self.axis_orig, transform=self.transform, rule=self.rule,
                          attrs=dict(self.attrs), token_index=token_index, **cols)


_FIT_DOC_PARAMS = """
    transform : ``"log10"`` (default) or ``"linear"``: ``x = f(axis)`` on which eq. (1) is fitted.
    device : torch device for the computation (default CPU); e.g. ``"cuda"``.
    dtype : compute dtype, float32 (default) or float64.
    chunk_size : rows per working chunk (default 4096 on CPU - a cache-sized working set -, up to 2**21
        on GPU, bounded by the free GPU memory); memory is O(chunk_size*K) plus the rows of the block being fitted.
    max_iter : Levenberg-Marquardt iterations per row after the grid start.
    tol : a row converges when the predicted SSE decrease of a Gauss-Newton step is <= tol * SSE.
    tau_margin : tau is bounded to ``[x_min - tau_margin, x_max + tau_margin]`` (transformed units);
        default 0.25 * (x_max - x_min).
    lam_bounds : (lo, hi) bounds of lam in 1/transformed units, 0 < lo < hi; default
        ``(1/(x_max - x_min), 10/min(diff(x)))`` - transitions wider than the window are extrapolated at
        most so far, and the sharpest allowed one goes from 1 % to 99 % within one axis spacing.
    categories : :class:`CategoryRule` (default ``CategoryRule()``).
    delta_max : ``|delta| <= delta_max * (max(row) - min(row))``.  Without it a learning time pushed
        outside the window lets ``delta`` run off along an SSE ridge (only the sigmoid's exponential
        tail is observed, and ``delta * exp(-lam*|tau - x|)`` is all that the data fix), giving
        astronomically large, meaningless ``delta``; the bound makes the problem well posed.
    grid : (n_tau, n_lam) size of the start grid (tau uniform over the bounded range, log lam uniform).
    workers : CPU threads (default ``torch.get_num_threads()``); each fits whole chunks with
        single-threaded torch ops (the global torch thread count is set to 1 for the duration of the call
        and restored afterwards).  Ignored on GPU.
    engine : ``"auto"`` (default), ``"native"``, ``"triton"`` or ``"torch"``: which implementation runs
        the Levenberg-Marquardt stage.  ``"native"`` is the per-row C kernel (:mod:`tokenscale.fit.engines.native`, CPU
        only, built with the system C compiler on first use); ``"triton"`` the fused GPU kernel
        (:mod:`tokenscale.fit.engines.triton_lm`, CUDA); ``"torch"`` the batched torch code (CPU or GPU).  ``"auto"``
        takes the native kernel on CPU when it can be built (else the torch engine, with a warning) and
        Triton on CUDA when it is importable (else torch).  All run the same algorithm from the same
        start; results agree to round-off, not bitwise.
"""


def fit_sigmoids(
    losses,
    axis,
    *,
    transform: str = "log10",
    device=None,
    dtype=None,
    chunk_size: int | None = None,
    max_iter: int = 30,
    tol: float = 1e-5,
    tau_margin: float | None = None,
    lam_bounds: tuple[float, float] | None = None,
    categories: CategoryRule | None = None,
    delta_max: float = 10.0,
    grid: tuple[int, int] = (40, 8),
    workers: int | None = None,
    engine: str = "auto",
    block_size: int | None = None,
) -> SigmoidFit:
    """Fit eq. (1) to every row of ``losses`` with one batched algorithm (see the module docstring).

    Parameters
    ----------
    losses : (N, K) float array: numpy, torch (any device), or any object with ``.shape`` and row
        slicing (e.g. an ``h5py.Dataset``: rows are then read ``block_size`` rows at a time).
    axis : (K,) strictly increasing original axis (steps, tokens, FLOPs, ...); positive for log10.
    block_size : rows converted to the compute dtype/device at a time (default 2**18); the results
        (N,) are held in memory - for inputs too large for that use :func:`iter_fit_sigmoids` or
        :func:`fit_file`.
    """ + _FIT_DOC_PARAMS + """
    Returns
    -------
    :class:`SigmoidFit` with (N,) float64 parameters; invalid rows (NaN/inf) have NaN parameters and
    status ``invalid_input``.

    Raises
    ------
    TokenscaleError : bad shapes, non-increasing / non-finite / non-positive (log10) axis, bad options.
    """
    shape = _shape_of(losses)
    if len(shape) != 2:
        raise TokenscaleError(f"losses must be 2-D (N, K), got shape {shape}")
    n, k = shape
    fitter = _Fitter(k, axis, transform=transform, device=device, dtype=dtype, chunk_size=chunk_size,
                     max_iter=max_iter, tol=tol, tau_margin=tau_margin, lam_bounds=lam_bounds,
                     categories=categories, delta_max=delta_max, grid=grid, workers=workers, engine=engine)
    bs = _block_rows(block_size, fitter)
    if n <= bs:
        cols = fitter.fit_rows(_check_numeric(losses[0:n]) if n else _empty_block(k))
    else:
        cols = result_arrays(n)
        for lo in range(0, n, bs):
            fitter.fit_rows(_check_numeric(losses[lo:min(n, lo + bs)]), dest=cols, lo=lo)
    return fitter.make_fit(cols)


def iter_fit_sigmoids(blocks: Iterable, axis, **options) -> Iterator[SigmoidFit]:
    """Streamed fits: yield one :class:`SigmoidFit` per (n_i, K) block of ``blocks`` (any iterable of
    numpy/torch arrays, e.g. a generator reading a file).  The axis constants, start grid and scratch
    buffers are built once; memory is bounded by one block and its results.  ``options`` are those of
    :func:`fit_sigmoids` (except ``block_size``); ``concat_fits`` of the yielded fits equals
    ``fit_sigmoids`` of the concatenated blocks.
    """
    fitter = None
    for i, block in enumerate(blocks):
        shape = _shape_of(block)
        if len(shape) != 2:
            raise TokenscaleError(f"block {i} must be 2-D (n, K), got shape {shape}")
        if fitter is None:
            fitter = _Fitter(shape[1], axis, **_fitter_options(options))
        elif shape[1] != fitter.P.k:
            raise TokenscaleError(f"block {i} has K={shape[1]} columns, expected {fitter.P.k}")
        yield fitter.make_fit(fitter.fit_rows(_check_numeric(block) if shape[0] else _empty_block(shape[1])))


def _fitter_options(options: dict) -> dict:
    allowed = ("transform", "device", "dtype", "chunk_size", "max_iter", "tol", "tau_margin", "lam_bounds",
               "categories", "delta_max", "grid", "workers", "engine")
    bad = [key for key in options if key not in allowed]
    if bad:
        raise TokenscaleError(f"unknown fit option {bad[0]!r} (expected one of {allowed})")
    defaults = {"transform": "log10", "device": None, "dtype": None, "chunk_size": None, "max_iter": 30,
                "tol": 1e-5, "tau_margin": None, "lam_bounds": None, "categories": None, "delta_max": 10.0,
                "grid": (40, 8), "workers": None, "engine": "auto"}
    defaults.update(options)
    return defaults


def _block_rows(block_size, fitter: "_Fitter") -> int:
    if block_size is None:
        return max(fitter.opts["chunk"], 1 << 18)
    return _positive_int("block_size", block_size)


def _positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, else a one-line error naming ``name``."""
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise TokenscaleError(f"{name} must be an integer, got {value!r}") from None
    if v < 1:
        raise TokenscaleError(f"{name} must be >= 1, got {v}")
    return v


def _empty_block(k: int) -> np.ndarray:
    return np.zeros((0, k), dtype=np.float32)


def fit_file(
    trajectories,
    out,
    *,
    axis: str = "step",
    block_rows: int = 1 << 18,
    attrs: dict | None = None,
    **options,
) -> dict:
    """Fit every trajectory of an HDF5 trajectory shard (docs/trajectories.md) in one streamed pass.

    Reads dataset ``loss`` (n, K) ``block_rows`` rows at a time (the shard is chunked by rows), fits each
    block and writes its results straight into the sigmoid-fits file ``out`` (the :func:`save_fits`
    layout, written to ``out + ".tmp"`` then renamed), so peak memory is bounded by one block whatever
    n is.  ``axis`` names the fit axis: ``"step"`` or ``"tokens"`` (``axis/<name>`` in the shard).
    ``token_index`` is copied from the shard when present.  ``options`` are those of
    :func:`fit_sigmoids`.  Returns a summary dict (``n``, ``seconds``, ``status_counts``,
    ``category_counts``, ``out``).
    """
    import h5py

    src = Path(trajectories)
    dst = os.fspath(out)
    if not src.is_file():
        raise TokenscaleError(f"{src}: trajectory file not found")
    block_rows = _positive_int("block_rows", block_rows)
    t0 = time.perf_counter()
    counts = {"status": np.zeros(len(STATUS_NAMES), dtype=np.int64),
              "category": np.zeros(len(CATEGORY_NAMES), dtype=np.int64)}
    try:
        fin = h5py.File(src, "r")
    except OSError as e:
        raise TokenscaleError(_one_line(f"{src}: cannot open trajectory file (truncated or corrupt?): {e}")) from None
    with fin:
        loss, axis_vals, token_index = _shard_datasets(fin, src, axis)
        n, k = (int(s) for s in loss.shape)
        fitter = _Fitter(k, axis_vals, **_fitter_options(options))
        user = {"trajectories": str(src), "axis_name": axis, **(attrs or {})}

        def write(f):
            _fill_fits(f, fitter, _shard_blocks(src, loss, token_index, block_rows), counts)

        write_fits_file(dst, n, fitter.make_fit(result_arrays(0), None), user,
                         with_token_index=token_index is not None, fill=write)
    dt = time.perf_counter() - t0
    return {
        "n": n,
        "seconds": dt,
        "status_counts": dict(zip(STATUS_NAMES, counts["status"].tolist())),
        "category_counts": dict(zip(CATEGORY_NAMES, counts["category"].tolist())),
        "out": dst,
    }


def _shard_datasets(fin, src: Path, axis: str):
    """A trajectory shard's ``loss`` (n, K) dataset, its ``axis/<axis>`` values (float64) and its ``token_index``
    dataset (or None), each checked; a one-line error for a file that is not a trajectory shard."""
    import h5py

    try:
        loss = fin["loss"]
        if not isinstance(loss, h5py.Dataset) or loss.ndim != 2:
            raise TokenscaleError(f"{src}: dataset 'loss' must be (n, K)")
        n = int(loss.shape[0])
        key = f"axis/{axis}"
        if key not in fin:
            raise TokenscaleError(f"{src}: no axis {axis!r} (dataset {key!r} missing)")
        axis_vals = np.asarray(fin[key][()], dtype=np.float64)
        token_index = fin["token_index"] if "token_index" in fin else None
        if token_index is not None and token_index.shape != (n,):
            raise TokenscaleError(f"{src}: token_index has shape {token_index.shape}, expected ({n},)")
    except KeyError as e:
        raise TokenscaleError(_one_line(f"{src}: not a trajectory file: {e}")) from None
    return loss, axis_vals, token_index


def _shard_blocks(src: Path, loss, token_index, block_rows: int):
    """Yield ``(lo, hi, losses, token_index or None)`` for consecutive row blocks of a shard."""
    n = int(loss.shape[0])
    for lo in range(0, n, block_rows):
        hi = min(n, lo + block_rows)
        try:
            y = loss[lo:hi]
            ti = None if token_index is None else np.asarray(token_index[lo:hi], dtype=np.int64)
        except (OSError, ValueError) as e:
            raise TokenscaleError(_one_line(f"{src}: cannot read rows {lo}:{hi}: {e}")) from None
        yield lo, hi, y, ti


def _fill_fits(f, fitter: "_Fitter", blocks, counts: dict) -> None:
    """Fit each block and write its result columns (and token indices) into the open fits file ``f``; add its
    status and category counts to ``counts``."""
    for lo, hi, y, ti in blocks:
        cols = fitter.fit_rows(_check_numeric(y))
        for name, v in cols.items():
            f[name][lo:hi] = v
        if ti is not None:
            f["token_index"][lo:hi] = ti
        counts["status"][:] += np.bincount(cols["status"], minlength=len(STATUS_NAMES))[: len(STATUS_NAMES)]
        counts["category"][:] += np.bincount(cols["category"], minlength=len(CATEGORY_NAMES))[: len(CATEGORY_NAMES)]


def grid_init(
    losses,
    axis,
    *,
    transform: str = "log10",
    tau_margin: float | None = None,
    lam_bounds: tuple[float, float] | None = None,
    delta_max: float = 10.0,
    grid: tuple[int, int] = (40, 8),
) -> dict[str, np.ndarray]:
    """Stage 1 of :func:`fit_sigmoids` only: every row's start point (float64, CPU).

    That is the best start-grid point, moved by the quadratic fit of its 3x3 grid neighbourhood, with
    the exact least-squares ``(post, delta)`` there.  Returns a dict of (N,) arrays ``tau``, ``lam``
    (transformed axis), ``delta``, ``post``.  Useful to give another optimiser (e.g.
    ``scipy.optimize.curve_fit``) the same start as this engine.
    """
    shape = _shape_of(losses)
    if len(shape) != 2:
        raise TokenscaleError(f"losses must be 2-D (N, K), got shape {shape}")
    _, x = _transform_axis(axis, transform, shape[1])
    cpu = torch.device("cpu")
    # the start is computed exactly as in the engine (float32 grid), then (post, delta) in float64
    P32 = TorchProblem(x, tau_margin, lam_bounds, tuple(grid), delta_max, cpu, torch.float32)
    P = TorchProblem(x, tau_margin, lam_bounds, tuple(grid), delta_max, cpu, torch.float64)
    with torch.no_grad():
        Y = _to_tensor(_check_numeric(losses[0:shape[0]]), cpu, torch.float64)
        Y = torch.where(torch.isfinite(Y), Y, 0.0)
        ybar = Y.mean(1)
        Yc = Y - ybar[:, None]
        tau32, rho32 = grid_start(Yc.to(torch.float32), P32)
        tau, rho = tau32.double(), rho32.double()
        dmax = P.delta_max * (Y.amax(dim=1) - Y.amin(dim=1))
        _, delta, gbar = closed_form(Yc, tau, rho, dmax, P)
    return {
        "tau": (P.c + P.h * tau).numpy(),
        "lam": (torch.exp(rho) / P.h).numpy(),
        "delta": delta.numpy(),
        "post": (ybar - delta * gbar).numpy(),
    }
