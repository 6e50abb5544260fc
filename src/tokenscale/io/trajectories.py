"""The trajectory-shard format (``docs/trajectories.md``): per-checkpoint eval files assembled into (n, K) shards.

A shard holds ``loss`` (n, K) float32 (token rows by checkpoints), ``axis/step`` and ``axis/tokens`` (K,), optional
``axis/<name>``, ``token_index`` (n,) and the tokens' ``meta/*`` from the token set, with ``loss_crc32``.  Writers
stream row blocks (the N x K matrix is never materialised); readers verify every loss and the checksum.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Sequence

import h5py
import numpy as np

from tokenscale import TokenscaleError, __version__, atomic
from tokenscale.io._h5 import (_VERIFY_BYTES, LOSS_CRC32, LossCheck, _atomic_h5, _attrs_dict, _guard, _open, _reading,
                               _to_attr)
from tokenscale.io.checksum import _err
from tokenscale.io.evaluations import read_eval_header
from tokenscale.io.tokensets import token_set_info

__all__ = [
    "TRAJ_FORMAT",
    "META_DATASETS",
    "CHUNK_ROWS",
    "shard_ranges",
    "write_trajectory_shards",
    "write_trajectory_shard",
    "read_trajectories",
    "read_run_trajectories",
]

META_DATASETS = ("doc_id", "doc_pos", "domain", "token_id")
TRAJ_FORMAT = "tokenscale-trajectories-v1"
CHUNK_ROWS = 4096
_BLOCK_BYTES = 256 * 2**20  # row-block budget when assembling shards


def shard_ranges(n_tokens: int, n_shards: int) -> list[tuple[int, int]]:
    """Contiguous, as-even-as-possible token ranges ``[lo, hi)`` covering ``range(n_tokens)``."""
    if n_shards < 1:
        raise TokenscaleError(f"number of shards must be >= 1, got {n_shards}")
    b = [(i * n_tokens) // n_shards for i in range(n_shards + 1)]
    return [(b[i], b[i + 1]) for i in range(n_shards)]


def _collect_evals(eval_paths: Sequence[os.PathLike | str], n_tokens: int, ts_sha: str,
                   axis: dict | None = None) -> list[dict]:
    """Eval headers ordered by step; with ``axis`` ({name, values}, one per path) in the given order instead,
    each header carrying its axis value (a frontier's members come from different runs)."""
    if not eval_paths:
        raise TokenscaleError("write_trajectory_shards: no eval files given")
    headers = [read_eval_header(p) for p in eval_paths]  # verifies every eval file's losses
    if axis is None:
        headers.sort(key=lambda h: int(h["step"]))
    else:
        _attach_axis(headers, axis)
    seen: dict = {}
    for h in headers:
        key = int(h["step"]) if axis is None else str(Path(h["path"]).resolve())
        if key in seen:
            raise _err(h["path"], f"duplicate {'step' if axis is None else 'checkpoint'} {key} (also in {seen[key]})")
        seen[key] = h["path"]
        if int(h["n_tokens"]) != n_tokens:
            raise _err(h["path"], f"eval has {h['n_tokens']} tokens but the token set has {n_tokens}")
        other = h.get("token_set_sha256")
        if other and other != ts_sha:
            raise _err(h["path"], f"evaluated on a different token set (sha256 {other[:12]}… != {ts_sha[:12]}…)")
    _check_same_tokenizer(headers)
    return headers


def _check_same_tokenizer(headers: list[dict]) -> None:
    """Every checkpoint that records its tokenizer records the same one (a frontier joins several runs)."""
    first: dict | None = None
    for h in headers:
        tok = str(h.get("tokenizer_sha256") or "")
        if not tok:
            continue
        if first is None:
            first = h
        elif tok != first["tokenizer_sha256"]:
            raise _err(h["path"], f"checkpoint {h.get('checkpoint', '')} has tokenizer sha256 {tok[:12]}…, but "
                                  f"{first.get('checkpoint', first['path'])} has {str(first['tokenizer_sha256'])[:12]}…: "
                                  "trajectories need one tokenizer")


def _attach_axis(headers: list[dict], axis: dict) -> None:
    """Give each header its value of the extra axis; the values must be finite and strictly increasing, and equal
    to the checkpoints' own where the axis is ``step`` or ``tokens``."""
    name, values = str(axis["name"]), np.asarray(axis["values"], dtype=np.float64)
    if values.shape != (len(headers),):
        raise TokenscaleError(f"axis {name}: {values.size} values for {len(headers)} eval files")
    if not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
        raise TokenscaleError(f"axis {name}: values must be finite and strictly increasing, got {values.tolist()}")
    own = {"step": "step", "tokens": "tokens_seen"}.get(name)
    for h, v in zip(headers, values):
        if own is not None and int(h[own]) != v:
            raise _err(h["path"], f"axis {name}: value {v:g} differs from the checkpoint's {own} {h[own]}")
        h["axis_value"] = float(v)
    headers[0]["axis_name"] = name


def _shard_attrs(attrs: dict, headers: list[dict], ts: dict) -> dict:
    latest = headers[-1]  # defaults come from the latest checkpoint
    base = {
        "run": attrs.get("run", latest.get("run", "")),
        "model": attrs.get("model", latest.get("model", "")),
        "config_sha256": attrs.get("config_sha256", latest.get("config_sha256", "")),
    }
    out = {**base, **{k: v for k, v in attrs.items() if k not in base}}
    out.update(
        format=TRAJ_FORMAT,
        package_version=__version__,
        checkpoints=[str(h.get("checkpoint", "")) for h in headers],
        eval_files=[str(h["path"]) for h in headers],
        token_set=str(ts["path"]),
        token_set_sha256=ts["sha256"],
        seq_len=int(ts["seq_len"]),
        n_seqs=int(ts["n_seqs"]),
        n_tokens_total=int(ts["n_tokens"]),
        domain_names=ts["attrs"].get("domain_names", []),
        token_set_kind=ts["attrs"].get("kind", ""),
    )
    return out


def _write_one_shard(
    out: Path, headers: list[dict], ts: dict, lo: int, hi: int, attrs: dict, shard_index: int, shard_count: int,
    *, compression: str = "gzip",
) -> None:
    n, K, T = hi - lo, len(headers), int(ts["seq_len"])
    steps = np.array([int(h["step"]) for h in headers], dtype=np.int64)
    tokens = np.array([int(h["tokens_seen"]) for h in headers], dtype=np.int64)
    chunk_rows = max(1, min(n, CHUNK_ROWS))
    # rows per block: a multiple of the chunk height so every chunk is written exactly once
    block = max(chunk_rows, (_BLOCK_BYTES // (4 * K)) // chunk_rows * chunk_rows)
    comp = {"compression": "gzip", "compression_opts": 4, "shuffle": True} if compression == "gzip" else {"compression": compression}
    with _atomic_h5(out) as f, contextlib.ExitStack() as stack:
        dset = f.create_dataset(
            "loss", shape=(n, K), dtype=np.float32, chunks=(chunk_rows, K) if n else None, **(comp if n else {})
        )
        f.create_dataset("axis/step", data=steps)
        f.create_dataset("axis/tokens", data=tokens)
        extra = headers[0].get("axis_name")
        if extra not in (None, "step", "tokens"):
            f.create_dataset(f"axis/{extra}", data=np.array([h["axis_value"] for h in headers], dtype=np.float64))
        pos = np.arange(lo, hi, dtype=np.int64) if ts.get("positions") is None else ts["positions"][lo:hi]
        f.create_dataset("token_index", data=pos)
        # metadata: read only the token-set rows covering the shard's positions
        s0, s1 = (int(pos[0]) // T, int(pos[-1]) // T + 1) if n else (0, 0)
        with _reading(ts["path"], "token set") as tf:
            meta = {name: tf[name][s0:s1] for name in META_DATASETS}
        for name, rows in meta.items():
            f.create_dataset(f"meta/{name}", data=rows.reshape(-1)[pos - s0 * T])
        del meta
        evals = []
        for h in headers:
            ef = _open(h["path"], "eval")
            stack.callback(ef.close)
            evals.append(ef)
        buf = np.empty((min(block, n), K), dtype=np.float32)
        # checksum of the (n, K) matrix, fed block by block in row order (the evals were verified already)
        check = LossCheck(out, digest="crc32", hint="an eval file changed while it was being assembled; rerun")
        for b0 in range(0, n, block):
            b1 = min(n, b0 + block)
            for k, (ef, h) in enumerate(zip(evals, headers)):
                with _guard(h["path"], "eval"):
                    ef["loss"].read_direct(buf, np.s_[lo + b0 : lo + b1], np.s_[: b1 - b0, k])
            check.update(buf[: b1 - b0])
            dset[b0:b1] = buf[: b1 - b0]
        full = _shard_attrs(attrs, headers, ts)
        full.update(shard_index=int(shard_index), shard_count=int(shard_count), token_start=int(lo), token_stop=int(hi))
        full[LOSS_CRC32] = check.hexdigest()
        for k, v in full.items():
            f.attrs[k] = _to_attr(v)


def write_trajectory_shards(
    eval_paths: Sequence[os.PathLike | str],
    token_set_path: os.PathLike | str,
    out_paths: Sequence[os.PathLike | str],
    *,
    attrs: dict,
    compression: str = "gzip",
) -> None:
    """Assemble per-checkpoint eval files into ``len(out_paths)`` trajectory shards.

    Checkpoints are ordered by step (K of them); token rows 0..N-1 are split into contiguous,
    even ranges, shard ``i`` -> ``out_paths[i]``.  Memory is bounded by one row block
    (~256 MiB) per shard; the N×K matrix is never materialised.  Each shard is written atomically;
    all shards are written to ``*.tmp`` first and only then renamed.
    """
    if not out_paths:
        raise TokenscaleError("write_trajectory_shards: no output paths given")
    outs = [Path(p) for p in out_paths]
    if len(set(outs)) != len(outs):
        raise TokenscaleError("write_trajectory_shards: duplicate output paths")
    ts = token_set_info(token_set_path)
    headers = _collect_evals(eval_paths, ts["n_tokens"], ts["sha256"])
    ranges = shard_ranges(ts["n_tokens"], len(outs))
    # write every shard (atomically, fsynced) under a private ``.part`` name, then rename them all: a
    # crash never leaves a partial set of *final* shard files from this call.
    staged: list[tuple[Path, Path]] = []
    try:
        for i, (out, (lo, hi)) in enumerate(zip(outs, ranges)):
            staging = out.with_name(out.name + ".part")
            _write_one_shard(staging, headers, ts, lo, hi, attrs, i, len(outs), compression=compression)
            staged.append((staging, out))
        for staging, out in staged:
            os.replace(staging, out)
        for d in {o.parent for o in outs}:
            atomic.fsync_dir(d)
    except BaseException:
        for staging, _ in staged:
            atomic.remove(staging)
        raise


def write_trajectory_shard(
    eval_paths: Sequence[os.PathLike | str],
    token_set_path: os.PathLike | str,
    out_path: os.PathLike | str,
    *,
    attrs: dict,
    token_range: tuple[int, int] | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    compression: str = "gzip",
    axis: dict | None = None,
) -> Path:
    """Write one trajectory shard covering ``token_range`` (default: all tokens); atomic.

    Useful to build shards in parallel jobs: shard ``i`` of ``n`` uses
    ``token_range=shard_ranges(N, n)[i], shard_index=i, shard_count=n``.  ``axis`` ({name, values}, one value
    per eval file, strictly increasing) keeps the files in the given order (members of different runs, e.g. a
    frontier) and, unless the name is ``step`` or ``tokens``, adds ``axis/<name>`` to the shard.
    """
    ts = token_set_info(token_set_path)
    headers = _collect_evals(eval_paths, ts["n_tokens"], ts["sha256"], axis)
    lo, hi = token_range if token_range is not None else (0, ts["n_tokens"])
    if not (0 <= lo <= hi <= ts["n_tokens"]):
        raise TokenscaleError(f"token_range {token_range} outside [0, {ts['n_tokens']}]")
    out = Path(out_path)
    _write_one_shard(out, headers, ts, int(lo), int(hi), attrs, shard_index, shard_count, compression=compression)
    return out


_REQUIRED_TRAJ = ("loss", "axis/step", "axis/tokens", "token_index", *(f"meta/{m}" for m in META_DATASETS))


def _read_traj(p: Path, load_loss: bool = True) -> tuple[np.ndarray | None, dict, dict]:
    with _reading(p, "trajectory") as f:
        for name in _REQUIRED_TRAJ:
            if name not in f or not isinstance(f[name], h5py.Dataset):
                raise _err(p, f"not a valid trajectory shard (missing dataset '{name}')")
        ls = f["loss"]
        if ls.ndim != 2:
            raise _err(p, f"not a valid trajectory shard (loss shape {ls.shape}, expected (n, K))")
        n, K = ls.shape
        if f["axis/step"].shape != (K,) or f["axis/tokens"].shape != (K,):
            raise _err(p, f"not a valid trajectory shard (axis shapes {f['axis/step'].shape}/{f['axis/tokens'].shape} != ({K},))")
        for name in ("token_index", *(f"meta/{m}" for m in META_DATASETS)):
            if f[name].shape != (n,):
                raise _err(p, f"not a valid trajectory shard ({name} shape {f[name].shape} != ({n},))")
        loss, check = _read_shard_loss(ls, p) if load_loss else (None, None)
        axis = {"step": f["axis/step"][()].astype(np.int64), "tokens": f["axis/tokens"][()].astype(np.int64)}
        for name, ds in f["axis"].items():
            if name not in axis:
                if ds.shape != (K,):
                    raise _err(p, f"not a valid trajectory shard (axis/{name} shape {ds.shape} != ({K},))")
                axis[name] = ds[()].astype(np.float64)
        meta: dict[str, Any] = {m: f[f"meta/{m}"][()] for m in META_DATASETS}
        meta["token_index"] = f["token_index"][()]
        meta["attrs"] = _attrs_dict(f.attrs, json_keys=("checkpoints", "eval_files", "domain_names"))
    if check is not None:
        check.verify(meta["attrs"].get(LOSS_CRC32))
    return loss, axis, meta


def _read_shard_loss(ls: h5py.Dataset, p: Path) -> tuple[np.ndarray, LossCheck]:
    """Read a shard's ``loss`` in chunk-aligned row blocks of ~4 MiB, checking and checksumming each block
    right after it is decompressed (still in cache); the caller ``verify``-s the returned check."""
    n, K = ls.shape
    check = LossCheck(p, digest="crc32", hint="rerun its assemble job")
    if ls.dtype != np.float32 or not ls.chunks or n == 0:
        loss = np.ascontiguousarray(ls[()], dtype=np.float32)
        check.update(loss)
    else:
        loss = np.empty((n, K), dtype=np.float32)
        rows = max(1, _VERIFY_BYTES // (4 * max(K, 1)) // ls.chunks[0]) * ls.chunks[0]
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            ls.read_direct(loss, np.s_[r0:r1], np.s_[r0:r1])
            check.update(loss[r0:r1])
    return loss, check


def read_trajectories(path: os.PathLike | str) -> tuple[np.ndarray, dict, dict]:
    """Read one trajectory shard (verified: losses finite and >= 0, ``loss_crc32`` when stored).

    Returns ``(losses (n, K) float32 nats, {"step": (K,) int64, "tokens": (K,) int64},
    {"doc_id", "doc_pos", "domain", "token_id", "token_index": (n,), "attrs": {...}})``.
    JSON attributes (``checkpoints``, ``eval_files``, ``domain_names``) are decoded.
    """
    loss, axis, meta = _read_traj(Path(path))
    assert loss is not None
    return loss, axis, meta


def read_run_trajectories(paths: Sequence[os.PathLike | str]) -> tuple[np.ndarray, dict, dict]:
    """Read and concatenate all shards of one run (any order given; ordered by shard index).

    Checks that the shards share the same axis and together cover every shard index exactly once.
    ``meta["attrs"]`` is the first shard's attrs without the per-shard keys, plus ``shards``
    (the paths in order).
    """
    if not paths:
        raise TokenscaleError("read_run_trajectories: no shard paths given")
    parts = [(Path(p), *_read_traj(Path(p))) for p in paths]
    parts.sort(key=lambda x: int(x[3]["attrs"].get("shard_index", 0)))
    p0, _, axis0, meta0 = parts[0]
    count = int(meta0["attrs"].get("shard_count", 1))
    idx = [int(m["attrs"].get("shard_index", 0)) for _, _, _, m in parts]
    if idx != list(range(count)):
        missing = sorted(set(range(count)) - set(idx))
        what = f"missing shard index {missing[0]} of {count}" if missing else f"shard indices {idx} do not match shard_count={count}"
        raise _err(p0.parent, what)
    for p, _, axis, meta in parts[1:]:
        if axis.keys() != axis0.keys() or not all(np.array_equal(axis[k], axis0[k]) for k in axis0):
            raise _err(p, f"checkpoint axis differs from {p0.name}")
        if int(meta["attrs"].get("shard_count", 1)) != count:
            raise _err(p, f"shard_count differs from {p0.name}")
        if meta["attrs"].get("token_set_sha256") != meta0["attrs"].get("token_set_sha256"):
            raise _err(p, f"token set differs from {p0.name}")
    losses = np.concatenate([x[1] for x in parts], axis=0)
    meta: dict[str, Any] = {k: np.concatenate([x[3][k] for x in parts]) for k in (*META_DATASETS, "token_index")}
    attrs = {k: v for k, v in meta0["attrs"].items() if k not in ("shard_index", "token_start", "token_stop")}
    attrs["shards"] = [str(x[0]) for x in parts]
    meta["attrs"] = attrs
    return losses, axis0, meta
