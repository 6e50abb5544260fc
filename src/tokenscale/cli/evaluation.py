"""Evaluation commands: ``evaluate`` (per-token loss under checkpoints -> eval files), ``val-loss`` (a run's
val_loss.csv) and ``assemble`` (eval files -> one trajectory shard)."""

from __future__ import annotations

import json
import sys

from tokenscale import TokenscaleError
from tokenscale.cli.common import add_threads, command, device, positive_int, set_threads
from tokenscale.config import schema_default


def register(sub) -> None:
    _evaluate(sub)
    _val_loss(sub)
    _assemble(sub)


def _evaluate(sub) -> None:
    def run(args) -> int:
        from tokenscale.evaluation.stage import run_evaluate

        if bool(args.checkpoint) == bool(args.blocks):
            raise TokenscaleError("evaluate: give either --checkpoint (with --out or --out-dir) or --blocks")
        set_threads(args.threads)
        if args.blocks:
            from tokenscale.evaluation.stage import parse_blocks, run_evaluate_blocks

            if args.out or args.out_dir:
                raise TokenscaleError("evaluate: --blocks names its own folders; drop --out/--out-dir")
            run_evaluate_blocks(parse_blocks(args.blocks), tokens=args.tokens, batch_size=args.batch_size,
                                device=device(args.device))
            return 0
        run_evaluate(checkpoints=args.checkpoint, tokens=args.tokens, out=args.out, out_dir=args.out_dir,
                     batch_size=args.batch_size, device=device(args.device))
        return 0

    p = command(sub, "evaluate", run, "per-token loss of a token set under checkpoints -> eval HDF5 files",
                "One eval file per checkpoint, each written atomically (docs/trajectories.md).")
    p.add_argument("--checkpoint", nargs="+", help="HF checkpoint folder(s) (own runs need the COMPLETE marker)")
    p.add_argument("--blocks", help="several block folders in one process: JSON list of {\"checkpoints\": [...], "
                   "\"out_dir\": ..., \"watch_cache\": ...} (the workflow's bundles of sources, eval.sources_per_job)")
    p.add_argument("--tokens", required=True, help="token set HDF5 (docs/formats.md)")
    p.add_argument("--out", help="output eval HDF5 for a single checkpoint (written atomically)")
    p.add_argument("--out-dir", help="folder for one step<N>.h5 per checkpoint (each written atomically)")
    p.add_argument("--batch-size", type=positive_int, default=schema_default("eval.batch_size"),
                   help="sequences per forward pass")
    p.add_argument("--device", default=schema_default("eval.device"), choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available")
    add_threads(p)


def _val_loss(sub) -> None:
    def run(args) -> int:
        from tokenscale.io import checkpoint_val_loss_rows, val_loss_rows, write_val_loss_csv

        if bool(args.evals) == bool(args.run_dir):
            raise TokenscaleError("val-loss: give either --evals or --run-dir")
        rows = val_loss_rows(args.evals) if args.evals else checkpoint_val_loss_rows(args.run_dir)
        write_val_loss_csv(args.out, rows)
        print(f"val-loss: {len(rows)} checkpoints (steps {rows[0][0]}..{rows[-1][0]}) -> {args.out}", file=sys.stderr)
        return 0

    p = command(sub, "val-loss", run, "a run's val_loss.csv (step, tokens_seen, val_loss per checkpoint)",
                "From the per-token evaluation of its checkpoints (--evals: each row is one eval file's mean loss, "
                "the value the trainer's in-loop validation gives on the same tokens), or from the in-loop "
                "validation recorded in its checkpoints (--run-dir).")
    p.add_argument("--evals", nargs="+", help="eval HDF5 files of the run's checkpoints, or their block folders")
    p.add_argument("--run-dir", help="run folder whose checkpoints hold in-loop validation losses")
    p.add_argument("--out", required=True, help="output CSV (step,tokens_seen,val_loss)")


def _axis_values(text: str) -> dict | None:
    """``--axis-values``: {"name": str, "values": [float]} (empty: None)."""
    if not text:
        return None
    try:
        axis = json.loads(text)
        return {"name": str(axis["name"]), "values": [float(v) for v in axis["values"]]}
    except (ValueError, KeyError, TypeError) as e:
        raise TokenscaleError(f"--axis-values is not {{\"name\": ..., \"values\": [...]}} JSON: {e}") from None


def _assemble(sub) -> None:
    def run(args) -> int:
        from tokenscale.evaluation.stage import run_assemble

        r = run_assemble(evals=args.evals, tokens=args.tokens, out=args.out, shard=args.shard, n_shards=args.n_shards,
                         run=args.run, config_hash=args.config_hash, axis=_axis_values(args.axis_values))
        lo, hi = r["token_range"]
        print(f"assemble: shard {args.shard}/{args.n_shards} tokens {lo}..{hi} x {r['n_checkpoints']} checkpoints",
              file=sys.stderr)
        return 0

    p = command(sub, "assemble", run, "per-checkpoint evals -> one trajectory shard (tokens x checkpoints)",
                "Shard i of n holds a contiguous, even range of the token set's tokens.")
    p.add_argument("--evals", nargs="+", required=True,
                   help="eval HDF5 files, one per checkpoint, or folders of them (any order)")
    p.add_argument("--tokens", required=True, help="the token set they were evaluated on")
    p.add_argument("--shard", type=int, required=True, help="shard index")
    p.add_argument("--n-shards", type=positive_int, required=True, help="number of shards the token set is split into")
    p.add_argument("--run", required=True, help="series name recorded in the shard")
    p.add_argument("--config-hash", default="", help="config sha256 recorded in the shard (provenance)")
    p.add_argument("--axis-values", default="",
                   help='JSON {"name": ..., "values": [...]}: the series axis, one value per eval file in the given '
                        "order (kept), strictly increasing; written as axis/<name> unless it is step or tokens "
                        "(a frontier series; default: the files ordered by step)")
    p.add_argument("--out", required=True, help="output trajectory shard HDF5")
