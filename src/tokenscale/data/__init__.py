"""Corpus, split, tokenizer and token sets.

Stages (each a CLI step and a workflow rule):

1. :func:`build_corpus` -- builtin multi-domain corpus from real text on every machine after set-up (the
   standard library and the installed packages of ``data.builtin_packages``: prose docs, docstrings, ``.py``
   sources) plus user corpora (plain text or JSONL); deterministic train/validation split (by file for builtin
   text); a manifest with a content hash and per-package records so a reviewer can tell what went in.
2. :func:`train_tokenizer` -- byte-level BPE with HF ``tokenizers`` (on a seeded subsample of the training
   split when it is large), saved as ``tokenizer.json`` and as a ``PreTrainedTokenizerFast`` folder.
3. :func:`tokenize_corpus` -- training stream as a memory-mapped token file (documents separated by EOS) and
   the fixed validation token set (HDF5, per-token metadata, one document per sequence where possible; layout
   in ``docs/formats.md``).
"""

from __future__ import annotations

import ast
import codecs
import contextlib
import dataclasses
import functools
import hashlib
import heapq
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import sysconfig
import threading
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from tokenscale import TokenscaleError, __version__, atomic

EOS = "<|endoftext|>"
DOC_CHUNK_CHARS = 4000  # builtin texts (prose, docstrings, code) are split at blank lines into ~this size
# Default data.builtin_packages: the project's dependencies (pyproject.toml, with the workflow extra), by import name
BUILTIN_PACKAGES = ("h5py", "jsonschema", "matplotlib", "numpy", "safetensors", "scipy", "snakemake", "tokenizers",
                    "torch", "transformers", "yaml")
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "testing", "idle_test", "__pycache__",
                        "lib2to3", "turtledemo"})
_PROSE_SUFFIXES = (".md", ".rst", ".txt")
_NOT_PROSE = ("license", "copying", "notice")  # legal boilerplate, repeated across packages


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
    """``text`` cut at blank lines into chunks of about ``limit`` characters (joined back, they are ``text``)."""
    out, cur = [], ""
    for para in text.split("\n\n"):
        if cur and len(cur) + len(para) + 2 > limit:
            out.append(cur)
            cur = ""
        cur = f"{cur}\n\n{para}" if cur else para
    if cur.strip():
        out.append(cur)
    return [c for c in out if c.strip()]


def _docstrings(source: str) -> list[str]:
    """Module, class and function docstrings (cleaned, longer than 40 characters) of Python source."""
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


def _is_prose(text: str) -> bool:
    """A shipped .md/.rst/.txt file that reads as prose: long enough, mostly letters (not a table of numbers)."""
    chars = "".join(text.split())
    return len(chars) >= 200 and sum(c.isalpha() for c in chars) >= 0.6 * len(chars)


@dataclasses.dataclass(frozen=True)
class _Source:
    """One group of the builtin corpus: the standard library or one installed package (its folder)."""

    name: str
    version: str
    root: Path

    def files(self, suffixes: tuple[str, ...]) -> list[tuple[str, Path]]:
        """(relative path, path) of the files with these suffixes outside test folders, sorted by path."""
        return [(rel, self.root / rel if self.root.is_dir() else self.root) for rel in _walk(self.root) if rel.endswith(suffixes)]


@functools.lru_cache(maxsize=64)
def _walk(root: Path) -> tuple[str, ...]:
    """Sorted relative paths of the .py and prose files under ``root`` (test and cache folders left out), or the
    name of a single-module root."""
    if root.is_file():
        return (root.name,)
    out = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
        rel = Path(folder).relative_to(root)
        out += [(rel / f).as_posix() for f in files if f.endswith((".py", *_PROSE_SUFFIXES))]
    return tuple(sorted(out))


def _stdlib_source() -> _Source:
    return _Source("stdlib", platform.python_version(), Path(sysconfig.get_paths()["stdlib"]))


@functools.lru_cache(maxsize=1)
def _distributions() -> dict[str, list[str]]:
    """Import name -> distribution names of the environment (importlib.metadata scans every distribution)."""
    return importlib.metadata.packages_distributions()


