"""Data commands: ``prepare-data`` (corpus, tokenizer, token files), ``external-tokens`` (the token set of an
external checkpoint series) and ``series-manifest`` (the checkpoints of a deferred series)."""

from __future__ import annotations

import sys

from tokenscale.cli.common import add_config, command, load_config, positive_int


def register(sub) -> None:
    _prepare_data(sub)
    _external_tokens(sub)
    _series_manifest(sub)


def _prepare_data(sub) -> None:
    def run(args) -> int:
        from tokenscale.data.stage import prepare_data

        prepare_data(load_config(args)["data"], args.out, args.stage, shard=args.shard)
        return 0

    p = command(sub, "prepare-data", run, "build corpus + split, train the BPE tokenizer, write token files",
                "Each stage reads the previous one's output from --out; the workflow runs them as three rules.")
    add_config(p)
    p.add_argument("--out", required=True, help="data folder (corpus/, tokenizer/, train_tokens.bin, valid_tokens.h5)")
    p.add_argument("--stage", choices=["corpus", "tokenizer", "shard", "tokens", "all"], default="all",
                   help="which stage to run (all = every stage in order; with data.shards, 'shard' tokenizes one "
                        "input shard and 'tokens' is the index job over all of them)")
    p.add_argument("--shard", default=None, help="with --stage shard: the input shard's file name in data.shards.path")


def _external_tokens(sub) -> None:
    def run(args) -> int:
        from tokenscale.data.stage import external_tokens

        external_tokens(series=args.series, docs=args.docs, out=args.out, seq_len=args.seq_len, n_seqs=args.n_seqs,
                        tokenizer=args.tokenizer)
        return 0

    p = command(sub, "external-tokens", run,
                "token set for an external checkpoint series, with its own tokenizer",
                "The validation documents are tokenized with the series' tokenizer and cut into sequences.")
    p.add_argument("--series", required=True, help="folder of step-numbered checkpoints")
    p.add_argument("--tokenizer", default="", help="tokenizer folder or tokenizer.json (default: first checkpoint)")
    p.add_argument("--docs", required=True, help="validation documents (corpus/valid.jsonl)")
    p.add_argument("--seq-len", type=positive_int, required=True, help="tokens per sequence")
    p.add_argument("--n-seqs", type=positive_int, required=True, help="number of sequences in the token set")
    p.add_argument("--out", required=True, help="output token set HDF5")


def _series_manifest(sub) -> None:
    def run(args) -> int:
        from tokenscale.series import resolve_series_manifest

        series, members = resolve_series_manifest(args.spec, args.inputs, args.out)
        print(f"series-manifest: {series.name}: {len(members)} checkpoints -> {args.out}", file=sys.stderr)
        return 0

    p = command(sub, "series-manifest", run, "choose the checkpoints of a deferred series",
                "A series whose members depend on training results (e.g. a frontier) is resolved by its resolver "
                "function once those results exist; the members are written to a manifest (docs/architecture.md).")
    p.add_argument("--spec", required=True, help="JSON of the series and its sources (what the workflow passes)")
    p.add_argument("--inputs", nargs="*", default=[], help="the files the resolver reads (training results)")
    p.add_argument("--out", required=True, help="output manifest JSON")
