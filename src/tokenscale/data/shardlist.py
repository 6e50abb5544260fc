"""The input shards of an out-of-core corpus (``data.shards``): which files of the folder are read, and how.

Light on purpose (standard library only): the workflow lists the shards while Snakemake builds the DAG, one
``tokenize_shard`` job per file. A shard is a text file (``.jsonl``, ``.jsonl.zst``, ``.parquet``: documents with a
``text`` field) or an already-tokenized token file (``.bin`` with a Megatron ``.idx`` or a ``.json`` sidecar naming
its dtype and tokenizer). Its name is its file name.
"""

from __future__ import annotations

from pathlib import Path

from tokenscale import TokenscaleError

TEXT_FORMATS = {".jsonl": "jsonl", ".jsonl.zst": "jsonl.zst", ".parquet": "parquet"}
TOKEN_FORMAT = "tokens"


def shard_format(path: Path | str) -> str | None:
    """``jsonl``, ``jsonl.zst``, ``parquet`` or ``tokens`` (a ``.bin``) by the file name; None for another file."""
    name = Path(path).name
    if name.endswith(".bin"):
        return TOKEN_FORMAT
    for suffix, fmt in TEXT_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


def sharded(data_cfg: dict) -> bool:
    """Whether the config reads its corpus from a shard folder (``data.shards.path``) instead of in memory."""
    return bool((data_cfg.get("shards") or {}).get("path"))


def input_shards(data_cfg: dict) -> list[Path]:
    """The readable input files of ``data.shards.path``, sorted by name, all of one kind (text or tokens); one
    line naming the folder when it has none or mixes text and token shards."""
    spec = data_cfg["shards"]
    folder = Path(spec["path"])
    if not folder.is_dir():
        raise TokenscaleError(f"data.shards.path: not a folder: {folder}")
    want = spec.get("format", "auto")
    files = sorted((p for p in folder.iterdir() if p.is_file() and shard_format(p)), key=lambda p: p.name)
    files = [p for p in files if want == "auto" or shard_format(p) == want]
    files = [p for p in files if _readable(p)]
    if not files:
        kinds = "jsonl, jsonl.zst, parquet or token .bin" if want == "auto" else want
        raise TokenscaleError(f"data.shards.path: no readable {kinds} file in {folder}")
    kinds = {shard_format(p) == TOKEN_FORMAT for p in files}
    if len(kinds) > 1:
        raise TokenscaleError(f"data.shards.path: {folder} mixes text and token (.bin) shards; keep one kind per folder")
    return files


def _readable(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            f.read(1)
        return path.stat().st_size > 0
    except OSError:
        return False


def shard_file(data_cfg: dict, name: str) -> Path:
    """The input file of the shard ``name`` (one line when the folder has no such shard)."""
    path = Path(data_cfg["shards"]["path"]) / name
    if not path.is_file() or shard_format(path) is None:
        raise TokenscaleError(f"data.shards: no input shard {name!r} in {data_cfg['shards']['path']}")
    return path
