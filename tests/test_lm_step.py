"""One table of Levenberg-Marquardt step cases, run through every implementation of the step.

The fit's LM step - which coordinates are free at the box, the damped 2x2 solve ``(H + mu diag(H)) s = -b``
(diagonal system when the 2x2 one is singular or near-collinear), the step scaled into the per-step caps and
projected onto the box, and the damping after an accepted or rejected step - is written three times, in the
three engines: torch (:mod:`tokenscale.fit.engines.torch_lm`: ``_free_mask``, ``_solve2``, ``_capped_step``,
``_next_mu``), C (``engines/csrc/fit_lm_impl.h``: ``free_mask_``, ``solve2_``, ``capped_step_``, ``next_mu_``,
exported for this test as ``tks_lm_step``) and Triton (:mod:`tokenscale.fit.engines.triton_lm`: the ``@triton.jit``
functions of the same names).  It is not written once because the three are different languages compiled
differently (torch ops on whole tensors, a Triton kernel with rows in registers, a C loop per row) and the
engines' results must stay bit-identical; so this ONE table of cases is run through each implementation that
runs on this machine and checked against the same expected values: a float64 numpy reference of the step
written once below (:func:`reference_step`), evaluated on the case's inputs rounded to the implementation's
dtype.  A few cases also carry values worked out by hand, which check the reference itself.

Where each runs: torch and the native C kernel on CPU; Triton on CUDA, or on CPU under its interpreter
(``TRITON_INTERPRET=1``, set before Python starts, hence a subprocess) when Triton is importable.

Known divergence (not a step the fit can take): Triton's ``tl.maximum`` / ``tl.minimum`` drop a NaN operand (IEEE
maxNum), where torch and C propagate it; the NaN cases are therefore not run through Triton.  The fit never feeds
NaN to the step: a row with a non-finite loss is invalid before the fit, and a step whose SSE is NaN is rejected.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tokenscale.fit import problem
from tokenscale.fit.engines import native, torch_lm

TLO, THI, RLO, RHI = -1.5, 1.5, -2.0, 3.0  # the box of (tau', rho) used by every case
FIELDS = ("h00", "h01", "h11", "b0", "b1", "mu", "tau", "rho")  # a case's inputs, in this order
OUTPUTS = ("s0", "s1", "tau_n", "rho_n", "mu_accept", "mu_reject")  # what each implementation returns
NAN = math.nan

# name: (h00, h01, h11, b0, b1, mu, tau, rho), hand-worked expected outputs (a subset of OUTPUTS) or {}
CASES = {
    "regular, small damping": ((2.0, 0.3, 1.5, 0.4, -0.2, 1e-3, 0.1, 0.5), {}),
    "undamped (mu = 0: the convergence test's Gauss-Newton step)": (
        (2.0, 0.0, 4.0, 0.4, -0.2, 0.0, 0.1, 0.5), {"s0": -0.2, "s1": 0.05, "tau_n": -0.1, "rho_n": 0.55}),
    "huge damping: a vanishing step": ((2.0, 0.3, 1.5, 0.4, -0.2, 1e10, 0.1, 0.5), {}),
    "singular JtJ (rank 1), undamped: the diagonal system": (
        (4.0, 2.0, 1.0, 0.4, 0.2, 0.0, 0.0, 0.0), {"s0": -0.1, "s1": -0.2}),
    "singular JtJ (rank 1), damped": ((4.0, 2.0, 1.0, 0.4, 0.2, 1e-3, 0.0, 0.0), {}),
    "indefinite (|h01| > sqrt(h00 h11)): the diagonal system": (
        (1.0, 3.0, 1.0, 0.5, 0.25, 0.0, 0.0, 0.0), {"s0": -0.5, "s1": -0.25}),
    "zero Hessian, undamped: no step": (
        (0.0, 0.0, 0.0, 0.4, 0.2, 0.0, 0.2, 0.3), {"s0": 0.0, "s1": 0.0, "tau_n": 0.2, "rho_n": 0.3}),
    "zero Hessian, damped: a capped gradient step": (
        (0.0, 0.0, 0.0, 0.4, 0.2, 1.0, 0.2, 0.3), {"tau_n": -0.3, "rho_n": 0.05}),
    "zero residual (zero gradient): no step": (
        (2.0, 0.3, 1.5, 0.0, 0.0, 1e-3, 0.2, 0.3), {"s0": 0.0, "s1": 0.0, "tau_n": 0.2, "rho_n": 0.3}),
    "step beyond the caps: scaled into them": (
        (1e-3, 0.0, 1e-3, 1.0, -2.0, 0.0, 0.0, 0.0), {"s0": -1000.0, "s1": 2000.0, "tau_n": -0.5, "rho_n": 1.0}),
    "at the lower tau bound, gradient pushing out: tau fixed": (
        (2.0, 0.3, 1.5, 0.4, -0.2, 1e-3, TLO, 0.5), {"s0": 0.0, "tau_n": TLO}),
    "at the upper rho bound, gradient pushing out: rho fixed": (
        (2.0, 0.3, 1.5, 0.4, -0.2, 1e-3, 0.1, RHI), {"s1": 0.0, "rho_n": RHI}),
    "at the lower tau bound, gradient pointing inward: free": ((2.0, 0.3, 1.5, -0.4, -0.2, 1e-3, TLO, 0.5), {}),
    "step projected onto the box": ((2.0, 0.0, 2.0, -0.8, 0.8, 0.0, 1.4, RLO + 0.1), {"tau_n": THI, "rho_n": RLO}),
    "damping at its floor": ((2.0, 0.3, 1.5, 0.4, -0.2, problem.MU_MIN, 0.1, 0.5),
                             {"mu_accept": problem.MU_MIN, "mu_reject": problem.MU_REJECT}),
    "large damping grows tenfold on rejection": ((2.0, 0.3, 1.5, 0.4, -0.2, 50.0, 0.1, 0.5),
                                                 {"mu_accept": 50.0 * problem.MU_ACCEPT,
                                                  "mu_reject": 50.0 * problem.MU_GROW}),
    "NaN Hessian row: no step": ((NAN, 0.3, 1.5, 0.4, -0.2, 1e-3, 0.1, 0.5),
                                 {"s0": 0.0, "s1": 0.0, "tau_n": 0.1, "rho_n": 0.5}),
    "NaN gradient row: NaN step and point": ((2.0, 0.3, 1.5, NAN, -0.2, 1e-3, 0.1, 0.5),
                                             {"s0": NAN, "s1": NAN, "tau_n": NAN, "rho_n": NAN}),
}
NAN_CASES = [name for name, (inp, _) in CASES.items() if any(math.isnan(v) for v in inp)]
DTYPES = {"float64": (np.float64, 1e-12), "float32": (np.float32, 1e-5)}  # dtype, relative tolerance


def reference_step(case, dtype) -> dict[str, float]:
    """The LM step written once, in float64 numpy, on ``case`` rounded to ``dtype`` (eps is ``dtype``'s)."""
    h00, h01, h11, b0, b1, mu, tau, rho = (float(np.asarray(v, dtype)) for v in case)
    eps = float(np.finfo(dtype).eps)
    tlo, thi, rlo, rhi = (float(np.asarray(v, dtype)) for v in (TLO, THI, RLO, RHI))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        f0 = not ((tau <= tlo and b0 > 0) or (tau >= thi and b0 < 0))  # free unless pushed out of the box
        f1 = not ((rho <= rlo and b1 > 0) or (rho >= rhi and b1 < 0))
        tiny = eps * (h00 + h11) + 1e-30
        a00 = h00 + mu * np.maximum(h00, tiny) if f0 else 1.0
        a11 = h11 + mu * np.maximum(h11, tiny) if f1 else 1.0
        a01 = h01 if f0 and f1 else 0.0
        r0, r1 = (-b0 if f0 else 0.0), (-b1 if f1 else 0.0)
        det = a00 * a11 - a01 * a01
        if det > 1e-4 * a00 * a11:
            s0, s1 = (a11 * r0 - a01 * r1) / det, (a00 * r1 - a01 * r0) / det
        else:  # singular or near-collinear: the diagonal system
            s0, s1 = (r0 / a00 if a00 > 0 else 0.0), (r1 / a11 if a11 > 0 else 0.0)
        s0, s1 = (s0 if a00 > 0 else 0.0), (s1 if a11 > 0 else 0.0)
        scale = np.maximum(np.maximum(abs(s0) / problem.STEP_CAP_TAU, abs(s1) / problem.STEP_CAP_RHO), 1.0)
        return {"s0": s0, "s1": s1, "tau_n": float(np.clip(tau + s0 / scale, tlo, thi)),
                "rho_n": float(np.clip(rho + s1 / scale, rlo, rhi)),
                "mu_accept": max(mu * problem.MU_ACCEPT, problem.MU_MIN),
                "mu_reject": max(mu * problem.MU_GROW, problem.MU_REJECT)}


def _inputs(dtype) -> np.ndarray:
    return np.array([inp for inp, _ in CASES.values()], dtype=dtype)  # (n, 8)


def _box() -> "native.Box":
    return native.Box(tlo=TLO, thi=THI, rlo=RLO, rhi=RHI, tol=1e-5, delta_max=10.0, grid_dt=0.1, grid_dr=0.1,
                      step_cap_tau=problem.STEP_CAP_TAU, step_cap_rho=problem.STEP_CAP_RHO, mu0=problem.MU0,
                      mu_reject=problem.MU_REJECT, mu_accept=problem.MU_ACCEPT, mu_min=problem.MU_MIN,
                      mu_grow=problem.MU_GROW, mu_max=problem.MU_MAX, max_iter=30, n_tau=1, n_lam=1, refine=0)


def _torch_step(x: np.ndarray) -> np.ndarray:
    c = torch.from_numpy(x)
    P = SimpleNamespace(tlo=TLO, thi=THI, rlo=RLO, rhi=RHI)
    h00, h01, h11, b0, b1, mu, tau, rho = c.T
    f0, f1 = torch_lm._free_mask(tau, rho, b0, b1, P)
    s0, s1 = torch_lm._solve2(h00, h01, h11, b0, b1, mu, f0, f1, torch.finfo(c.dtype).eps)
    tn, rn = torch_lm._capped_step(tau, rho, s0, s1, P)
    yes = torch.ones_like(mu, dtype=torch.bool)
    out = [s0, s1, tn, rn, torch_lm._next_mu(mu, yes), torch_lm._next_mu(mu, ~yes)]
    return torch.stack(out, dim=1).numpy()


def _native_step(x: np.ndarray) -> np.ndarray:
    if not native.available():
        pytest.skip(f"native kernel unavailable: {native.build_error()}")
    return native.lm_step(torch.from_numpy(x), _box()).numpy()


# run in a subprocess: TRITON_INTERPRET must be set before triton is imported
_TRITON_SCRIPT = r"""
import json, sys
import numpy as np, torch
import triton
import triton.language as tl
from tokenscale.fit import problem
from tokenscale.fit.engines.triton_lm import _capped_step, _free_mask, _next_mu, _solve2

@triton.jit
def _step_kernel(C, O, S, n, BM: tl.constexpr, CAP_TAU: tl.constexpr, CAP_RHO: tl.constexpr,
                 MU_ACCEPT: tl.constexpr, MU_MIN: tl.constexpr, MU_GROW: tl.constexpr, MU_REJECT: tl.constexpr):
    rows = tl.arange(0, BM)
    m = rows < n
    h00 = tl.load(C + rows * 8 + 0, mask=m, other=0.0)
    h01 = tl.load(C + rows * 8 + 1, mask=m, other=0.0)
    h11 = tl.load(C + rows * 8 + 2, mask=m, other=0.0)
    b0 = tl.load(C + rows * 8 + 3, mask=m, other=0.0)
    b1 = tl.load(C + rows * 8 + 4, mask=m, other=0.0)
    mu = tl.load(C + rows * 8 + 5, mask=m, other=0.0)
    tau = tl.load(C + rows * 8 + 6, mask=m, other=0.0)
    rho = tl.load(C + rows * 8 + 7, mask=m, other=0.0)
    tlo, thi, rlo, rhi, eps = tl.load(S + 0), tl.load(S + 1), tl.load(S + 2), tl.load(S + 3), tl.load(S + 4)
    f0, f1 = _free_mask(tau, rho, b0, b1, tlo, thi, rlo, rhi)
    s0, s1 = _solve2(h00, h01, h11, b0, b1, mu, f0, f1, eps)
    tn, rn = _capped_step(tau, rho, s0, s1, tlo, thi, rlo, rhi, CAP_TAU, CAP_RHO)
    no = m & (rows < 0)
    ma = _next_mu(mu, m, no, MU_ACCEPT, MU_MIN, MU_GROW, MU_REJECT)
    mr = _next_mu(mu, no, m, MU_ACCEPT, MU_MIN, MU_GROW, MU_REJECT)
    tl.store(O + rows * 6 + 0, s0, mask=m)
    tl.store(O + rows * 6 + 1, s1, mask=m)
    tl.store(O + rows * 6 + 2, tn, mask=m)
    tl.store(O + rows * 6 + 3, rn, mask=m)
    tl.store(O + rows * 6 + 4, ma, mask=m)
    tl.store(O + rows * 6 + 5, mr, mask=m)

spec = json.loads(sys.stdin.read())
dt, dev = getattr(torch, spec["dtype"]), torch.device(spec["device"])
c = torch.tensor(spec["cases"], dtype=dt, device=dev)
n = c.shape[0]
o = torch.empty((n, 6), dtype=dt, device=dev)
s = torch.tensor(spec["box"] + [torch.finfo(dt).eps], dtype=dt, device=dev)
_step_kernel[(1,)](c, o, s, n, BM=triton.next_power_of_2(n), CAP_TAU=problem.STEP_CAP_TAU,
                   CAP_RHO=problem.STEP_CAP_RHO, MU_ACCEPT=problem.MU_ACCEPT, MU_MIN=problem.MU_MIN,
                   MU_GROW=problem.MU_GROW, MU_REJECT=problem.MU_REJECT)
print(json.dumps(o.cpu().tolist()))
"""


def _triton_step(x: np.ndarray) -> np.ndarray:
    try:
        import triton  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure means: not available
        pytest.skip(f"triton is not importable ({type(e).__name__}); the Triton step runs on CUDA or its interpreter")
    cuda = torch.cuda.is_available()
    env = {**os.environ, **({} if cuda else {"TRITON_INTERPRET": "1"})}
    spec = {"dtype": str(x.dtype), "device": "cuda" if cuda else "cpu", "box": [TLO, THI, RLO, RHI],
            "cases": x.tolist()}
    proc = subprocess.run([sys.executable, "-c", _TRITON_SCRIPT], input=json.dumps(spec), capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return np.array(json.loads(proc.stdout.strip().splitlines()[-1]), dtype=x.dtype)


IMPLEMENTATIONS = {"torch": _torch_step, "native": _native_step, "triton": _triton_step}


@pytest.mark.parametrize("name", list(CASES))
def test_reference_matches_the_hand_worked_values(name):
    inp, known = CASES[name]
    ref = reference_step(inp, np.float64)
    for key, want in known.items():
        assert ref[key] == pytest.approx(want, rel=1e-12, abs=1e-15, nan_ok=True), (name, key)


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_every_implementation_takes_the_reference_step(impl, dtype):
    np_dtype, rtol = DTYPES[dtype]
    names = [n for n in CASES if not (impl == "triton" and n in NAN_CASES)]  # see the module docstring
    x = _inputs(np_dtype)[[list(CASES).index(n) for n in names]]
    got = IMPLEMENTATIONS[impl](x)
    assert got.shape == (len(names), len(OUTPUTS)) and got.dtype == np_dtype
    bad = []
    for i, name in enumerate(names):
        ref = reference_step(x[i], np_dtype)
        for j, key in enumerate(OUTPUTS):
            want, have = ref[key], float(got[i, j])
            if not (math.isnan(want) and math.isnan(have)) and not math.isclose(have, want, rel_tol=rtol,
                                                                                 abs_tol=1e-30):
                bad.append(f"{name}: {key} = {have!r}, reference {want!r}")
    assert not bad, f"{impl} ({dtype}) differs from the reference step:\n" + "\n".join(bad)
