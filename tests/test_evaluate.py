"""Tests for tokenscale.evaluation.evaluate: per-token losses, checkpoint evaluation, external series."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import transformers

from tokenscale import TokenscaleError
from tokenscale.evaluation import evaluate as ev
from tokenscale import io as tio
from tokenscale.io import evaluations as tio_evaluations
from tokenscale.series import discover_checkpoints

V = 300
DOMAINS = ["web", "code"]


def tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=128)
    return transformers.AutoModelForCausalLM.from_config(cfg)


def make_token_set(path: Path, S: int = 5, T: int = 12, seed: int = 0) -> np.ndarray:
    """A token set following docs/formats.md; returns input_ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, V, size=(S, T + 1)).astype(np.int32)
    flat = np.arange(S * T, dtype=np.int32)
    with h5py.File(path, "w") as f:
        f["input_ids"] = ids
        f["token_id"] = ids[:, 1:]
        f["doc_id"] = (flat // 9).reshape(S, T)
        f["doc_pos"] = (flat % 9).reshape(S, T)
        f["domain"] = ((flat // 9) % 2).astype(np.int16).reshape(S, T)
        f.attrs["seq_len"] = T
        f.attrs["kind"] = "validation"
        f.attrs["tokenizer_sha256"] = "0" * 64
        f.attrs["corpus_sha256"] = "1" * 64
        f.attrs["domain_names"] = json.dumps(DOMAINS)
    return ids


def save_ckpt(model, d: Path, *, complete: bool = True, meta: dict | None = None) -> Path:
    model.save_pretrained(d)
    if meta is not None:
        (d / "tokenscale.json").write_text(json.dumps(meta))
    if complete:
        (d / "COMPLETE").write_text("")
    return d


def direct_losses(model, ids) -> np.ndarray:
    ids = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    with torch.no_grad():
        logits = model(ids[:, :-1]).logits
    return F.cross_entropy(logits.float().reshape(-1, V), ids[:, 1:].reshape(-1), reduction="none").view(
        ids.shape[0], -1).numpy()


# ----------------------------------------------------------------------------- token_losses
def test_token_losses_match_hf_loss():
    model = tiny_model()
    ids = torch.randint(0, V, (7, 17), generator=torch.Generator().manual_seed(1))
    out = ev.token_losses(model, ids, batch_size=3)
    assert out.shape == (7, 16) and out.dtype == np.float32 and np.isfinite(out).all()
    with torch.no_grad():
        ref = model(input_ids=ids, labels=ids).loss.item()  # HF shifts labels internally
    assert abs(float(np.mean(out, dtype=np.float64)) - ref) < 1e-5
    assert abs(ev.mean_loss(model, ids, batch_size=4) - ref) < 1e-5
    np.testing.assert_allclose(out, direct_losses(model, ids), atol=1e-5)


def test_token_losses_batching_chunking_and_inputs(monkeypatch):
    model = tiny_model()
    ids = np.random.default_rng(2).integers(0, V, size=(5, 11)).astype(np.int32)
    a = ev.token_losses(model, ids, batch_size=16)
    b = ev.token_losses(model, torch.from_numpy(ids).long(), batch_size=1)
    np.testing.assert_allclose(a, b, atol=1e-5)
    # chunked CE is bit-identical to one F.cross_entropy call over the batch
    monkeypatch.setattr(ev, "CE_CHUNK_ELEMENTS", 3 * V)
    c = ev.token_losses(model, ids, batch_size=16)
    np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(a, direct_losses(model, ids))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_loss_formula_equals_cross_entropy(dtype):
    """The CUDA path compiles ce_lse; eagerly it must equal F.cross_entropy on the fp32 upcast."""
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(300, 1000, generator=g) * 4).to(dtype)
    tgt = torch.randint(0, 1000, (300,), generator=g)
    ref = F.cross_entropy(logits.float(), tgt, reduction="none")
    got = ev.ce_lse(logits, tgt)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=0, atol=2e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_token_losses_match_cpu():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=128)
    model = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 512, (8, 65))
    cpu = ev.token_losses(model, ids, batch_size=4)
    gpu = ev.token_losses(model.cuda(), ids, batch_size=4, autocast_bf16=False)
    np.testing.assert_allclose(gpu, cpu, atol=1e-3)


