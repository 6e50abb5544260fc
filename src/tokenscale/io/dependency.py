"""The dependency-length file format (torch-free): what :func:`tokenscale.alignment.dependency.compute_dependency` writes.

HDF5, ``format = "tokenscale-dependency-v1"``, written atomically::

    dependency_length  (N,) int32     smallest context reaching the threshold; N = S*T, token s*T+t
    log_prob           (C, N) float32 log-probability of the correct next token under each context length
    contexts           (C,) int32     the context lengths 1, 2, 4, ..., seq_len
    attrs: format, threshold, checkpoint, token_set, token_set_sha256, n_seqs, seq_len,
           max_abs_diff_vs_truncation, n_checked_sequences, n_checked_positions, device, package_version, seconds
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from tokenscale import TokenscaleError
from tokenscale.atomic import atomic_output
from tokenscale.io._h5 import _attr_value, _reading

__all__ = ["FORMAT", "write_dependency", "read_dependency"]

FORMAT = "tokenscale-dependency-v1"


def write_dependency(out: Path, dep: np.ndarray, logp: np.ndarray, contexts: list[int], attrs: dict) -> Path:
    """dep (N,), logp (C, N), contexts (C,) -> one HDF5 file, written atomically (tmp, fsync, rename)."""
    with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("dependency_length", data=dep.astype(np.int32))
        f.create_dataset("log_prob", data=logp.astype(np.float32))
        f.create_dataset("contexts", data=np.asarray(contexts, dtype=np.int32))
        for k, v in attrs.items():
            f.attrs[k] = v
    return out


def read_dependency(path: os.PathLike | str) -> dict:
    """Read a file of :func:`compute_dependency`: ``{"dependency_length" (N,), "log_prob" (C, N), "contexts"
    (C,), "attrs", "path"}``.  A missing, corrupt or foreign file raises a one-line TokenscaleError."""
    p = Path(path)
    with _reading(p, "dependency") as f:
        fmt = _attr_value(f.attrs.get("format", ""))
        if fmt != FORMAT:
            raise TokenscaleError(f"{p}: not a dependency file (format {fmt!r}, expected {FORMAT!r})")
        out = {name: f[name][()] for name in ("dependency_length", "log_prob", "contexts")}
        out["attrs"] = {k: _attr_value(v) for k, v in f.attrs.items()}
    C, N = out["contexts"].shape[0], out["dependency_length"].shape[0]
    if out["log_prob"].shape != (C, N):
        raise TokenscaleError(f"{p}: not a valid dependency file (log_prob shape {out['log_prob'].shape} != {(C, N)})")
    out["path"] = p
    return out
