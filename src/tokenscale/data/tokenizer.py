"""The tokenizer (stage 2 of :mod:`tokenscale.data`): byte-level BPE trained on the training split.

:func:`train_tokenizer` trains with HF ``tokenizers`` (on a seeded subsample of the training split when it is
large) and saves ``tokenizer.json`` as a ``PreTrainedTokenizerFast`` folder; :func:`load_tokenizer` loads it,
:func:`tokenizer_sha256` identifies it, and the encode helpers turn documents into token ids.  ``tokenizers`` and
``transformers`` are imported only inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tokenscale import TokenscaleError, atomic
from tokenscale.data.corpus import _split_u, read_documents

EOS = "<|endoftext|>"
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
    docs = read_documents(train_docs_path)
    if not docs:
        raise TokenscaleError(f"tokenizer: no training documents in {train_docs_path}")
    sample = _subsample(docs, max_chars, seed)
    h = hashlib.sha256()
    for d in sample:
        h.update(d["source"].encode() + b"\n")
    meta = {"vocab_size": vocab_size, "min_frequency": min_frequency, "max_chars": max_chars, "seed": seed,
            "subsampled": len(sample) < len(docs), "train_docs": len(docs), "train_chars": sum(len(d["text"]) for d in docs),
            "sample_docs": len(sample), "sample_chars": sum(len(d["text"]) for d in sample), "sample_sources_sha256": h.hexdigest()}
    return fit_bpe([d["text"] for d in sample], out_dir, vocab_size=vocab_size, min_frequency=min_frequency, meta=meta)


def fit_bpe(texts: list[str], out_dir: str | Path, *, vocab_size: int, min_frequency: int, meta: dict) -> Path:
    """Train the byte-level BPE on ``texts`` and save it to ``out_dir`` (with ``meta`` as ``tokenscale_tokenizer.json``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

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
    tok.train_from_iterator(iter(texts), trainer=trainer, length=len(texts))
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
