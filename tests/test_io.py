"""Tests for tokenscale.io: token sets, per-checkpoint eval files, trajectory shards (no torch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tokenscale import TokenscaleError, __version__
from tokenscale import io as tio

DOMAINS = ["web", "code", "math"]


def make_token_set(path: Path, S: int = 6, T: int = 10, V: int = 50, seed: int = 0) -> dict:
    """A token set following docs/formats.md."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(S, T + 1)).astype(np.int32)
    doc_id = np.repeat(np.arange(S * T, dtype=np.int32) // 7, 1).reshape(S, T)
    doc_pos = (np.arange(S * T, dtype=np.int32) % 7).reshape(S, T)
    domain = (doc_id % len(DOMAINS)).astype(np.int16)
    with h5py.File(path, "w") as f:
        f["input_ids"] = ids
        f["token_id"] = ids[:, 1:]
        f["doc_id"] = doc_id
        f["doc_pos"] = doc_pos
        f["domain"] = domain
        f.attrs["seq_len"] = T
        f.attrs["kind"] = "validation"
        f.attrs["tokenizer_sha256"] = "t" * 64
        f.attrs["corpus_sha256"] = "c" * 64
        f.attrs["domain_names"] = json.dumps(DOMAINS)
    return {"input_ids": ids, "doc_id": doc_id, "doc_pos": doc_pos, "domain": domain}


def make_evals(tmp: Path, ts_path: Path, steps, N: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    sha = tio.sha256_file(ts_path)
    paths, cols = [], {}
    for s in steps:
        loss = rng.random(N, dtype=np.float32) * 10
        p = tmp / f"eval_step{s}.h5"
        tio.write_eval_file(p, loss, {"step": s, "tokens_seen": s * 1000, "token_set_sha256": sha,
                                      "checkpoint": f"/ckpts/step{s}", "run": "r1", "config_sha256": "abc"})
        paths.append(p)
        cols[s] = loss
    return paths, cols


def one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(path) in msg or path.name in msg, msg


@pytest.fixture
def setup(tmp_path):
    ts = tmp_path / "valid_tokens.h5"
    data = make_token_set(ts, S=7, T=9)
    N = 7 * 9
    steps = [100, 1, 10, 1000]  # deliberately unsorted
    paths, cols = make_evals(tmp_path, ts, steps, N)
    return tmp_path, ts, data, N, paths, cols


def test_token_set_roundtrip(tmp_path):
    ts = tmp_path / "ts.h5"
    data = make_token_set(ts)
    got = tio.read_token_set(ts)
    np.testing.assert_array_equal(got["input_ids"], data["input_ids"])
    np.testing.assert_array_equal(got["token_id"], data["input_ids"][:, 1:])
    assert got["attrs"]["domain_names"] == DOMAINS
    assert got["n_seqs"] == 6 and got["seq_len"] == 10
    info = tio.token_set_info(ts)
    assert info["n_tokens"] == 60 and len(info["sha256"]) == 64


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "no_input_ids", "bad_shape", "token_id_mismatch", "seq_len"])
def test_token_set_errors(tmp_path, damage):
    ts = tmp_path / "ts.h5"
    make_token_set(ts)
    if damage == "missing":
        ts.unlink()
    elif damage == "garbage":
        ts.write_bytes(b"not an hdf5 file at all" * 10)
    elif damage == "truncated":
        b = ts.read_bytes()
        ts.write_bytes(b[: len(b) // 2])
    elif damage == "no_input_ids":
        with h5py.File(ts, "a") as f:
            del f["input_ids"]
    elif damage == "bad_shape":
        with h5py.File(ts, "a") as f:
            del f["doc_pos"]
            f["doc_pos"] = np.zeros((6, 9), dtype=np.int32)
    elif damage == "token_id_mismatch":
        with h5py.File(ts, "a") as f:
            f["token_id"][0, 0] = f["token_id"][0, 0] + 1
    elif damage == "seq_len":
        with h5py.File(ts, "a") as f:
            f.attrs["seq_len"] = 11
    with pytest.raises(TokenscaleError) as e:
        tio.read_token_set(ts)
    one_line_naming(e, ts)


def test_shards_roundtrip(setup, monkeypatch):
    tmp, ts, data, N, paths, cols = setup
    # small chunks/blocks so the multi-block streaming path is exercised
    monkeypatch.setattr(tio, "CHUNK_ROWS", 4)
    monkeypatch.setattr(tio, "_BLOCK_BYTES", 4 * 4 * 4 * 2)  # 2 chunks per block
    outs = [tmp / f"traj_{i}.h5" for i in range(3)]
    tio.write_trajectory_shards(paths, ts, outs, attrs={"model": "tiny", "extra": {"a": 1}})
    assert all(o.exists() for o in outs)
    assert not list(tmp.glob("*.tmp")) and not list(tmp.glob("*.part"))
    steps = sorted(cols)
    full = np.stack([cols[s] for s in steps], axis=1)

    ranges = tio.shard_ranges(N, 3)
    for i, (o, (lo, hi)) in enumerate(zip(outs, ranges)):
        loss, axis, meta = tio.read_trajectories(o)
        assert loss.shape == (hi - lo, 4) and loss.dtype == np.float32
        np.testing.assert_array_equal(loss, full[lo:hi])
        np.testing.assert_array_equal(axis["step"], steps)
        np.testing.assert_array_equal(axis["tokens"], np.array(steps) * 1000)
        assert axis["step"].dtype == np.int64 and axis["tokens"].dtype == np.int64
        np.testing.assert_array_equal(meta["token_index"], np.arange(lo, hi))
        a = meta["attrs"]
        assert a["shard_index"] == i and a["shard_count"] == 3
        assert a["run"] == "r1" and a["model"] == "tiny" and a["config_sha256"] == "abc"
        assert a["checkpoints"] == [f"/ckpts/step{s}" for s in steps]
        assert a["domain_names"] == DOMAINS
        assert a["token_set_sha256"] == tio.sha256_file(ts)
        assert a["package_version"] == __version__
        with h5py.File(o, "r") as f:
            assert f["loss"].chunks == (min(4, hi - lo), 4)
            assert f["loss"].compression == "gzip"

    loss, axis, meta = tio.read_run_trajectories(outs[::-1])  # order given does not matter
    np.testing.assert_array_equal(loss, full)
    np.testing.assert_array_equal(meta["token_index"], np.arange(N))
    for k in ("doc_id", "doc_pos", "domain"):
        np.testing.assert_array_equal(meta[k], data[k].reshape(-1))
        assert meta[k].dtype == data[k].dtype
    np.testing.assert_array_equal(meta["token_id"], data["input_ids"][:, 1:].reshape(-1))
    assert meta["attrs"]["shards"] == [str(o) for o in outs]


def test_single_shard_and_lzf(setup):
    tmp, ts, data, N, paths, cols = setup
    out = tmp / "one.h5"
    tio.write_trajectory_shard(paths, ts, out, attrs={"run": "x"}, compression="lzf")
    loss, axis, meta = tio.read_trajectories(out)
    assert loss.shape == (N, 4) and meta["attrs"]["run"] == "x"
    part = tmp / "part.h5"
    lo, hi = tio.shard_ranges(N, 2)[1]
    tio.write_trajectory_shard(paths, ts, part, attrs={}, token_range=(lo, hi), shard_index=1, shard_count=2)
    l2, _, m2 = tio.read_trajectories(part)
    np.testing.assert_array_equal(l2, loss[lo:hi])
    np.testing.assert_array_equal(m2["token_index"], np.arange(lo, hi))


def test_shard_ranges():
    assert tio.shard_ranges(10, 3) == [(0, 3), (3, 6), (6, 10)]
    assert tio.shard_ranges(2, 3) == [(0, 0), (0, 1), (1, 2)]
    with pytest.raises(TokenscaleError):
        tio.shard_ranges(10, 0)


def test_more_shards_than_tokens(setup):
    tmp, ts, data, N, paths, cols = setup
    outs = [tmp / f"s{i}.h5" for i in range(N + 2)]
    tio.write_trajectory_shards(paths, ts, outs, attrs={})
    loss, _, meta = tio.read_run_trajectories(outs)
    assert loss.shape == (N, 4)
    np.testing.assert_array_equal(meta["token_index"], np.arange(N))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "missing", "no_loss", "axis_shape", "meta_shape"])
