"""tokenscale.alignment.stage (the align command's driver): token frequencies come from the training tokens, not
from the validation token set the learning times are measured on; and the driver's table is what the App. A.2
computation gives on the same inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenscale import TokenscaleError
from tokenscale.alignment import compute as al
from tokenscale.alignment.stage import dependency_instances, run_alignment
from tokenscale.data import write_token_set
from tokenscale.io.dependency import FORMAT as DEPENDENCY_FORMAT, write_dependency
from tokenscale.io.fits import SigmoidFit, save_fits

V, S, T = 6, 40, 8  # vocabulary, validation sequences, tokens per sequence
TRAIN_COUNTS = np.array([5, 10, 20, 40, 80, 160])  # token v: frequent in training as v grows ...
VALID_WEIGHTS = TRAIN_COUNTS[::-1] / TRAIN_COUNTS.sum()  # ... and rare in the validation set


def _tiny_study(tmp_path):
    """A training folder, a validation token set and a fit table: the later a token is learned (tau), the rarer
    its target is in training — and the more frequent it is in the validation set."""
    rng = np.random.default_rng(0)
    train = np.repeat(np.arange(V), TRAIN_COUNTS)
    rng.shuffle(train)
    data = tmp_path / "data"
    data.mkdir()
    train.astype(np.uint16).tofile(data / "train_tokens.bin")
    (data / "train_tokens.json").write_text(json.dumps(
        {"dtype": "uint16", "n_tokens": int(train.size), "seq_len": 4, "n_samples": int(train.size - 1) // 4,
         "single_pass_tokens": int(train.size - 1) // 4 * 4, "vocab_size": V}))
    ids = rng.choice(V, size=(S, T + 1), p=VALID_WEIGHTS)
    write_token_set(tmp_path / "valid.h5", ids, np.broadcast_to(np.arange(S)[:, None], (S, T)),
                    np.broadcast_to(np.arange(T)[None, :], (S, T)),
                    (np.arange(S * T) % 2).reshape(S, T).astype(np.int16), kind="validation",
                    domain_names=["web", "code"])
    target = ids[:, 1:].reshape(-1)
    n = target.size
    tau = 3.5 - 0.4 * (np.log(TRAIN_COUNTS[target]) - np.log(5)) / np.log(2) + rng.normal(0, 0.05, n)
    axis = np.linspace(1.0, 4.0, 8)
    cols = {"tau": tau, "tau_orig": 10.0 ** tau, "lam": np.full(n, 3.0), "delta": np.full(n, 1.0),
            "post": np.full(n, 2.0), "pre": np.full(n, 3.0), "sse": np.full(n, 1e-3), "r2": np.full(n, 0.99),
            "status": np.zeros(n, np.int8), "category": np.ones(n, np.int8), "n_iter": np.full(n, 5, np.int32)}
    save_fits(tmp_path / "fits.h5", SigmoidFit(axis=axis, axis_orig=10.0 ** axis, transform="log10", **cols))
    return data, target, tau


def _run(tmp_path, data, **kw):
    return run_alignment(fits=tmp_path / "fits.h5", tokens=tmp_path / "valid.h5", train_data=data,
                         options={"n_boot": 50}, run="tiny", out=tmp_path / "alignment.json",
                         figures=tmp_path / "fig", **kw)


def test_frequencies_are_counted_on_the_training_tokens(tmp_path):
    data, target, tau = _tiny_study(tmp_path)
    table = _run(tmp_path, data)
    assert json.loads((tmp_path / "alignment.json").read_text()) == table
    assert table["series"] == "tiny" and table["n_selected_in_window"] == target.size
    # the rarer in training, the later: rho of tau against the training frequency is strongly negative
    # (against the validation frequency it would be strongly positive)
    assert table["frequency"]["spearman"]["rho"] < -0.9
    groups = {g["label"]: g["n"] for g in table["frequency"]["groups"]}
    assert sum(groups.values()) == target.size
    train_freq = TRAIN_COUNTS[target]
    expected = al.align(tau, np.ones(target.size, bool), domain=np.arange(target.size) % 2,
                        domain_names=["web", "code"], freq_of_instance=train_freq, n_boot=50, seed=table["seed"],
                        transform="log10")
    assert table["frequency"] == expected["frequency"] and table["domain"] == expected["domain"]
    assert any((tmp_path / "fig").iterdir())


def test_a_dependency_file_covers_the_first_instances_only(tmp_path):
    data, _, _ = _tiny_study(tmp_path)
    lengths = (np.arange(T * 30) % 4 + 1) * 2  # computed on the first 30 sequences
    write_dependency(tmp_path / "dep.h5", lengths, np.zeros((1, lengths.size)), [1],
                     {"format": DEPENDENCY_FORMAT})
    dep, mask = dependency_instances(tmp_path / "dep.h5", S * T)
    assert mask.sum() == lengths.size and (dep[~mask] == 1).all() and (dep[mask] == lengths).all()
    table = _run(tmp_path, data, dependency=tmp_path / "dep.h5")
    assert sum(g["n"] for g in table["dependency"]["groups"]) == lengths.size
    with pytest.raises(TokenscaleError, match="token instances but the token set has"):
        dependency_instances(tmp_path / "dep.h5", T * 2)
