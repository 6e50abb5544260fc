"""Corpus, split, tokenizer and token sets.

Stages (each a CLI step and a workflow rule):

1. :func:`build_corpus` -- builtin multi-domain corpus from real text that ships with Python (the reference
   docs in ``pydoc_data.topics`` and stdlib docstrings as English prose, stdlib ``.py`` sources as code)
   plus user corpora (plain text or JSONL); deterministic document-level train/validation split; a manifest
   with a content hash so a reviewer can tell whether their corpus is identical.
2. :func:`train_tokenizer` -- byte-level BPE with HF ``tokenizers``, saved as ``tokenizer.json`` and as a
   ``PreTrainedTokenizerFast`` folder.
3. :func:`tokenize_corpus` -- training stream as a memory-mapped token file (documents separated by EOS) and
   the fixed validation token set (HDF5, per-token metadata; layout in ``docs/formats.md``).
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import functools
import hashlib
import json
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from . import TokenscaleError, __version__, atomic

EOS = "<|endoftext|>"
DOC_CHUNK_CHARS = 4000  # builtin prose topics are split at paragraph boundaries into ~this size


# --------------------------------------------------------------------------------------------- text decoding
# Invalid UTF-8 in a corpus file becomes U+FFFD (exactly what errors="replace" does), but it is counted and
# reported: one stderr line per file.
_REPLACE_COUNTING = "tokenscale-replace-counting"
_replaced = threading.local()


def _replace_counting(e: UnicodeError) -> tuple[str, int]:
    if not isinstance(e, UnicodeDecodeError):
        raise e
    _replaced.n = getattr(_replaced, "n", 0) + 1
    return "\ufffd", e.end  # = codecs.replace_errors for decoding


codecs.register_error(_REPLACE_COUNTING, _replace_counting)


@contextlib.contextmanager
def _count_replacements(path: Path | str) -> Iterator[str]:
    """``with _count_replacements(path) as errors: open(path, encoding="utf-8", errors=errors)``: after the
    block, one stderr warning if any invalid UTF-8 byte sequence of ``path`` was replaced by U+FFFD."""
    outer = getattr(_replaced, "n", 0)
    _replaced.n = 0
    try:
        yield _REPLACE_COUNTING
        n = _replaced.n
    finally:
        _replaced.n = outer
    if n:
        print(f"tokenscale: warning: {path}: {n} invalid UTF-8 byte sequence{'s' if n != 1 else ''} replaced by U+FFFD",
              file=sys.stderr, flush=True)


def _read_text(path: Path) -> str:
    """A UTF-8 text file; invalid bytes become U+FFFD, counted and reported (:func:`_count_replacements`)."""
    with _count_replacements(path) as errors:
        return path.read_text(encoding="utf-8", errors=errors)


# --------------------------------------------------------------------------------------------- corpus
def _chunk_paragraphs(text: str, limit: int = DOC_CHUNK_CHARS) -> list[str]:
    out, cur = [], ""
    for para in text.split("\n\n"):
        if cur and len(cur) + len(para) + 2 > limit:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur.strip():
        out.append(cur)
    return [c for c in out if c.strip()]


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3", "turtledemo"}
    files = [f for f in root.rglob("*.py") if not (set(f.relative_to(root).parts) & skip)]
    return sorted(files, key=lambda f: str(f.relative_to(root)))


def _docstrings(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    out = []
    for n in nodes:
        d = ast.get_docstring(n, clean=True)
        if d and len(d) > 40:
            out.append(d)
    return out


def builtin_documents(domains: Iterable[str], max_chars: int | None = None) -> list[dict]:
    """Documents of the builtin corpus, in a deterministic order. Each: {domain, source, text}."""
    return [dict(d) for d in _builtin_documents(tuple(domains), max_chars)]


@functools.lru_cache(maxsize=4)
def _builtin_documents(domains: tuple[str, ...], max_chars: int | None) -> tuple[dict, ...]:
    docs: list[dict] = []
    if "docs" in domains:
        import pydoc_data.topics as topics

        part = []
        for key in sorted(topics.topics):
            for j, chunk in enumerate(_chunk_paragraphs(topics.topics[key])):
                part.append({"domain": "docs", "source": f"pydoc_data.topics:{key}#{j}", "text": chunk})
        docs += _cap(part, max_chars)
    if "docstrings" in domains or "code" in domains:
        root = Path(sysconfig.get_paths()["stdlib"])
        ds_part, code_part = [], []
        for f in _stdlib_files():
            rel = str(f.relative_to(root))
            src = _read_text(f)
            if "code" in domains and src.strip():
                code_part.append({"domain": "code", "source": f"stdlib:{rel}", "text": src})
            if "docstrings" in domains:
                ds = _docstrings(src)
                if ds:
                    ds_part.append({"domain": "docstrings", "source": f"stdlib:{rel}:docstrings", "text": "\n\n".join(ds)})
        docs += _cap(ds_part, max_chars) + _cap(code_part, max_chars)
    return tuple(docs)


def _cap(docs: list[dict], max_chars: int | None) -> list[dict]:
    """Keep documents in a name-hash order (not alphabetical) until ``max_chars`` is reached."""
    if max_chars is None:
        return docs
    order = sorted(docs, key=lambda d: hashlib.sha256(d["source"].encode()).hexdigest())
    out, total = [], 0
    for d in order:
        if total >= max_chars:
            break
        text = d["text"][: max_chars - total]
        out.append({**d, "text": text})
        total += len(text)
    return out


def read_user_corpus(entry: dict, index: int) -> list[dict]:
    """Documents from one ``data.corpora[index]`` entry: .txt (blank-line separated blocks) or .jsonl."""
    path = Path(entry["path"])
    key = f"data.corpora[{index}].path"
    if not path.is_file():
        raise TokenscaleError(f"{key}: corpus file not found: {path}")
    fmt = entry.get("format", "auto")
    if fmt == "auto":
        fmt = "jsonl" if path.suffix in (".jsonl", ".json") else "text"
    default_domain = entry.get("domain") or path.stem
    docs = []
    if fmt == "jsonl":
        with _count_replacements(path) as errors, open(path, encoding="utf-8", errors=errors) as f:
            for ln, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TokenscaleError(f"{path}:{ln}: invalid JSON ({e.msg})") from None
                if not isinstance(row, dict) or not isinstance(row.get("text"), str):
                    raise TokenscaleError(f"{path}:{ln}: each JSONL row needs a string field 'text'")
                dom = row.get("domain") or default_domain
                docs.append({"domain": str(dom), "source": f"{path.name}:{ln}", "text": row["text"]})
    else:
        text = _read_text(path)
        for j, block in enumerate(_chunk_paragraphs(text)):
            docs.append({"domain": default_domain, "source": f"{path.name}#{j}", "text": block})
    return [d for d in docs if d["text"].strip()]


def _split_u(seed: int, source: str) -> float:
    h = hashlib.sha256(f"{seed}:{source}".encode()).digest()
    return int.from_bytes(h[:8], "little") / 2.0**64


def build_corpus(data_cfg: dict, out_dir: str | Path) -> dict:
    """Collect documents, split train/validation by document, write ``train.jsonl``, ``valid.jsonl``, ``manifest.json``."""
    out_dir = Path(out_dir)
    docs: list[dict] = []
    if data_cfg["builtin"]:
        docs += builtin_documents(data_cfg["builtin_domains"], data_cfg["builtin_max_chars"])
    for i, entry in enumerate(data_cfg["corpora"]):
        docs += read_user_corpus(entry, i)
    docs = [d for d in docs if d["text"].strip()]
    if not docs:
        raise TokenscaleError("data: corpus is empty: no documents with text (enable data.builtin or add data.corpora)")
    if len(docs) < 2:
        raise TokenscaleError(f"data: corpus has {len(docs)} document; need at least 2 for a train/validation split")
    seen: dict[str, int] = {}
    for d in docs:  # make sources unique so the split hash is a function of content position
        n = seen.get(d["source"], 0)
        seen[d["source"]] = n + 1
        if n:
            d["source"] = f"{d['source']}~{n}"
    valid_mask = [(_split_u(data_cfg["split_seed"], d["source"]) < data_cfg["valid_fraction"]) for d in docs]
    if not any(valid_mask):  # guarantee a non-empty validation split deterministically
        valid_mask[int(np.argmin([_split_u(data_cfg["split_seed"], d["source"]) for d in docs]))] = True
    if all(valid_mask):
        raise TokenscaleError("data.valid_fraction: every document went to validation; lower it")
    train = [d for d, v in zip(docs, valid_mask) if not v]
    valid = [d for d, v in zip(docs, valid_mask) if v]
    for split, rows in (("train", train), ("valid", valid)):
        for i, d in enumerate(rows):
            d["id"] = i
    out_dir.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    for split, rows in (("train", train), ("valid", valid)):
        with atomic.atomic_output(out_dir / f"{split}.jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
            for d in rows:
                line = json.dumps({"id": d["id"], "domain": d["domain"], "source": d["source"], "text": d["text"]}, ensure_ascii=False)
                f.write(line + "\n")
                h.update(split.encode() + b"\0" + line.encode() + b"\n")
    domains = sorted({d["domain"] for d in docs})
    manifest = {
        "corpus_sha256": h.hexdigest(),
        "domains": domains,
        "splits": {
            split: {
                dom: {"docs": sum(d["domain"] == dom for d in rows), "chars": sum(len(d["text"]) for d in rows if d["domain"] == dom)}
                for dom in domains
            }
            for split, rows in (("train", train), ("valid", valid))
        },
        "python": sys.version.split()[0],
        "tokenscale": __version__,
        "data_config": {k: data_cfg[k] for k in ("builtin", "builtin_domains", "builtin_max_chars", "corpora", "valid_fraction", "split_seed")},
    }
    atomic.write_json(out_dir / "manifest.json", manifest)
    return manifest


def read_documents(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise TokenscaleError(f"documents file not found: {path}")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------------------------- tokenizer
def train_tokenizer(train_docs_path: str | Path, out_dir: str | Path, *, vocab_size: int, min_frequency: int = 2) -> Path:
    """Train a byte-level BPE tokenizer on the training split; returns the folder (``tokenizer.json`` inside)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    docs = read_documents(train_docs_path)
    if not docs:
        raise TokenscaleError(f"tokenizer: no training documents in {train_docs_path}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator((d["text"] for d in docs), trainer=trainer, length=len(docs))
    out_dir = Path(out_dir)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None)
    with atomic.atomic_output(out_dir, is_dir=True) as tmp:
        fast.save_pretrained(tmp)  # writes tokenizer.json + tokenizer_config.json
    return out_dir


