"""Training fast paths: the fused chunked LM-head loss against the plain one, the resolved perf settings, the fast
path's loss curve against the baseline's, checkpoints that load and evaluate the same on either path, MFU fields,
and the benchmarks' CPU dry runs (so the GPU device check cannot rot)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, read_losses, run_cli, tiny_config, write_config
from tokenscale.training.loss import chunk_rows, linear_cross_entropy
from tokenscale.training.trainer import resolve_perf

BASELINE = {"loss": "plain", "experts": "grouped_mm", "fused_adamw": "off", "prefetch": False}


# ------------------------------------------------------------------------------------------- lmloss
def _problem(n=300, d=16, v=97, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, dtype=dtype, generator=g).requires_grad_()
    w = torch.randn(v, d, dtype=dtype, generator=g).requires_grad_()
    y = torch.randint(0, v, (n,), generator=g)
    y[::7] = -100  # not counted
    return h, w, y


def _loss_and_grads(h, w, y, impl, **kw):
    h.grad = w.grad = None
    loss = linear_cross_entropy(h, w, y, impl, **kw)
    (2.5 * loss).backward()  # a non-unit upstream gradient
    return loss.detach(), h.grad.clone(), w.grad.clone()


@pytest.mark.parametrize("rows", [1, 17, 64, 300, 1000])
def test_chunked_equals_plain_in_float64(rows):
    h, w, y = _problem()
    lp, ghp, gwp = _loss_and_grads(h, w, y, "plain")
    lc, ghc, gwc = _loss_and_grads(h, w, y, "chunked", rows=rows)
    assert lc.dtype == torch.float64
    assert abs(lc.item() - lp.item()) < 1e-12
    assert torch.allclose(ghc, ghp, atol=1e-12, rtol=0) and torch.allclose(gwc, gwp, atol=1e-12, rtol=0)
    assert (ghc[::7] == 0).all()  # ignored rows get no gradient


def test_chunked_passes_gradcheck():
    h, w, y = _problem(n=40, d=5, v=11)
    f = lambda a, b: linear_cross_entropy(a, b, y[:40], "chunked", rows=9)  # noqa: E731
    assert torch.autograd.gradcheck(f, (h.detach().requires_grad_(), w.detach().requires_grad_()))


def test_chunked_float32_matches_plain_to_rounding():
    h, w, y = _problem(n=512, d=32, v=1000, dtype=torch.float32)
    lp, ghp, gwp = _loss_and_grads(h, w, y, "plain")
    lc, ghc, gwc = _loss_and_grads(h, w, y, "chunked")
    assert lc.dtype == torch.float32 and abs(lc.item() - lp.item()) < 1e-5
    assert torch.allclose(ghc, ghp, atol=1e-6) and torch.allclose(gwc, gwp, atol=1e-6)


def test_chunked_under_bf16_autocast_is_close_and_keeps_dtypes():
    h, w, y = _problem(n=256, d=32, v=300, dtype=torch.float32)
    lp, ghp, gwp = _loss_and_grads(h, w, y, "plain")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lc, ghc, gwc = _loss_and_grads(h, w, y, "chunked", rows=64)
    assert lc.dtype == torch.float32 and ghc.dtype == gwc.dtype == torch.float32
    assert abs(lc.item() - lp.item()) < 0.05 * abs(lp.item())  # bf16 matmuls: ~3 significant digits
    assert torch.allclose(ghc, ghp, atol=2e-3) and torch.allclose(gwc, gwp, atol=2e-3)


def test_all_rows_ignored_gives_zero_loss_and_gradients():
    h, w, _ = _problem(n=20)
    y = torch.full((20,), -100)
    loss, gh, gw = _loss_and_grads(h, w, y, "chunked", rows=8)
    assert loss.item() == 0 and (gh == 0).all() and (gw == 0).all()


def test_without_grad_only_the_loss_is_computed():
    h, w, y = _problem()
    with torch.no_grad():
        loss = linear_cross_entropy(h, w, y, "chunked", rows=32)
    assert not loss.requires_grad
    assert abs(loss.item() - linear_cross_entropy(h, w, y, "plain").item()) < 1e-12


def test_bad_arguments_are_one_line_errors():
    h, w, y = _problem()
    with pytest.raises(ValueError, match="loss implementation 'fast' is not one of plain, chunked"):
        linear_cross_entropy(h, w, y, "fast")
    with pytest.raises(ValueError, match=r"shapes h \(300, 16\), w \(97, 15\)"):
        linear_cross_entropy(h, w[:, :15], y, "chunked")


def test_chunk_rows_follow_the_block_budget():
    assert chunk_rows(2048, 4096, "cpu") == 128
    assert chunk_rows(100, 4096, "cpu") == 100  # never more rows than there are
    assert chunk_rows(10**6, 10**7, "cpu") == 1
    assert chunk_rows(16384, 8192, "cuda") == 4096


# ------------------------------------------------------------------------------------------- perf settings
def _perf(**kw):
    from tokenscale.config import schema_default

    assert schema_default("runs.perf") == {}
    base = {"loss": "auto", "experts": "auto", "attention": "sdpa", "compile": False, "fused_adamw": "auto",
            "prefetch": True, "peak_tflops": None}
    return {**base, **kw}


def test_auto_resolves_per_device_type():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_perf(_perf(), cpu, "moe") == _perf(loss="chunked", experts="eager", fused_adamw=False)
    assert resolve_perf(_perf(), cuda, "moe") == _perf(loss="chunked", experts="grouped_mm", fused_adamw=True)
    assert resolve_perf(_perf(), cpu, "dense")["experts"] is None
    explicit = _perf(loss="plain", experts="batched_mm", fused_adamw="on")
    assert resolve_perf(explicit, cpu, "moe") == _perf(loss="plain", experts="batched_mm", fused_adamw=True)


# ------------------------------------------------------------------------------------------- trainer
def _train(tmp_path, data_dir, name, **run):
    cfg = tiny_config(name=name, **run)
    path = write_config(tmp_path / f"{name}.yaml", cfg)
    out = tmp_path / name
    run_cli("train", "--config", path, "--run", name, "--data", data_dir, "--out", out, "--threads", 1)
    return out


@pytest.fixture(scope="module")
def two_paths(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("paths")
    return {"baseline": _train(tmp, data_dir, "baseline", perf=BASELINE), "auto": _train(tmp, data_dir, "auto")}


def test_fast_path_loss_curve_matches_the_baseline(two_paths):
    a, b = np.array(read_losses(two_paths["auto"])), np.array(read_losses(two_paths["baseline"]))
    assert a.shape == b.shape == (40,)
    # Same seed, data and maths; only the float summation order differs (fused loss, eager experts): the first
    # step agrees to float32 rounding and the curves stay within 1e-3 nats over 40 steps at lr 5e-3.
    assert abs(a[0] - b[0]) < 1e-5
    assert np.max(np.abs(a - b)) < 1e-3, np.max(np.abs(a - b))


def test_train_json_records_perf_and_mfu(two_paths):
    s = json.loads((two_paths["auto"] / "train.json").read_text())
    assert s["perf"]["loss"] == "chunked" and s["perf"]["experts"] == "eager" and s["perf"]["fused_adamw"] is False
    assert s["model_flops_per_token"] == s["model_stats"]["model_flops_per_token"] > s["model_stats"]["flops_per_token"]
    assert s["peak_source"].startswith("measured: fp32 GEMM") and s["peak_flops_per_s"] > 0
    tps = s["tokens_per_s"]
    assert s["flops_per_s"] == pytest.approx(tps * s["model_flops_per_token"])
    assert s["mfu"] == pytest.approx(s["flops_per_s"] / s["peak_flops_per_s"])
    assert set(s["seconds"]) == {"steps", "validation", "checkpoints", "state", "other"}
    assert s["steps_only"]["tokens_per_s"] > tps
    assert json.loads((two_paths["baseline"] / "train.json").read_text())["perf"]["loss"] == "plain"
    row = json.loads((two_paths["auto"] / "log.jsonl").read_text().splitlines()[-1])
    assert row["mfu"] == pytest.approx(row["tokens_per_s"] * s["model_flops_per_token"] / s["peak_flops_per_s"])


@pytest.mark.parametrize("trained_on", ["auto", "baseline"])
def test_checkpoints_load_and_evaluate_the_same_on_either_path(two_paths, data_dir, trained_on):
    from transformers import AutoModelForCausalLM

    from tokenscale.evaluation.evaluate import load_token_set, mean_loss
    from tokenscale.training.loss import linear_cross_entropy

    ck = sorted((two_paths[trained_on] / "checkpoints").iterdir())[-1]
    meta = json.loads((ck / "tokenscale.json").read_text())
    cfg = json.loads((ck / "config.json").read_text())
    assert "_orig_mod" not in (ck / "model.safetensors").read_bytes()[:20000].decode("latin-1")
    ids = torch.as_tensor(load_token_set(data_dir / "valid_tokens.h5")["input_ids"], dtype=torch.long)
    losses = {}
    for experts, loss in [("eager", "chunked"), ("grouped_mm", "plain")]:
        model = AutoModelForCausalLM.from_pretrained(ck, experts_implementation=experts).eval()
        with torch.no_grad():
            h = model.model(input_ids=ids[:, :-1]).last_hidden_state
            losses[experts] = linear_cross_entropy(h.reshape(-1, h.shape[-1]), model.lm_head.weight,
                                                   ids[:, 1:].reshape(-1), loss).item()
    assert cfg["model_type"] == "qwen3_moe"
    assert abs(losses["eager"] - losses["grouped_mm"]) < 1e-5
    # the evaluator (the per-token path every series uses) gives the logged in-loop validation loss
    assert abs(mean_loss(AutoModelForCausalLM.from_pretrained(ck), ids) - meta["val_loss"]) < 1e-5
    assert abs(losses["eager"] - meta["val_loss"]) < 1e-5


def test_dense_model_trains_on_the_fast_path(tmp_path, data_dir):
    out = _train(tmp_path, data_dir, "dense", model={"preset": "dense-nano"}, tokens=8 * 16 * 6,
                 checkpoints={"count": 2})
    s = json.loads((out / "train.json").read_text())
    assert s["perf"]["experts"] is None and s["perf"]["loss"] == "chunked" and np.isfinite(read_losses(out)).all()


# ------------------------------------------------------------------------------------------- benchmarks
def test_bench_train_dry_run(tmp_path, data_dir):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_train.py"), "--data", str(data_dir),
                        "--model", "moe-nano", "--seq-len", "16", "--batch-size", "8", "--steps", "4", "--rounds", "1",
                        "--checkpoints", "2", "--threads", "1", "--json", str(tmp_path / "b.json"),
                        "--arm", 'fused={"fused_adamw": "on"}'],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads((tmp_path / "b.json").read_text())
    assert [r["arm"] for r in rows] == ["baseline", "auto", "fused"]
    assert rows[0]["perf"]["loss"] == "plain" and rows[2]["perf"]["fused_adamw"] is True
    assert "speed-up auto / baseline: end-to-end" in p.stdout


def test_gpu_training_check_dry_run(tmp_path):
    """benchmarks/gpu/train.sh is what a lent GPU runs; DRY_RUN=1 runs the same steps on this CPU, tiny."""
    env = dict(os.environ, DRY_RUN="1", OMP_NUM_THREADS="1", PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu" / "train.sh"), str(tmp_path / "out")], cwd=REPO,
                       capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    text = (tmp_path / "out" / "train.txt").read_text()
    assert text.count("speed-up auto / baseline") == 3, text


# ------------------------------------------------------------------------------------------- validation
def test_val_loss_from_the_per_token_evaluation_equals_the_in_loop_one(two_paths, data_dir, tmp_path):
    run = two_paths["auto"]
    ckpts = sorted((run / "checkpoints").iterdir())
    run_cli("evaluate", "--checkpoint", *ckpts, "--tokens", data_dir / "valid_tokens.h5", "--out-dir", tmp_path / "block-000",
            "--batch-size", 5, "--threads", 1)
    run_cli("val-loss", "--evals", tmp_path / "block-000", "--out", tmp_path / "val_loss.csv")
    ours = np.loadtxt(tmp_path / "val_loss.csv", delimiter=",", skiprows=1)
    theirs = np.loadtxt(run / "val_loss.csv", delimiter=",", skiprows=1)
    assert (tmp_path / "val_loss.csv").read_text().splitlines()[0] == "step,tokens_seen,val_loss"
    assert ours.shape == theirs.shape and (ours[:, :2] == theirs[:, :2]).all()
    assert np.max(np.abs(ours[:, 2] - theirs[:, 2])) < 1e-6  # float32 per-token losses; other batch size


def test_val_loss_from_the_checkpoints_rewrites_the_trainers_file(two_paths, tmp_path):
    run_cli("val-loss", "--run-dir", two_paths["auto"], "--out", tmp_path / "v.csv")
    assert (tmp_path / "v.csv").read_text() == (two_paths["auto"] / "val_loss.csv").read_text()
    p = run_cli("val-loss", "--out", tmp_path / "w.csv", check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].endswith("give either --evals or --run-dir")


def test_without_in_loop_validation_the_trainer_writes_no_val_loss(tmp_path, data_dir, two_paths):
    out = _train(tmp_path, data_dir, "noval", in_loop_validation=False)
    assert not (out / "val_loss.csv").exists()
    metas = [json.loads((d / "tokenscale.json").read_text()) for d in sorted((out / "checkpoints").iterdir())]
    assert len(metas) >= 5 and all(m["val_loss"] is None for m in metas)
    assert json.loads((out / "train.json").read_text())["seconds"]["validation"] == 0
    assert read_losses(out) == read_losses(two_paths["auto"])  # validation never touches the training state
    p = run_cli("val-loss", "--run-dir", out, "--out", tmp_path / "v.csv", check=False)
    assert p.returncode == 2 and "no in-loop validation loss" in p.stderr.strip().splitlines()[-1]


def test_val_loss_refuses_two_files_for_one_step(two_paths, data_dir, tmp_path):
    ck = sorted((two_paths["auto"] / "checkpoints").iterdir())[-1]
    for name in ("a", "b"):
        run_cli("evaluate", "--checkpoint", ck, "--tokens", data_dir / "valid_tokens.h5", "--out", tmp_path / f"{name}.h5",
                "--threads", 1)
    p = run_cli("val-loss", "--evals", tmp_path / "a.h5", tmp_path / "b.h5", "--out", tmp_path / "v.csv", check=False)
    assert p.returncode == 2 and "a second eval file for step 40" in p.stderr.strip().splitlines()[-1]
