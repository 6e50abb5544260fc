"""Sigmoid fits of token-loss trajectories (paper §3.2, eq. (1)-(2)); docs/fit.md.

The public API, re-exported lazily (importing ``tokenscale.fit`` or one of its torch-free modules does not
import torch; the first use of a torch-backed name does)::

    from tokenscale.fit import fit_sigmoids, load_fits
    fit = fit_sigmoids(losses, steps)      # losses (N, K), steps (K,) -> SigmoidFit of (N,) arrays

Where things are (each module depends only on those above it):

==========================  =================================================================  =========
``tokenscale.io.fits``       SigmoidFit, CategoryRule, STATUS/CATEGORY_NAMES, save/load/concat  no torch
``problem``                 the math (docstring), bounds, start grid, LM constants: Problem    no torch
``engines/__init__``        ENGINES: the registry of engine names (API, CLI and schema)        no torch
``engines/torch_lm``        the batched torch engine (reference; grid start used by triton)
``engines/native``          the per-row C kernel (``engines/csrc/``): build cache, ctypes
``engines/triton_lm``       the fused Triton kernel (CUDA)
``chunks``                  a block of rows -> chunks -> engine, pooling, CPU threads
``api``                     fit_sigmoids, iter_fit_sigmoids, fit_file, grid_init
==========================  =================================================================  =========
"""

from __future__ import annotations

from tokenscale._lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "fit_sigmoids": "tokenscale.fit.api",
    "iter_fit_sigmoids": "tokenscale.fit.api",
    "fit_file": "tokenscale.fit.api",
    "grid_init": "tokenscale.fit.api",
    "ENGINES": "tokenscale.fit.engines",
    "Problem": "tokenscale.fit.problem",
    "SigmoidFit": "tokenscale.io.fits",
    "CategoryRule": "tokenscale.io.fits",
    "STATUS_NAMES": "tokenscale.io.fits",
    "CATEGORY_NAMES": "tokenscale.io.fits",
    "FITS_FORMAT": "tokenscale.io.fits",
    "concat_fits": "tokenscale.io.fits",
    "save_fits": "tokenscale.io.fits",
    "load_fits": "tokenscale.io.fits",
}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)  # PEP 562: import the defining module on first use