def _package_source(name: str) -> _Source:
    """The installed package ``name`` (an import name) of the running interpreter's environment."""
    if name in sys.stdlib_module_names:
        raise TokenscaleError(f"data.builtin_packages: {name!r} is part of the standard library, which the builtin corpus always includes")
    spec = importlib.util.find_spec(name) if name.isidentifier() else None
    if spec is None:
        raise TokenscaleError(f"data.builtin_packages: package {name!r} is not installed in this Python environment ({sys.executable})")
    locations = list(spec.submodule_search_locations or [])
    origin = spec.origin if spec.origin not in (None, "built-in", "frozen") else None
    if not locations and not (origin and origin.endswith(".py")):
        raise TokenscaleError(f"data.builtin_packages: {name!r} has no Python source files (a built-in or compiled module)")
    root = Path(sorted(locations)[0] if locations else origin)
    dists = sorted(_distributions().get(name, []))
    version = importlib.metadata.version(dists[0]) if dists else "unknown"
    return _Source(name, version, root)


def _docs_items(src: _Source) -> list[tuple[str, Callable[[], str]]]:
    """(key, text loader) of a source's prose: pydoc topics (stdlib), the distribution's description, shipped docs."""
    items: list[tuple[str, Callable[[], str]]] = []
    if src.name == "stdlib":
        import pydoc_data.topics as topics

        items += [(f"pydoc_data.topics:{k}", functools.partial(topics.topics.get, k)) for k in sorted(topics.topics)]
    else:
        items.append(("METADATA", functools.partial(_description, src.name)))
    for rel, f in src.files(_PROSE_SUFFIXES):
        if not Path(rel).name.lower().startswith(_NOT_PROSE):
            items.append((rel, functools.partial(_prose_file, f)))
    return items


def _description(name: str) -> str:
    """The long description (usually the README) in the package's distribution metadata."""
    dists = sorted(_distributions().get(name, []))
    if not dists:
        return ""
    meta = importlib.metadata.metadata(dists[0])
    return str(meta.get_payload() or meta.get("Description") or "")


def _prose_file(path: Path) -> str:
    text = _read_text(path)
    return text if _is_prose(text) else ""


def _source_items(src: _Source, domain: str, seen: set[str]) -> Iterator[dict]:
    """Documents of one domain of one source: files (or topics) in a name-hash order (spread over the package,
    not alphabetical), each file's chunks in order. Docstrings already seen (any source) are dropped."""
    if domain == "docs":
        items = _docs_items(src)
    else:
        items = [(rel, functools.partial(_read_text, f)) for rel, f in src.files((".py",))]
    items.sort(key=lambda it: hashlib.sha256(f"{src.name}:{it[0]}".encode()).hexdigest())
    for key, load in items:
        text = load()
        if domain == "docstrings":
            fresh = [d for d in _docstrings(text) if d not in seen]
            seen.update(fresh)
            text = "\n\n".join(fresh)
        name = f"{key}:docstrings" if domain == "docstrings" else key
        for j, chunk in enumerate(_chunk_paragraphs(text)):
            yield {"domain": domain, "source": f"{src.name}:{name}#{j}", "text": chunk, "package": src.name, "file": f"{src.name}:{key}"}


def _fill(groups: dict[str, Iterator[dict]], max_chars: int | None) -> list[dict]:
    """Take documents from the groups one at a time, always from the one with the fewest characters taken so
    far (ties: by name), until ``max_chars`` (the last document is cut to fit): small packages go in whole,
    large ones share the rest equally. A document whose text was already taken is skipped."""
    heap = [(0, name) for name in sorted(groups)]
    out, total, seen = [], 0, set()
    while heap and (max_chars is None or total < max_chars):
        taken, name = heapq.heappop(heap)
        d = next(groups[name], None)
        if d is None:
            continue  # this group is used up
        digest = hashlib.sha256(d["text"].encode()).digest()
        if digest not in seen:
            seen.add(digest)
            d["text"] = d["text"][: max_chars - total] if max_chars is not None else d["text"]
            out.append(d)
            total += len(d["text"])
            taken += len(d["text"])
        heapq.heappush(heap, (taken, name))
    return out


