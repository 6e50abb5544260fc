"""Out-of-core token data (``data.shards``): one tokenization job per input shard, then one index job.

The corpus is a folder of shards (:mod:`tokenscale.data.shardlist`). Every stage streams:

* :func:`sample_tokenizer` trains the BPE on a bounded sample: the first training documents of every shard, an
  equal share of ``data.tokenizer_max_chars`` each.
* :func:`tokenize_shard` reads one shard document by document, splits train/validation by the same document hash
  as the in-memory corpus (:func:`tokenscale.data.corpus._split_u` of ``"<file name>:<line>"``), encodes
  ``data.shards.batch_docs`` documents at a time and appends them (each with EOS) to ``shards/<name>/train.bin``
  and ``valid.bin``; ``docs.npz`` holds the document lengths and domains, ``shard.json`` the counts and tokenizer.
  Memory is bounded by one batch plus the shard's document table.
* :func:`index_shards` checks that every shard has the same tokenizer and dtype and writes ``train_tokens.json``
  listing the shard files (the trainer reads them as one stream, :class:`ShardedTokens`), ``train_docs.npz`` and
  the validation token set, drawn from the held-out streams through memory maps.

``train_tokens.bin`` is then an empty placeholder (the workflow's file name); ``train_tokens.json`` ``shards``
says where the tokens are.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from tokenscale import TokenscaleError, atomic
from tokenscale.data.corpus import _count_replacements, _split_u
from tokenscale.data.shardlist import TOKEN_FORMAT, input_shards, shard_file, shard_format
from tokenscale.data.tokenizer import EOS, _encode_fast, fit_bpe, load_tokenizer, tokenizer_sha256
from tokenscale.io.tokensets import write_token_set

SHARDS_DIR = "shards"
PROGRESS_DOCS = 100_000  # one progress line per this many documents


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ reading documents
def _jsonl_lines(path: Path, fmt: str) -> Iterator[str]:
    if fmt == "jsonl":
        with _count_replacements(path) as errors, open(path, encoding="utf-8", errors=errors) as f:
            yield from f
        return
    try:
        import zstandard
    except ImportError:
        raise TokenscaleError(f"{path}: reading .jsonl.zst needs the 'zstandard' package (pip install zstandard)") from None
    import io

    with open(path, "rb") as raw, zstandard.ZstdDecompressor().stream_reader(raw) as z:
        yield from io.TextIOWrapper(z, encoding="utf-8", errors="replace")


def _parquet_rows(path: Path) -> Iterator[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TokenscaleError(f"{path}: reading .parquet needs the 'pyarrow' package (pip install pyarrow)") from None
    f = pq.ParquetFile(path)
    if "text" not in f.schema_arrow.names:
        raise TokenscaleError(f"{path}: parquet shard has no 'text' column")
    cols = [c for c in ("text", "domain") if c in f.schema_arrow.names]
    for batch in f.iter_batches(batch_size=1024, columns=cols):
        yield from batch.to_pylist()


def iter_documents(path: Path, domain: str | None = None) -> Iterator[dict]:
    """Documents ``{source, domain, text}`` of one text shard, streamed, in file order; ``source`` is
    ``"<file name>:<line or row>"`` (1-based), as the in-memory corpus names JSONL rows. Rows with blank text
    are skipped; a bad row is one line naming the file and line."""
    fmt = shard_format(path)
    default_domain = domain or path.stem
    if fmt == "parquet":
        rows = ((i, r) for i, r in enumerate(_parquet_rows(path), 1))
    else:
        rows = ((ln, _json_row(path, ln, line)) for ln, line in enumerate(_jsonl_lines(path, fmt), 1) if line.strip())
    for ln, row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise TokenscaleError(f"{path}:{ln}: each row needs a string field 'text'")
        if row["text"].strip():
            yield {"source": f"{path.name}:{ln}", "domain": str(row.get("domain") or default_domain), "text": row["text"]}


def _json_row(path: Path, ln: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as e:
        raise TokenscaleError(f"{path}:{ln}: invalid JSON ({e.msg})") from None


def _is_valid(data_cfg: dict, source: str) -> bool:
    return _split_u(data_cfg["split_seed"], source) < data_cfg["valid_fraction"]


def shard_manifest(data_cfg: dict, corpus_dir: str | Path) -> dict:
    """The corpus stage of a shard folder: ``manifest.json`` naming each shard with its size (the shards are not
    read here) and empty ``train.jsonl`` / ``valid.jsonl`` (the documents stay in the shards)."""
    corpus_dir = Path(corpus_dir)
    shards = input_shards(data_cfg)
    for split in ("train", "valid"):
        with atomic.atomic_output(corpus_dir / f"{split}.jsonl") as tmp:
            tmp.write_bytes(b"")
    manifest = {"shards": [{"name": p.name, "format": shard_format(p), "bytes": p.stat().st_size} for p in shards],
                "data_config": {k: data_cfg[k] for k in ("shards", "valid_fraction", "split_seed")}}
    atomic.write_json(corpus_dir / "manifest.json", manifest)
    return manifest


# ------------------------------------------------------------------------------------------------ tokenizer
def sample_tokenizer(data_cfg: dict, out_dir: str | Path) -> Path:
    """Train the BPE on a bounded sample of the shards' training documents: each shard's first documents, up to
    an equal share of ``data.tokenizer_max_chars`` (null: every training document)."""
    shards = input_shards(data_cfg)
    if shard_format(shards[0]) == TOKEN_FORMAT:
        return _install_tokenizer(data_cfg, Path(out_dir))
    cap = data_cfg["tokenizer_max_chars"]
    share = None if cap is None else max(1, cap // len(shards))
    texts: list[str] = []
    for path in shards:
        taken = 0
        for d in iter_documents(path, data_cfg["shards"]["domain"]):
            if share is not None and taken >= share:
                break
            if not _is_valid(data_cfg, d["source"]):
                texts.append(d["text"])
                taken += len(d["text"])
        _log(f"prepare-data: tokenizer sample: {path.name}: {taken:,} characters")
    if not texts:
        raise TokenscaleError(f"data.shards.path: no training documents in {data_cfg['shards']['path']}")
    meta = {"vocab_size": data_cfg["vocab_size"], "min_frequency": data_cfg["min_frequency"], "max_chars": cap,
            "seed": data_cfg["split_seed"], "shards": len(shards), "sample_docs": len(texts),
            "sample_chars": sum(len(t) for t in texts)}
    return fit_bpe(texts, out_dir, vocab_size=data_cfg["vocab_size"], min_frequency=data_cfg["min_frequency"], meta=meta)


def _install_tokenizer(data_cfg: dict, out_dir: Path) -> Path:
    """Token shards come tokenized: their tokenizer (``data.shards.tokenizer``) is copied into the data folder."""
    src = data_cfg["shards"]["tokenizer"]
    if not src:
        raise TokenscaleError("data.shards.tokenizer: token shards need the tokenizer.json they were made with")
    tok = load_tokenizer(src)
    with atomic.atomic_output(out_dir, is_dir=True) as tmp:
        tok.save_pretrained(tmp)
    return out_dir


def _shard_tokenizer(data_cfg: dict, tokenizer_dir: Path):
    tok = load_tokenizer(tokenizer_dir)
    vocab = len(tok)
    return tok, tok.convert_tokens_to_ids(EOS), np.uint16 if vocab <= np.iinfo(np.uint16).max else np.uint32, vocab


# ------------------------------------------------------------------------------------------- one shard's job
class _Split:
    """One split (train or valid) of a shard being written: its token file, document lengths and domains."""

    def __init__(self, fh, dtype):
        self.fh, self.dtype, self.lengths, self.domains = fh, dtype, [], []

    def add(self, ids, eos: int | None, domain: int) -> None:
        arr = np.asarray(ids if eos is None else list(ids) + [eos], dtype=self.dtype)
        arr.tofile(self.fh)
        self.lengths.append(arr.size)
        self.domains.append(domain)


def tokenize_shard(data_cfg: dict, name: str, tokenizer_dir: str | Path, out_dir: str | Path) -> dict:
    """One input shard ``name`` -> ``<out_dir>/shards/<name>/`` (``train.bin``, ``valid.bin``, ``docs.npz``,
    ``shard.json``), written atomically as one folder. Text shards are encoded with the tokenizer; token shards
    are split by document and copied."""
    path = shard_file(data_cfg, name)
    dest = Path(out_dir) / SHARDS_DIR / name
    with atomic.atomic_output(dest, is_dir=True) as tmp, open(tmp / "train.bin", "wb") as ft, open(tmp / "valid.bin", "wb") as fv:
        if shard_format(path) == TOKEN_FORMAT:
            info = _copy_token_shard(data_cfg, path, ft, fv)
        else:
            info = _encode_text_shard(data_cfg, path, Path(tokenizer_dir), ft, fv)
        splits, names = info.pop("splits"), info.pop("domain_names")
        np.savez(tmp / "docs.npz", **{f"{k}_{f}": np.asarray(getattr(s, f), dtype=np.int64 if f == "lengths" else np.int16)
                                      for k, s in splits.items() for f in ("lengths", "domains")})
        info |= {"source": str(path), "domain_names": names,
                 **{f"{k}_{u}": int(v) for k, s in splits.items() for u, v in (("tokens", sum(s.lengths)), ("docs", len(s.lengths)))}}
        (tmp / "shard.json").write_text(json.dumps(info, indent=1) + "\n")
    _log(f"prepare-data: shard {name}: {info['train_tokens']:,} training tokens ({info['train_docs']:,} docs), "
         f"{info['valid_tokens']:,} held out")
    return info


def _encode_text_shard(data_cfg: dict, path: Path, tokenizer_dir: Path, ft, fv) -> dict:
    tok, eos, dtype, vocab = _shard_tokenizer(data_cfg, tokenizer_dir)
    splits = {"train": _Split(ft, dtype), "valid": _Split(fv, dtype)}
    codes: dict[str, int] = {}
    batch: list[dict] = []
    n = 0

    def flush():
        for d, ids in zip(batch, _encode_fast(tok, [d["text"] for d in batch])):
            code = codes.setdefault(d["domain"], len(codes))
            splits["valid" if _is_valid(data_cfg, d["source"]) else "train"].add(ids, eos, code)
        batch.clear()

    for d in iter_documents(path, data_cfg["shards"]["domain"]):
        batch.append(d)
        n += 1
        if len(batch) >= data_cfg["shards"]["batch_docs"]:
            flush()
        if n % PROGRESS_DOCS == 0:
            _log(f"prepare-data: {path.name}: {n:,} documents")
    flush()
    return {"splits": splits, "domain_names": list(codes), "dtype": np.dtype(dtype).name, "vocab_size": vocab,
            "eos_id": eos, "tokenizer_sha256": tokenizer_sha256(tokenizer_dir)}


# ------------------------------------------------------------------------------------------------ token shards
_MEGATRON_MAGIC = b"MMIDIDX\x00\x00"
_MEGATRON_DTYPES = {1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32, 5: np.int64, 8: np.uint16}


def _megatron_docs(idx: Path, dtype) -> Iterator[tuple[int, int]]:
    """(start, end) token offsets of each document of a Megatron ``.idx`` (``MMIDIDX`` version 1)."""
    with open(idx, "rb") as f:
        head = f.read(9 + 8 + 1 + 8 + 8)
    if len(head) < 34 or head[:9] != _MEGATRON_MAGIC:
        raise TokenscaleError(f"{idx}: not a Megatron index (no MMIDIDX header)")
    code, n_seq, n_doc = head[17], int.from_bytes(head[18:26], "little"), int.from_bytes(head[26:34], "little")
    if np.dtype(_MEGATRON_DTYPES.get(code, np.float32)) != np.dtype(dtype):
        raise TokenscaleError(f"{idx}: index dtype code {code} differs from the sidecar's dtype {np.dtype(dtype).name}")
    sizes = np.memmap(idx, dtype=np.int32, mode="r", offset=34, shape=(n_seq,))
    pointers = np.memmap(idx, dtype=np.int64, mode="r", offset=34 + 4 * n_seq, shape=(n_seq,))
    doc_idx = np.memmap(idx, dtype=np.int64, mode="r", offset=34 + 12 * n_seq, shape=(n_doc,))
    item = np.dtype(dtype).itemsize
    for a, b in zip(doc_idx[:-1], doc_idx[1:]):
        if b > a:
            yield int(pointers[a]) // item, (int(pointers[b - 1]) + int(sizes[b - 1]) * item) // item


def _eos_docs(tokens: np.ndarray, eos: int, chunk: int = 1 << 24) -> Iterator[tuple[int, int]]:
    """(start, end) of each EOS-terminated document of a flat token file (nanoGPT), read ``chunk`` at a time."""
    start = 0
    for lo in range(0, tokens.shape[0], chunk):
        for e in np.flatnonzero(np.asarray(tokens[lo:lo + chunk]) == eos) + lo + 1:
            yield start, int(e)
            start = int(e)
    if start < tokens.shape[0]:
        yield start, int(tokens.shape[0])


def _token_sidecar(path: Path) -> dict:
    side = path.with_suffix(".json")
    if not side.is_file():
        raise TokenscaleError(f"{path}: token shard has no sidecar {side.name} (dtype, tokenizer, eos_id)")
    meta = json.loads(side.read_text())
    if meta.get("dtype") not in ("uint16", "uint32", "int32") or not meta.get("tokenizer"):
        raise TokenscaleError(f"{side}: needs 'dtype' (uint16, uint32 or int32) and 'tokenizer' (its name or sha256)")
    return meta


def _copy_token_shard(data_cfg: dict, path: Path, ft, fv) -> dict:
    meta = _token_sidecar(path)
    dtype = np.dtype(meta["dtype"])
    tokens = np.memmap(path, dtype=dtype, mode="r")
    idx = path.with_suffix(".idx")
    if idx.is_file():
        docs = _megatron_docs(idx, dtype)
    elif meta.get("eos_id") is not None:
        docs = _eos_docs(tokens, int(meta["eos_id"]))
    else:
        raise TokenscaleError(f"{path}: token shard has neither a Megatron .idx nor an 'eos_id' in its sidecar")
    splits = {"train": _Split(ft, dtype), "valid": _Split(fv, dtype)}
    for k, (a, b) in enumerate(docs, 1):
        splits["valid" if _is_valid(data_cfg, f"{path.name}:{k}") else "train"].add(tokens[a:b], None, 0)
    return {"splits": splits, "domain_names": [data_cfg["shards"]["domain"] or path.stem], "dtype": dtype.name,
            "vocab_size": meta.get("vocab_size"), "eos_id": meta.get("eos_id"), "tokenizer_sha256": str(meta["tokenizer"])}


# -------------------------------------------------------------------------------------------------- index job
def _shard_infos(data_cfg: dict, out_dir: Path) -> tuple[list[str], list[dict]]:
    """The shard names and their ``shard.json``; one line for a missing shard or a mixed tokenizer or dtype."""
    names = [p.name for p in input_shards(data_cfg)]
    infos = []
    for n in names:
        f = out_dir / SHARDS_DIR / n / "shard.json"
        if not f.is_file():
            raise TokenscaleError(f"data.shards: shard {n!r} is not tokenized yet ({f} missing; run prepare-data --stage shard)")
        infos.append(json.loads(f.read_text()))
    for key, what in (("tokenizer_sha256", "tokenizer"), ("dtype", "token dtype")):
        seen = {i[key] for i in infos}
        if len(seen) > 1:
            a = next(n for n, i in zip(names, infos) if i[key] == infos[0][key])
            b = next(n for n, i in zip(names, infos) if i[key] != infos[0][key])
            raise TokenscaleError(f"data.shards: mixed {what} in token shards: {a} has {infos[0][key]!r}, {b} has "
                                  f"{next(i[key] for i in infos if i[key] != infos[0][key])!r}")
    return names, infos


def _doc_tables(out_dir: Path, names: list[str], infos: list[dict], split: str, domain_names: list[str]):
    """Per shard: (document lengths, global domain codes) of one split."""
    code = {d: i for i, d in enumerate(domain_names)}
    out = []
    for n, info in zip(names, infos):
        z = np.load(out_dir / SHARDS_DIR / n / "docs.npz")
        remap = np.array([code[d] for d in info["domain_names"]] or [0], dtype=np.int16)
        out.append((z[f"{split}_lengths"], remap[z[f"{split}_domains"]]))
    return out


def index_shards(data_cfg: dict, tokenizer_dir: str | Path, out_dir: str | Path) -> dict:
    """The index job: ``train_tokens.json`` (listing the shards' ``train.bin``), ``train_docs.npz``, the
    validation token set ``valid_tokens.h5`` and the ``train_tokens.bin`` placeholder. Every check runs before
    the first file is written."""
    out_dir = Path(out_dir)
    names, infos = _shard_infos(data_cfg, out_dir)
    tok = load_tokenizer(tokenizer_dir)
    seq_len = data_cfg["seq_len"]
    domain_names = sorted({d for i in infos for d in i["domain_names"]})
    n_tokens = sum(i["train_tokens"] for i in infos)
    n_samples = (n_tokens - 1) // seq_len
    if n_samples < 1:
        raise TokenscaleError(f"data: training split has only {n_tokens} tokens, less than one sequence of {seq_len + 1}")
    train = _doc_tables(out_dir, names, infos, "train", domain_names)
    valid = _valid_windows(out_dir, names, _doc_tables(out_dir, names, infos, "valid", domain_names), infos[0]["dtype"],
                           seq_len + 1, data_cfg["valid_sequences"], data_cfg["split_seed"])
    sha = tokenizer_sha256(tokenizer_dir) if shard_format(input_shards(data_cfg)[0]) != TOKEN_FORMAT else infos[0]["tokenizer_sha256"]
    write_token_set(out_dir / "valid_tokens.h5", *valid, kind="validation", domain_names=domain_names,
                    attrs={"tokenizer_sha256": sha, "shards": len(names)})
    lengths = np.concatenate([t[0] for t in train])
    doc_domain = np.concatenate([t[1] for t in train])
    with atomic.atomic_output(out_dir / "train_docs.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, doc_start=np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64), doc_domain=doc_domain)
    with atomic.atomic_output(out_dir / "train_tokens.bin") as tmp:
        tmp.write_bytes(b"")  # placeholder: the tokens are in the shards listed by train_tokens.json
    meta = {"dtype": infos[0]["dtype"], "n_tokens": n_tokens, "seq_len": seq_len, "n_samples": n_samples,
            "single_pass_tokens": n_samples * seq_len, "n_docs": int(lengths.size),
            "domain_tokens": {d: int(lengths[doc_domain == i].sum()) for i, d in enumerate(domain_names)},
            "vocab_size": len(tok), "eos_id": tok.convert_tokens_to_ids(EOS), "domain_names": domain_names,
            "tokenizer_sha256": sha, "shards": [{"file": f"{SHARDS_DIR}/{n}/train.bin", "n_tokens": i["train_tokens"]}
                                                for n, i in zip(names, infos)]}
    atomic.write_json(out_dir / "train_tokens.json", meta)
    return meta


def _valid_windows(out_dir: Path, names: list[str], tables: list, dtype: str, width: int, n_seqs: int, seed: int):
    """``n_seqs`` non-overlapping windows of ``width`` tokens drawn (seeded, uniformly) from the shards' held-out
    streams through memory maps: (input_ids, doc_id, doc_pos, domain), the last three of the target tokens."""
    counts = np.array([int(t[0].sum()) // width for t in tables], dtype=np.int64)
    if counts.sum() < n_seqs:
        raise TokenscaleError(f"token set: held-out documents give {int(counts.sum())} windows of {width}; need {n_seqs}; "
                              "lower data.valid_sequences or raise data.valid_fraction")
    pick = np.random.default_rng([seed, 2]).choice(int(counts.sum()), n_seqs, replace=False)
    ends = np.cumsum(counts)
    shard = np.searchsorted(ends, pick, side="right")
    doc_base = np.concatenate([[0], np.cumsum([t[0].size for t in tables])[:-1]])
    rows = []
    for s, w in zip(shard, pick - (ends[shard] - counts[shard])):
        lengths, domains = tables[s]
        mm = np.memmap(out_dir / SHARDS_DIR / names[s] / "valid.bin", dtype=dtype, mode="r")
        pos = int(w) * width + np.arange(width)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        doc = np.searchsorted(starts, pos, side="right") - 1
        rows.append((np.asarray(mm[pos], dtype=np.int64), doc + doc_base[s], pos - starts[doc], domains[doc]))
    ids, doc_id, doc_pos, dom = (np.stack(a) for a in zip(*rows))
    return ids, doc_id[:, 1:], doc_pos[:, 1:], dom[:, 1:]


# ---------------------------------------------------------------------------------------- the sharded stream
class ShardedTokens:
    """The shards' ``train.bin`` files as one read-only 1-D token array (memory maps): integer, slice and integer
    array indexing, ``dtype``, ``shape``, ``ndim``, ``len``; what :class:`tokenscale.data.TrainTokens` reads."""

    def __init__(self, files: list[Path], dtype: str, sizes: list[int]):
        self.parts = [np.memmap(f, dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype=dtype)
                      for f, n in zip(files, sizes)]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.dtype, self.shape, self.ndim = np.dtype(dtype), (int(self.offsets[-1]),), 1

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        return self[:].astype(dtype) if dtype is not None else self[:]

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(self.shape[0])
            if step != 1:
                return self[np.arange(start, stop, step)]
            return self._range(start, stop)
        idx = np.asarray(key, dtype=np.int64)
        if idx.size and (idx.min() < -self.shape[0] or idx.max() >= self.shape[0]):
            raise IndexError(f"token index out of range [0, {self.shape[0]})")
        idx = np.where(idx < 0, idx + self.shape[0], idx)
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        out = np.empty(idx.shape, dtype=self.dtype)
        for p in np.unique(part):
            m = part == p
            out[m] = self.parts[p][idx[m] - self.offsets[p]]
        return out if idx.ndim else out[()]

    def _range(self, start: int, stop: int) -> np.ndarray:
        pieces = []
        for p, mm in enumerate(self.parts):
            lo, hi = max(start, self.offsets[p]), min(stop, self.offsets[p + 1])
            if lo < hi:
                pieces.append(np.asarray(mm[lo - self.offsets[p]:hi - self.offsets[p]]))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=self.dtype)
