"""HDF5 I/O for token sets, per-checkpoint evaluations and token-loss trajectory shards.

Layouts are documented in ``docs/formats.md`` (token sets, checkpoints) and
``docs/trajectories.md`` (per-checkpoint evals and trajectory shards).

This is an analysis module: it imports neither torch nor deepspeed.

Atomicity: every writer goes through :func:`tokenscale.atomic.atomic_output` (``<out>.tmp``, fsync,
``os.replace``).  A killed job therefore leaves at most a ``*.tmp`` file, which no reader ever opens; and
every reader validates the required datasets and their shapes, so a truncated/corrupted final file is
rejected with a one-line :class:`tokenscale.TokenscaleError` naming the file.

Integrity: eval files store ``loss_sha256`` and trajectory shards ``loss_crc32`` (of the loss values as
little-endian float32 bytes, row-major); readers check that every loss is finite and >= 0, that the
checksum matches (when stored) and, for eval files, that the stored ``mean_loss`` matches the data.  An
evaluation block folder carries a ``MANIFEST.json`` written last (:func:`write_eval_manifest`), which
:func:`eval_folder_files` requires and verifies.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import h5py
import numpy as np

from tokenscale import TokenscaleError, __version__, atomic

__all__ = [
    "sha256_file",
    "read_token_set",
    "token_set_info",
    "write_eval_file",
    "read_eval_header",
    "read_eval_losses",
    "write_eval_manifest",
    "eval_folder_files",
    "expand_eval_paths",
    "LossCheck",
    "VAL_LOSS_HEADER",
    "write_val_loss_csv",
    "val_loss_rows",
    "checkpoint_val_loss_rows",
    "write_trajectory_shards",
    "write_trajectory_shard",
    "read_trajectories",
    "read_run_trajectories",
    "shard_ranges",
]

TOKEN_SET_DATASETS = ("input_ids", "token_id", "doc_id", "doc_pos", "domain")
# optional (S, T) bool: the positions whose losses are the set's tokens (e.g. the answer of a synthetic example);
# evals hold those positions only, in row-major order, and trajectory token_index names their flat s*T+t
SCORE_MASK = "score_mask"
META_DATASETS = ("doc_id", "doc_pos", "domain", "token_id")
EVAL_FORMAT = "tokenscale-eval-v1"
TRAJ_FORMAT = "tokenscale-trajectories-v1"
CHUNK_ROWS = 4096
_BLOCK_BYTES = 256 * 2**20  # row-block budget when assembling shards
# checksums of the loss values (little-endian float32 bytes, row-major): eval files carry a sha256; trajectory
# shards, read far more often and ~100x larger, a CRC-32 (1.3 ms per 5 MB against 3 ms for sha256 with SHA
# instructions, 10 ms without; decompressing a 5 MB shard takes ~12 ms).  docs/trajectories.md#integrity-checks
LOSS_SHA256 = "loss_sha256"
LOSS_CRC32 = "loss_crc32"
EVAL_MANIFEST = "MANIFEST.json"  # written last into an evaluation block folder
MANIFEST_FORMAT = "tokenscale-eval-manifest-v1"
_VERIFY_BYTES = 4 * 2**20  # block size when verifying losses while reading (stays in cache)


# ----------------------------------------------------------------------------- helpers
def _one_line(x: Any) -> str:
    return " ".join(str(x).split())


def _err(path: os.PathLike | str, msg: str) -> TokenscaleError:
    return TokenscaleError(_one_line(f"{path}: {msg}"))


@contextlib.contextmanager
def _guard(path: os.PathLike | str, what: str) -> Iterator[None]:
    """Turn h5py failures raised while *reading* ``path`` into a one-line TokenscaleError.

    Only wrap reads with this: an error raised inside is attributed to ``path``.
    """
    p = Path(path)
    try:
        yield
    except TokenscaleError:
        raise
    except KeyError as e:  # missing dataset / attribute
        raise _err(p, f"not a valid {what} file (missing {e.args[0] if e.args else e})") from None
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        raise _err(p, f"cannot read {what} file (truncated or corrupt?): {e}") from None


def _open(path: os.PathLike | str, what: str) -> h5py.File:
    p = Path(path)
    if not p.is_file():
        raise _err(p, f"{what} file not found")
    with _guard(p, what):
        return h5py.File(p, "r")


@contextlib.contextmanager
def _reading(path: os.PathLike | str, what: str) -> Iterator[h5py.File]:
    """Open an HDF5 file for reading inside :func:`_guard`; the body must only read."""
    f = _open(path, what)
    try:
        with _guard(path, what):
            yield f
    finally:
        f.close()


def _attr_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _attrs_dict(obj: h5py.AttributeManager, json_keys: Iterable[str] = ()) -> dict:
    out = {k: _attr_value(obj[k]) for k in obj.keys()}
    for k in json_keys:
        if k in out and isinstance(out[k], str):
            try:
                out[k] = json.loads(out[k])
            except json.JSONDecodeError:
                pass
    return out


def _to_attr(v: Any) -> Any:
    """Make a value storable as an HDF5 attribute (containers and None become JSON strings)."""
    if v is None or isinstance(v, (dict, list, tuple)):
        return json.dumps(v)
    if isinstance(v, (str, Path)):  # str subclasses (np.str_, TorchVersion) -> plain str
        return str(v)
    if isinstance(v, (bool, int, float, np.generic)):
        return v
    return str(v)


@contextlib.contextmanager
def _atomic_h5(out_path: os.PathLike | str) -> Iterator[h5py.File]:
    """An HDF5 file written through :func:`tokenscale.atomic.atomic_output` (tmp, fsync, rename)."""
    with atomic.atomic_output(out_path) as tmp, h5py.File(tmp, "w") as f:
        yield f
        f.flush()


class LossCheck:
    """Streaming integrity check of a loss array fed in row-major order, block by block.

    ``update(block)`` checks that every value is finite and >= 0 (else a one-line error naming ``path``
    and the first bad element) and feeds the block's little-endian float32 bytes to the checksum
    (``digest``: ``"sha256"`` or ``"crc32"``); with ``total=True`` it also sums the values in float64.
    ``feed(block)`` checksums other arrays (e.g. the sigmoid fits) as they are: their little-endian bytes
    in their own dtype, without the value check.  ``hexdigest()`` is the checksum as stored (``attr``,
    default ``loss_sha256`` / ``loss_crc32``, lowercase hex): it depends only on the values, not on how
    they were split into blocks.  ``hint`` ends the error messages; ``what`` names the data in them.
    """

    def __init__(self, path: os.PathLike | str, *, digest: str = "sha256", hint: str = "", total: bool = False,
                 attr: str | None = None, what: str = "loss data"):
        if digest not in ("sha256", "crc32"):
            raise ValueError(f"unknown digest {digest!r}")
        self.path, self.digest, self.hint, self.rows = Path(path), digest, hint, 0
        self.attr, self.what = attr or f"loss_{digest}", what
        self.total: float | None = 0.0 if total else None
        self._sha = hashlib.sha256() if digest == "sha256" else None
        self._crc = 0

    def update(self, block: np.ndarray) -> None:
        b = np.ascontiguousarray(block, dtype="<f4")
        if b.size:
            lo, hi = b.min(), b.max()  # NaN propagates into both; two passes without temporaries
            if not (lo >= 0 and hi < np.inf):
                bad = np.unravel_index(int(np.flatnonzero(~((b >= 0) & (b < np.inf)))[0]), b.shape)
                idx = ", ".join(str(int(i) + (self.rows if j == 0 else 0)) for j, i in enumerate(bad))
                raise _err(self.path, f"loss[{idx}] = {float(b[bad])!r} is not a finite, non-negative loss"
                                      + (f" (corrupt file; {self.hint})" if self.hint else ""))
            if self.total is not None:
                self.total += float(np.sum(b, dtype=np.float64))
        self._digest(b)

    def feed(self, block: np.ndarray) -> None:
        """Checksum ``block`` as it is (little-endian, its own dtype), without the loss-value check."""
        b = np.asarray(block)
        self._digest(np.ascontiguousarray(b, dtype=b.dtype.newbyteorder("<")))

    def _digest(self, b: np.ndarray) -> None:
        if self._sha is not None:
            self._sha.update(b)
        else:
            self._crc = zlib.crc32(b, self._crc)
        self.rows += b.shape[0] if b.ndim else 1

    def hexdigest(self) -> str:
        return self._sha.hexdigest() if self._sha is not None else f"{self._crc:08x}"

    def verify(self, stored: Any) -> None:
        """Compare with the stored checksum (skipped when the file has none: older files, other tools)."""
        if stored is None:
            return
        if str(stored) != self.hexdigest():
            raise _err(self.path, f"{self.what} do not match the stored {self.attr} (file altered or corrupt)"
                                  + (f"; {self.hint}" if self.hint else ""))


def _mean_tolerance(n: int, mean: float) -> float:
    """Largest difference between two float64 means of the same ``n`` non-negative float32 values.

    float32 -> float64 is exact, so two computations differ only by summation order; any order is within
    ``(n-1)·u·Σx`` of the exact sum (u = 2**-53), so two of them are within ``2·n·u·mean`` after the division.
    A valid file never fails this, whatever tool or order computed ``mean_loss``; smaller edits are left
    to the checksum.
    """
    return (n + 2) * 2.0**-52 * abs(mean)


def sha256_file(path: os.PathLike | str, *, bufsize: int = 1 << 22) -> str:
    p = Path(path)
    h = hashlib.sha256()
    try:
        with open(p, "rb") as fh:
            while True:
                b = fh.read(bufsize)
                if not b:
                    break
                h.update(b)
    except OSError as e:
        raise _err(p, f"cannot read file: {e.strerror or e}") from None
    return h.hexdigest()


# ----------------------------------------------------------------------------- token sets
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


# ----------------------------------------------------------------------------- per-checkpoint evals
def write_eval_file(out_path: os.PathLike | str, losses: np.ndarray, attrs: dict) -> Path:
    """Atomically write a per-checkpoint eval file: dataset ``loss`` (N,) float32 + attrs.

    ``losses`` may be (S, T) or (N,); it is stored flattened row-major (token instance ``s*T+t``).
    ``attrs`` must contain ``step`` and ``tokens_seen``.  Every loss must be finite and >= 0.  Adds
    ``loss_sha256`` and, unless given (then it must match), ``mean_loss`` (float64 mean).
    """
    out = Path(out_path)
    loss = np.ascontiguousarray(losses, dtype=np.float32).reshape(-1)
    for key in ("step", "tokens_seen"):
        if key not in attrs or attrs[key] is None:
            raise _err(out, f"eval attrs need '{key}'")
    check = LossCheck(out)
    check.update(loss)
    attrs = dict(attrs)
    if loss.size:
        mean = float(np.mean(loss, dtype=np.float64))
        given = attrs.setdefault("mean_loss", mean)
        if not abs(float(given) - mean) <= _mean_tolerance(loss.size, mean):
            raise _err(out, f"eval attrs mean_loss={given!r} but the losses have mean {mean!r}")
    attrs[LOSS_SHA256] = check.hexdigest()
    with _atomic_h5(out) as f:
        f.create_dataset("loss", data=loss, chunks=(min(max(loss.size, 1), 1 << 16),) if loss.size else None)
        f.attrs["format"] = EVAL_FORMAT
        f.attrs["package_version"] = __version__
        f.attrs["n_tokens"] = int(loss.size)
        for k, v in attrs.items():
            f.attrs[k] = _to_attr(v)
    return out


_EVAL_RERUN = "rerun its evaluate job"


def _eval_header(f: h5py.File, p: Path) -> dict:
    if "loss" not in f or not isinstance(f["loss"], h5py.Dataset):
        raise _err(p, "not a valid eval file (missing dataset 'loss')")
    d = f["loss"]
    if d.ndim != 1 or d.dtype != np.float32:
        raise _err(p, f"not a valid eval file (loss shape {d.shape} dtype {d.dtype}, expected (N,) float32)")
    attrs = _attrs_dict(f.attrs)
    for key in ("step", "tokens_seen", "n_tokens"):
        if key not in attrs:
            raise _err(p, f"not a valid eval file (missing attribute '{key}')")
    if int(attrs["n_tokens"]) != d.shape[0]:
        raise _err(p, f"not a valid eval file (loss has {d.shape[0]} rows, n_tokens={attrs['n_tokens']})")
    return attrs


def _verify_eval_loss(f: h5py.File, p: Path, attrs: dict, *, keep: bool) -> np.ndarray | None:
    """Read ``loss`` block by block: finite and >= 0, ``loss_sha256`` (if stored), ``mean_loss`` (if stored)."""
    d = f["loss"]
    n = d.shape[0]
    out = np.empty(n, dtype=np.float32) if keep else None
    step = max(1, _VERIFY_BYTES // 4)
    buf = np.empty(min(n, step), dtype=np.float32)
    check = LossCheck(p, hint=_EVAL_RERUN, total=True)
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        dst = out[i0:i1] if out is not None else buf[: i1 - i0]
        d.read_direct(dst, np.s_[i0:i1])
        check.update(dst)
    check.verify(attrs.get(LOSS_SHA256))
    stored = attrs.get("mean_loss")
    if stored is not None and n:
        mean = check.total / n
        if not abs(float(stored) - mean) <= _mean_tolerance(n, mean):
            raise _err(p, f"stored mean_loss {float(stored)!r} does not match the loss data (mean {mean!r}): "
                          f"file altered or corrupt; {_EVAL_RERUN}")
    return out


def read_eval_header(path: os.PathLike | str, *, verify: bool = True) -> dict:
    """Validate a per-checkpoint eval file and return its attrs (+ ``path``, ``n_tokens``).

    ``verify`` (default) also reads the losses and checks them (finite, >= 0, ``loss_sha256`` and
    ``mean_loss`` when stored); ``verify=False`` only checks the structure.
    """
    p = Path(path)
    with _reading(p, "eval") as f:
        attrs = _eval_header(f, p)
        if verify:
            _verify_eval_loss(f, p, attrs, keep=False)
    attrs["path"] = p
    return attrs


def read_eval_losses(path: os.PathLike | str) -> tuple[np.ndarray, dict]:
    """Read and verify a per-checkpoint eval file: ``(loss (N,) float32, attrs)``."""
    p = Path(path)
    with _reading(p, "eval") as f:
        attrs = _eval_header(f, p)
        loss = _verify_eval_loss(f, p, attrs, keep=True)
    attrs["path"] = p
    assert loss is not None
    return loss, attrs


def _manifest_rerun(folder: Path) -> str:
    return f"rerun its evaluate job (snakemake --forcerun evaluate_checkpoint, or delete {folder})"


def write_eval_manifest(folder: os.PathLike | str, eval_files: Sequence[os.PathLike | str], *,
                        checkpoints: Sequence[os.PathLike | str]) -> Path:
    """Write ``<folder>/MANIFEST.json`` (atomically; call it after every eval file is written).

    Lists each eval file (which must be in ``folder``) with its sha256, size and checkpoint; a folder
    without it is an unfinished evaluation job (:func:`eval_folder_files`).
    """
    d = Path(folder)
    files = [Path(x) for x in eval_files]
    if len(checkpoints) != len(files):
        raise TokenscaleError(f"{d}: {len(files)} eval files but {len(checkpoints)} checkpoints")
    entries: dict[str, dict] = {}
    for x, ckpt in zip(files, checkpoints):
        if x.parent.resolve() != d.resolve():
            raise _err(x, f"not inside the evaluation folder {d}")
        if x.name in entries:
            raise _err(x, "listed twice")
        entries[x.name] = {"sha256": sha256_file(x), "size": x.stat().st_size, "checkpoint": str(ckpt)}
    manifest = {"format": MANIFEST_FORMAT, "package_version": __version__,
                "checkpoints": [str(c) for c in checkpoints], "files": entries}
    return atomic.write_json(d / EVAL_MANIFEST, manifest)


def _read_manifest(d: Path) -> dict:
    """``files`` of a block folder's manifest; one-line errors when it is missing or unreadable."""
    mp = d / EVAL_MANIFEST
    rerun = _manifest_rerun(d)
    if not d.is_dir():
        raise _err(d, "evaluation folder not found")
    if not mp.is_file():
        raise _err(d, f"evaluation folder has no {EVAL_MANIFEST}, so its evaluate job did not finish; {rerun}")
    try:
        m = json.loads(mp.read_text())
    except (OSError, ValueError) as e:
        raise _err(mp, f"cannot read the evaluation manifest ({e}); {rerun}") from None
    files = m.get("files") if isinstance(m, dict) else None
    if not isinstance(m, dict) or m.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        raise _err(mp, f"not a valid evaluation manifest (format {MANIFEST_FORMAT}); {rerun}")
    if not files:
        raise _err(mp, f"evaluation manifest lists no eval files; {rerun}")
    for name, entry in files.items():
        if Path(name).name != name or not isinstance(entry, dict):
            raise _err(mp, f"not a valid evaluation manifest (entry {name!r}); {rerun}")
    return files