def test_token_losses_mode_progress_and_empty():
    model = tiny_model()
    model.train()
    calls = []
    ids = torch.randint(0, V, (5, 6))
    ev.token_losses(model, ids, batch_size=2, progress=lambda done, total: calls.append((done, total)))
    assert model.training  # previous mode restored
    assert calls == [(2, 5), (4, 5), (5, 5)]

    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    bar = Bar()
    ev.token_losses(model, ids, batch_size=2, progress=bar, autocast_bf16=True)  # ignored on CPU
    assert bar.n == 5
    assert ev.token_losses(model, torch.zeros((0, 6), dtype=torch.long)).shape == (0, 5)


@pytest.mark.parametrize(
    "bad",
    [torch.zeros(5, dtype=torch.long), torch.zeros((2, 1), dtype=torch.long), torch.zeros((2, 5)),
     torch.full((2, 5), V), torch.full((2, 5), -1), [[1, 2, 3]]],
)
def test_token_losses_bad_input(bad):
    with pytest.raises(TokenscaleError) as e:
        ev.token_losses(tiny_model(), bad)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------- checkpoints
def test_load_checkpoint_model_refuses_incomplete(tmp_path):
    model = tiny_model()
    d = save_ckpt(model, tmp_path / "step00000005", complete=False, meta={"step": 5})
    with pytest.raises(TokenscaleError, match="COMPLETE") as e:
        ev.load_checkpoint_model(d)
    assert "\n" not in str(e.value) and str(d) in str(e.value)
    with pytest.raises(TokenscaleError, match="not found"):
        ev.load_checkpoint_model(tmp_path / "nope")
    # an external series (no tokenscale.json) has no marker and loads as it is
    ext = save_ckpt(model, tmp_path / "ext" / "step5", complete=False)
    assert not ev.load_checkpoint_model(ext).training
    (d / "COMPLETE").write_text("")
    m = ev.load_checkpoint_model(d)
    assert not m.training and next(m.parameters()).dtype == torch.float32
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(TokenscaleError) as e:
        ev.load_checkpoint_model(d)
    assert "\n" not in str(e.value) and str(d) in str(e.value)


def test_discover_checkpoints(tmp_path):
    for name in ["step1", "step00000010", "step100", "checkpoint-7", "stepX", "notes", "step5.tmp"]:
        (tmp_path / name).mkdir()
    (tmp_path / "step3").write_text("a file, not a folder")
    (tmp_path / "step1" / "COMPLETE").write_text("")
    got = discover_checkpoints(tmp_path)
    assert [s for s, _ in got] == [1, 7, 10, 100]
    assert [p.name for _, p in got] == ["step1", "checkpoint-7", "step00000010", "step100"]
    assert [s for s, _ in discover_checkpoints(tmp_path, complete_only=True)] == [1]
    (tmp_path / "step0000100").mkdir()
    with pytest.raises(TokenscaleError, match="step 100"):
        discover_checkpoints(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenscaleError, match="no step-numbered"):
        discover_checkpoints(empty)
    with pytest.raises(TokenscaleError, match="not found"):
        discover_checkpoints(tmp_path / "missing")


def test_load_token_set_errors(tmp_path):
    ts = tmp_path / "ts.h5"
    ids = make_token_set(ts)
    got = ev.load_token_set(ts)
    np.testing.assert_array_equal(got["input_ids"], ids)
    assert got["attrs"]["domain_names"] == DOMAINS
    ts.write_bytes(ts.read_bytes()[:300])
    with pytest.raises(TokenscaleError) as e:
        ev.load_token_set(ts)
    assert str(ts) in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TokenscaleError, match="not found"):
        ev.load_token_set(tmp_path / "missing.h5")


