"""Which outputs of two results trees are bit-identical, and how far the headline numbers of the rest moved.

Used by ``scripts/determinism.py`` (reruns, thread counts, CPU instruction-set caps; docs/determinism.md) and by
the test that two smoke runs on one machine give bit-identical trajectories and fits. Three kinds of output:

* **weights**: every checkpoint's ``model.safetensors`` (byte comparison of the file);
* **arrays**: every dataset of the trajectory shards and fit tables (``series/*/trajectories/*.h5``,
  ``series/*/fits.h5``), compared with NaN equal to NaN;
* **numbers**: the headline numbers of :mod:`tokenscale.reproduction.verify`: identical, or the largest absolute and relative
  difference.
"""

from __future__ import annotations

import math
from pathlib import Path

from tokenscale.reproduction.verify import headline_numbers

ARRAY_GLOBS = ("series/*/trajectories/*.h5", "series/*/fits.h5")


def h5_arrays(path: Path) -> dict:
    import h5py

    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def arrays_equal(a, b) -> bool:
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def compare_weights(a: Path, b: Path) -> dict[str, bool]:
    """``{checkpoint file: identical}`` over the checkpoints both trees have."""
    names = {p.relative_to(a).as_posix() for p in a.glob("runs/*/checkpoints/*/model.safetensors")}
    names &= {p.relative_to(b).as_posix() for p in b.glob("runs/*/checkpoints/*/model.safetensors")}
    return {n: (a / n).read_bytes() == (b / n).read_bytes() for n in sorted(names)}


def compare_arrays(a: Path, b: Path) -> dict[str, bool]:
    """``{file/dataset: identical}`` over the trajectory shards and fit tables both trees have."""
    out = {}
    for pattern in ARRAY_GLOBS:
        for pa in sorted(a.glob(pattern)):
            rel = pa.relative_to(a).as_posix()
            if not (b / rel).is_file():
                continue
            da, db = h5_arrays(pa), h5_arrays(b / rel)
            for name in sorted(set(da) | set(db)):
                out[f"{rel}/{name}"] = name in da and name in db and arrays_equal(da[name], db[name])
    return out


def number_differences(a: Path, b: Path) -> dict[str, dict]:
    """Per headline number in both trees: ``{"a", "b", "abs", "rel"}`` (abs/rel 0 when identical)."""
    return differences(headline_numbers(a), headline_numbers(b))


def differences(na: dict, nb: dict) -> dict[str, dict]:
    """``{file: {key: value}}`` twice (trees' or a reference's numbers) -> per number in both the differences."""
    out = {}
    for file in sorted(set(na) & set(nb)):
        for key in sorted(set(na[file]) & set(nb[file])):
            x, y = na[file][key], nb[file][key]
            if x is None or y is None or (isinstance(x, float) and math.isnan(x)) or (
                    isinstance(y, float) and math.isnan(y)):
                d = 0.0 if (x is None and y is None) or (x != x and y != y) else math.inf
                out[f"{file}:{key}"] = {"a": x, "b": y, "abs": d, "rel": d}
                continue
            d = abs(float(y) - float(x))
            out[f"{file}:{key}"] = {"a": x, "b": y, "abs": d, "rel": d / abs(x) if x else (0.0 if d == 0 else math.inf)}
    return out


def compare_trees(a: Path, b: Path) -> dict:
    """The three comparisons, and a summary: how many of each kind are identical."""
    w, arr, num = compare_weights(a, b), compare_arrays(a, b), number_differences(a, b)
    summary = {kind: {"n": len(d), "identical": sum(bool(v) for v in d.values())}
               for kind, d in (("weights", w), ("arrays", arr))}
    summary["numbers"] = {"n": len(num), "identical": sum(v["abs"] == 0 for v in num.values())}
    return {"summary": summary, "weights": w, "arrays": arr, "numbers": num}
