"""The data stages: ``prepare-data`` (corpus + split, BPE tokenizer, token files; the workflow runs them as three
rules) and ``external-tokens`` (the validation token set of an external checkpoint series, with its own
tokenizer)."""

from __future__ import annotations

import sys
from pathlib import Path

from tokenscale import TokenscaleError
from tokenscale.data import (build_corpus, build_token_set, load_tokenizer, read_documents, tokenize_corpus,
                             tokenizer_sha256, train_tokenizer)
from tokenscale.data.shardlist import input_shards, sharded
from tokenscale.series import discover_checkpoints

STAGES = ("corpus", "tokenizer", "tokens")  # with data.shards: "shard" (one per input file) before "tokens" (the index)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def prepare_data(cfg: dict, out, stage: str = "all", log=_stderr, shard: str | None = None) -> None:
    """Run one data stage (or ``all`` of them in order) of the config's ``data`` section ``cfg`` into the data folder
    ``out``; each stage reads the previous one's output from ``out``. ``log`` gets the progress lines. With
    ``data.shards`` the corpus is read out of core: stage ``shard`` tokenizes the input file ``shard`` and
    ``tokens`` is the index job over all of them (:mod:`tokenscale.data.shards`)."""
    out = Path(out)
    if stage == "shard" and not (sharded(cfg) and shard):
        raise TokenscaleError("prepare-data --stage shard needs data.shards.path and --shard NAME")
    names = [stage] if stage != "all" else (["corpus", "tokenizer", "shards", "tokens"] if sharded(cfg) else list(STAGES))
    for name in names:
        log(f"prepare-data: {name} ...")
        if sharded(cfg):
            _sharded_stage(cfg, out, name, shard, log)
        elif name == "corpus":
            m = build_corpus(cfg, out / "corpus")
            n = {s: sum(v["docs"] for v in m["splits"][s].values()) for s in m["splits"]}
            log(f"prepare-data: corpus {m['corpus_sha256'][:12]} train={n['train']} docs valid={n['valid']} docs "
                f"domains={','.join(m['domains'])}")
        elif name == "tokenizer":
            train_tokenizer(out / "corpus" / "train.jsonl", out / "tokenizer", vocab_size=cfg["vocab_size"],
                            min_frequency=cfg["min_frequency"], max_chars=cfg["tokenizer_max_chars"],
                            seed=cfg["split_seed"])
        elif name == "tokens":
            _log_meta(log, tokenize_corpus(out / "corpus", out / "tokenizer", out, seq_len=cfg["seq_len"],
                                           valid_sequences=cfg["valid_sequences"], valid_seed=cfg["split_seed"]))
        else:
            raise TokenscaleError(f"prepare-data --stage {name}: needs data.shards.path")


def _log_meta(log, meta: dict) -> None:
    log(f"prepare-data: {meta['n_tokens']:,} training tokens, {meta['n_samples']:,} samples of "
        f"{meta['seq_len']} ({meta['single_pass_tokens']:,} tokens in one pass)")


def _sharded_stage(cfg: dict, out: Path, name: str, shard: str | None, log) -> None:
    from tokenscale.data.shards import index_shards, sample_tokenizer, shard_manifest, tokenize_shard

    if name == "corpus":
        m = shard_manifest(cfg, out / "corpus")
        log(f"prepare-data: corpus of {len(m['shards'])} shards in {cfg['shards']['path']}")
    elif name == "tokenizer":
        sample_tokenizer(cfg, out / "tokenizer")
    elif name in ("shard", "shards"):
        for s in [shard] if name == "shard" else [p.name for p in input_shards(cfg)]:
            tokenize_shard(cfg, s, out / "tokenizer", out)
    else:
        _log_meta(log, index_shards(cfg, out / "tokenizer", out))


def external_tokens(*, series, docs, out, seq_len: int, n_seqs: int, tokenizer="") -> None:
    """The validation token set (``out``) of an external checkpoint series: ``docs`` tokenized with the series'
    tokenizer (``tokenizer``, default: its first checkpoint's) and cut into ``n_seqs`` sequences of ``seq_len``."""
    tok_path = tokenizer or str(discover_checkpoints(series)[0][1])
    tok = load_tokenizer(tok_path)
    build_token_set(read_documents(docs), tok, out, seq_len=seq_len, n_seqs=n_seqs, kind="validation",
                    attrs={"tokenizer_sha256": tokenizer_sha256(tok_path), "series": str(series)})
