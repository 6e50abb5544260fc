"""Token data (stage 3 of :mod:`tokenscale.data`): the training stream and the fixed token sets.

:func:`tokenize_corpus` writes the training stream as a memory-mapped token file (documents separated by EOS;
read back by :class:`TrainTokens`) and the validation token set; :func:`build_token_set` cuts a token set (HDF5,
per-token metadata, one document per sequence where possible; layout in ``docs/formats.md``) from any documents
and tokenizer, written by :func:`tokenscale.io.tokensets.write_token_set`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tokenscale import TokenscaleError, atomic
from tokenscale.data.corpus import read_documents
from tokenscale.data.shards import ShardedTokens
from tokenscale.data.tokenizer import EOS, _encode_docs, _encode_fast, load_tokenizer, tokenizer_sha256
from tokenscale.io.tokensets import write_token_set

def tokenize_corpus(corpus_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path, *, seq_len: int, valid_sequences: int,
                    valid_seed: int = 0) -> dict:
    """Write ``train_tokens.bin`` (+ ``train_tokens.json``, ``train_docs.npz``) and ``valid_tokens.h5``.

    ``train_tokens.json`` holds ``n_tokens`` (stream length, EOS included), ``n_samples`` (training sequences of
    ``seq_len + 1`` ids overlapping by one) and ``single_pass_tokens`` (= n_samples * seq_len: the training tokens
    one pass over the data sees), plus per-domain token counts.
    """
    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(tokenizer_dir)
    eos = tok.convert_tokens_to_ids(EOS)
    manifest = json.loads((corpus_dir / "manifest.json").read_text())
    domain_names = manifest["domains"]
    dom_code = {d: i for i, d in enumerate(domain_names)}
    vocab = len(tok)
    dtype = np.uint16 if vocab <= np.iinfo(np.uint16).max else np.uint32

    train_docs = read_documents(corpus_dir / "train.jsonl")
    lengths = np.zeros(len(train_docs), dtype=np.int64)
    with atomic.atomic_output(out_dir / "train_tokens.bin") as tmp, open(tmp, "wb") as fh:
        for lo in range(0, len(train_docs), 2048):
            batch = train_docs[lo : lo + 2048]
            for i, ids in enumerate(_encode_fast(tok, [d["text"] for d in batch]), lo):
                np.asarray(ids + [eos], dtype=dtype).tofile(fh)
                lengths[i] = len(ids) + 1
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    n_tokens = int(lengths.sum())
    n_samples = (n_tokens - 1) // seq_len
    if n_samples < 1:
        (out_dir / "train_tokens.bin").unlink()
        raise TokenscaleError(f"data: training split has only {n_tokens} tokens, less than one sequence of {seq_len + 1}")
    doc_domain = np.array([dom_code[d["domain"]] for d in train_docs], dtype=np.int16)
    with atomic.atomic_output(out_dir / "train_docs.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, doc_start=starts, doc_domain=doc_domain)
    meta = {
        "dtype": np.dtype(dtype).name,
        "n_tokens": n_tokens,
        "seq_len": seq_len,
        "n_samples": n_samples,
        "single_pass_tokens": n_samples * seq_len,
        "n_docs": len(train_docs),
        "domain_tokens": {name: int(lengths[doc_domain == i].sum()) for i, name in enumerate(domain_names)},
        "vocab_size": vocab,
        "eos_id": eos,
        "domain_names": domain_names,
        "tokenizer_sha256": tokenizer_sha256(tokenizer_dir),
        "corpus_sha256": manifest["corpus_sha256"],
    }
    atomic.write_json(out_dir / "train_tokens.json", meta)

    valid_docs = read_documents(corpus_dir / "valid.jsonl")
    build_token_set(
        valid_docs, tok, out_dir / "valid_tokens.h5", seq_len=seq_len, n_seqs=valid_sequences, kind="validation",
        domain_names=domain_names, attrs={"tokenizer_sha256": meta["tokenizer_sha256"], "corpus_sha256": manifest["corpus_sha256"]},
        shuffle_seed=valid_seed,
    )
    return meta


def _window_units(docs: list[dict], tokenizer, eos: int, width: int, seed: int, dom_code: dict) -> dict[int, list[tuple]]:
    """Per domain code, in a seeded document order: units of (ids, doc_id, doc_pos, domain) arrays, each one
    document with its EOS, or, for documents shorter than ``width``, the document joined with the next ones of
    its domain until ``width`` (a short remainder joins the domain's last unit)."""
    order = np.random.default_rng(seed).permutation(len(docs))
    enc = _encode_docs(tokenizer, [docs[j] for j in order]) if len(docs) else []
    units: dict[int, list[tuple]] = {}
    pending: dict[int, list[tuple]] = {}
    held: dict[int, int] = {}  # tokens pending per domain
    for j, e in zip(order, enc):
        n, code = len(e) + 1, dom_code.get(docs[j]["domain"], -1)
        part = (np.asarray(e + [eos], dtype=np.int64), np.full(n, int(docs[j].get("id", j)), dtype=np.int32),
                np.arange(n, dtype=np.int32), np.full(n, code, dtype=np.int16))
        pending.setdefault(code, []).append(part)
        held[code] = held.get(code, 0) + n
        if held[code] >= width:
            units.setdefault(code, []).append(pending.pop(code))
            held[code] = 0
    for code, rest in pending.items():
        if units.get(code):
            units[code][-1] += rest
        else:
            units[code] = [rest]
    joined = {code: [tuple(np.concatenate(a) for a in zip(*parts)) for parts in us] for code, us in units.items()}
    return dict(sorted(joined.items(), key=lambda kv: (kv[0] < 0, kv[0])))  # domain order; unknown domains last


def _pick_windows(units: dict[int, list[tuple]], width: int, n_seqs: int, seed: int) -> list[tuple[tuple, int]]:
    """(unit, start) of ``n_seqs`` windows: one per unit first (a seeded random offset), taken round-robin over
    domains; then further non-overlapping windows of the same units, in the same order."""
    rng = np.random.default_rng([seed, 1])
    starts: dict[int, list[np.ndarray]] = {}
    for code, us in units.items():
        starts[code] = []
        for u in us:
            k = len(u[0]) // width
            s0 = int(rng.integers(0, len(u[0]) - k * width + 1)) if k else 0
            starts[code].append(rng.permutation(s0 + width * np.arange(k)))
    picks: list[tuple[tuple, int]] = []
    depth = max((len(s) for ss in starts.values() for s in ss), default=0)
    for p in range(depth):
        for i in range(max(len(ss) for ss in starts.values())):
            for code, ss in starts.items():
                if i < len(ss) and p < len(ss[i]):
                    picks.append((units[code][i], int(ss[i][p])))
                    if len(picks) == n_seqs:
                        return picks
    return picks


def build_token_set(docs: list[dict], tokenizer, out_path: str | Path, *, seq_len: int, n_seqs: int, kind: str = "validation",
                    domain_names: list[str] | None = None, attrs: dict | None = None, shuffle_seed: int = 0) -> Path:
    """Token set HDF5 (``docs/formats.md``) from documents and any tokenizer.

    Each sequence of ``seq_len + 1`` ids comes from a different document where possible: documents in a seeded
    order (``shuffle_seed``), round-robin over domains; a document of at least ``seq_len + 1`` tokens (its EOS
    included) gives one window at a seeded random offset, a shorter one is joined (EOS between) with the next
    documents of its domain. Only when every document has given a window do they give further, non-overlapping
    ones. No target token appears twice.
    """
    eos = tokenizer.convert_tokens_to_ids(EOS) if EOS in tokenizer.get_vocab() else tokenizer.eos_token_id
    if eos is None:
        raise TokenscaleError("token set: tokenizer has no EOS token to separate documents")
    domain_names = domain_names or sorted({d["domain"] for d in docs})
    dom_code = {d: i for i, d in enumerate(domain_names)}
    width = seq_len + 1
    units = _window_units(docs, tokenizer, eos, width, shuffle_seed, dom_code)
    picks = _pick_windows(units, width, n_seqs, shuffle_seed)
    if len(picks) < n_seqs:
        total = sum(len(u[0]) for us in units.values() for u in us)
        raise TokenscaleError(
            f"token set: {kind} documents have only {total} tokens, {len(picks)} windows of {width}; need {n_seqs} x {seq_len}; "
            "lower data.valid_sequences or raise data.valid_fraction"
        )
    cut = [tuple(a[s : s + width] for a in u) for u, s in picks]
    input_ids, doc_id, doc_pos, dom = (np.stack(a) for a in zip(*cut))
    return write_token_set(out_path, input_ids, doc_id[:, 1:], doc_pos[:, 1:], dom[:, 1:], kind=kind,
                           domain_names=domain_names, attrs=attrs)


SUPERVISE = ("all", "last")  # train_tokens.json "supervise": every next-token label, or only the row's last one


class TrainTokens:
    """Memory-mapped training stream (one ``train_tokens.bin``, or the shard files that ``train_tokens.json``
    ``shards`` lists, read as one stream); sample ``i`` is ``tokens[i*T : i*T + T + 1]`` (windows overlap by one), or
    with ``"layout": "rows"`` (synthetic examples) row ``i`` of ``T + 1`` tokens, ``tokens[i*(T+1) : (i+1)*(T+1)]``.
    ``supervise`` (``"all"`` or ``"last"``) says which labels the trainer's loss uses."""

    def __init__(self, data_dir: str | Path):
        data_dir = Path(data_dir)
        meta_path = data_dir / "train_tokens.json"
        if not meta_path.is_file():
            raise TokenscaleError(f"training tokens not found: {meta_path} (run `tokenscale prepare-data` first)")
        self.meta = json.loads(meta_path.read_text())
        self.seq_len = int(self.meta["seq_len"])
        self.n_samples = int(self.meta["n_samples"])
        self.vocab_size = int(self.meta["vocab_size"])
        if self.meta.get("shards"):  # out of core: the shards' token files as one stream (tokenscale.data.shards)
            self.tokens = ShardedTokens([data_dir / s["file"] for s in self.meta["shards"]], self.meta["dtype"],
                                        [int(s["n_tokens"]) for s in self.meta["shards"]])
        else:
            self.tokens = np.memmap(data_dir / "train_tokens.bin", dtype=self.meta["dtype"], mode="r", shape=(self.meta["n_tokens"],))
        layout = self.meta.get("layout", "stream")
        self.stride = {"stream": self.seq_len, "rows": self.seq_len + 1}.get(layout)
        self.supervise = self.meta.get("supervise", "all")
        if self.stride is None or self.supervise not in SUPERVISE:
            raise TokenscaleError(f"{meta_path}: layout {layout!r} / supervise {self.supervise!r} is not one of "
                                  f"stream, rows / {', '.join(SUPERVISE)}")

    def __len__(self) -> int:
        return self.n_samples

    def batch(self, indices: np.ndarray) -> np.ndarray:
        """(B,) sample indices -> (B, T+1) int64 token ids."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_samples):
            raise TokenscaleError(f"sample index out of range [0, {self.n_samples}): {idx.min()}..{idx.max()}")
        rows = idx[:, None] * self.stride + np.arange(self.seq_len + 1)[None, :]
        return self.tokens[rows].astype(np.int64)


def token_frequencies(train_token_ids, vocab_size: int, chunk: int = 1 << 24) -> np.ndarray:
    """Occurrences (V,) int64 of every token id in ``train_token_ids`` (e.g. ``TrainTokens(d).tokens``, a
    multi-GB uint16/uint32 memmap), counted ``chunk`` ids at a time."""
    if not (isinstance(vocab_size, (int, np.integer)) and vocab_size >= 1):
        raise TokenscaleError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if chunk < 1:
        raise TokenscaleError(f"chunk must be >= 1, got {chunk!r}")
    ids = train_token_ids if hasattr(train_token_ids, "dtype") else np.asarray(train_token_ids)
    ids = ids if ids.ndim == 1 else ids.reshape(-1)
    if np.asarray(ids[:0]).dtype.kind not in "iu":
        raise TokenscaleError(f"training token ids must be integers, got dtype {np.asarray(ids[:0]).dtype}")
    counts = np.zeros(vocab_size, dtype=np.int64)
    for start in range(0, ids.shape[0], chunk):
        part = np.asarray(ids[start:start + chunk]).astype(np.int64, copy=False)
        lo, hi = int(part.min()), int(part.max())
        if lo < 0 or hi >= vocab_size:
            bad = lo if lo < 0 else hi
            raise TokenscaleError(f"training token id {bad} is outside the vocabulary [0, {vocab_size})")
        counts += np.bincount(part, minlength=vocab_size)
    return counts