def _check_listed(x: Path, files: dict) -> None:
    """``x`` is listed in its folder's manifest ``files`` and has the listed size and sha256."""
    rerun = _manifest_rerun(x.parent)
    entry = files.get(x.name)
    if entry is None:
        raise _err(x, f"eval file not listed in {EVAL_MANIFEST} (left over or added later); {rerun}")
    if not x.is_file():
        raise _err(x, f"eval file listed in {EVAL_MANIFEST} is missing; {rerun}")
    size = x.stat().st_size
    if size != entry.get("size"):
        raise _err(x, f"eval file has {size} bytes, {EVAL_MANIFEST} says {entry.get('size')} (changed or truncated); {rerun}")
    if sha256_file(x) != entry.get("sha256"):
        raise _err(x, f"eval file sha256 differs from {EVAL_MANIFEST} (changed or corrupt); {rerun}")


def eval_folder_files(folder: os.PathLike | str) -> list[Path]:
    """The eval files of an evaluation block folder, verified against its ``MANIFEST.json``.

    The manifest must exist (else the evaluate job did not finish), every listed file must be there with
    the listed size and sha256, and no other ``step*.h5`` may be present.  Errors are one line naming the
    folder or file and saying to rerun the evaluate job.
    """
    d = Path(folder)
    files = _read_manifest(d)
    extra = sorted(x.name for x in d.glob("step*.h5") if x.name not in files)
    if extra:
        _check_listed(d / extra[0], files)  # raises: not listed
    out = [d / name for name in sorted(files)]
    for x in out:
        _check_listed(x, files)
    return out


