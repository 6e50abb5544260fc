"""The implementations of the fit's iteration (grid start + Levenberg-Marquardt), and their registry.

:data:`ENGINES` is the one list of engine names (with a one-line description each) that the API's check
(:func:`tokenscale.fit.fit_sigmoids`'s ``engine``), the CLI's ``fit --engine`` and the config schema's
``fit.engine`` enum agree with (tested).  This module imports nothing: the CLI reads it to build its parser.

* :mod:`.native` - the per-row C kernel (``csrc/``), built with the system C compiler on first use;
* :mod:`.triton_lm` - the fused Triton kernel (CUDA);
* :mod:`.torch_lm` - the batched torch code (the reference, the CPU fallback and the GPU fallback).
"""

ENGINES = {
    "auto": "native on CPU if the C kernel builds, triton on CUDA if Triton imports, else torch (with a warning "
            "on CPU)",
    "native": "per-row C kernel, CPU only (built with the system C compiler on first use)",
    "triton": "fused Triton kernel, CUDA",
    "torch": "batched torch code, CPU or GPU (the reference and the fallback)",
}

__all__ = ["ENGINES"]
