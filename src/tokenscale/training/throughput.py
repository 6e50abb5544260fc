"""MFU accounting: achieved training FLOP/s against the device's dense peak.

    achieved FLOP/s = tokens/s * model FLOPs/token
    MFU             = achieved FLOP/s / peak FLOP/s

with model FLOPs/token = M + 6*d*V from :func:`tokenscale.training.model.model_flops_per_token` (M = 6*N + 12*L*H*hd*l,
the non-embedding training FLOPs, plus the LM head; the formula is written out in ``tokenscale.training.model``). The peak
comes from :func:`peak_flops`: a config override, else the datasheet table for a known GPU, else a GEMM measured
on the CPU. An unknown GPU gets NaN, never a guessed number, and its MFU is reported as null (``None``).

This module imports torch only inside the functions that touch a device.
"""

from __future__ import annotations

import math
import time
from functools import cache

# Dense (no sparsity) peak FLOP/s by GPU and precision. Sources: NVIDIA datasheets / whitepapers: H100 Tensor
# Core GPU datasheet and Hopper whitepaper (H100 SXM/PCIe/NVL), H200 datasheet (H200 SXM/NVL), A100 datasheet
# (SXM and PCIe share these peaks), L40S datasheet; the datasheets quote bf16 "with sparsity", halved here.
# A10G (AWS) has no NVIDIA datasheet: 70 TFLOPS bf16 is the figure AWS-side sources quote, 31.2 fp32 the A10's.
# "fp32" is the non-tensor-core FP32 peak: torch runs fp32 matmuls without TF32 unless
# torch.backends.cuda.matmul.allow_tf32 is set, in which case MFU against this peak can exceed 1.
# Rows are matched in order by substrings of torch.cuda.get_device_name(), most specific first.
GPU_PEAKS: list[tuple[tuple[str, ...], str, dict[str, float]]] = [
    (("H100", "PCIE"), "NVIDIA H100 PCIe", {"bf16": 756e12, "fp32": 51.2e12}),
    (("H100", "NVL"), "NVIDIA H100 NVL", {"bf16": 835.5e12, "fp32": 60e12}),
    (("H100",), "NVIDIA H100 SXM", {"bf16": 989.4e12, "fp32": 66.9e12}),
    (("H200", "NVL"), "NVIDIA H200 NVL", {"bf16": 835.5e12, "fp32": 60e12}),
    (("H200",), "NVIDIA H200", {"bf16": 989.4e12, "fp32": 66.9e12}),
    (("A100",), "NVIDIA A100", {"bf16": 312e12, "fp32": 19.5e12}),
    (("L40S",), "NVIDIA L40S", {"bf16": 362.05e12, "fp32": 91.6e12}),
    (("A10G",), "NVIDIA A10G", {"bf16": 70e12, "fp32": 31.2e12}),
]

_CPU_GEMM_SIZE = 1024  # 2*1024^3 = 2.1 GFLOP per product
_CPU_BUDGET_S = 0.5


def table_peak(device_name: str, precision: str) -> tuple[float, str]:
    """Datasheet peak for a GPU name (case-insensitive substrings) and ``precision`` ("bf16" or "fp32").

    Returns
    -------
    (float, str)
        The peak FLOP/s and its source, e.g. ``"table: NVIDIA H100 SXM bf16"``; ``(nan, "unknown device ...")``
        when no row matches.
    """
    name = device_name.upper()
    for keys, label, peaks in GPU_PEAKS:
        if all(k in name for k in keys) and precision in peaks:
            return peaks[precision], f"table: {label} {precision}"
    return math.nan, f"unknown device {device_name!r} ({precision}): set peak_tflops to report MFU"


def peak_flops(device, precision: str, override_tflops: float | None = None) -> tuple[float, str]:
    """Peak FLOP/s of ``device`` at ``precision`` and a human-readable source string.

    Parameters
    ----------
    device : torch.device or str
        "cpu", "cuda", "cuda:1", ...
    precision : str
        "bf16" or "fp32": the dtype the matmuls run in.
    override_tflops : float, optional
        The config's ``peak_tflops``; wins over the table and the measurement.

    Returns
    -------
    (float, str)
        Peak FLOP/s (NaN for an unknown device) and where it came from.
    """
    if override_tflops is not None:
        return float(override_tflops) * 1e12, f"config: peak_tflops={override_tflops}"
    kind = str(device).split(":")[0]
    if kind == "cpu":
        import torch

        return _cpu_peak(precision, torch.get_num_threads())
    if kind == "cuda":
        import torch

        return table_peak(torch.cuda.get_device_name(device), precision)
    return math.nan, f"unknown device {str(device)!r} ({precision}): set peak_tflops to report MFU"


@cache
def _cpu_peak(precision: str, threads: int) -> tuple[float, str]:
    """Best-of-a-few square GEMM at the current thread count (~0.5 s), cached per (precision, threads)."""
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = _CPU_GEMM_SIZE
    g = torch.Generator().manual_seed(0)  # not the global RNG: the trainer saves that in its state, and a resumed
    a, b = torch.randn(n, n, generator=g).to(dtype), torch.randn(n, n, generator=g).to(dtype)  # run measures again
    start = time.perf_counter()
    torch.mm(a, b)  # warm-up
    best, reps = math.inf, 0
    while reps < 1 or (reps < 10 and time.perf_counter() - start < _CPU_BUDGET_S):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best, reps = min(best, time.perf_counter() - t0), reps + 1
    return 2.0 * n**3 / best, f"measured: {precision} GEMM {n}^3 on {threads} threads, best of {reps}"


def achieved_flops(tokens_per_s: float, model_flops_per_token: float) -> float:
    """Achieved training FLOP/s = tokens/s * model FLOPs/token."""
    return tokens_per_s * model_flops_per_token


def mfu(tokens_per_s: float, model_flops_per_token: float, peak: float) -> float | None:
    """Model FLOPs utilisation = tokens/s * model FLOPs/token / peak; ``None`` when the peak is unknown."""
    if not (math.isfinite(peak) and peak > 0):
        return None
    return achieved_flops(tokens_per_s, model_flops_per_token) / peak
