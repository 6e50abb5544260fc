"""Corpus, split, tokenizer and token sets: the data stages, one module each (this package re-exports their names).

Stages (each a CLI step and a workflow rule):

1. :mod:`tokenscale.data.corpus` -- :func:`build_corpus`: builtin multi-domain corpus from real text on every
   machine after set-up (the standard library and the installed packages of ``data.builtin_packages``: prose docs,
   docstrings, ``.py`` sources) plus user corpora (plain text or JSONL); deterministic train/validation split (by
   file for builtin text); a manifest with a content hash and per-package records so a reviewer can tell what went in.
2. :mod:`tokenscale.data.tokenizer` -- :func:`train_tokenizer`: byte-level BPE with HF ``tokenizers`` (on a seeded
   subsample of the training split when it is large), saved as ``tokenizer.json`` and as a
   ``PreTrainedTokenizerFast`` folder.
3. :mod:`tokenscale.data.tokensets` -- :func:`tokenize_corpus`: training stream as a memory-mapped token file
   (documents separated by EOS; :class:`TrainTokens`) and the fixed validation token set (HDF5, per-token metadata,
   one document per sequence where possible; layout in ``docs/formats.md``, written by
   :func:`tokenscale.io.tokensets.write_token_set`).

Names are imported from their module on first use (:func:`tokenscale._lazy.lazy_exports`).
"""

from __future__ import annotations

from tokenscale._lazy import lazy_exports

_CORPUS = "tokenscale.data.corpus"
_TOKENIZER = "tokenscale.data.tokenizer"
_TOKENSETS = "tokenscale.data.tokensets"

_EXPORTS = {
    **dict.fromkeys(("DOC_CHUNK_CHARS", "BUILTIN_PACKAGES", "builtin_sources", "builtin_documents", "package_records",
                     "read_user_corpus", "build_corpus", "read_documents"), _CORPUS),
    **dict.fromkeys(("EOS", "TOKENIZER_META", "train_tokenizer", "load_tokenizer", "tokenizer_sha256"), _TOKENIZER),
    **dict.fromkeys(("tokenize_corpus", "build_token_set", "SUPERVISE", "TrainTokens"), _TOKENSETS),
    "write_token_set": "tokenscale.io.tokensets",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)