def test_read_trajectories_rejects_damaged(setup, damage):
    tmp, ts, data, N, paths, cols = setup
    out = tmp / "traj.h5"
    tio.write_trajectory_shards(paths, ts, [out], attrs={})
    if damage == "truncated":
        b = out.read_bytes()
        out.write_bytes(b[: int(len(b) * 0.6)])
    elif damage == "garbage":
        out.write_bytes(os.urandom(4096))
    elif damage == "missing":
        out.unlink()
    elif damage == "no_loss":
        with h5py.File(out, "a") as f:
            del f["loss"]
    elif damage == "axis_shape":
        with h5py.File(out, "a") as f:
            del f["axis/step"]
            f["axis/step"] = np.arange(3, dtype=np.int64)
    elif damage == "meta_shape":
        with h5py.File(out, "a") as f:
            del f["meta/domain"]
            f["meta/domain"] = np.zeros(N - 1, dtype=np.int16)
    with pytest.raises(TokenscaleError) as e:
        tio.read_trajectories(out)
    one_line_naming(e, out)
    with pytest.raises(TokenscaleError):
        tio.read_run_trajectories([out])


def test_killed_writer_leaves_nothing_readable(setup, monkeypatch):
    tmp, ts, data, N, paths, cols = setup
    out = tmp / "traj.h5"
    # a hard kill of an earlier attempt left a partial tmp file behind
    tmp_file = out.with_name(out.name + ".tmp")
    tmp_file.write_bytes(b"\x89HDF\r\n\x1a\n partial")
    with pytest.raises(TokenscaleError) as e:
        tio.read_trajectories(out)  # only the final name is ever read
    one_line_naming(e, out)

    # an exception mid-write (e.g. disk full) -> no final file, tmp cleaned up
    real = tio._shard_attrs

    def boom(*a, **k):
        raise OSError("simulated crash")

    monkeypatch.setattr(tio, "_shard_attrs", boom)
    with pytest.raises(OSError):
        tio.write_trajectory_shards(paths, ts, [out], attrs={})
    assert not out.exists()
    assert sorted(x.name for x in tmp.glob("traj.h5*")) == ["traj.h5.tmp"]  # only the old leftover
    monkeypatch.setattr(tio, "_shard_attrs", real)

    # a rerun succeeds regardless of leftovers
    tmp_file.write_bytes(b"junk")
    tio.write_trajectory_shards(paths, ts, [out], attrs={})
    assert tio.read_trajectories(out)[0].shape == (N, 4)


