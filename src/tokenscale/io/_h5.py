"""Shared HDF5 helpers of the :mod:`tokenscale.io` formats (private).

Reading under one-line errors (:func:`_guard`, :func:`_open`, :func:`_reading`), attribute conversion
(:func:`_attr_value`, :func:`_attrs_dict`, :func:`_to_attr`), the atomic HDF5 writer (:func:`_atomic_h5`) and the
streaming loss integrity check (:class:`LossCheck`, :func:`_mean_tolerance`) of eval files and trajectory shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

import h5py
import numpy as np

from tokenscale import TokenscaleError, atomic
from tokenscale.io.checksum import _err

__all__ = ["LossCheck", "LOSS_SHA256", "LOSS_CRC32"]

# checksums of the loss values (little-endian float32 bytes, row-major): eval files carry a sha256; trajectory
# shards, read far more often and ~100x larger, a CRC-32 (1.3 ms per 5 MB against 3 ms for sha256 with SHA
# instructions, 10 ms without; decompressing a 5 MB shard takes ~12 ms).  docs/trajectories.md#integrity-checks
LOSS_SHA256 = "loss_sha256"
LOSS_CRC32 = "loss_crc32"
_VERIFY_BYTES = 4 * 2**20  # block size when verifying losses while reading (stays in cache)


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
