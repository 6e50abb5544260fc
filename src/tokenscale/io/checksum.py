"""File checksums and the one-line error naming a file, shared by every format of :mod:`tokenscale.io`.

Imports neither h5py nor numpy, so light modules (e.g. :mod:`tokenscale.reproduction.verify`, which the workflow's
DAG build imports) can hash a file without pulling in the HDF5 stack.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from tokenscale import TokenscaleError

__all__ = ["sha256_file"]


def _one_line(x: Any) -> str:
    return " ".join(str(x).split())


def _err(path: os.PathLike | str, msg: str) -> TokenscaleError:
    return TokenscaleError(_one_line(f"{path}: {msg}"))


def sha256_file(path: os.PathLike | str, *, bufsize: int = 1 << 22) -> str:
    """Hex sha256 of the file's bytes (read in blocks); a one-line error naming the file when it cannot be read."""
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
