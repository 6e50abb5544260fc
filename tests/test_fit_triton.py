"""The fused Triton kernel of the fit (:mod:`tokenscale.fit.engines.triton_lm`).

On a CUDA machine it runs natively (tests/test_fit.py::test_cuda_matches_cpu covers it as the CUDA default);
here it also runs on CPU under Triton's interpreter (``TRITON_INTERPRET=1``, set before Python starts, hence
a subprocess) and is compared with the native C kernel, which runs the same algorithm: same statuses and
categories, same optimum to round-off, invalid/flat rows handled, K not a power of two (padded tile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

_SCRIPT = r"""
import json, sys
import numpy as np, torch
from tokenscale.fit import fit_sigmoids
from tokenscale.fit.planted import default_step_axis, planted_trajectories
k, dtype = int(sys.argv[1]), getattr(torch, sys.argv[2])
axis = default_step_axis(k)
y, _ = planted_trajectories(160, axis, seed=3)
y[11, 5] = np.nan
y[12] = 2.0
a = fit_sigmoids(y, axis, engine="triton", dtype=dtype)
b = fit_sigmoids(y, axis, engine="native", dtype=dtype)
ok = a.status != 2
rel = np.abs(a.sse[ok] - b.sse[ok]) / np.maximum(b.sse[ok], 1e-12)
print(json.dumps({
    "engine": a.attrs["engine"], "invalid": a.status_counts()["invalid_input"], "nan11": bool(np.isnan(a.tau[11])),
    "delta12": float(a.delta[12]), "cat12": int(a.category[12]),
    "rel_sse_max": float(rel.max()), "rel_sse_med": float(np.median(rel)),
    "tau_diff_med": float(np.median(np.abs(a.tau - b.tau)[ok])),
    "status_agree": float(np.mean(a.status == b.status)), "cat_agree": float(np.mean(a.category == b.category)),
}))
"""


@pytest.mark.parametrize("k, dtype", [(64, "float32"), (36, "float32"), (36, "float64")])
def test_triton_kernel_matches_native_under_the_interpreter(k, dtype):
    from tokenscale.fit.engines import native

    if not native.available():
        pytest.skip(f"native kernel unavailable: {native.build_error()}")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(k), dtype], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["engine"] == "triton"
    assert r["invalid"] == 1 and r["nan11"]
    assert r["delta12"] == 0.0 and r["cat12"] == 3  # flat row: no event, unlearned
    lim = 1e-4 if dtype == "float32" else 1e-10
    assert r["rel_sse_max"] < lim and r["rel_sse_med"] < lim / 100
    assert r["tau_diff_med"] < (1e-5 if dtype == "float32" else 1e-12)
    assert r["status_agree"] >= 0.98 and r["cat_agree"] >= 0.99


def test_triton_engine_refuses_a_cpu_device_without_the_interpreter():
    from tokenscale import TokenscaleError
    from tokenscale.fit import fit_sigmoids
    from tokenscale.fit.engines.triton_lm import interpreted
    from tokenscale.fit.planted import default_step_axis, planted_trajectories

    if interpreted() or torch.cuda.is_available():
        pytest.skip("the interpreter is on / a GPU is present")
    y, _ = planted_trajectories(5, default_step_axis(16), seed=0)
    with pytest.raises(TokenscaleError, match=r"engine='triton' unavailable: the triton engine runs on CUDA"):
        fit_sigmoids(y, default_step_axis(16), engine="triton")
