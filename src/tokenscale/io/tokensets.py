"""The token-set format (``docs/formats.md``): reader, shape/attribute summary and the atomic writer.

A token set is ``input_ids`` (S, T+1) with per-target-token ``token_id``, ``doc_id``, ``doc_pos`` and ``domain``
(S, T), optionally ``sample_index`` (S,) and ``score_mask`` (S, T) bool.  Readers validate every dataset's shape.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from tokenscale import __version__, atomic
from tokenscale.io._h5 import _attrs_dict, _reading
from tokenscale.io.checksum import _err, sha256_file

__all__ = ["TOKEN_SET_DATASETS", "SCORE_MASK", "read_token_set", "token_set_info", "write_token_set"]

TOKEN_SET_DATASETS = ("input_ids", "token_id", "doc_id", "doc_pos", "domain")
# optional (S, T) bool: the positions whose losses are the set's tokens (e.g. the answer of a synthetic example);
# evals hold those positions only, in row-major order, and trajectory token_index names their flat s*T+t
SCORE_MASK = "score_mask"


def _check_token_set(f: h5py.File, p: Path) -> tuple[int, int]:
    for name in TOKEN_SET_DATASETS:
        if name not in f or not isinstance(f[name], h5py.Dataset):
            raise _err(p, f"not a valid token set (missing dataset '{name}')")
    ids = f["input_ids"]
    if ids.ndim != 2 or ids.shape[1] < 2:
        raise _err(p, f"not a valid token set (input_ids shape {ids.shape}, expected (S, T+1) with T >= 1)")
    if not np.issubdtype(ids.dtype, np.integer):
        raise _err(p, f"not a valid token set (input_ids dtype {ids.dtype} is not integer)")
    S, T = ids.shape[0], ids.shape[1] - 1
    for name in TOKEN_SET_DATASETS[1:]:
        if f[name].shape != (S, T):
            raise _err(p, f"not a valid token set ({name} shape {f[name].shape} != {(S, T)})")
    if "sample_index" in f and f["sample_index"].shape != (S,):
        raise _err(p, f"not a valid token set (sample_index shape {f['sample_index'].shape} != {(S,)})")
    if SCORE_MASK in f and (f[SCORE_MASK].shape != (S, T) or f[SCORE_MASK].dtype != np.bool_):
        raise _err(p, f"not a valid token set ({SCORE_MASK} {f[SCORE_MASK].shape} {f[SCORE_MASK].dtype} is not "
                      f"bool {(S, T)})")
    if "seq_len" in f.attrs and int(f.attrs["seq_len"]) != T:
        raise _err(p, f"not a valid token set (attribute seq_len={int(f.attrs['seq_len'])} but input_ids has T={T})")
    return S, T


def read_token_set(path: os.PathLike | str, *, datasets: Sequence[str] | None = None) -> dict:
    """Read a token-set HDF5 (docs/formats.md).

    Returns ``{"input_ids", "token_id", "doc_id", "doc_pos", "domain", ["sample_index"],
    "attrs": {...} (domain_names decoded to a list), "path": Path, "n_seqs": S, "seq_len": T}``.
    ``datasets`` restricts which arrays are loaded (all by default).  The file is fully validated
    (required datasets, shapes, ``token_id == input_ids[:, 1:]`` when both are loaded).
    """
    p = Path(path)
    with _reading(p, "token set") as f:
        S, T = _check_token_set(f, p)
        names = list(TOKEN_SET_DATASETS) + [d for d in ("sample_index", SCORE_MASK) if d in f]
        if datasets is not None:
            unknown = [d for d in datasets if d not in names]
            if unknown:
                raise _err(p, f"token set has no dataset {unknown[0]!r}")
            names = [d for d in names if d in datasets]
        out: dict[str, Any] = {name: f[name][()] for name in names}
        out["attrs"] = _attrs_dict(f.attrs, json_keys=("domain_names",))
    if "input_ids" in out and "token_id" in out and not np.array_equal(out["token_id"], out["input_ids"][:, 1:]):
        raise _err(p, "not a valid token set (token_id != input_ids[:, 1:])")
    out.update(path=p, n_seqs=S, seq_len=T)
    return out


def token_set_info(path: os.PathLike | str, *, sha256: bool = True) -> dict:
    """Shape and attributes of a token set without loading its arrays (plus its sha256)."""
    p = Path(path)
    with _reading(p, "token set") as f:
        S, T = _check_token_set(f, p)
        attrs = _attrs_dict(f.attrs, json_keys=("domain_names",))
        scored = np.flatnonzero(f[SCORE_MASK][()]) if SCORE_MASK in f else None
    # n_tokens: the set's tokens (scored positions); positions: their flat s*T+t (None = every position)
    n = S * T if scored is None else int(scored.size)
    info = {"path": p, "n_seqs": S, "seq_len": T, "n_tokens": n, "attrs": attrs, "positions": scored}
    if sha256:
        info["sha256"] = sha256_file(p)
    return info


def write_token_set(out_path: str | Path, input_ids: np.ndarray, doc_id: np.ndarray, doc_pos: np.ndarray,
                    domain: np.ndarray, *, kind: str, domain_names: list[str], attrs: dict | None = None,
                    sample_index: np.ndarray | None = None, score_mask: np.ndarray | None = None) -> Path:
    """Write a token set HDF5 (``docs/formats.md``) atomically: ``input_ids`` (S, T+1); ``doc_id``, ``doc_pos`` and
    ``domain`` (S, T) of the target tokens; ``sample_index`` (S,) for a set of training samples; ``score_mask``
    (S, T) bool when only some positions are the set's tokens (a synthetic example's answer)."""
    input_ids = np.asarray(input_ids).astype(np.int32)
    out_path = Path(out_path)
    with atomic.atomic_output(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("input_ids", data=input_ids)
        f.create_dataset("token_id", data=input_ids[:, 1:])
        f.create_dataset("doc_id", data=np.asarray(doc_id).astype(np.int32))
        f.create_dataset("doc_pos", data=np.asarray(doc_pos).astype(np.int32))
        f.create_dataset("domain", data=np.asarray(domain).astype(np.int16))
        if sample_index is not None:
            f.create_dataset("sample_index", data=np.asarray(sample_index, dtype=np.int64))
        if score_mask is not None:
            f.create_dataset("score_mask", data=np.asarray(score_mask, dtype=bool))
        f.attrs["seq_len"] = input_ids.shape[1] - 1
        f.attrs["kind"] = kind
        f.attrs["domain_names"] = json.dumps(domain_names)
        f.attrs["tokenscale_version"] = __version__
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return out_path