def test_pythia_series_end_to_end(tmp_path):
    """External series layout: step1/, step00000010/, step100/ -> evals -> 2 shards -> read back."""
    series = tmp_path / "pythia-tiny"
    models = {}
    for seed, name in enumerate(["step1", "step00000010", "step100"]):
        models[name] = tiny_model(seed)
        save_ckpt(models[name], series / name, complete=False)  # external series carry no markers
    (series / "tokenizer.json").write_text("{}")  # a series ships its tokenizer; eval does not need it
    ts = tmp_path / "valid_tokens.h5"
    ids = make_token_set(ts, S=5, T=12)
    S, T = 5, 12

    ckpts = discover_checkpoints(series)
    assert [s for s, _ in ckpts] == [1, 10, 100]
    evals = []
    for step, d in ckpts:
        out = ev.evaluate_checkpoint(d, ts, tmp_path / "evals" / f"{d.name}.h5", batch_size=2, step=step,
                                     tokens_seen=step * 2_097_152)
        evals.append(out)
        loss, attrs = tio.read_eval_losses(out)
        assert loss.shape == (S * T,) and loss.dtype == np.float32
        assert attrs["step"] == step and attrs["tokens_seen"] == step * 2_097_152
        assert attrs["checkpoint"] == str(d.resolve()) and attrs["run"] == "pythia-tiny"
        assert attrs["token_set_sha256"] == tio.sha256_file(ts) and attrs["seconds"] > 0
        assert abs(attrs["mean_loss"] - loss.mean(dtype=np.float64)) < 1e-6
    assert not list((tmp_path / "evals").glob("*.tmp"))

    outs = [tmp_path / "traj" / f"shard{i}.h5" for i in range(2)]
    outs[0].parent.mkdir()
    tio.write_trajectory_shards(evals[::-1], ts, outs, attrs={"model": "pythia-tiny"})
    losses, axis, meta = tio.read_run_trajectories(outs)
    assert losses.shape == (S * T, 3) and losses.dtype == np.float32
    assert np.isfinite(losses).all()
    np.testing.assert_array_equal(axis["step"], [1, 10, 100])
    np.testing.assert_array_equal(axis["tokens"], np.array([1, 10, 100]) * 2_097_152)
    for k, name in enumerate(["step1", "step00000010", "step100"]):
        np.testing.assert_allclose(losses[:, k], direct_losses(models[name], ids).reshape(-1), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(meta["token_id"], ids[:, 1:].reshape(-1))
    np.testing.assert_array_equal(meta["token_index"], np.arange(S * T))
    assert meta["attrs"]["model"] == "pythia-tiny"
    assert [Path(c).name for c in meta["attrs"]["checkpoints"]] == ["step1", "step00000010", "step100"]
    # single shard file reads back identically
    one, axis1, _ = tio.read_trajectories(outs[0])
    np.testing.assert_array_equal(one, losses[: len(one)])


def test_own_run_checkpoint_metadata(tmp_path):
    model = tiny_model()
    d = save_ckpt(model, tmp_path / "runs" / "r7" / "checkpoints" / "step00000042",
                  meta={"run": "r7", "step": 42, "tokens_seen": 4200, "val_loss": 5.7, "config_sha256": "cfg"})
    ts = tmp_path / "ts.h5"
    ids = make_token_set(ts, S=3, T=8)
    out = ev.evaluate_checkpoint(d, ts, tmp_path / "e.h5")
    loss, attrs = tio.read_eval_losses(out)
    assert (attrs["step"], attrs["tokens_seen"], attrs["run"], attrs["config_sha256"]) == (42, 4200, "r7", "cfg")
    assert attrs["val_loss_logged"] == pytest.approx(5.7)
    np.testing.assert_allclose(loss, direct_losses(model, ids).reshape(-1), atol=1e-5)
    with pytest.raises(TokenscaleError, match="conflicts"):
        ev.evaluate_checkpoint(d, ts, tmp_path / "e2.h5", step=43)
    assert not (tmp_path / "e2.h5").exists()
    # no tokenscale.json and no step in the name -> error
    d2 = save_ckpt(model, tmp_path / "final")
    with pytest.raises(TokenscaleError, match="step"):
        ev.evaluate_checkpoint(d2, ts, tmp_path / "e3.h5")
    assert tio.read_eval_header(ev.evaluate_checkpoint(d2, ts, tmp_path / "e3.h5", step=9))["tokens_seen"] == -1


def test_checkpoint_tokenizer_must_match_the_token_set(tmp_path):
    model = tiny_model()
    d = save_ckpt(model, tmp_path / "step5")
    (d / "tokenizer.json").write_text('{"model": "another vocabulary"}')
    ts = tmp_path / "ts.h5"
    make_token_set(ts, S=2, T=8)  # records tokenizer sha256 "000…"
    with pytest.raises(TokenscaleError, match=r"step5 has tokenizer sha256 [0-9a-f]{12}… but token set .*ts.h5 was "
                                              r"tokenized with 000000000000…"):
        ev.evaluate_checkpoint(d, ts, tmp_path / "e.h5")
    assert not (tmp_path / "e.h5").exists()
    with h5py.File(ts, "a") as f:  # the token set's own tokenizer: evaluated, its hash recorded
        f.attrs["tokenizer_sha256"] = tio.sha256_file(d / "tokenizer.json")
    assert tio.read_eval_header(ev.evaluate_checkpoint(d, ts, tmp_path / "e.h5"))["tokenizer_sha256"] == \
        tio.sha256_file(d / "tokenizer.json")


def test_killed_eval_leaves_nothing_readable(tmp_path, monkeypatch):
    model = tiny_model()
    d = save_ckpt(model, tmp_path / "step5")
    ts = tmp_path / "ts.h5"
    make_token_set(ts, S=3, T=8)
    out = tmp_path / "evals" / "step5.h5"
    out.parent.mkdir()
    # a SIGKILLed earlier attempt left a partial tmp behind: never read, and overwritten by a rerun
    leftover = out.with_name(out.name + ".tmp")
    leftover.write_bytes(b"\x89HDF\r\n\x1a\npartial")
    with pytest.raises(TokenscaleError, match="not found"):
        tio.read_eval_header(out)
    # crash during the write -> no final file, tmp removed
    real = tio_evaluations._to_attr  # the eval writer's attribute converter, where it is looked up

    def boom(v):
        raise OSError("simulated crash")

    monkeypatch.setattr(tio_evaluations, "_to_attr", boom)
    with pytest.raises(OSError):
        ev.evaluate_checkpoint(d, ts, out)
    assert not out.exists() and not leftover.exists()
    monkeypatch.setattr(tio_evaluations, "_to_attr", real)
    leftover.write_bytes(b"junk")
    ev.evaluate_checkpoint(d, ts, out)
    assert out.exists() and not leftover.exists()
    # a truncated final file (e.g. copied while being written elsewhere) is rejected downstream
    b = out.read_bytes()
    out.write_bytes(b[: len(b) // 2])
    with pytest.raises(TokenscaleError) as e:
        tio.write_trajectory_shards([out], ts, [tmp_path / "t.h5"], attrs={})
    assert str(out) in str(e.value) and "\n" not in str(e.value)


def test_evaluate_imports_no_deepspeed():
    code = "import sys, tokenscale.evaluation.evaluate, tokenscale.io; sys.exit('deepspeed' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ----------------------------------------------------------------------------- CLI: block folders, corrupt numbers
def test_cli_eval_folder_manifest_and_corrupt_numbers(tmp_path):
    """`evaluate --out-dir` writes MANIFEST.json last; `assemble` verifies it and refuses NaN / 1e30 written
    into an eval file (the issue's reproduction) with one line naming the file."""
    from conftest import run_cli

    series = tmp_path / "series"
    for seed, name in enumerate(["step1", "step10"]):
        save_ckpt(tiny_model(seed), series / name, complete=False)
    ts = tmp_path / "ts.h5"
    make_token_set(ts, S=3, T=8)
    block = tmp_path / "evals" / "block-000"
    ckpts = [series / "step1", series / "step10"]
    run_cli("evaluate", "--checkpoint", *ckpts, "--tokens", ts, "--out-dir", block, "--device", "cpu", "--batch-size", 2)
    m = json.loads((block / "MANIFEST.json").read_text())
    assert sorted(m["files"]) == ["step00000001.h5", "step00000010.h5"] and m["checkpoints"] == [str(c) for c in ckpts]
    assert sorted(x.name for x in block.iterdir()) == ["MANIFEST.json", "step00000001.h5", "step00000010.h5"]

    def assemble(*evals):
        return run_cli("assemble", "--evals", *evals, "--tokens", ts, "--shard", 0, "--n-shards", 1, "--run", "r",
                       "--out", tmp_path / "shard.h5", check=False)

    def one_error_line(p, *needles):
        assert p.returncode == 2, p.stderr
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tokenscale: error: "), p.stderr
        for n in needles:
            assert n in lines[0], lines[0]

    assert assemble(block).returncode == 0
    good = tio.read_trajectories(tmp_path / "shard.h5")[0]
    # a stray step file in the folder: evaluate refuses before touching the folder (manifest kept)
    p = run_cli("evaluate", "--checkpoint", ckpts[0], "--tokens", ts, "--out-dir", block, "--device", "cpu", check=False)
    one_error_line(p, str(block / "step00000010.h5"), "not a checkpoint of this evaluate job")
    assert (block / "MANIFEST.json").is_file()

    f = block / "step00000010.h5"
    original = f.read_bytes()
    loose = tmp_path / "loose"  # eval files outside a block folder: only the eval file's own checks apply
    loose.mkdir()
    (loose / "a.h5").write_bytes((block / "step00000001.h5").read_bytes())
    for value, why in ((np.nan, "loss[5] = nan is not a finite, non-negative loss"),
                       (1e30, "loss data do not match the stored loss_sha256")):
        with h5py.File(f, "r+") as h:
            h["loss"][5] = value
        (loose / "b.h5").write_bytes(f.read_bytes())
        one_error_line(assemble(loose / "a.h5", loose / "b.h5"), str(loose / "b.h5"), why, "rerun its evaluate job")
        for evals in ([block], [block / "step00000001.h5", f]):  # the folder, or files picked out of it
            one_error_line(assemble(*evals), str(f), "sha256 differs from MANIFEST.json",
                           "snakemake --forcerun evaluate_checkpoint", f"delete {block}")
        f.write_bytes(original)
    assert assemble(block).returncode == 0
    np.testing.assert_array_equal(tio.read_trajectories(tmp_path / "shard.h5")[0], good)
    # a folder whose evaluate job did not finish (no manifest yet)
    (block / "MANIFEST.json").unlink()
    for evals in ([block], [block / "step00000001.h5", f]):
        one_error_line(assemble(*evals), str(block), "no MANIFEST.json", "did not finish")


def test_cli_evaluate_blocks_writes_each_sources_block_in_one_process(tmp_path):
    """`evaluate --blocks` (a bundle of sources, eval.sources_per_job) writes each source's block folder with its
    manifest, the same eval files as one job per source; bad --blocks or both forms given are one line."""
    from conftest import run_cli

    ts = tmp_path / "ts.h5"
    make_token_set(ts, S=3, T=8)
    runs = {"a": ["step1", "step10"], "b": ["step5"]}
    for seed, (run, names) in enumerate(runs.items()):
        for i, name in enumerate(names):
            save_ckpt(tiny_model(10 * seed + i), tmp_path / run / name, complete=False)
    bundle = tmp_path / "evals" / "front+0" / "block-000"
    blocks = [{"checkpoints": [str(tmp_path / r / n) for n in names], "out_dir": str(bundle / r),
               "watch_cache": str(tmp_path / "evals" / r / "watch-cache")} for r, names in runs.items()]
    p = run_cli("evaluate", "--blocks", json.dumps(blocks), "--tokens", ts, "--device", "cpu", "--batch-size", 2)
    assert "block 2/2: 1 checkpoints" in p.stderr
    assert sorted(x.name for x in (bundle / "a").iterdir()) == ["MANIFEST.json", "step00000001.h5", "step00000010.h5"]
    assert sorted(json.loads((bundle / "b" / "MANIFEST.json").read_text())["files"]) == ["step00000005.h5"]
    for run, names in runs.items():
        alone = tmp_path / "alone" / run
        run_cli("evaluate", "--checkpoint", *[tmp_path / run / n for n in names], "--tokens", ts, "--out-dir", alone,
                "--device", "cpu", "--batch-size", 2)
        for f in sorted(alone.glob("step*.h5")):
            np.testing.assert_array_equal(tio.read_eval_losses(bundle / run / f.name)[0], tio.read_eval_losses(f)[0])
    assert [r[0] for r in tio.val_loss_rows([bundle / "a"])] == [1, 10]  # a bundled source's folder reads as a block

    def one_error_line(*args, needle):
        p = run_cli("evaluate", *args, "--tokens", ts, "--device", "cpu", check=False)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1 and needle in lines[0], p.stderr

    one_error_line("--blocks", "[]", needle="--blocks is not a JSON list of")
    one_error_line("--blocks", '[{"out_dir": "x"}]', needle="--blocks is not a JSON list of")
    one_error_line(needle="give either --checkpoint (with --out or --out-dir) or --blocks")
    one_error_line("--blocks", json.dumps(blocks), "--checkpoint", str(tmp_path / "a" / "step1"),
                   needle="give either --checkpoint")
    one_error_line("--blocks", json.dumps(blocks), "--out-dir", str(tmp_path / "x"), needle="drop --out/--out-dir")