def builtin_sources(packages: Iterable[str] = ()) -> list[_Source]:
    """The standard library plus the named installed packages (error in one line for one that is not installed)."""
    return [_stdlib_source()] + [_package_source(p) for p in sorted(set(packages))]


def builtin_documents(domains: Iterable[str], max_chars: int | None = None, packages: Iterable[str] = ()) -> list[dict]:
    """Documents of the builtin corpus: {domain, source, text, package, file}, in a deterministic order (by
    domain, then package and source); at most ``max_chars`` characters per domain, spread over the packages."""
    return [dict(d) for d in _builtin_documents(tuple(domains), max_chars, tuple(sorted(set(packages))))]


@functools.lru_cache(maxsize=4)
def _builtin_documents(domains: tuple[str, ...], max_chars: int | None, packages: tuple[str, ...]) -> tuple[dict, ...]:
    sources = builtin_sources(packages)
    docs: list[dict] = []
    for domain in ("docs", "docstrings", "code"):
        if domain in domains:
            seen: set[str] = set()
            part = _fill({s.name: _source_items(s, domain, seen) for s in sources}, max_chars)
            docs += sorted(part, key=lambda d: (d["package"], d["file"], int(d["source"].rsplit("#", 1)[1])))
    return tuple(docs)


def package_records(docs: list[dict], packages: Iterable[str] = ()) -> list[dict]:
    """Per builtin source (stdlib and each package): name, version, files, docs, chars, sha256 of its texts
    (over its documents sorted by source) and per-domain docs/chars -- what went into the corpus."""
    out = []
    for src in builtin_sources(packages):
        mine = sorted((d for d in docs if d.get("package") == src.name), key=lambda d: d["source"])
        h = hashlib.sha256()
        for d in mine:
            h.update(d["source"].encode() + b"\0" + d["text"].encode() + b"\n")
        domains = {dom: {"docs": sum(d["domain"] == dom for d in mine), "chars": sum(len(d["text"]) for d in mine if d["domain"] == dom)}
                   for dom in sorted({d["domain"] for d in mine})}
        out.append({"name": src.name, "version": src.version, "files": len({d["file"] for d in mine}), "docs": len(mine),
                    "chars": sum(len(d["text"]) for d in mine), "sha256": h.hexdigest(), "domains": domains})
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
    """Collect documents, split train/validation (by file for builtin text, else by document), write
    ``train.jsonl``, ``valid.jsonl`` and ``manifest.json`` (with per-package records, :func:`package_records`)."""
    out_dir = Path(out_dir)
    docs: list[dict] = []
    if data_cfg["builtin"]:
        docs += builtin_documents(data_cfg["builtin_domains"], data_cfg["builtin_max_chars"], data_cfg["builtin_packages"])
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
    # builtin documents split by file (a file's chunks, code and docstrings stay together), user documents one by one
    u = [_split_u(data_cfg["split_seed"], d.get("file") or d["source"]) for d in docs]
    valid_mask = [x < data_cfg["valid_fraction"] for x in u]
    if not any(valid_mask):  # guarantee a non-empty validation split deterministically
        valid_mask = [x == min(u) for x in u]
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
        "packages": package_records(docs, data_cfg["builtin_packages"]) if data_cfg["builtin"] else [],
        "python": sys.version.split()[0],
        "tokenscale": __version__,
        "data_config": {k: data_cfg[k] for k in ("builtin", "builtin_domains", "builtin_max_chars", "builtin_packages", "corpora",
                                                 "valid_fraction", "split_seed")},
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
TOKENIZER_META = "tokenscale_tokenizer.json"


def _subsample(docs: list[dict], max_chars: int | None, seed: int) -> list[dict]:
    """Whole documents in a seeded hash order of their sources until ``max_chars`` (kept in corpus order)."""
    if max_chars is None or sum(len(d["text"]) for d in docs) <= max_chars:
        return docs
    keep, total = set(), 0
    for i in sorted(range(len(docs)), key=lambda i: _split_u(seed, f"tokenizer:{docs[i]['source']}")):
        if total >= max_chars:
            break
        keep.add(i)
        total += len(docs[i]["text"])
    return [d for i, d in enumerate(docs) if i in keep]


