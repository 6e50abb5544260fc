import math
import subprocess
import sys
import time

import pytest

from tokenscale.training.throughput import achieved_flops, mfu, peak_flops, table_peak


def test_mfu_hand_count():
    # 50,000 tokens/s * 3e9 FLOPs/token = 1.5e14 FLOP/s; against a 1e15 peak: 0.15
    assert achieved_flops(50_000, 3e9) == 1.5e14
    assert mfu(50_000, 3e9, 1e15) == pytest.approx(0.15, rel=1e-12)
    assert mfu(50_000, 3e9, math.nan) is None and mfu(50_000, 3e9, 0.0) is None


@pytest.mark.parametrize(
    "name, precision, peak, label",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12, "NVIDIA H100 SXM"),
        ("NVIDIA H100 PCIe", "bf16", 756e12, "NVIDIA H100 PCIe"),
        ("NVIDIA H100 PCIe", "fp32", 51.2e12, "NVIDIA H100 PCIe"),
        ("NVIDIA H200", "fp32", 66.9e12, "NVIDIA H200"),
        ("NVIDIA A100-SXM4-80GB", "bf16", 312e12, "NVIDIA A100"),
        ("NVIDIA L40S", "bf16", 362.05e12, "NVIDIA L40S"),
        ("NVIDIA A10G", "fp32", 31.2e12, "NVIDIA A10G"),
    ],
)
def test_table_lookup_by_name(name, precision, peak, label):
    assert table_peak(name, precision) == (peak, f"table: {label} {precision}")


def test_unknown_gpu_is_nan_not_a_guess():
    value, source = table_peak("NVIDIA GeForce GTX 1080", "bf16")
    assert math.isnan(value) and source.startswith("unknown device 'NVIDIA GeForce GTX 1080'")
    assert mfu(1000.0, 1e9, value) is None
    assert math.isnan(peak_flops("mps", "fp32")[0])


def test_override_wins():
    assert peak_flops("cpu", "bf16", override_tflops=123.5) == (123.5e12, "config: peak_tflops=123.5")
    assert peak_flops("cuda:3", "fp32", override_tflops=10) == (10e12, "config: peak_tflops=10")


def test_cpu_peak_measured_and_cached():
    import torch

    value, source = peak_flops("cpu", "fp32")
    assert math.isfinite(value) and value > 0
    assert source.startswith(f"measured: fp32 GEMM 1024^3 on {torch.get_num_threads()} threads")
    t0 = time.perf_counter()
    assert peak_flops("cpu", "fp32") == (value, source)  # cached: no second measurement
    assert time.perf_counter() - t0 < 0.01


def test_throughput_imports_no_torch():
    code = "import sys, tokenscale.training.throughput; print('torch' in sys.modules); sys.exit('torch' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
