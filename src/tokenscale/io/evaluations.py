"""The per-checkpoint evaluation formats: eval files, evaluation block folders and their manifests, val-loss rows.

An eval file (``docs/trajectories.md``) holds one checkpoint's per-token losses, dataset ``loss`` (N,) float32,
with ``loss_sha256`` and ``mean_loss``; readers verify both.  An evaluation block folder carries a
``MANIFEST.json`` written last (:func:`write_eval_manifest`), which :func:`eval_folder_files` requires and
verifies.  ``val_loss.csv`` rows come from eval files or from the checkpoints' in-loop validation.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np

from tokenscale import TokenscaleError, __version__, atomic
from tokenscale.io._h5 import (_VERIFY_BYTES, LOSS_SHA256, LossCheck, _atomic_h5, _attrs_dict, _mean_tolerance,
                               _reading, _to_attr)
from tokenscale.io.checksum import _err, sha256_file

__all__ = [
    "EVAL_FORMAT",
    "EVAL_MANIFEST",
    "MANIFEST_FORMAT",
    "write_eval_file",
    "read_eval_header",
    "read_eval_losses",
    "write_eval_manifest",
    "eval_folder_files",
    "expand_eval_paths",
    "val_loss_rows",
    "checkpoint_val_loss_rows",
]

EVAL_FORMAT = "tokenscale-eval-v1"
EVAL_MANIFEST = "MANIFEST.json"  # written last into an evaluation block folder
MANIFEST_FORMAT = "tokenscale-eval-manifest-v1"


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


