"""Alignment study commands (paper App. A.2): ``dependency`` (per-token dependency length at one checkpoint) and
``align`` (what learning time aligns with: domain, token frequency, dependency length)."""

from __future__ import annotations

import sys

from tokenscale.cli.common import command, device, fraction, json_object, positive_int
from tokenscale.config import schema_default


def register(sub) -> None:
    _dependency(sub)
    _align(sub)


def _dependency(sub) -> None:
    def run(args) -> int:
        from tokenscale.alignment.dependency import compute_dependency

        out = compute_dependency(args.checkpoint, args.tokens, args.out, threshold=args.threshold,
                                 batch_size=args.batch_size, device=device(args.device), max_seqs=args.max_seqs)
        print(f"dependency: {args.checkpoint} -> {out}", file=sys.stderr)
        return 0

    p = command(sub, "dependency", run,
                "per-token dependency length at one checkpoint (paper App. A.2.3) -> HDF5",
                "The smallest context c in 1, 2, 4, ..., seq_len at which the probability of the correct next token "
                "reaches --threshold of its full-context value; exact (sliding windows), checked against explicit "
                "truncation on a sample (tokenscale.alignment.dependency).")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--tokens", required=True, help="token set HDF5 (docs/formats.md)")
    p.add_argument("--out", required=True, help="output dependency HDF5")
    p.add_argument("--threshold", type=fraction, default=0.9, help="fraction of the full-context probability")
    p.add_argument("--max-seqs", type=positive_int, default=None,
                   help="only the first N sequences (the cost grows as seq_len^2 / 3 tokens per sequence)")
    p.add_argument("--batch-size", type=positive_int, default=16, help="windows per forward pass")
    p.add_argument("--device", default=schema_default("eval.device"), choices=["auto", "cpu", "cuda"],
                   help="where the model runs (auto = cuda when available)")


def _align(sub) -> None:
    def run(args) -> int:
        from tokenscale.alignment.stage import run_alignment

        table = run_alignment(fits=args.fits, tokens=args.tokens, train_data=args.train_data, options=args.options,
                              run=args.run, out=args.out, figures=args.figures, dependency=args.dependency,
                              axis_label=args.axis_label)
        print(f"align: {args.run}: {table['n_selected_in_window']} tokens -> {args.out}", file=sys.stderr)
        return 0

    p = command(sub, "align", run,
                "what learning time aligns with (paper App. A.2, Fig. 7): mean tau by domain, token frequency, "
                "dependency length",
                "Tokens: the spectrum's selection (analysis.selection) with tau inside the window. Frequencies are "
                "counted on the training tokens.")
    p.add_argument("--fits", required=True, help="the series' fit table")
    p.add_argument("--tokens", required=True, help="the validation token set the series was evaluated on")
    p.add_argument("--train-data", required=True, help="data folder with train_tokens.bin / train_tokens.json")
    p.add_argument("--dependency", default="", help="dependency HDF5 of the series' final checkpoint (optional)")
    p.add_argument("--options", type=json_object, default={}, help="JSON of the config's analysis section")
    p.add_argument("--run", required=True, help="series name")
    p.add_argument("--axis-label", default="training step", help="axis label of the figure")
    p.add_argument("--out", required=True, help="output alignment.json")
    p.add_argument("--figures", required=True, help="output folder for the figure")
