"""``build_parser`` (every command group registers its commands) and ``main`` (parse, run the handler, turn an
error the user can fix into one line and exit status 2)."""

from __future__ import annotations

import argparse
import json
import os
import sys

import tokenscale.studies  # noqa: F401  (registers the studies' config sections and series kinds)
from tokenscale import TokenscaleError, __version__
from tokenscale.cli import (alignment, analysis, config, data, evaluation, fit, forecast, reproduction, reshaping,
                            seeds, synthetic, training)
from tokenscale.cli.common import Parser
from tokenscale.cli.training import WORKER_ARGV

# the command groups, in the order of the command list
GROUPS = (config, data, training, evaluation, fit, analysis, forecast, alignment, seeds, synthetic, reshaping,
          reproduction)


def build_parser() -> argparse.ArgumentParser:
    ap = Parser(prog="tokenscale", description="Token-level decomposition of LM scaling laws. Every workflow rule "
                "calls one of these commands; each works on its own too.")
    ap.add_argument("--version", action="version", version=f"tokenscale {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    if argv is None and WORKER_ARGV in os.environ and "RANK" in os.environ:
        argv = json.loads(os.environ[WORKER_ARGV])
    ap = build_parser()
    args = ap.parse_args(argv)
    from tokenscale.training.runlock import install_job_guard

    install_job_guard()  # a local Snakemake that dies takes this job with it (SIGTERM); see tokenscale.training.runlock
    try:
        return int(args.func(args) or 0)
    except TokenscaleError as e:
        print(f"tokenscale: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk that a writer did not name itself
        from tokenscale.atomic import disk_full_error, is_full_disk

        full = disk_full_error(e, e.filename) if e.filename and is_full_disk(e) else None
        if full is None:
            raise
        print(f"tokenscale: error: {full}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130