def load_tokenizer(path: str | Path):
    """A ``PreTrainedTokenizerFast`` from a folder or a ``tokenizer.json`` file."""
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise TokenscaleError(f"tokenizer not found: {file}")
    if path.is_dir():
        return PreTrainedTokenizerFast.from_pretrained(str(path))
    return PreTrainedTokenizerFast(tokenizer_file=str(file), eos_token=EOS)


def tokenizer_sha256(path: str | Path) -> str:
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    return hashlib.sha256(file.read_bytes()).hexdigest()


def _encode_docs(tokenizer, docs: list[dict]) -> list[list[int]]:
    texts = [d["text"] for d in docs]
    enc = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return enc


# --------------------------------------------------------------------------------------------- token data
def tokenize_corpus(corpus_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path, *, seq_len: int, valid_sequences: int) -> dict:
    """Write ``train_tokens.bin`` (+ ``train_tokens.json``) and ``valid_tokens.h5``."""
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
    enc = _encode_docs(tok, train_docs)
    lengths = np.array([len(e) + 1 for e in enc], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    n_tokens = int(lengths.sum())
    n_samples = (n_tokens - 1) // seq_len
    if n_samples < 1:
        raise TokenscaleError(f"data: training split has only {n_tokens} tokens, less than one sequence of {seq_len + 1}")
    with atomic.atomic_output(out_dir / "train_tokens.bin") as tmp:
        mm = np.memmap(tmp, dtype=dtype, mode="w+", shape=(n_tokens,))
        for s, e in zip(starts, enc):
            mm[s : s + len(e)] = e
            mm[s + len(e)] = eos
        mm.flush()
        del mm
    with atomic.atomic_output(out_dir / "train_docs.npz") as tmp, open(tmp, "wb") as fh:
        np.savez(fh, doc_start=starts, doc_domain=np.array([dom_code[d["domain"]] for d in train_docs], dtype=np.int16))
    meta = {
        "dtype": np.dtype(dtype).name,
        "n_tokens": n_tokens,
        "seq_len": seq_len,
        "n_samples": n_samples,
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
    )
    return meta


def build_token_set(docs: list[dict], tokenizer, out_path: str | Path, *, seq_len: int, n_seqs: int, kind: str = "validation",
                    domain_names: list[str] | None = None, attrs: dict | None = None, shuffle_seed: int = 0) -> Path:
    """Token set HDF5 (``docs/formats.md``) from documents and any tokenizer.

    Documents are shuffled deterministically (``shuffle_seed``), joined with EOS and cut into ``n_seqs``
    consecutive windows of ``seq_len + 1`` ids that overlap by one, so every target token appears once.
    """
    import h5py

    eos = tokenizer.convert_tokens_to_ids(EOS) if EOS in tokenizer.get_vocab() else tokenizer.eos_token_id
    if eos is None:
        raise TokenscaleError("token set: tokenizer has no EOS token to separate documents")
    domain_names = domain_names or sorted({d["domain"] for d in docs})
    dom_code = {d: i for i, d in enumerate(domain_names)}
    order = np.random.default_rng(shuffle_seed).permutation(len(docs))
    need = n_seqs * seq_len + 1
    ids, doc_id, doc_pos, dom = [], [], [], []
    total = 0
    for j in order:
        d = docs[j]
        e = tokenizer(d["text"], add_special_tokens=False)["input_ids"] + [eos]
        ids.append(np.asarray(e, dtype=np.int64))
        doc_id.append(np.full(len(e), int(d.get("id", j)), dtype=np.int32))
        doc_pos.append(np.arange(len(e), dtype=np.int32))
        dom.append(np.full(len(e), dom_code.get(d["domain"], -1), dtype=np.int16))
        total += len(e)
        if total >= need:
            break
    if total < need:
        raise TokenscaleError(
            f"token set: validation split has only {total} tokens, need {need} for {n_seqs} x {seq_len}; "
            "lower data.valid_sequences or raise data.valid_fraction"
        )
    stream = np.concatenate(ids)[:need]
    cat = lambda xs: np.concatenate(xs)[:need]  # noqa: E731
    doc_id_s, doc_pos_s, dom_s = cat(doc_id), cat(doc_pos), cat(dom)
    rows = np.arange(n_seqs)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]  # (S, T+1) stream indices
    input_ids = stream[rows].astype(np.int32)
    tgt = rows[:, 1:]
    out_path = Path(out_path)
    with atomic.atomic_output(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("input_ids", data=input_ids)
        f.create_dataset("token_id", data=input_ids[:, 1:])
        f.create_dataset("doc_id", data=doc_id_s[tgt])
        f.create_dataset("doc_pos", data=doc_pos_s[tgt])
        f.create_dataset("domain", data=dom_s[tgt])
        f.attrs["seq_len"] = seq_len
        f.attrs["kind"] = kind
        f.attrs["domain_names"] = json.dumps(domain_names)
        f.attrs["tokenscale_version"] = __version__
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return out_path


class TrainTokens:
    """Memory-mapped training stream; sample ``i`` is ``tokens[i*T : i*T + T + 1]`` (windows overlap by one)."""

    def __init__(self, data_dir: str | Path):
        data_dir = Path(data_dir)
        meta_path = data_dir / "train_tokens.json"
        if not meta_path.is_file():
            raise TokenscaleError(f"training tokens not found: {meta_path} (run `tokenscale prepare-data` first)")
        self.meta = json.loads(meta_path.read_text())
        self.seq_len = int(self.meta["seq_len"])
        self.n_samples = int(self.meta["n_samples"])
        self.vocab_size = int(self.meta["vocab_size"])
        self.tokens = np.memmap(data_dir / "train_tokens.bin", dtype=self.meta["dtype"], mode="r", shape=(self.meta["n_tokens"],))

    def __len__(self) -> int:
        return self.n_samples

    def batch(self, indices: np.ndarray) -> np.ndarray:
        """(B,) sample indices -> (B, T+1) int64 token ids."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_samples):
            raise TokenscaleError(f"sample index out of range [0, {self.n_samples}): {idx.min()}..{idx.max()}")
        rows = idx[:, None] * self.seq_len + np.arange(self.seq_len + 1)[None, :]
        return self.tokens[rows].astype(np.int64)
