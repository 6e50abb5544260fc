#!/usr/bin/env python
"""Compare two results trees number by number: trajectory shards, fit tables and summary.json of every series.

Usage: scripts/compare-results.py [--all] RESULTS_A RESULTS_B
Reads both layouts (series/{name}/... and the older runs/{name}/...). Prints one line per file and exits 1 if
any dataset or summary number differs (bitwise; NaN equals NaN). Attributes (paths, versions) are not compared.

``--all`` (used to show a refactor is bit-identical) then compares every other output the two trees share:
checkpoint weights (bytes), every HDF5 dataset, .npy/.npz arrays, CSV tables (text) and the numbers and strings of
every JSON report (alignment, frontier, reshaping, synthetic, seeds, train.json), skipping keys that record
where or when a file was made (paths, times, throughput, versions, code and config hashes). Logs and benchmarks
are not compared.
"""

import json
import re
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


# JSON keys that record where, when or how fast a file was made, not what it computed.
VOLATILE = re.compile(r"(^|[._])(path|paths|dir|file|files|time|times|seconds|wall|elapsed|started|finished|date|host|"
                      r"hostname|pid|version|versions|code_version|config_sha256|lock_sha256|tokens_per_s|"
                      r"tokens_per_second|samples_per_s|flops_per_s|peak_flops_per_s|peak_source|resumed_from|segments|mfu|throughput|"
                      r"python|torch|threads|device)(\[|[._]|$)", re.I)
SKIP_DIRS = ("logs", "benchmarks", ".snakemake")


def _rel_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()
            and p.relative_to(root).parts[0] not in SKIP_DIRS}


def _json_numbers(path: Path, root: Path) -> dict:
    """A JSON report's flat values minus the volatile keys; paths inside the tree are written from its root."""
    return {k: v.replace(str(root), "<root>") if isinstance(v, str) else v
            for k, v in flat(json.loads(path.read_text())) if not VOLATILE.search(k)}


def compare_file(a: Path, b: Path, ra: Path, rb: Path) -> list[str] | None:
    """Differences between two outputs of one kind (trees rooted at ra, rb), or None for a kind not compared."""
    import numpy as np

    if a.suffix == ".h5":
        return compare_h5(a, b)
    if a.suffix == ".json":
        fa, fb = _json_numbers(a, ra), _json_numbers(b, rb)
        return [k for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k) and not (fa.get(k) != fa.get(k)
                                                                                      and fb.get(k) != fb.get(k))]
    if a.suffix == ".npy":
        return [] if same_array(np.load(a), np.load(b)) else ["array"]
    if a.suffix == ".npz":
        za, zb = np.load(a), np.load(b)
        return sorted(set(za) ^ set(zb)) + [k for k in sorted(set(za) & set(zb)) if not same_array(za[k], zb[k])]
    if a.suffix in (".csv", ".safetensors"):
        return [] if a.read_bytes() == b.read_bytes() else ["bytes"]
    return None


def main_all(a: str, b: str) -> int:
    """Every shared output beyond the series tables (see the module docstring)."""
    ra, rb = Path(a), Path(b)
    fa, fb = _rel_files(ra), _rel_files(rb)
    counts, failed = {}, 0
    for rel in sorted(fa & fb):
        if rel.endswith("provenance.json"):
            continue
        bad = compare_file(ra / rel, rb / rel, ra, rb)
        if bad is None:
            continue
        kind = Path(rel).suffix
        counts[kind] = counts.get(kind, 0) + 1
        if bad:
            failed += 1
            print(f"{rel}: DIFFERS: {', '.join(bad[:5])}")
    only = sorted((fa ^ fb))
    print(f"all outputs: {sum(counts.values())} files compared ({', '.join(f'{n} {k}' for k, n in sorted(counts.items()))}), "
          f"{failed} differ; {len(only)} files in one tree only{': ' + ', '.join(only[:5]) if only else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    every = "--all" in args
    args = [x for x in args if x != "--all"]
    if len(args) != 2:
        sys.exit(__doc__)
    rc = main(*args)
    sys.exit(max(rc, main_all(*args)) if every else rc)
