#!/usr/bin/env python
"""Compare two results trees number by number: trajectory shards, fit tables and summary.json of every series.

Usage: scripts/compare-results.py RESULTS_A RESULTS_B
Reads both layouts (series/{name}/... and the older runs/{name}/...). Prints one line per file and exits 1 if
any dataset or summary number differs (bitwise; NaN equals NaN). Attributes (paths, versions) are not compared.
"""

import json
import sys
from pathlib import Path

from tokenscale.reproduction.determinism import arrays_equal as same_array
from tokenscale.reproduction.determinism import h5_arrays as datasets


def series_dirs(root: Path) -> dict[str, Path]:
    out = {}
    for parent in (root / "runs", root / "series"):
        for d in sorted(parent.glob("*")) if parent.is_dir() else []:
            if (d / "fits.h5").is_file():
                out[d.name] = d
    return out


def flat(obj, prefix=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from flat(v, f"{prefix}.{k}" if prefix else k)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from flat(v, f"{prefix}[{i}]")
    else:
        yield prefix, obj


def compare_h5(a: Path, b: Path) -> list[str]:
    da, db = datasets(a), datasets(b)
    bad = sorted(set(da) ^ set(db))
    bad += [k for k in sorted(set(da) & set(db)) if not same_array(da[k], db[k])]
    return bad


def compare_summary(a: Path, b: Path, skip=("run", "config_sha256")) -> list[str]:
    fa = dict(flat(json.loads(a.read_text())))
    fb = dict(flat(json.loads(b.read_text())))
    keys = sorted((set(fa) | set(fb)) - set(skip))
    return [k for k in keys if fa.get(k) != fb.get(k) and not (fa.get(k) != fa.get(k) and fb.get(k) != fb.get(k))]


def main(a: str, b: str) -> int:
    sa, sb = series_dirs(Path(a)), series_dirs(Path(b))
    if set(sa) != set(sb):
        print(f"series differ: {sorted(sa)} vs {sorted(sb)}")
        return 1
    failed = 0
    for name in sorted(sa):
        files = [f"trajectories/{p.name}" for p in sorted((sa[name] / "trajectories").glob("*.h5"))]
        files += [f"fits/{p.name}" for p in sorted((sa[name] / "fits").glob("*.h5"))] + ["fits.h5"]
        for rel in files:
            bad = compare_h5(sa[name] / rel, sb[name] / rel)
            n = len(datasets(sa[name] / rel))
            print(f"{name}/{rel}: {'identical' if not bad else 'DIFFERS: ' + ', '.join(bad[:5])} ({n} datasets)")
            failed += bool(bad)
        if not (sa[name] / "analysis/summary.json").is_file():  # a series without an analysis (a continuation)
            continue
        bad = compare_summary(sa[name] / "analysis/summary.json", sb[name] / "analysis/summary.json")
        n = sum(1 for _ in flat(json.loads((sa[name] / "analysis/summary.json").read_text())))
        print(f"{name}/analysis/summary.json: {'identical' if not bad else 'DIFFERS: ' + ', '.join(bad[:5])} ({n} numbers)")
        failed += bool(bad)
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1], sys.argv[2]))