def train_tokenizer(train_docs_path: str | Path, out_dir: str | Path, *, vocab_size: int, min_frequency: int = 2,
                    max_chars: int | None = None, seed: int = 0) -> Path:
    """Train a byte-level BPE tokenizer on the training split (at most ``max_chars`` characters of it: whole
    documents in a seeded order); returns the folder (``tokenizer.json`` inside, and ``tokenscale_tokenizer.json``
    recording what it was trained on)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    docs = read_documents(train_docs_path)
    if not docs:
        raise TokenscaleError(f"tokenizer: no training documents in {train_docs_path}")
    sample = _subsample(docs, max_chars, seed)
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
    tok.train_from_iterator((d["text"] for d in sample), trainer=trainer, length=len(sample))
    h = hashlib.sha256()
    for d in sample:
        h.update(d["source"].encode() + b"\n")
    meta = {"vocab_size": vocab_size, "min_frequency": min_frequency, "max_chars": max_chars, "seed": seed,
            "subsampled": len(sample) < len(docs), "train_docs": len(docs), "train_chars": sum(len(d["text"]) for d in docs),
            "sample_docs": len(sample), "sample_chars": sum(len(d["text"]) for d in sample), "sample_sources_sha256": h.hexdigest()}
    out_dir = Path(out_dir)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None)
    with atomic.atomic_output(out_dir, is_dir=True) as tmp:
        fast.save_pretrained(tmp)  # writes tokenizer.json + tokenizer_config.json
        (Path(tmp) / TOKENIZER_META).write_text(json.dumps(meta, indent=1) + "\n")
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
    """Token ids of each document's text (no special tokens), through the tokenizer's own call."""
    return tokenizer([d["text"] for d in docs], add_special_tokens=False)["input_ids"]


def _encode_fast(tokenizer, texts: list[str]) -> list[list[int]]:
    """The same ids as :func:`_encode_docs` for a fast tokenizer, straight from its Rust backend (no
    attention masks or offsets: the training split is large)."""
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=False)]


# --------------------------------------------------------------------------------------------- token data
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


def write_token_set(out_path: str | Path, input_ids: np.ndarray, doc_id: np.ndarray, doc_pos: np.ndarray,
                    domain: np.ndarray, *, kind: str, domain_names: list[str], attrs: dict | None = None,
                    sample_index: np.ndarray | None = None, score_mask: np.ndarray | None = None) -> Path:
    """Write a token set HDF5 (``docs/formats.md``) atomically: ``input_ids`` (S, T+1); ``doc_id``, ``doc_pos`` and
    ``domain`` (S, T) of the target tokens; ``sample_index`` (S,) for a set of training samples; ``score_mask``
    (S, T) bool when only some positions are the set's tokens (a synthetic example's answer)."""
    import h5py

    input_ids = np.asarray(input_ids).astype(np.int32)
    out_path = Path(out_path)
    with atomic.atomic_output(out_path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("input_ids", data=input_ids)
        f.create_dataset("token_id", data=input_ids[:, 1:])
        f.create_dataset("doc_id", data=np.asarray(doc_id).astype(np.int32))
        f.create_dataset("doc_pos", data=np.asarray(doc_pos).astype(np.int32))
        f.create_dataset("domain", data=np.asarray(domain).astype(np.int16))
        if sample_index is not None:
            f.create_dataset("sample_index", data=np.asarray(sample_index, dtype=np.int64))
        if score_mask is not None:
            f.create_dataset("score_mask", data=np.asarray(score_mask, dtype=bool))
        f.attrs["seq_len"] = input_ids.shape[1] - 1
        f.attrs["kind"] = kind
        f.attrs["domain_names"] = json.dumps(domain_names)
        f.attrs["tokenscale_version"] = __version__
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return out_path


SUPERVISE = ("all", "last")  # train_tokens.json "supervise": every next-token label, or only the row's last one


class TrainTokens:
    """Memory-mapped training stream; sample ``i`` is ``tokens[i*T : i*T + T + 1]`` (windows overlap by one), or
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
