"""Out-of-core data (``data.shards``): per-shard tokenization, the index job, the sharded stream the trainer
reads, token shards, bad input, and tokenizing a corpus 10x larger than the process's memory cap."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import tokenscale.studies  # noqa: F401  (registers the study sections before a config is validated)
from tokenscale import TokenscaleError
from tokenscale.config import validate_config
from tokenscale.data import TrainTokens
from tokenscale.data.shards import ShardedTokens, index_shards, tokenize_shard
from tokenscale.data.stage import prepare_data

WORDS = ("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau "
         "upsilon phi chi psi omega").split()


def _write_shards(folder: Path, n_files: int = 3, docs: int = 60, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n_files):
        p = folder / f"part-{i:02d}.jsonl"
        with open(p, "w") as f:
            for _ in range(docs):
                text = " ".join(rng.choice(WORDS, size=int(rng.integers(5, 120))))
                f.write(json.dumps({"text": text, "domain": ["news", "code"][int(rng.integers(2))]}) + "\n")
        paths.append(p)
    return paths


def _cfg(**data) -> dict:
    base = {"builtin": False, "vocab_size": 300, "seq_len": 16, "valid_sequences": 4, "valid_fraction": 0.2}
    return validate_config({"data": base | data})["data"]


def test_sharded_training_tokens_equal_the_in_memory_path(tmp_path):
    paths = _write_shards(tmp_path / "in")
    mem = _cfg(corpora=[{"path": str(p)} for p in paths])
    prepare_data(mem, tmp_path / "mem", log=lambda s: None)
    shard_cfg = _cfg(shards={"path": str(tmp_path / "in"), "batch_docs": 7})
    out = tmp_path / "sh"
    shutil.copytree(tmp_path / "mem" / "tokenizer", out / "tokenizer")  # the same tokenizer: compare the tokens
    for stage in ("corpus", "shards", "tokens"):
        prepare_data(shard_cfg, out, stage, log=lambda s: None)
    a, b = TrainTokens(tmp_path / "mem"), TrainTokens(out)
    assert isinstance(b.tokens, ShardedTokens) and len(b.meta["shards"]) == 3
    assert (a.n_samples, a.meta["n_tokens"], a.meta["n_docs"]) == (b.n_samples, b.meta["n_tokens"], b.meta["n_docs"])
    assert np.array_equal(np.asarray(a.tokens), b.tokens[:])
    idx = np.arange(a.n_samples)  # every sample, windows across shard boundaries included
    assert np.array_equal(a.batch(idx), b.batch(idx))
    assert np.array_equal(np.load(tmp_path / "mem" / "train_docs.npz")["doc_start"], np.load(out / "train_docs.npz")["doc_start"])
    assert (out / "valid_tokens.h5").is_file() and (out / "train_tokens.bin").stat().st_size == 0


def test_sharded_tokens_index_like_an_array(tmp_path):
    data = np.arange(100, dtype=np.uint16)
    files = []
    for i, (lo, hi) in enumerate(((0, 30), (30, 30), (30, 100))):
        files.append(tmp_path / f"{i}.bin")
        data[lo:hi].tofile(files[-1])
    s = ShardedTokens(files, "uint16", [30, 0, 70])
    assert len(s) == 100 and s.dtype == np.uint16
    for key in (slice(None), slice(25, 35), slice(1, 99, 7), slice(40, 40)):
        assert np.array_equal(s[key], data[key])
    rows = np.array([[0, 29, 30, 99], [5, 6, 7, -1]])
    assert np.array_equal(s[rows], data[rows]) and s[31] == 31
    with pytest.raises(IndexError, match="out of range"):
        s[np.array([100])]


def test_tokenizer_trains_on_a_bounded_sample(tmp_path):
    _write_shards(tmp_path / "in", docs=200)
    cfg = _cfg(shards={"path": str(tmp_path / "in")}, tokenizer_max_chars=3000)
    prepare_data(cfg, tmp_path / "out", "tokenizer", log=lambda s: None)
    meta = json.loads((tmp_path / "out" / "tokenizer" / "tokenscale_tokenizer.json").read_text())
    assert meta["shards"] == 3 and meta["sample_chars"] < 3000 + 3 * 1200  # each shard's share, one document over


def test_empty_folder_and_unreadable_files_are_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "notes.txt").write_text("not a shard")
    (tmp_path / "in" / "empty.jsonl").write_text("")
    with pytest.raises(TokenscaleError, match=r"no readable .* file in .*in$"):
        prepare_data(_cfg(shards={"path": str(tmp_path / "in")}), tmp_path / "out", log=lambda s: None)
    assert not (tmp_path / "out").exists()


def _token_shard(folder: Path, name: str, tokens: np.ndarray, tokenizer: str, eos: int = 0) -> None:
    tokens.tofile(folder / f"{name}.bin")
    (folder / f"{name}.json").write_text(json.dumps({"dtype": tokens.dtype.name, "tokenizer": tokenizer, "eos_id": eos}))


def test_token_shards_are_split_by_document_and_mixed_tokenizers_refused(tmp_path, monkeypatch):
    folder = tmp_path / "bins"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        docs = [np.append(rng.integers(1, 250, size=rng.integers(10, 60)), 0) for _ in range(80)]
        _token_shard(folder, f"s{i}", np.concatenate(docs).astype(np.uint16), "tok-a")
    paths = _write_shards(tmp_path / "txt", n_files=1)
    prepare_data(_cfg(corpora=[{"path": str(paths[0])}]), tmp_path / "ref", "corpus", log=lambda s: None)
    prepare_data(_cfg(corpora=[{"path": str(paths[0])}]), tmp_path / "ref", "tokenizer", log=lambda s: None)
    cfg = _cfg(shards={"path": str(folder), "tokenizer": str(tmp_path / "ref" / "tokenizer")})
    out = tmp_path / "out"
    prepare_data(cfg, out, log=lambda s: None)
    t = TrainTokens(out)
    kept = sum(json.loads((out / "shards" / f"s{i}.bin" / "shard.json").read_text())["valid_docs"] for i in range(2))
    assert 0 < kept < 160 and t.meta["n_docs"] == 160 - kept and t.tokens[:].max() < 250
    _token_shard(folder, "s2", np.array([5, 6, 0] * 50, dtype=np.uint16), "tok-b")
    tokenize_shard(cfg, "s2.bin", out / "tokenizer", out)
    before = (out / "train_tokens.json").read_bytes()
    with pytest.raises(TokenscaleError, match=r"mixed tokenizer in token shards: s0.bin has 'tok-a', s2.bin has 'tok-b'"):
        index_shards(cfg, out / "tokenizer", out)
    assert (out / "train_tokens.json").read_bytes() == before  # nothing half-written


_CAPPED = textwrap.dedent("""
    import json, resource, sys
    import tokenscale.studies
    from tokenscale.config import validate_config
    from tokenscale.data.stage import prepare_data
    from tokenscale.data.tokenizer import load_tokenizer, _encode_fast
    cfg, out, cap, mode = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
    cfg = validate_config({"data": cfg})["data"]
    _encode_fast(load_tokenizer(out + "/tokenizer"), ["warm up the thread pool"] * 64)
    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + cap, vm + cap))
    stages = ("shards", "tokens") if mode == "shards" else ("tokens",)
    for stage in stages:
        prepare_data(cfg, out, stage, log=lambda s: None)
    print("ok")