def test_eval_file_validation(setup):
    tmp, ts, data, N, paths, cols = setup
    loss, attrs = tio.read_eval_losses(paths[0])
    np.testing.assert_array_equal(loss, cols[100])
    assert attrs["step"] == 100 and attrs["tokens_seen"] == 100000
    # truncated eval file is rejected by the reader and by the assembler
    b = paths[1].read_bytes()
    paths[1].write_bytes(b[: len(b) // 2])
    with pytest.raises(TokenscaleError) as e:
        tio.read_eval_header(paths[1])
    one_line_naming(e, paths[1])
    with pytest.raises(TokenscaleError) as e:
        tio.write_trajectory_shards(paths, ts, [tmp / "t.h5"], attrs={})
    one_line_naming(e, paths[1])
    assert not (tmp / "t.h5").exists()
    with pytest.raises(TokenscaleError):
        tio.write_eval_file(tmp / "x.h5", np.zeros(3), {"step": 1})


def test_assembler_consistency_errors(setup):
    tmp, ts, data, N, paths, cols = setup
    sha = tio.sha256_file(ts)
    dup = tmp / "dup.h5"
    tio.write_eval_file(dup, np.zeros(N), {"step": 10, "tokens_seen": 1, "token_set_sha256": sha})
    with pytest.raises(TokenscaleError, match="duplicate step 10"):
        tio.write_trajectory_shards(paths + [dup], ts, [tmp / "t.h5"], attrs={})
    short = tmp / "short.h5"
    tio.write_eval_file(short, np.zeros(N - 1), {"step": 7, "tokens_seen": 1})
    with pytest.raises(TokenscaleError, match="tokens"):
        tio.write_trajectory_shards(paths + [short], ts, [tmp / "t.h5"], attrs={})
    other = tmp / "other.h5"
    tio.write_eval_file(other, np.zeros(N), {"step": 7, "tokens_seen": 1, "token_set_sha256": "0" * 64})
    with pytest.raises(TokenscaleError, match="different token set"):
        tio.write_trajectory_shards(paths + [other], ts, [tmp / "t.h5"], attrs={})
    with pytest.raises(TokenscaleError):
        tio.write_trajectory_shards([], ts, [tmp / "t.h5"], attrs={})


def test_read_run_missing_shard(setup):
    tmp, ts, data, N, paths, cols = setup
    outs = [tmp / f"s{i}.h5" for i in range(3)]
    tio.write_trajectory_shards(paths, ts, outs, attrs={})
    with pytest.raises(TokenscaleError, match="missing shard index 1"):
        tio.read_run_trajectories([outs[0], outs[2]])
    with pytest.raises(TokenscaleError):
        tio.read_run_trajectories([])


def test_io_imports_no_torch_or_deepspeed():
    code = "import sys, tokenscale.io; bad = [m for m in ('torch', 'deepspeed') if m in sys.modules]; print(bad); sys.exit(bool(bad))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
