#!/usr/bin/env python
"""Run one config's DAG under K training seeds and write a reference that carries each number's seed spread.

Seed k is the config as written with ``seed_offset: k`` (every run's initialisation and data order shifted; the
corpus, tokenizer, synthetic data and candidate draws unchanged), each a full DAG into ``<out>/seed<k>``. Seed 0 is
the reference's own tree. ``tokenscale verify --write --seeds`` then stores every headline number's K values with
the reference, and ``verify`` admits a reproduced number inside its seed prediction interval
(tokenscale.reproduction.verify.SeedInterval; docs/determinism.md).

Usage: scripts/seed-spread.py --config config/smoke.yaml --seeds 5 --out /tmp/seeds-smoke --reference reference/smoke.json
Trees already complete (their provenance.json exists) are not rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_seed(config: str, out: Path, k: int, cores: int) -> float:
    """The whole DAG of ``config`` with ``seed_offset=k`` into ``out/seed<k>``; its log beside it."""
    results = out / f"seed{k}"
    override = out / f"seed{k}.yaml"  # a YAML file: `--config reference=null` would pass the string 'null'
    override.write_text(json.dumps({"results": str(results), "seed_offset": k, "reference": None}) + "\n")
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--configfile", config, str(override)]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    t0 = time.time()
    with open(out / f"seed{k}.log", "w") as log:
        subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return time.time() - t0


def held_out_check(out: Path, k_seeds: int) -> None:
    """Each seed k >= 1 verified against a reference from seed 0 whose seed interval leaves seed k out (K-1 seeds,
    the rules of reference/tolerances.yaml): how a reproduction that lands where another seed would fares."""
    from tokenscale.reproduction.verify import compare, read_tolerances, summary, write_reference

    rules = read_tolerances(REPO / "reference/tolerances.yaml")
    for k in range(1, k_seeds):
        others = [out / f"seed{j}" for j in range(1, k_seeds) if j != k]
        ref = write_reference(out / "seed0", "held-out", seed_trees=others)
        rows = compare(ref, out / f"seed{k}", rules, missing_files="rows")
        print(f"seed {k} held out: {summary(rows)}", flush=True)
        for r in rows:
            if r.failed:
                print(f"  {r.status}: {r.name}  reference {r.reference}  seed {k} {r.reproduced}  allowed {r.allowed}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/smoke.yaml", help="config of the DAG to run")
    ap.add_argument("--seeds", type=int, default=5, help="number of seed offsets K (0..K-1); at least 3")
    ap.add_argument("--out", default="/tmp/seed-spread", help="folder for the seeds' results trees and logs")
    ap.add_argument("--cores", type=int, default=2, help="snakemake --cores of each DAG")
    ap.add_argument("--reference", default=None,
                    help="write this reference from seed0 with the other seeds' numbers (tokenscale verify --write)")
    ap.add_argument("--spread", nargs="*", default=[],
                    help="with --reference: determinism reports or earlier references whose machine spread is kept")
    args = ap.parse_args()
    if args.seeds < 3:
        ap.error(f"--seeds {args.seeds}: a seed interval needs at least 3 seeds")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for k in range(args.seeds):
        if not (out / f"seed{k}" / "provenance.json").is_file():
            print(f"seed {k}: {run_seed(args.config, out, k, args.cores):.0f} s", flush=True)
    held_out_check(out, args.seeds)
    if args.reference:
        trees = [str(out / f"seed{k}") for k in range(1, args.seeds)]
        subprocess.run([sys.executable, "-m", "tokenscale.cli", "verify", "--write", "--results", str(out / "seed0"),
                        "--config", args.config, "--reference", args.reference, "--seeds", *trees,
                        *(["--spread", *args.spread] if args.spread else [])], cwd=REPO, check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
