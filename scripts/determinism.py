#!/usr/bin/env python
"""Run one config's DAG several ways on this machine and report what stays bit-identical (docs/determinism.md).

Variants (each a full DAG into its own results folder):
  base      the config as written
  rerun     the same again
  threads   every job at --threads 2 (the config's `threads` overridden; runs with their own keep theirs)
  isa       ATEN_CPU_CAPABILITY=default and DNNL_MAX_CPU_ISA=SSE41: torch's kernels without AVX2/AVX-512

Writes <out>/determinism.json (tokenscale.reproduction.determinism.compare_trees of each variant against base) and prints a
summary and the largest relative difference per kind of headline number, from which reference/tolerances.yaml is
set. Usage: scripts/determinism.py [--config config/smoke.yaml] [--out /tmp/determinism] [--variants ...]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tokenscale.reproduction.determinism import compare_trees

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "base": ({}, []),
    "rerun": ({}, []),
    "threads": ({}, ["threads=2"]),
    "isa": ({"ATEN_CPU_CAPABILITY": "default", "DNNL_MAX_CPU_ISA": "SSE41"}, []),
}
# Kinds of headline number (fnmatch over "file:key"), in the order reference/tolerances.yaml lists them.
KINDS = ("*:category_counts.*", "*:n_*", "*val_loss*", "*:power_law.E", "*:metrics.final_*", "*:metrics.drop_*",
         "*:*alpha*", "*beta", "*:metrics.r2_*", "*:power_law.r2", "*svd_energy*", "*:metrics.mean_loss_max_rel_err",
         "*spearman*", "*:domain.test.statistic", "*:metrics.acceleration_*", "*:metrics.steps_to_reach_*",
         "*:levels.*", "*:shape_test.delta_aic", "*")


def run_variant(name: str, config: str, out: Path) -> float:
    env_extra, cfg_extra = VARIANTS[name]
    results = out / name
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", config, "--config",
           f"results={results}", *cfg_extra]
    env = dict(os.environ, **env_extra, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    t0 = time.time()
    with open(out / f"{name}.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.time() - t0


def kind_of(name: str) -> str:
    return next(k for k in KINDS if fnmatch.fnmatchcase(name, k))


def largest_by_kind(numbers: dict) -> dict:
    out: dict[str, dict] = {}
    for name, d in numbers.items():
        k = kind_of(name)
        best = out.setdefault(k, {"abs": 0.0, "rel": 0.0, "n": 0, "worst": None})
        best["n"] += 1
        if d["rel"] > best["rel"] or (d["rel"] == best["rel"] and d["abs"] > best["abs"]):
            best.update(abs=d["abs"], rel=d["rel"], worst=name)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/smoke.yaml", help="config of the DAG to run")
    ap.add_argument("--out", default="/tmp/determinism", help="folder for the variants' results and the report")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="variants to run (base is always run first)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = ["base"] + [v for v in args.variants if v != "base"]
    times = {}
    for name in names:
        if not (out / name / "provenance.json").is_file():
            times[name] = run_variant(name, args.config, out)
            print(f"{name}: {times[name]:.0f} s", flush=True)
    report = {"config": args.config, "times_s": times, "variants": {}}
    for name in names[1:]:
        cmp = compare_trees(out / "base", out / name)
        cmp["by_kind"] = largest_by_kind(cmp["numbers"])
        report["variants"][name] = cmp
        s = cmp["summary"]
        print(f"\n{name} vs base: weights {s['weights']['identical']}/{s['weights']['n']} identical, arrays "
              f"{s['arrays']['identical']}/{s['arrays']['n']}, headline numbers {s['numbers']['identical']}/"
              f"{s['numbers']['n']}")
        for k, d in cmp["by_kind"].items():
            print(f"  {k:40s} n={d['n']:3d}  max abs {d['abs']:.3g}  max rel {d['rel']:.3g}  ({d['worst']})")
    (out / "determinism.json").write_text(json.dumps(report, indent=1, sort_keys=True, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
