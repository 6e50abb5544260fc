"""The ``native`` engine: the per-row C kernel (``csrc/fit_lm.c``), built on first use, loaded by ctypes.

The grid start and Levenberg-Marquardt of :mod:`tokenscale.fit.problem` run per row in C on CPU (the torch
engine is the reference and the GPU fallback); every row iterates to its own end, so a row's result
depends on that row only, whatever the chunks and threads.  The bounds and the LM constants reach the
kernel through :class:`Box` (``tks_box_t``), filled from :meth:`Problem.kernel_constants
<tokenscale.fit.problem.Problem.kernel_constants>`.  The kernel is compiled once per machine with the
system C compiler - ``$CC`` or ``cc`` - as ``-O3 -march=native -fopenmp-simd`` (retried without
``-march=native`` if the compiler refuses it) into a cache folder (``$TOKENSCALE_CACHE_DIR``, else
``$XDG_CACHE_HOME/tokenscale``, else ``~/.cache/tokenscale``; a temporary folder if none is writable),
keyed by the source, the compiler, the flags and the CPU's feature flags, so nodes of a cluster with a
shared home folder each get a build for their own CPU.  The build is written to a temporary name and
renamed, so concurrent jobs never load a half-written library.  It needs no Python headers and no
OpenMP runtime: threading is done by the caller with Python threads (ctypes releases the GIL).

``TOKENSCALE_NATIVE=0`` disables the kernel (the torch engine is used instead).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from tokenscale import TokenscaleError
from tokenscale.atomic import atomic_output

__all__ = ["Box", "available", "load", "prep", "fit", "fit_chunk", "build_error"]

_SRC_DIR = Path(__file__).parent / "csrc"
_SOURCES = ("fit_lm.c", "fit_lm_impl.h")
_ABI_VERSION = 6
_BASE_FLAGS = ["-O3", "-fopenmp-simd", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-std=c99"]
_lock = threading.Lock()
_state: dict = {}


class Box(ctypes.Structure):
    """Bounds, options and LM constants shared by all rows (``tks_box_t`` in csrc/fit_lm.c; the keys of
    :meth:`tokenscale.fit.problem.Problem.kernel_constants`)."""

    _fields_ = [(name, ctypes.c_double) for name in ("tlo", "thi", "rlo", "rhi", "tol", "delta_max", "grid_dt",
                                                      "grid_dr", "step_cap_tau", "step_cap_rho", "mu0",
                                                      "mu_reject", "mu_accept", "mu_min", "mu_grow",
                                                      "mu_max")] + \
               [(name, ctypes.c_int) for name in ("max_iter", "n_tau", "n_lam", "refine")]


def _cache_dir() -> Path:
    env = os.environ.get("TOKENSCALE_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tokenscale"


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _compiler() -> str | None:
    cc = os.environ.get("CC") or "cc"
    return shutil.which(cc.split()[0]) and cc


class _CompileFailed(Exception):
    pass


def _compile(cmd: list[str]) -> str | None:
    """Run a compiler command; None on success, else its error in one line."""
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as e:
        return f"{' '.join(cmd)}: {e}"
    return None if proc.returncode == 0 else " ".join((proc.stderr or proc.stdout).split())[:300]


def _build(cc: str) -> Path:
    """Compile the kernel (cached); returns the shared library path.  Raises RuntimeError on failure."""
    src = b"".join((_SRC_DIR / name).read_bytes() for name in _SOURCES)
    try:
        version = subprocess.run(cc.split() + ["--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"compiler {cc!r} does not run: {e}") from None
    attempts = [_BASE_FLAGS + ["-march=native"], _BASE_FLAGS]
    errors = []
    for flags in attempts:
        key = hashlib.sha256(b"\0".join([src, cc.encode(), version.encode(), " ".join(flags).encode(),
                                         _cpu_flags().encode(), platform.machine().encode()])).hexdigest()[:16]
        for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"tokenscale-{os.getuid()}"):
            lib = folder / f"fit_lm-{key}.so"
            if lib.is_file():
                return lib
            try:
                with atomic_output(lib, unique=True) as tmp:  # concurrent builders: the last rename wins
                    cmd = cc.split() + flags + ["-o", str(tmp), str(_SRC_DIR / "fit_lm.c"), "-lm"]
                    error = _compile(cmd)
                    if error is not None:
                        raise _CompileFailed(error)
                return lib
            except _CompileFailed as e:
                errors.append(str(e))
                break  # a compile error does not depend on the folder
            except (OSError, TokenscaleError):
                continue  # not writable: try the next folder
    raise RuntimeError("; ".join(errors) or "no writable cache folder")


def load():
    """The loaded kernel (a ctypes library), or None when it is disabled or cannot be built."""
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib, err = None, None
        if os.environ.get("TOKENSCALE_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
            err = "disabled by TOKENSCALE_NATIVE=0"
        else:
            cc = _compiler()
            if cc is None:
                err = f"no C compiler ({os.environ.get('CC') or 'cc'} not found on PATH)"
            else:
                try:
                    lib = ctypes.CDLL(str(_build(cc)))
                    if lib.tks_abi_version() != _ABI_VERSION:
                        raise RuntimeError(f"ABI version {lib.tks_abi_version()} != {_ABI_VERSION}")
                    _declare(lib)
                except (OSError, RuntimeError, AttributeError) as e:
                    lib, err = None, f"cannot build the native fit kernel: {' '.join(str(e).split())}"
        _state["lib"], _state["error"] = lib, err
        return lib


def available() -> bool:
    """Whether the native kernel can be used on this machine (builds it if needed)."""
    return load() is not None


def build_error() -> str | None:
    """Why the kernel is unavailable (None when it is available or was not tried yet)."""
    return _state.get("error")


def _declare(lib) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    for suffix in ("f32", "f64"):
        fn = getattr(lib, f"tks_prep_{suffix}")
        fn.restype = ctypes.c_int
        fn.argtypes = [i64, ctypes.c_int, p, i64, p, p, p, p, p]
        fn = getattr(lib, f"tks_fit_{suffix}")
        fn.restype = ctypes.c_int
        fn.argtypes = [i64, ctypes.c_int, p, p, p, p, p, p, p, p, ctypes.POINTER(Box), p, p, p, p, p, p, p]
        fn = getattr(lib, f"tks_lm_step_{suffix}")
        fn.restype = ctypes.c_int
        fn.argtypes = [i64, p, ctypes.POINTER(Box), p]


def _kernel(name: str, dt: torch.dtype):
    lib = load()
    if lib is None:
        raise TokenscaleError(f"native fit kernel unavailable: {build_error()}")
    suffix = {torch.float32: "f32", torch.float64: "f64"}.get(dt)
    if suffix is None:
        raise TokenscaleError(f"native fit kernel needs float32 or float64, got {dt}")
    return getattr(lib, f"tks_{name}_{suffix}")


def _check(dt: torch.dtype, **tensors) -> None:
    for name, v in tensors.items():
        want = {"valid": torch.int8, "status": torch.int8, "n_iter": torch.int32}.get(name, dt)
        if v.dtype != want or v.device.type != "cpu" or not v.is_contiguous():
            raise TokenscaleError(f"native fit kernel: {name!r} must be a contiguous {want} CPU tensor, "
                                  f"got {v.dtype} on {v.device}")


def prep(Y: torch.Tensor, Yc: torch.Tensor, ybar: torch.Tensor, sst: torch.Tensor, rng: torch.Tensor,
         valid: torch.Tensor) -> None:
    """Row means ``ybar``, centred rows ``Yc`` (m, K; zeros where a row has a NaN/inf), ``sst``, row range
    ``rng`` and ``valid`` (int8) for the (m, K) CPU rows ``Y`` (rows may be strided, columns contiguous)."""
    m, k = Y.shape
    if Y.device.type != "cpu":
        raise TokenscaleError(f"native fit kernel runs on CPU, got rows on {Y.device}")
    if Y.stride(1) != 1:
        Y = Y.contiguous()
    _check(Y.dtype, Yc=Yc, ybar=ybar, sst=sst, rng=rng, valid=valid)
    if Yc.shape != (m, k) or not all(v.shape == (m,) for v in (ybar, sst, rng, valid)):
        raise TokenscaleError(f"native fit kernel: buffers do not match rows of shape {(m, k)}")
    _kernel("prep", Y.dtype)(m, k, Y.data_ptr(), Y.stride(0), Yc.data_ptr(), ybar.data_ptr(), sst.data_ptr(),
                             rng.data_ptr(), valid.data_ptr())


def fit(Yc: torch.Tensor, U: torch.Tensor, ybar: torch.Tensor, rng: torch.Tensor, valid: torch.Tensor,
        t: torch.Tensor, grid_tau: torch.Tensor, grid_rho: torch.Tensor, box: Box, out: dict) -> None:
    """Grid start (scores ``Yc @ U`` with ``U`` the (K, G) start-grid basis) and Levenberg-Marquardt for the
    (m, K) centred rows ``Yc``.

    ``out`` maps ``tau``, ``rho``, ``sse``, ``delta``, ``gbar`` (Yc's dtype), ``status`` (int8) and
    ``n_iter`` (int32) to contiguous (m,) CPU tensors (views into the block's results); rows with
    ``valid == 0`` are left untouched.
    """
    m, k = Yc.shape
    names = ("tau", "rho", "sse", "delta", "gbar", "status", "n_iter")
    _check(Yc.dtype, Yc=Yc, U=U, ybar=ybar, rng=rng, valid=valid, t=t, grid_tau=grid_tau, grid_rho=grid_rho,
           **{name: out[name] for name in names})
    g = box.n_tau * box.n_lam
    if U.shape != (k, g) or t.shape != (k,) or any(out[name].shape != (m,) for name in names):
        raise TokenscaleError(f"native fit kernel: buffers do not match rows of shape {(m, k)} and {g} grid points")
    rc = _kernel("fit", Yc.dtype)(
        m, k, Yc.data_ptr(), U.data_ptr(), ybar.data_ptr(), rng.data_ptr(), valid.data_ptr(), t.data_ptr(),
        grid_tau.data_ptr(), grid_rho.data_ptr(), ctypes.byref(box), *(out[name].data_ptr() for name in names))
    if rc != 0:
        raise TokenscaleError(f"native fit kernel failed (code {rc}: out of memory for K={k})")


def lm_step(cases: torch.Tensor, box: Box) -> torch.Tensor:
    """The kernel's LM step alone (``tks_lm_step``), for the shared test table of tests/test_lm_step.py.

    ``cases`` (n, 8) rows ``h00, h01, h11, b0, b1, mu, tau, rho`` (float32 or float64, CPU); returns (n, 6) rows
    ``s0, s1`` (the damped step on the free coordinates), ``tau_n, rho_n`` (the step capped and projected onto
    the box) and the damping after accepting / rejecting it."""
    cases = cases.contiguous()
    _check(cases.dtype, cases=cases)
    if cases.ndim != 2 or cases.shape[1] != 8:
        raise TokenscaleError(f"native lm_step: cases must be (n, 8), got {tuple(cases.shape)}")
    out = torch.empty((cases.shape[0], 6), dtype=cases.dtype)
    _kernel("lm_step", cases.dtype)(cases.shape[0], cases.data_ptr(), ctypes.byref(box), out.data_ptr())
    return out


def fit_chunk(Y: torch.Tensor, lo: int, hi: int, P, opts: dict, out: dict, ws: dict | None) -> dict:
    """Fit rows lo:hi of the CPU tensor Y with the native kernel (centring, grid start and LM of every row
    in C; a row's result depends on that row only).  ``P``: the
    :class:`~tokenscale.fit.engines.torch_lm.TorchProblem` (its CPU tensors ``U``, ``t``, ``grid_tau``,
    ``grid_rho``); ``opts["box"]``: the :class:`Box`; ``out``: the block's (n,) result tensors; ``ws``:
    this worker's scratch buffers (returned, grown when needed)."""
    m, k = hi - lo, Y.shape[1]
    if ws is None or ws["Yc"].shape[0] < m:
        ws = {"Yc": torch.empty((m, k), dtype=Y.dtype), "rng": torch.empty((m,), dtype=Y.dtype),
              "valid": torch.empty((m,), dtype=torch.int8)}
    Yc, rng, valid = ws["Yc"][:m], ws["rng"][:m], ws["valid"][:m]
    prep(Y[lo:hi], Yc, out["ybar"][lo:hi], out["sst"][lo:hi], rng, valid)
    names = ("tau", "rho", "sse", "delta", "gbar", "status", "n_iter")
    fit(Yc, P.U, out["ybar"][lo:hi], rng, valid, P.t, P.grid_tau, P.grid_rho, opts["box"],
        {name: out[name][lo:hi] for name in names})
    return ws