""")


@pytest.mark.slow
def test_tokenizing_a_corpus_ten_times_the_memory_cap(tmp_path):
    """The process's address space may grow by ``cap`` after start-up; the corpus is more than 10x ``cap``. The
    sharded path succeeds, the in-memory path under the same cap fails (the cap bites)."""
    cap = 16 << 20
    folder = tmp_path / "in"
    _write_shards(folder, n_files=1, docs=10)
    line = json.dumps({"text": " ".join(WORDS * 40)}) + "\n"
    for i in range(4):
        with open(folder / f"big-{i}.jsonl", "w") as f:
            f.write(line * (int(3.2 * cap) // len(line)))
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size > 10 * cap
    cfg = {"builtin": False, "vocab_size": 300, "seq_len": 16, "valid_sequences": 4, "valid_fraction": 0.01,
           "tokenizer_max_chars": 200_000, "shards": {"path": str(folder), "batch_docs": 8}}
    out = tmp_path / "out"
    prepare_data(validate_config({"data": cfg})["data"], out, "tokenizer", log=lambda s: None)
    env = os.environ | {"MALLOC_ARENA_MAX": "1", "RAYON_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _CAPPED, json.dumps(cfg), str(out), str(cap), "shards"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
    assert TrainTokens(out).meta["n_tokens"] > size // 8
    mem = {k: v for k, v in cfg.items() if k != "shards"} | {"corpora": [{"path": str(p)} for p in sorted(folder.iterdir())]}
    prepare_data(validate_config({"data": mem})["data"], tmp_path / "mem", "corpus", log=lambda s: None)
    shutil.copytree(out / "tokenizer", tmp_path / "mem" / "tokenizer")
    r = subprocess.run([sys.executable, "-c", _CAPPED, json.dumps(mem), str(tmp_path / "mem"), str(cap), "memory"],
                       capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode != 0


def _megatron(folder: Path, name: str, docs: list[np.ndarray]) -> None:
    """A Megatron-LM indexed dataset (``MMIDIDX`` version 1, uint16: code 8), one sequence per document."""
    tokens = np.concatenate(docs).astype(np.uint16)
    tokens.tofile(folder / f"{name}.bin")
    sizes = np.array([d.size for d in docs], dtype=np.int32)
    pointers = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64) * 2
    doc_idx = np.arange(len(docs) + 1, dtype=np.int64)
    head = b"MMIDIDX\x00\x00" + (1).to_bytes(8, "little") + bytes([8]) + len(docs).to_bytes(8, "little") + \
        len(doc_idx).to_bytes(8, "little")
    (folder / f"{name}.idx").write_bytes(head + sizes.tobytes() + pointers.tobytes() + doc_idx.tobytes())
    (folder / f"{name}.json").write_text(json.dumps({"dtype": "uint16", "tokenizer": "gpt2"}))


def test_megatron_shards_keep_their_documents(tmp_path):
    folder = tmp_path / "meg"
    folder.mkdir()
    rng = np.random.default_rng(2)
    docs = [rng.integers(1, 250, size=rng.integers(5, 50)) for _ in range(120)]
    _megatron(folder, "m0", docs)
    paths = _write_shards(tmp_path / "txt", n_files=1)
    ref = _cfg(corpora=[{"path": str(paths[0])}])
    for stage in ("corpus", "tokenizer"):
        prepare_data(ref, tmp_path / "ref", stage, log=lambda s: None)
    cfg = _cfg(shards={"path": str(folder), "tokenizer": str(tmp_path / "ref" / "tokenizer")})
    prepare_data(cfg, tmp_path / "out", log=lambda s: None)
    t = TrainTokens(tmp_path / "out")
    z = np.load(tmp_path / "out" / "shards" / "m0.bin" / "docs.npz")
    assert sorted(z["train_lengths"].tolist() + z["valid_lengths"].tolist()) == sorted(d.size for d in docs)
    from tokenscale.data.corpus import _split_u
    train = [d for k, d in enumerate(docs, 1) if _split_u(0, f"m0.bin:{k}") >= 0.2]
    assert np.array_equal(t.tokens[:], np.concatenate(train))


def test_bad_megatron_index_is_one_line(tmp_path):
    folder = tmp_path / "meg"
    folder.mkdir()
    _megatron(folder, "m0", [np.arange(1, 40)] * 30)
    (folder / "m0.idx").write_bytes(b"NOTANIDX" + bytes(40))
    cfg = _cfg(shards={"path": str(folder), "tokenizer": "unused"})
    with pytest.raises(TokenscaleError, match=r"m0.idx: not a Megatron index"):
        tokenize_shard(cfg, "m0.bin", tmp_path / "tok", tmp_path / "out")
    assert not (tmp_path / "out" / "shards" / "m0.bin").exists()


def test_mixed_token_dtype_is_one_line(tmp_path):
    folder = tmp_path / "bins"
    folder.mkdir()
    for i, dt in enumerate((np.uint16, np.uint32)):
        _token_shard(folder, f"s{i}", np.tile(np.append(np.arange(1, 30), 0), 40).astype(dt), "tok-a")
    cfg = _cfg(shards={"path": str(folder), "tokenizer": "unused"})
    for n in ("s0.bin", "s1.bin"):
        tokenize_shard(cfg, n, tmp_path / "tok", tmp_path / "out")
    with pytest.raises(TokenscaleError, match=r"mixed token dtype in token shards: s0.bin has 'uint16', s1.bin has 'uint32'"):
        index_shards(cfg, tmp_path / "tok", tmp_path / "out")
    assert not (tmp_path / "out" / "train_tokens.json").exists()


@pytest.mark.parametrize("fmt", ["jsonl.zst", "parquet"])
def test_compressed_and_parquet_shards_read_like_jsonl(tmp_path, fmt):
    """The same rows as .jsonl.zst or .parquet give the same tokens as the .jsonl (nearly all in train)."""
    src = _write_shards(tmp_path / "a", n_files=1)[0]
    rows = [json.loads(line) for line in src.read_text().splitlines()]
    (tmp_path / "b").mkdir()
    if fmt == "jsonl.zst":
        zstandard = pytest.importorskip("zstandard")
        (tmp_path / "b" / "part-00.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(src.read_bytes()))
    else:
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b" / "part-00.parquet", row_group_size=17)
    ref = _cfg(corpora=[{"path": str(src)}])
    for stage in ("corpus", "tokenizer"):
        prepare_data(ref, tmp_path / "ref", stage, log=lambda s: None)
    out = {}
    for k in ("a", "b"):
        cfg = _cfg(shards={"path": str(tmp_path / k), "domain": "x"}, valid_fraction=1e-9)
        name = next((tmp_path / k).iterdir()).name
        tokenize_shard(cfg, name, tmp_path / "ref" / "tokenizer", tmp_path / f"out-{k}")
        out[k] = (tmp_path / f"out-{k}" / "shards" / name / "train.bin").read_bytes()
    assert out["a"] == out["b"] and len(out["a"]) > 1000
