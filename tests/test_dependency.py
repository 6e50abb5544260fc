"""Tests for tokenscale.alignment.dependency: per-token dependency lengths (paper App. A.2.3)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import transformers

from tokenscale import TokenscaleError
from tokenscale.alignment import dependency as dp
from tokenscale.evaluation import evaluate as ev
from tokenscale import io as tio

V = 300
TOL = 1e-4


def tiny_model(kind: str = "llama", *, layers: int = 2, attn: str = "sdpa", seed: int = 0, max_pos: int = 64):
    """A random-init causal LM: Llama, or Qwen3-MoE (4 experts, top-2), hidden 32, GQA 4/2 heads."""
    torch.manual_seed(seed)
    common = dict(vocab_size=V, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=8, intermediate_size=64, max_position_embeddings=max_pos, bos_token_id=None,
                  eos_token_id=None, pad_token_id=None)
    if kind == "moe":
        cfg = transformers.Qwen3MoeConfig(**common, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
                                          decoder_sparse_step=1, mlp_only_layers=[])
    else:
        cfg = transformers.LlamaConfig(**common)
    return transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()


from test_evaluate import make_token_set  # noqa: E402  the same token-set layout (V = 300)


def random_ids(S: int, T: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, V, size=(S, T + 1)).astype(np.int32)


def save_ckpt(model, d: Path) -> Path:
    model.save_pretrained(d)
    return d


# ----------------------------------------------------------------------------- grid
def test_context_grid():
    assert dp.context_grid(32) == [1, 2, 4, 8, 16, 32]
    assert dp.context_grid(29) == [1, 2, 4, 8, 16, 29]
    assert dp.context_grid(2) == [1, 2]
    assert dp.context_grid(1) == [1]
    with pytest.raises(TokenscaleError, match="seq_len must be >= 1"):
        dp.context_grid(0)


# ----------------------------------------------------------------------------- log-probs vs truncation
@pytest.mark.parametrize("kind", ["llama", "moe"])
@pytest.mark.parametrize("T", [32, 29])
def test_windowed_equals_explicit_truncation(kind, T):
    model = tiny_model(kind)
    ids = random_ids(3, T, seed=T)
    cs = dp.context_grid(T)
    win = dp.windowed_log_probs(model, ids, cs, batch_size=2)
    ref = dp.truncated_log_probs(model, ids, cs, batch_size=2)
    assert win.shape == ref.shape == (len(cs), 3, T) and win.dtype == np.float32
    assert np.isfinite(ref).all()
    for i, c in enumerate(cs):  # every context length on its own
        assert np.abs(win[i] - ref[i]).max() <= TOL, c
    # the truncated contexts really see less: the c = 1 row differs from the full context
    assert np.abs(win[0] - win[-1])[:, 1:].min() > 0
    # a subset of positions gives the same numbers as the full reference
    pos = [0, 5, T - 1]
    np.testing.assert_allclose(dp.truncated_log_probs(model, ids, cs, positions=pos), ref[:, :, pos], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["llama", "moe"])
def test_banded_mask_equals_truncation_for_one_layer_only(kind):
    """RoPE makes a band of c positions equal to truncation in ONE attention layer; stacked layers widen the
    receptive field to n_layers*(c-1)+1, so the banded mask is not truncation for real models."""
    T = 32
    ids = random_ids(3, T, seed=1)
    cs = dp.context_grid(T)
    one = tiny_model(kind, layers=1)
    band = dp.banded_log_probs(one, ids, cs, batch_size=2)
    assert np.abs(band - dp.truncated_log_probs(one, ids, cs)).max() <= TOL
    two = tiny_model(kind, layers=2)
    band = dp.banded_log_probs(two, ids, cs, batch_size=2)
    diff = np.abs(band - dp.truncated_log_probs(two, ids, cs))  # (C, S, T)
    t = np.arange(T)
    trivial = np.asarray(cs)[:, None] >= t + 1  # (C, T): c >= t+1, the band covers the full context
    assert diff.transpose(0, 2, 1)[trivial].max() <= TOL
    assert diff[0].max() <= TOL  # c = 1: every layer attends only to itself, like a one-token input
    assert diff[2][:, ~trivial[2]].max() > 1e-3  # c = 4 on 2 layers: the band sees 7 tokens back


@pytest.mark.parametrize("kind", ["llama", "moe"])
def test_sdpa_and_eager_agree(kind):
    T = 16
    ids = random_ids(2, T, seed=3)
    cs = dp.context_grid(T)
    sd, eg = tiny_model(kind, attn="sdpa"), tiny_model(kind, attn="eager")
    assert np.abs(dp.windowed_log_probs(sd, ids, cs) - dp.windowed_log_probs(eg, ids, cs)).max() <= TOL
    assert np.abs(dp.banded_log_probs(sd, ids, cs) - dp.banded_log_probs(eg, ids, cs)).max() <= TOL


@pytest.mark.parametrize("kind", ["llama", "moe"])
def test_full_context_row_equals_token_losses(kind):
    model = tiny_model(kind)
    ids = random_ids(5, 20, seed=4)
    cs = dp.context_grid(20)
    losses = ev.token_losses(model, ids, batch_size=3)
    np.testing.assert_allclose(dp.windowed_log_probs(model, ids, cs, batch_size=3)[-1], -losses, rtol=0, atol=1e-6)
    np.testing.assert_allclose(dp.banded_log_probs(model, ids, cs, batch_size=3)[-1], -losses, rtol=0, atol=1e-6)


def test_batching_and_mode(capsys):
    model = tiny_model("llama")
    model.train()
    ids = random_ids(3, 16, seed=5)
    cs = dp.context_grid(16)
    a = dp.windowed_log_probs(model, ids, cs, batch_size=1, verbose=True)
    assert model.training  # previous mode restored
    b = dp.windowed_log_probs(model, torch.from_numpy(ids).long(), cs, batch_size=64)
    assert np.abs(a - b).max() <= 1e-5
    err = capsys.readouterr().err.splitlines()
    assert len(err) == len(cs) and err[0].startswith("dependency: full context c=16 (1/5)")
    assert err[-1].startswith("dependency: 24 windows of c=8 (5/5)")


# ----------------------------------------------------------------------------- dependency lengths
def test_dependency_lengths_known_answer():
    cs = [1, 2, 4]
    full = np.log(np.full((2, 4), 0.5))
    p = np.empty((3, 2, 4))
    # seq 0: t=0 trivially 1 (c=1 >= t+1) although p_1 is low; t=1 trivially 2 although p_2 is low;
    #        t=2 reaches 0.9*p_full at c=1; t=3 just above the threshold at c=2
    p[0, 0] = [0.01, 0.44, 0.46, 0.05]
    p[1, 0] = [0.50, 0.01, 0.20, 0.4501]
    # seq 1: t=3 just below the threshold at c=2 -> the full context; t=2 above p_full at c=1
    p[0, 1] = [0.50, 0.12, 0.70, 0.05]
    p[1, 1] = [0.50, 0.50, 0.70, 0.4499]
    p[2] = 0.5
    logp = np.log(p).astype(np.float32)
    dep = dp.dependency_lengths(logp, full.astype(np.float32), cs)
    assert dep.shape == (2, 4) and np.issubdtype(dep.dtype, np.integer)
    np.testing.assert_array_equal(dep, [[1, 2, 1, 2], [1, 2, 1, 4]])
    # threshold 0.2 (p_c >= 0.1): t=1 now qualifies at c=1; t=3 of seq 1 at c=2
    np.testing.assert_array_equal(dp.dependency_lengths(logp, full.astype(np.float32), cs, threshold=0.2),
                                  [[1, 1, 1, 2], [1, 1, 1, 2]])


def test_dependency_lengths_threshold_edges():
    cs = [1, 2, 4]
    full = np.full((1, 4), -2.0, dtype=np.float32)
    logp = np.full((3, 1, 4), -2.0, dtype=np.float32)
    # threshold 1: p_c == p_full qualifies (>=); a hair below does not
    full = np.full((2, 4), -2.0, dtype=np.float32)
    logp = np.full((3, 2, 4), -2.0, dtype=np.float32)
    below = np.nextafter(np.float32(-2.0), np.float32(-3.0))
    logp[0] = below
    logp[1, 1, 3] = below
    np.testing.assert_array_equal(dp.dependency_lengths(logp, full, cs, threshold=1.0), [[1, 2, 2, 2], [1, 2, 2, 4]])
    # tiny probabilities are compared in log space: exp would underflow to 0 >= 0.9 * 0
    full = np.full((1, 4), -200.0, dtype=np.float32)
    logp = np.full((3, 1, 4), -201.0, dtype=np.float32)  # ratio e^-1 = 0.37
    logp[:, 0, 2] = -200.05  # ratio 0.95
    logp[2] = full
    np.testing.assert_array_equal(dp.dependency_lengths(logp, full, cs), [[1, 2, 1, 4]])


def test_dependency_lengths_bad_input():
    logp = np.zeros((2, 1, 2), dtype=np.float32)
    full = np.zeros((1, 2), dtype=np.float32)
    for bad in (0, 0.0, -0.5, 1.5, float("nan"), "0.9"):
        with pytest.raises(TokenscaleError, match=r"threshold must be in \(0, 1\]"):
            dp.dependency_lengths(logp, full, [1, 2], threshold=bad)
    with pytest.raises(TokenscaleError, match="must be \\(C, S, T\\)"):
        dp.dependency_lengths(logp, full, [1, 2, 4])
    with pytest.raises(TokenscaleError, match="increasing positive"):
        dp.dependency_lengths(logp, full, [2, 1])
    with pytest.raises(TokenscaleError, match="must be >= seq_len"):
        dp.dependency_lengths(np.zeros((2, 1, 4), dtype=np.float32), np.zeros((1, 4), dtype=np.float32), [1, 2])


# ----------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("kind", ["llama", "moe"])
def test_compute_dependency_end_to_end(tmp_path, kind, capsys):
    S, T = 4, 16
    ids = make_token_set(tmp_path / "valid.h5", S=S, T=T)
    ckpt = save_ckpt(tiny_model(kind), tmp_path / "step100")
    out = dp.compute_dependency(ckpt, tmp_path / "valid.h5", tmp_path / "dep.h5", batch_size=3, device="cpu",
                                check_sample=2)
    assert out == tmp_path / "dep.h5" and not list(tmp_path.glob("*.tmp"))
    d = dp.read_dependency(out)
    cs = dp.context_grid(T)
    a = d["attrs"]
    assert a["format"] == dp.FORMAT and a["threshold"] == pytest.approx(0.9)
    assert a["checkpoint"] == str(ckpt.resolve()) and a["token_set_sha256"] == tio.sha256_file(tmp_path / "valid.h5")
    assert a["n_checked_sequences"] == 2 and 0 <= a["max_abs_diff_vs_truncation"] <= TOL and a["seconds"] > 0
    assert d["contexts"].dtype == np.int32 and d["contexts"].tolist() == cs
    assert d["dependency_length"].shape == (S * T,) and d["dependency_length"].dtype == np.int32
    assert d["log_prob"].shape == (len(cs), S * T) and d["log_prob"].dtype == np.float32
    # token order = the evaluation files' (s*T + t): the full-context row is minus the evaluated loss
    ev.evaluate_checkpoint(ckpt, tmp_path / "valid.h5", tmp_path / "eval.h5", step=100, device="cpu")
    losses, _ = tio.read_eval_losses(tmp_path / "eval.h5")
    np.testing.assert_allclose(d["log_prob"][-1], -losses, rtol=0, atol=1e-6)
    model = ev.load_checkpoint_model(ckpt)
    logp = dp.windowed_log_probs(model, ids, cs)
    np.testing.assert_allclose(d["log_prob"].reshape(len(cs), S, T), logp, rtol=0, atol=1e-6)
    dep = dp.dependency_lengths(logp, logp[-1], cs).reshape(-1)
    np.testing.assert_array_equal(d["dependency_length"], dep)
    assert (d["dependency_length"] <= np.tile(np.minimum(2 ** np.ceil(np.log2(np.arange(1, T + 1))), T), S)).all()
    assert "dependency: full context c=16 (1/5)" in capsys.readouterr().err


def test_compute_dependency_threshold_and_no_check(tmp_path):
    make_token_set(tmp_path / "valid.h5", S=2, T=8)
    ckpt = save_ckpt(tiny_model(), tmp_path / "ckpt")
    d = dp.read_dependency(dp.compute_dependency(ckpt, tmp_path / "valid.h5", tmp_path / "dep.h5", threshold=1.0,
                                                 check_sample=0))
    assert d["attrs"]["n_checked_sequences"] == 0 and np.isnan(d["attrs"]["max_abs_diff_vs_truncation"])
    assert d["attrs"]["threshold"] == 1.0


# ----------------------------------------------------------------------------- bad input
def test_compute_dependency_bad_input(tmp_path):
    make_token_set(tmp_path / "valid.h5", S=2, T=16)
    ckpt = save_ckpt(tiny_model(), tmp_path / "ckpt")
    for bad in (0.0, 1.01, -1):
        with pytest.raises(TokenscaleError, match=r"threshold must be in \(0, 1\]"):
            dp.compute_dependency(ckpt, tmp_path / "valid.h5", tmp_path / "dep.h5", threshold=bad)
    short = save_ckpt(tiny_model(max_pos=8), tmp_path / "short")
    with pytest.raises(TokenscaleError, match="longer than checkpoint .* max_position_embeddings=8"):
        dp.compute_dependency(short, tmp_path / "valid.h5", tmp_path / "dep.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        for name, shape in (("input_ids", (0, 17)), ("token_id", (0, 16)), ("doc_id", (0, 16)), ("doc_pos", (0, 16)),
                            ("domain", (0, 16))):
            f.create_dataset(name, shape=shape, dtype=np.int32)
    with pytest.raises(TokenscaleError, match="is empty"):
        dp.compute_dependency(ckpt, tmp_path / "empty.h5", tmp_path / "dep.h5")
    with pytest.raises(TokenscaleError, match="not found"):
        dp.compute_dependency(ckpt, tmp_path / "missing.h5", tmp_path / "dep.h5")
    assert not (tmp_path / "dep.h5").exists()


def test_compute_dependency_check_failure(tmp_path, monkeypatch):
    make_token_set(tmp_path / "valid.h5", S=2, T=8)
    ckpt = save_ckpt(tiny_model(), tmp_path / "ckpt")
    real = dp.truncated_log_probs
    monkeypatch.setattr(dp, "truncated_log_probs", lambda *a, **k: real(*a, **k) + 0.01)
    with pytest.raises(TokenscaleError, match=r"differ from explicit truncation by up to 0\.01"):
        dp.compute_dependency(ckpt, tmp_path / "valid.h5", tmp_path / "dep.h5", check_sample=1)
    assert not (tmp_path / "dep.h5").exists() and not list(tmp_path.glob("*.tmp"))


def test_read_dependency_bad_files(tmp_path):
    with pytest.raises(TokenscaleError, match="dependency file not found"):
        dp.read_dependency(tmp_path / "nope.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "tokenscale-eval-v1"
    with pytest.raises(TokenscaleError, match="not a dependency file"):
        dp.read_dependency(tmp_path / "other.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(TokenscaleError, match="cannot read dependency file"):
        dp.read_dependency(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "partial.h5", "w") as f:
        f.attrs["format"] = dp.FORMAT
        f["contexts"] = np.asarray([1, 2], dtype=np.int32)
    with pytest.raises(TokenscaleError, match="missing"):
        dp.read_dependency(tmp_path / "partial.h5")


def test_log_prob_functions_bad_input():
    model = tiny_model()
    ids = random_ids(2, 8)
    with pytest.raises(TokenscaleError, match="batch_size must be >= 1"):
        dp.windowed_log_probs(model, ids, dp.context_grid(8), batch_size=0)
    with pytest.raises(TokenscaleError, match="must be >= seq_len"):
        dp.banded_log_probs(model, ids, [1, 2, 4])
    with pytest.raises(TokenscaleError, match="outside"):
        dp.truncated_log_probs(model, ids + V, dp.context_grid(8))
    with pytest.raises(TokenscaleError, match="positions must lie in"):
        dp.truncated_log_probs(model, ids, dp.context_grid(8), positions=[8])
