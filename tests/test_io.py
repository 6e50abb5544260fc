"""Tests for tokenscale.io: token sets, per-checkpoint eval files, trajectory shards (no torch)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from tokenscale import TokenscaleError, __version__
from tokenscale import io as tio
from tokenscale.io import evaluations as tio_evals
from tokenscale.io import trajectories as tio_traj

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
    monkeypatch.setattr(tio_traj, "CHUNK_ROWS", 4)
    monkeypatch.setattr(tio_traj, "_BLOCK_BYTES", 4 * 4 * 4 * 2)  # 2 chunks per block
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
    real = tio_traj._shard_attrs

    def boom(*a, **k):
        raise OSError("simulated crash")

    monkeypatch.setattr(tio_traj, "_shard_attrs", boom)
    with pytest.raises(OSError):
        tio.write_trajectory_shards(paths, ts, [out], attrs={})
    assert not out.exists()
    assert sorted(x.name for x in tmp.glob("traj.h5*")) == ["traj.h5.tmp"]  # only the old leftover
    monkeypatch.setattr(tio_traj, "_shard_attrs", real)

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
    # a frontier joins checkpoints of several runs: they must share one tokenizer
    tok_a, tok_b = tmp / "tok_a.h5", tmp / "tok_b.h5"
    tio.write_eval_file(tok_a, np.zeros(N), {"step": 7, "tokens_seen": 1, "tokenizer_sha256": "a" * 64,
                                              "checkpoint": "runs/a/step7"})
    tio.write_eval_file(tok_b, np.zeros(N), {"step": 8, "tokens_seen": 2, "tokenizer_sha256": "b" * 64,
                                              "checkpoint": "runs/b/step8"})
    with pytest.raises(TokenscaleError, match=r"runs/b/step8 has tokenizer sha256 bbbbbbbbbbbb…, but runs/a/step7 "
                                              r"has aaaaaaaaaaaa…: trajectories need one tokenizer"):
        tio.write_trajectory_shard([tok_a, tok_b], ts, tmp / "t.h5", attrs={},
                                   axis={"name": "flops", "values": [1e5, 2e5]})
    assert not (tmp / "t.h5").exists()


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


# ----------------------------------------------------------------------------- integrity checks
def _loss_sha(a: np.ndarray) -> str:
    import hashlib

    return hashlib.sha256(np.ascontiguousarray(a, dtype="<f4").tobytes()).hexdigest()


def _loss_crc(a: np.ndarray) -> str:
    import zlib

    return f"{zlib.crc32(np.ascontiguousarray(a, dtype='<f4').tobytes()):08x}"


def test_eval_file_stores_checksum_and_mean(setup):
    tmp, ts, data, N, paths, cols = setup
    loss, attrs = tio.read_eval_losses(paths[0])
    assert attrs["loss_sha256"] == _loss_sha(cols[100])
    assert attrs["mean_loss"] == float(np.mean(cols[100], dtype=np.float64))  # the writer's own, exactly
    # a mean_loss given by the caller is kept when it matches (in any summation order) and refused otherwise
    x = np.random.default_rng(5).random(10_000, dtype=np.float32) * 7
    seq = 0.0
    for v in x.astype(np.float64):  # naive sequential float64 sum: a different rounding from numpy's pairwise one
        seq += v
    p = tio.write_eval_file(tmp / "m.h5", x, {"step": 1, "tokens_seen": 1, "mean_loss": seq / x.size})
    assert tio.read_eval_losses(p)[1]["mean_loss"] == seq / x.size
    with pytest.raises(TokenscaleError, match=r"m2\.h5: eval attrs mean_loss=1\.0 but the losses have mean"):
        tio.write_eval_file(tmp / "m2.h5", x, {"step": 1, "tokens_seen": 1, "mean_loss": 1.0})
    for bad in (np.nan, np.inf, -1.0):
        y = x.copy()
        y[3] = bad
        with pytest.raises(TokenscaleError, match=r"bad\.h5: loss\[3\] = .* is not a finite, non-negative loss"):
            tio.write_eval_file(tmp / "bad.h5", y, {"step": 1, "tokens_seen": 1})
        assert not (tmp / "bad.h5").exists()


@pytest.mark.parametrize("damage, message", [
    ("nan", r"loss\[5\] = nan is not a finite, non-negative loss"),
    ("inf", r"loss\[5\] = inf is not a finite, non-negative loss"),
    ("negative", r"loss\[5\] = -0\.5 is not a finite, non-negative loss"),
    ("huge", r"loss data do not match the stored loss_sha256 .*rerun its evaluate job"),
    ("tiny_change", r"loss data do not match the stored loss_sha256"),
    ("mean_attr", r"stored mean_loss 123\.0 does not match the loss data"),
    ("huge_no_checksum", r"stored mean_loss .* does not match the loss data .*rerun its evaluate job"),
    ("nan_no_checksum", r"loss\[5\] = nan is not a finite"),
])
def test_corrupt_eval_numbers_rejected(setup, damage, message):
    """NaN / 1e30 / edits written into an intact eval file are refused by every reader and by the assembler."""
    tmp, ts, data, N, paths, cols = setup
    p = paths[2]
    with h5py.File(p, "r+") as f:
        if damage.endswith("no_checksum"):  # an older file / another tool: no loss_sha256, mean_loss still checked
            del f.attrs["loss_sha256"]
        if damage.startswith("nan"):
            f["loss"][5] = np.nan
        elif damage == "inf":
            f["loss"][5] = np.inf
        elif damage == "negative":
            f["loss"][5] = -0.5
        elif damage.startswith("huge"):
            f["loss"][5] = 1e30
        elif damage == "tiny_change":
            f["loss"][5] = np.nextafter(f["loss"][5], np.float32(np.inf))
        elif damage == "mean_attr":
            f.attrs["mean_loss"] = 123.0
    for read in (tio.read_eval_losses, tio.read_eval_header):
        with pytest.raises(TokenscaleError, match=message) as e:
            read(p)
        one_line_naming(e, p)
    out = tmp / "t.h5"
    with pytest.raises(TokenscaleError, match=message) as e:
        tio.write_trajectory_shards(paths, ts, [out], attrs={})
    one_line_naming(e, p)
    assert not out.exists() and not list(tmp.glob("t.h5*"))
    assert tio.read_eval_header(p, verify=False)["step"] == 10  # structure-only reading still works


def test_eval_file_without_checksum_or_mean_is_readable(setup):
    """Files from older versions / other tools (no loss_sha256, no mean_loss) pass the finite checks."""
    tmp, ts, data, N, paths, cols = setup
    for p in paths:
        with h5py.File(p, "r+") as f:
            del f.attrs["loss_sha256"]
            if p == paths[0]:
                del f.attrs["mean_loss"]
    loss, attrs = tio.read_eval_losses(paths[0])
    np.testing.assert_array_equal(loss, cols[100])
    out = tmp / "t.h5"
    tio.write_trajectory_shards(paths, ts, [out], attrs={})
    assert tio.read_trajectories(out)[0].shape == (N, 4)


def test_eval_verification_is_blockwise(setup, monkeypatch):
    tmp, ts, data, N, paths, cols = setup
    monkeypatch.setattr(tio_evals, "_VERIFY_BYTES", 4 * 5)  # 5 values per block: many blocks, a short last one
    loss, attrs = tio.read_eval_losses(paths[0])
    np.testing.assert_array_equal(loss, cols[100])
    with h5py.File(paths[0], "r+") as f:
        f["loss"][N - 1] = np.nan
    with pytest.raises(TokenscaleError, match=rf"loss\[{N - 1}\] = nan"):
        tio.read_eval_header(paths[0])


def test_shard_checksum_independent_of_blocks(setup, monkeypatch):
    tmp, ts, data, N, paths, cols = setup
    full = np.stack([cols[s] for s in sorted(cols)], axis=1)
    ranges = tio.shard_ranges(N, 2)
    a = [tmp / "a0.h5", tmp / "a1.h5"]
    tio.write_trajectory_shards(paths, ts, a, attrs={})
    monkeypatch.setattr(tio_traj, "CHUNK_ROWS", 4)
    monkeypatch.setattr(tio_traj, "_BLOCK_BYTES", 4 * 4 * 4 * 2)
    monkeypatch.setattr(tio_evals, "_VERIFY_BYTES", 4 * 4 * 4 * 3)
    monkeypatch.setattr(tio_traj, "_VERIFY_BYTES", 4 * 4 * 4 * 3)
    b = [tmp / "b0.h5", tmp / "b1.h5"]
    tio.write_trajectory_shards(paths, ts, b, attrs={})
    for i, (lo, hi) in enumerate(ranges):
        crc = _loss_crc(full[lo:hi])
        for out in (a[i], b[i]):
            loss, _, meta = tio.read_trajectories(out)
            np.testing.assert_array_equal(loss, full[lo:hi])
            assert meta["attrs"]["loss_crc32"] == crc


@pytest.mark.parametrize("damage, message", [
    ("nan", r"loss\[5, 2\] = nan is not a finite, non-negative loss"),
    ("huge", r"loss data do not match the stored loss_crc32 .*rerun its assemble job"),
    ("tiny_change", r"loss data do not match the stored loss_crc32"),
    ("nan_no_checksum", r"loss\[5, 2\] = nan is not a finite"),
])
def test_corrupt_shard_numbers_rejected(setup, damage, message, monkeypatch):
    tmp, ts, data, N, paths, cols = setup
    monkeypatch.setattr(tio_traj, "CHUNK_ROWS", 4)
    monkeypatch.setattr(tio_evals, "_VERIFY_BYTES", 4 * 4 * 4 * 2)
    monkeypatch.setattr(tio_traj, "_VERIFY_BYTES", 4 * 4 * 4 * 2)  # verified in several blocks
    out = tmp / "traj.h5"
    tio.write_trajectory_shards(paths, ts, [out], attrs={})
    with h5py.File(out, "r+") as f:
        if damage.endswith("no_checksum"):
            del f.attrs["loss_crc32"]
        f["loss"][5, 2] = {"huge": 1e30, "tiny_change": np.nextafter(f["loss"][5, 2], np.float32(0))}.get(damage, np.nan)
    with pytest.raises(TokenscaleError, match=message) as e:
        tio.read_trajectories(out)
    one_line_naming(e, out)
    with pytest.raises(TokenscaleError, match=message):
        tio.read_run_trajectories([out])


def test_shard_without_checksum_is_readable(setup):
    tmp, ts, data, N, paths, cols = setup
    out = tmp / "traj.h5"
    tio.write_trajectory_shards(paths, ts, [out], attrs={})
    with h5py.File(out, "r+") as f:
        del f.attrs["loss_crc32"]
    assert tio.read_trajectories(out)[0].shape == (N, 4)


def test_outputs_are_byte_identical_across_writes(setup):
    """Same inputs, same paths -> byte-identical eval files and shards (no timestamps in the HDF5 files)."""
    tmp, ts, data, N, paths, cols = setup
    outs = [tmp / "s0.h5", tmp / "s1.h5"]

    def write_all() -> dict:
        for s, p in zip([100, 1, 10, 1000], paths):
            tio.write_eval_file(p, cols[s], {"step": s, "tokens_seen": s * 1000, "token_set_sha256": tio.sha256_file(ts),
                                             "checkpoint": f"/ckpts/step{s}", "run": "r1", "config_sha256": "abc"})
        tio.write_trajectory_shards(paths, ts, outs, attrs={"model": "m"})
        return {p.name: p.read_bytes() for p in [*paths, *outs]}

    first = write_all()
    assert write_all() == first
    assert not list(tmp.glob("*.tmp")) and not list(tmp.glob("*.part"))


# ----------------------------------------------------------------------------- evaluation folder manifest
def _eval_folder(tmp: Path, ts: Path, N: int, steps=(1, 10, 100)) -> Path:
    d = tmp / "evals" / "block-000"
    d.mkdir(parents=True)
    rng = np.random.default_rng(3)
    files = []
    for s in steps:
        files.append(tio.write_eval_file(d / f"step{s:08d}.h5", rng.random(N, dtype=np.float32),
                                         {"step": s, "tokens_seen": s, "token_set_sha256": tio.sha256_file(ts)}))
    tio.write_eval_manifest(d, files, checkpoints=[f"/ck/step{s}" for s in steps])
    return d


def test_eval_manifest_roundtrip(setup):
    tmp, ts, data, N, paths, cols = setup
    d = _eval_folder(tmp, ts, N)
    m = json.loads((d / "MANIFEST.json").read_text())
    assert m["format"] == "tokenscale-eval-manifest-v1" and m["checkpoints"] == ["/ck/step1", "/ck/step10", "/ck/step100"]
    assert sorted(m["files"]) == ["step00000001.h5", "step00000010.h5", "step00000100.h5"]
    for name, e in m["files"].items():
        assert e["sha256"] == tio.sha256_file(d / name) and e["size"] == (d / name).stat().st_size
    assert tio.eval_folder_files(d) == [d / n for n in sorted(m["files"])]
    (d / "step00000010.h5.tmp").write_bytes(b"leftover of a killed attempt")  # never looked at
    assert len(tio.eval_folder_files(d)) == 3
    with pytest.raises(TokenscaleError, match="not inside the evaluation folder"):
        tio.write_eval_manifest(d, [paths[0]], checkpoints=["x"])


@pytest.mark.parametrize("damage, bad, message", [
    ("no_manifest", None, r"evaluation folder has no MANIFEST\.json, so its evaluate job did not finish; rerun its evaluate job"),
    ("corrupt_file", "step00000010.h5", (r"eval file sha256 differs from MANIFEST\.json .*rerun its evaluate job "
                                         r"\(snakemake --forcerun evaluate_checkpoint, or delete .*block-000\)")),
    ("truncated_file", "step00000010.h5", r"eval file has \d+ bytes, MANIFEST\.json says \d+"),
    ("missing_file", "step00000100.h5", r"eval file listed in MANIFEST\.json is missing"),
    ("extra_file", "step00000005.h5", r"eval file not listed in MANIFEST\.json"),
    ("bad_json", "MANIFEST.json", r"cannot read the evaluation manifest"),
    ("wrong_format", "MANIFEST.json", r"not a valid evaluation manifest"),
])
def test_eval_manifest_rejects_incomplete_or_changed_folder(setup, damage, bad, message):
    tmp, ts, data, N, paths, cols = setup
    d = _eval_folder(tmp, ts, N)
    if damage == "no_manifest":
        (d / "MANIFEST.json").unlink()
    elif damage == "corrupt_file":
        with h5py.File(d / bad, "r+") as f:
            f["loss"][5] = np.nan
    elif damage == "truncated_file":
        b = (d / bad).read_bytes()
        (d / bad).write_bytes(b[: len(b) // 2])
    elif damage == "missing_file":
        (d / bad).unlink()
    elif damage == "extra_file":
        (d / bad).write_bytes((d / "step00000001.h5").read_bytes())
    elif damage == "bad_json":
        (d / bad).write_text('{"format": ')
    elif damage == "wrong_format":
        (d / bad).write_text('{"files": []}')
    with pytest.raises(TokenscaleError, match=message) as e:
        tio.eval_folder_files(d)
    one_line_naming(e, d / bad if bad else d)


def test_eval_files_picked_from_a_block_folder_are_checked(setup):
    """Files given one by one (as the workflow's series pass them) are held to their block folder's manifest."""
    tmp, ts, data, N, paths, cols = setup
    d = _eval_folder(tmp, ts, N)
    picked = [d / "step00000010.h5", d / "step00000001.h5"]
    assert tio.expand_eval_paths([*picked, paths[0]]) == [*picked, paths[0]]  # paths[0]: not in a block folder
    assert tio.expand_eval_paths([d]) == sorted(d.glob("step*.h5"))
    with h5py.File(picked[0], "r+") as f:
        f["loss"][0] = 1e30
    with pytest.raises(TokenscaleError, match=r"sha256 differs from MANIFEST\.json") as e:
        tio.expand_eval_paths(picked)
    one_line_naming(e, picked[0])
    (d / "MANIFEST.json").unlink()
    with pytest.raises(TokenscaleError, match=r"no MANIFEST\.json, so its evaluate job did not finish") as e:
        tio.expand_eval_paths(picked[1:])
    one_line_naming(e, d)
    # a block-<N> folder is recognised by its name even before any manifest exists
    other = tmp / "block-7"
    other.mkdir()
    (other / "step00000001.h5").write_bytes(paths[0].read_bytes())
    with pytest.raises(TokenscaleError, match="did not finish"):
        tio.expand_eval_paths([other / "step00000001.h5"])


# ----------------------------------------------------------------------------- sigmoid-fits files
def _fit(n: int = 40, k: int = 8):
    """A hand-made SigmoidFit as the fit engine leaves it: tau within axis ± tau_margin, row 3 invalid (NaN)."""
    from tokenscale.io.fits import SigmoidFit

    rng = np.random.default_rng(5)
    axis = np.linspace(1.0, 5.0, k)
    cols = {name: rng.uniform(0.1, 2.0, n) for name in ("lam", "delta", "post", "sse", "r2")}
    cols["tau"] = rng.uniform(0.0, 6.0, n)  # bounds [1 - 1, 5 + 1]
    cols["tau_orig"] = 10.0 ** cols["tau"]
    cols["pre"] = cols["post"] + cols["delta"]
    cols["status"] = np.zeros(n, dtype=np.int8)
    cols["category"] = np.ones(n, dtype=np.int8)
    cols["n_iter"] = np.full(n, 7, dtype=np.int32)
    for name in ("tau", "tau_orig", "lam", "delta", "post", "pre", "sse", "r2"):
        cols[name][3] = np.nan
    cols["status"][3], cols["n_iter"][3] = 2, 0
    return SigmoidFit(axis=axis, axis_orig=10.0 ** axis, transform="log10", attrs={"tau_margin": 1.0},
                      token_index=np.arange(100, 100 + n), **cols)


def test_fits_file_round_trip_stores_a_checksum(tmp_path):
    from tokenscale.io.fits import ARRAY_FIELDS, load_fits, save_fits

    fit, path = _fit(), tmp_path / "fits.h5"
    save_fits(path, fit)
    with h5py.File(path, "r") as f:
        digest = f.attrs["fits_sha256"]
    assert len(digest) == 64
    got = load_fits(path)
    for name in ARRAY_FIELDS + ("axis", "axis_orig", "token_index"):
        np.testing.assert_array_equal(getattr(got, name), getattr(fit, name))
    save_fits(tmp_path / "again.h5", got)  # the checksum depends on the values only
    with h5py.File(tmp_path / "again.h5", "r") as f:
        assert f.attrs["fits_sha256"] == digest


@pytest.mark.parametrize("name, index, value", [("tau", 5, 99.0), ("lam", 0, 1.5), ("status", 7, 1),
                                                ("token_index", 2, 7), ("axis", 0, 0.5)])
def test_fits_file_altered_value_fails_the_checksum(tmp_path, name, index, value):
    from tokenscale.io.fits import load_fits, save_fits

    path = tmp_path / "fits.h5"
    save_fits(path, _fit())
    with h5py.File(path, "r+") as f:
        f[name][index] = value
    msg = (f"{path}: fit arrays do not match the stored fits_sha256 (file altered or corrupt); "
           "delete it and rerun its fit job (fit_shard or fit_table)")
    with pytest.raises(TokenscaleError, match=f"^{re.escape(msg)}$"):
        load_fits(path)


def test_fits_file_tau_outside_the_bounds_on_valid_rows_fails(tmp_path):
    from tokenscale.io.fits import load_fits, save_fits

    fit = _fit()
    fit.tau[:] = 99.0  # every tau; row 3 is flagged invalid_input and does not count
    save_fits(tmp_path / "fits.h5", fit)  # a writer that got it wrong: the checksum holds, the bounds do not
    msg = (f"{tmp_path / 'fits.h5'}: 39 fitted rows have tau outside the fit's bounds [0, 6], the first row 0 "
           "(token 100) tau = 99.0 (converged); the file is altered or corrupt: delete it and rerun its fit job")
    with pytest.raises(TokenscaleError, match=f"^{re.escape(msg)}"):
        load_fits(tmp_path / "fits.h5")
    fit = _fit()
    fit.tau[3], fit.tau[8], fit.status[8] = 99.0, -1e-3, 1  # invalid row: any tau; max_iter row: checked
    fit.token_index = None
    save_fits(tmp_path / "one.h5", fit)
    with pytest.raises(TokenscaleError, match=re.escape("1 fitted rows have tau outside the fit's bounds [0, 6], the "
                                                        "first row 8 tau = -0.001 (max_iter)")):
        load_fits(tmp_path / "one.h5")
    fit.tau[8] = -1e-9  # on the bound up to float round-off
    save_fits(tmp_path / "edge.h5", fit)
    assert load_fits(tmp_path / "edge.h5").tau[8] == fit.tau[8]


def test_fits_file_without_checksum_still_loads(tmp_path):
    """Files written before fits_sha256 existed load; the tau bounds (axis and fit_options) still apply."""
    from tokenscale.io.fits import load_fits, save_fits

    path = tmp_path / "old.h5"
    fit = _fit()
    save_fits(path, fit)
    with h5py.File(path, "r+") as f:
        del f.attrs["fits_sha256"]
        f["lam"][0] = 1.25  # not detectable without the checksum
    assert load_fits(path).lam[0] == 1.25
    with h5py.File(path, "r+") as f:
        f["tau"][0] = 99.0
    with pytest.raises(TokenscaleError, match=re.escape(f"{path}: 1 fitted rows have tau outside")):
        load_fits(path)


def test_concat_fits_refuses_different_tau_margins():
    """A concatenated file keeps the first part's fit options, whose tau_margin bounds every row on load."""
    import dataclasses

    from tokenscale.io.fits import concat_fits

    a = _fit()
    b = dataclasses.replace(a, attrs={"tau_margin": 2.0})
    assert len(concat_fits([a, a])) == 2 * len(a)
    with pytest.raises(TokenscaleError, match=r"^concat_fits: fit 1 has tau_margin 2.0 but fit 0 has 1.0$"):
        concat_fits([a, b])
