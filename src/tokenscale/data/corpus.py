"""The corpus (stage 1 of :mod:`tokenscale.data`): documents, the train/validation split and its manifest.

:func:`build_corpus` collects the builtin multi-domain corpus from real text on every machine after set-up (the
standard library and the installed packages of ``data.builtin_packages``: prose docs, docstrings, ``.py``
sources) plus user corpora (plain text or JSONL, :func:`read_user_corpus`); splits train/validation
deterministically (by file for builtin text); and writes ``train.jsonl``, ``valid.jsonl`` and a manifest with a
content hash and per-package records (:func:`package_records`) so a reviewer can tell what went in.
:func:`read_documents` reads a split back.
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

from tokenscale import TokenscaleError, __version__, atomic

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
