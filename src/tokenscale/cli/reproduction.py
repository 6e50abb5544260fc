"""Reproduction commands: ``provenance`` (what a results tree was made from) and ``verify`` (its headline numbers
against committed references, or a reference written from it)."""

from __future__ import annotations

import json
from pathlib import Path

from tokenscale.cli.common import command


def register(sub) -> None:
    _provenance(sub)
    _verify(sub)


def _provenance(sub) -> None:
    def run(args) -> int:
        from tokenscale.reproduction.stage import write_provenance

        prov = write_provenance(config_sha256=args.config_sha256, repo=args.repo, lock=args.lock,
                                manifest=args.manifest, out=args.out)
        print(json.dumps(prov, indent=2, sort_keys=True))
        return 0

    p = command(sub, "provenance", run, "record what a results tree was made from",
                "Writes the config hash, the code version (git commit, -dirty when tracked files differ), the lock "
                "file's hash with the Python version and the corpus manifest's hash; `verify` compares them.")
    p.add_argument("--config-sha256", required=True, help="sha256 of the validated config (without `results`)")
    p.add_argument("--repo", default=".", help="the workflow's checkout (its git commit is the code version)")
    p.add_argument("--lock", default="requirements/cpu.lock", help="the lock file the environment was installed from")
    p.add_argument("--manifest", default=None, help="the corpus manifest.json (omit for none)")
    p.add_argument("--out", required=True, help="output provenance.json")


def _run_verify(args) -> int:
    from tokenscale.reproduction.stage import run_verify, write_reference

    if args.write:
        ref = write_reference(results=args.results, config=args.config, spread=args.spread, seeds=args.seeds,
                              reference=args.reference, every_file=args.every_file)
        n = sum(len(v) for v in ref["numbers"].values())
        print(f"verify: wrote {n} numbers from {len(ref['numbers'])} files of {Path(args.results)} to {args.reference}")
        return 0
    rows = run_verify(results=args.results, reference=args.reference, tolerances=args.tolerances,
                      allow_config_change=args.allow_config_change, exit_zero=args.exit_zero,
                      seed_level=args.seed_level, failed_only=args.failed_only, markdown=args.markdown,
                      html=args.html, differences=args.differences, variant=args.variant)
    return 0 if args.exit_zero or not any(r.failed for r in rows) else 1


def _verify(sub) -> None:
    p = command(sub, "verify", _run_verify, "compare a results tree's headline numbers with committed references",
                "Prints provenance (mismatches on their own lines) and a table: number, reference, reproduced, "
                "tolerance, result. Exit status 1 when a number is out of tolerance or missing. --write makes a "
                "reference from a results tree instead.")
    p.add_argument("--results", default="results",
                   help="results tree to check, or a reference JSON written from a reproduction elsewhere (its "
                        "numbers and provenance are checked)")
    p.add_argument("--reference", default="reference/default.json", help="reference numbers (JSON)")
    p.add_argument("--tolerances", default="reference/tolerances.yaml",
                   help="tolerance rules (YAML; first matching glob wins; docs/determinism.md says where they come "
                        "from)")
    p.add_argument("--write", action="store_true", help="write --reference from --results instead of comparing")
    p.add_argument("--config", default="config/config.yaml", help="with --write: the config the results came from")
    p.add_argument("--every-file", action="store_true",
                   help="with --write: take every run, series, reshape and seeds folder in --results, not only those "
                        "--config makes (by default files an earlier config left in the tree are skipped)")
    p.add_argument("--spread", nargs="*", default=[],
                   help="with --write: determinism reports (scripts/determinism.py's JSON) whose measured differences "
                        "widen each number's tolerance to twice the largest difference seen, or earlier references "
                        "whose measured spread is kept")
    p.add_argument("--seeds", nargs="*", default=[],
                   help="with --write: results trees of the same config under other training seeds (seed_offset "
                        "1..K-1, scripts/seed-spread.py); each number's values over the seeds go into the reference")
    p.add_argument("--seed-level", type=float, default=None,
                   help="prediction level of a number's seed interval, in (0, 1) (a number inside it passes; "
                        "default tokenscale.reproduction.verify.SEED_LEVEL, 0.999)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="compare even when the reference was written from another config (its config hash differs "
                        "from the results tree's); without it such a reference is refused as stale")
    p.add_argument("--failed-only", action="store_true", help="list only the numbers that failed or are missing")
    p.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")
    p.add_argument("--html", default=None, help="also write the table as a self-contained HTML page to this file "
                                                "(the workflow's verify rule puts it in the Snakemake report)")
    p.add_argument("--differences", default=None,
                   help="also write each number's difference from the reference as a determinism report (JSON), "
                        "which --write --spread takes to widen a reference by what this machine measured")
    p.add_argument("--variant", default="verify", help="with --differences: the variant's name in that report")
    p.add_argument("--exit-zero", action="store_true",
                   help="exit 0 even when numbers fail, and list a reference summary the results tree lacks as "
                        "missing rows instead of stopping (the workflow's verify rule: its table reports them)")
