#!/usr/bin/env python
"""Benchmark: out-of-core shard tokenization vs. Hugging Face ``tokenizers`` batch encoding, same text.

The builtin corpus's documents (real prose, docstrings and code, repeated to ``--mb`` MB) are written as
``--shards`` JSONL shards; a byte-level BPE of ``--vocab`` is trained on a sample. Then, in one process:

* ``tokenscale``  : :func:`tokenscale.data.shards.tokenize_shard` on every shard, the whole job: read and parse
                    JSONL, split train/validation, encode, append to ``train.bin``/``valid.bin``, write the tables;
* ``hf-batch``    : ``tokenizers.Tokenizer.encode_batch(texts, add_special_tokens=False)`` on the same texts,
                    already in memory, in batches of ``--batch`` (the encodings are dropped);
* ``hf-batch-fast``: ``encode_batch_fast`` (no offsets) where the installed ``tokenizers`` has it.

Prints tokens/s and tokens/s per core (tokens per CPU-second of the process, user + system: both use every core
rayon gives them) of each, and the ratio tokenscale / hf. Each is repeated ``--repeats`` times alternating; the
best is reported.

    python benchmarks/bench_tokenize.py                   # 40 MB, 4 shards, vocab 4096
    RAYON_NUM_THREADS=1 python benchmarks/bench_tokenize.py --mb 20   # one core each
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import tokenscale.studies  # noqa: F401  (registers the config sections)
from tokenscale.config import validate_config
from tokenscale.data import builtin_documents
from tokenscale.data.shards import sample_tokenizer, tokenize_shard


def _corpus(folder: Path, mb: float, shards: int) -> list[str]:
    """Builtin documents, repeated to ``mb`` MB, written round-robin into ``shards`` JSONL files; their texts."""
    docs = [d["text"] for d in builtin_documents(("docs", "docstrings", "code"), 2_000_000)]
    texts, size = [], 0
    while size < mb * 1e6:
        for t in docs:
            texts.append(t)
            size += len(t.encode())
            if size >= mb * 1e6:
                break
    files = [open(folder / f"part-{i:03d}.jsonl", "w", encoding="utf-8") for i in range(shards)]
    for i, t in enumerate(texts):
        files[i % shards].write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    for f in files:
        f.close()
    return texts


def _timed(fn) -> tuple[int, float, float]:
    """(tokens, wall seconds, CPU seconds) of ``fn()`` (which returns its token count)."""
    t0, c0 = time.perf_counter(), os.times()
    n = fn()
    c1 = os.times()
    return n, time.perf_counter() - t0, (c1.user - c0.user) + (c1.system - c0.system)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--mb", type=float, default=40, help="corpus size in MB of UTF-8 text (default 40)")
    ap.add_argument("--shards", type=int, default=4, help="number of JSONL shards (default 4)")
    ap.add_argument("--vocab", type=int, default=4096, help="BPE vocabulary size (default 4096)")
    ap.add_argument("--batch", type=int, default=1024, help="documents per encode batch, both sides (default 1024)")
    ap.add_argument("--repeats", type=int, default=2, help="measurements of each (default 2)")
    args = ap.parse_args(argv)
    from tokenizers import Tokenizer

    with tempfile.TemporaryDirectory(prefix="bench-tokenize-") as tmp:
        tmp = Path(tmp)
        (tmp / "in").mkdir()
        texts = _corpus(tmp / "in", args.mb, args.shards)
        cfg = validate_config({"data": {"builtin": False, "vocab_size": args.vocab, "tokenizer_max_chars": 4_000_000,
                                        "shards": {"path": str(tmp / "in"), "batch_docs": args.batch}}})["data"]
        sample_tokenizer(cfg, tmp / "out" / "tokenizer")
        hf = Tokenizer.from_file(str(tmp / "out" / "tokenizer" / "tokenizer.json"))
        names = sorted(p.name for p in (tmp / "in").iterdir())

        def ours() -> int:
            infos = [tokenize_shard(cfg, n, tmp / "out" / "tokenizer", tmp / "out") for n in names]
            return sum(i["train_tokens"] + i["valid_tokens"] - i["train_docs"] - i["valid_docs"] for i in infos)  # no EOS

        def hf_batch(method: str):
            def run() -> int:
                enc = getattr(hf, method)
                return sum(len(e.ids) for lo in range(0, len(texts), args.batch)
                           for e in enc(texts[lo:lo + args.batch], add_special_tokens=False))
            return run

        cases = {"tokenscale": ours, "hf-batch": hf_batch("encode_batch")}
        if hasattr(hf, "encode_batch_fast"):
            cases["hf-batch-fast"] = hf_batch("encode_batch_fast")
        best: dict[str, tuple] = {}
        for r in range(args.repeats):
            for name in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
                n, wall, cpu = _timed(cases[name])
                if name not in best or n / wall > best[name][0] / best[name][1]:
                    best[name] = (n, wall, cpu)
    print(f"corpus: {sum(len(t.encode()) for t in texts) / 1e6:.1f} MB, {len(texts):,} documents, {args.shards} shards, "
          f"vocab {args.vocab}, {os.cpu_count()} CPUs visible, RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', '-')}")
    print(f"{'':14s} {'tokens':>12s} {'wall s':>8s} {'cpu s':>8s} {'tokens/s':>12s} {'tokens/s/core':>14s}")
    for name, (n, wall, cpu) in best.items():
        print(f"{name:14s} {n:12,d} {wall:8.2f} {cpu:8.2f} {n / wall:12,.0f} {n / cpu:14,.0f}")
    n0, w0, c0 = best["tokenscale"]
    for name, (n, wall, cpu) in best.items():
        if name != "tokenscale":
            assert n == n0, f"token counts differ: tokenscale {n0} vs {name} {n}"
            print(f"tokenscale / {name}: {(n0 / w0) / (n / wall):.2f}x tokens/s, {(n0 / c0) / (n / cpu):.2f}x tokens/s per core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