VAL_LOSS_HEADER = "step,tokens_seen,val_loss"


def write_val_loss_csv(path: os.PathLike | str, rows: Iterable[tuple[int, int, float]]) -> Path:
    """``val_loss.csv`` of a run: one ``step,tokens_seen,val_loss`` row per checkpoint, by step (atomic)."""
    body = "".join(f"{step},{tokens},{loss:.9g}\n" for step, tokens, loss in sorted(rows))
    atomic.write_text(path, VAL_LOSS_HEADER + "\n" + body)
    return Path(path)


def val_loss_rows(eval_paths: Sequence[os.PathLike | str]) -> list[tuple[int, int, float]]:
    """``(step, tokens_seen, mean loss)`` of every verified eval file (files or block folders), by step.

    The mean is the file's float64 mean of its per-token losses: the trainer's in-loop validation loss when the
    files evaluate the run's validation token set (``tokenscale.evaluation.evaluate.mean_loss`` is the same mean)."""
    rows = {}
    for path in expand_eval_paths(eval_paths):
        head = read_eval_header(path)
        step = int(head["step"])
        if step in rows:
            raise TokenscaleError(f"{path}: a second eval file for step {step} ({rows[step][3]})")
        rows[step] = (step, int(head["tokens_seen"]), float(head["mean_loss"]), path)
    if not rows:
        raise TokenscaleError("no eval files given")
    return [r[:3] for _, r in sorted(rows.items())]


def checkpoint_val_loss_rows(run_dir: os.PathLike | str) -> list[tuple[int, int, float]]:
    """``(step, tokens_seen, val_loss)`` of a run's complete checkpoints, from the in-loop validation recorded in
    each checkpoint's ``tokenscale.json``."""
    rows = []
    for d in sorted((Path(run_dir) / "checkpoints").glob("step*")):
        if not (d / "COMPLETE").is_file():
            continue
        meta = json.loads((d / "tokenscale.json").read_text())
        if meta.get("val_loss") is None:
            raise TokenscaleError(f"{d}: no in-loop validation loss (the run has in_loop_validation: false; "
                                  "use the per-token evaluation: tokenscale val-loss --evals)")
        rows.append((int(meta["step"]), int(meta["tokens_seen"]), float(meta["val_loss"])))
    if not rows:
        raise TokenscaleError(f"{run_dir}: no complete checkpoint")
    return rows


def _is_block_folder(d: Path) -> bool:
    return (d / EVAL_MANIFEST).exists() or (d.name.startswith("block-") and d.name[6:].isdigit())


def expand_eval_paths(paths: Sequence[os.PathLike | str]) -> list[Path]:
    """Eval files given directly or as evaluation block folders, checked against the block manifests.

    A folder gives every file of :func:`eval_folder_files`.  A file inside a block folder (one named
    ``block-<N>`` or holding a ``MANIFEST.json``) must be listed in, and match, that folder's manifest, so
    picking single files out of an unfinished or altered block is refused too.  Other files are returned
    as they are (the eval readers check them).
    """
    out: list[Path] = []
    manifests: dict[Path, dict] = {}
    for p in map(Path, paths):
        if p.is_dir():
            out += eval_folder_files(p)
            continue
        if _is_block_folder(p.parent):
            if p.parent not in manifests:
                manifests[p.parent] = _read_manifest(p.parent)
            _check_listed(p, manifests[p.parent])
        out.append(p)
    return out


# ----------------------------------------------------------------------------- trajectory shards
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
