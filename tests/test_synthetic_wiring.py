"""Synthetic data in the workflow (paper App. A.3): the prepared folder, answer-only supervision (a change at a
masked label changes neither the loss nor the gradients), answer-scored token sets through evaluation and assembly,
the config's one-line refusals, and the run's series on its dataset's answers."""

import json

import numpy as np
import pytest
import torch

from tokenscale import TokenscaleError
from tokenscale.synthetic import arithmetic as sy
from tokenscale.config import RunConfig, run_configs, validate_config
from tokenscale.data import TrainTokens

ENTRY = dict(name="mano", p=5, l_max=3, distribution="power", exponent=2.0, seq_len=10, seed=0, train_examples=3000,
             valid_examples=60, level_examples=8)


@pytest.fixture(scope="module")
def syn_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn") / "mano"
    sy.prepare(ENTRY, d)
    return d


def syn_run(**kw) -> RunConfig:
    run = dict(name="m", axis="T", model={"preset": "dense-nano"}, tokens=40 * 16 * 10, batch_size=16, lr=0.003,
               checkpoints={"count": 4, "first_step": 5}, in_loop_validation=False, synthetic="mano", state_every=100)
    run.update(kw)
    return RunConfig.from_dict(run, 10)


def test_prepared_folder_rows_and_answer_scored_sets(syn_dir):
    from tokenscale.io import SCORE_MASK, read_token_set, token_set_info

    tt = TrainTokens(syn_dir)
    assert (tt.stride, tt.supervise, len(tt)) == (11, "last", 3000)
    gen = sy.generate(sy.spec_of(ENTRY), 3000, seed=0, split="train")
    np.testing.assert_array_equal(tt.batch(np.array([0, 7, 2999])), gen["tokens"][[0, 7, 2999]])
    meta = json.loads((syn_dir / "train_tokens.json").read_text())
    assert sum(meta["level_counts"]) == 3000 and meta["vocab_size"] == sy.vocab_size(5)
    ts = read_token_set(syn_dir / "valid_tokens.h5")
    assert ts[SCORE_MASK].sum() == 60 and ts[SCORE_MASK][:, -1].all()
    for row in ts["input_ids"][:20]:  # the scored label is the answer of the row's expression
        assert row[-1] - sy.VAL0 == sy.evaluate_prefix(row, 5)
    info = token_set_info(syn_dir / "levels_tokens.h5")
    assert info["n_tokens"] == 24 and info["positions"].tolist() == [s * 10 + 9 for s in range(24)]
    assert np.bincount(ts["domain"][:, -1]).sum() == 60  # domain = level - 1
    from tokenscale.data import load_tokenizer

    tok = load_tokenizer(syn_dir / "tokenizer")
    assert tok.convert_ids_to_tokens(list(range(len(sy.vocab(5))))) == sy.vocab(5)


def test_answer_only_loss_ignores_masked_labels(syn_dir, tmp_path):
    from tokenscale.training.trainer import Trainer

    tr = Trainer(syn_run(), syn_dir, tmp_path / "run", threads=1, progress=False)
    tr._build()
    ids = torch.as_tensor(tr.tokens.batch(np.arange(8)))
    inp, tgt = ids[:, :-1], ids[:, 1:].clone()

    def loss_and_grads(t):
        tr.model.zero_grad(set_to_none=True)
        loss, ce = tr._loss_on(inp, t)
        loss.backward()
        return ce.item(), [p.grad.clone() for p in tr.model.parameters() if p.grad is not None]

    ce0, g0 = loss_and_grads(tgt)
    other = tgt.clone()
    other[:, :-1] = (other[:, :-1] + 3) % tr.tokens.vocab_size  # every masked label changed
    ce1, g1 = loss_and_grads(other)
    assert ce0 == ce1 and all(torch.equal(a, b) for a, b in zip(g0, g1))
    answer = tgt.clone()
    answer[:, -1] = (answer[:, -1] + 1) % tr.tokens.vocab_size  # the answer changed: the loss changes
    assert loss_and_grads(answer)[0] != ce0
    # the CE is the mean answer loss the evaluator computes
    from tokenscale.evaluation.evaluate import token_losses

    with torch.no_grad():
        want = token_losses(tr.model, ids, batch_size=8)[:, -1].mean()
    assert tr._loss_on(inp, tgt)[1].item() == pytest.approx(float(want), rel=1e-5)


def test_train_evaluate_assemble_on_answers(syn_dir, tmp_path):
    from tokenscale.evaluation.evaluate import evaluate_checkpoint, scored_predictions
    from tokenscale.io import read_eval_losses, read_run_trajectories, write_trajectory_shards
    from tokenscale.training.trainer import Trainer

    run = syn_run()
    Trainer(run, syn_dir, tmp_path / "run", threads=1, progress=False).train()
    evals = []
    for s in run.checkpoint_steps():
        ck = tmp_path / "run" / "checkpoints" / f"step{s:08d}"
        evals.append(evaluate_checkpoint(ck, syn_dir / "valid_tokens.h5", tmp_path / f"e{s}.h5", batch_size=16))
    loss, attrs = read_eval_losses(evals[-1])
    assert loss.shape == (60,) and attrs["mean_loss"] == pytest.approx(float(loss.mean()), rel=1e-6)
    l2, correct = scored_predictions(ck, syn_dir / "valid_tokens.h5")
    np.testing.assert_allclose(l2, loss, rtol=1e-4, atol=1e-5)
    assert correct.dtype == bool and correct.shape == (60,)
    outs = [tmp_path / "t0.h5", tmp_path / "t1.h5"]
    write_trajectory_shards(evals, syn_dir / "valid_tokens.h5", outs, attrs={"run": "m"})
    traj, axis, meta = read_run_trajectories(outs)
    assert traj.shape == (60, len(evals)) and meta["token_index"].tolist() == [s * 10 + 9 for s in range(60)]
    assert set(meta["domain"].tolist()) <= {0, 1, 2}
    np.testing.assert_array_equal(traj[:, -1], loss)


@pytest.mark.parametrize("change, message", [
    ({"p": 1}, r"synthetic\[0\]\.p: 1 is less than the minimum of 2"),
    ({"l_max": 0}, r"synthetic\[0\]\.l_max: 0 is less than the minimum of 1"),
    ({"distribution": "zipf"}, r"synthetic\[0\]\.distribution must be one of \['uniform', 'power'\], got 'zipf'"),
    ({"l_max": 6}, r"synthetic\[0\] \(mano\): synthetic seq_len=10 is too short: l_max=6 needs seq_len >= 15"),
])
def test_bad_datasets_are_one_line(change, message):
    cfg = {"synthetic": [{**ENTRY, **change}], "runs": [dict(name="m", axis="T", tokens=4000, batch_size=4,
                                                             in_loop_validation=False, synthetic="mano")]}
    with pytest.raises(TokenscaleError, match=message):
        validate_config(cfg)


def test_runs_on_a_dataset_get_its_seq_len_and_series():
    from tokenscale.series import build_workflow

    base = dict(name="m", axis="T", tokens=4000, batch_size=4, in_loop_validation=False, synthetic="mano",
                model={"preset": "dense-nano"})
    v = validate_config({"synthetic": [ENTRY], "runs": [base], "results": "/r"})
    assert run_configs(v)["m"].seq_len == 10 and run_configs(v)["m"].total_steps == 100
    s = build_workflow(v).series["m"]
    assert s.token_set == "mano" and build_workflow(v).token_sets["mano"].path == "/r/synthetic/mano/valid_tokens.h5"
    with pytest.raises(TokenscaleError, match=r"run m: synthetic 'nope' is not a synthetic dataset of this config \(mano\)"):
        validate_config({"synthetic": [ENTRY], "runs": [{**base, "synthetic": "nope"}]})
    with pytest.raises(TokenscaleError, match=r"run m: a synthetic run needs in_loop_validation: false"):
        validate_config({"synthetic": [ENTRY], "runs": [{**base, "in_loop_validation": True}]})


def test_levels_table_roundtrip(tmp_path):
    rows = sy.level_rows(10, np.array([1, 1, 2, 3]), np.array([1.0, 3.0, 2.0, 0.5]), np.array([1, 0, 1, 1], bool))
    rows += sy.level_rows(5, np.array([1, 2, 3]), np.array([2.0, 2.0, 2.0]), np.array([0, 0, 1], bool))
    sy.write_levels(tmp_path / "l.csv", rows)
    steps, levels, loss, acc = sy.read_levels(tmp_path / "l.csv")
    assert steps.tolist() == [5, 10] and levels.tolist() == [1, 2, 3]
    np.testing.assert_allclose(loss, [[2.0, 2.0], [2.0, 2.0], [2.0, 0.5]])
    np.testing.assert_allclose(acc, [[0.0, 0.5], [0.0, 1.0], [1.0, 1.0]])


def test_levels_table_unseen_columns(tmp_path):
    """Known answer: the unseen columns count and score only the examples not flagged as seen; NaN for a level
    without any, and a table written without flags reads as None."""
    level, loss = np.array([1, 1, 2, 2, 2]), np.ones(5)
    correct, seen = np.array([1, 0, 1, 0, 1], bool), np.array([1, 1, 0, 0, 1], bool)
    sy.write_levels(tmp_path / "l.csv", sy.level_rows(7, level, loss, correct, seen))
    n, n_u, acc_u = sy.read_levels_unseen(tmp_path / "l.csv")
    assert n.tolist() == [2, 3] and n_u.tolist() == [0, 2]
    assert np.isnan(acc_u[0, 0]) and acc_u[1, 0] == 0.5
    sy.write_levels(tmp_path / "m.csv", sy.level_rows(7, level, loss, correct))
    assert sy.read_levels_unseen(tmp_path / "m.csv") is None
    s = sy._unseen_summary(np.array([1, 2]), (n, n_u, acc_u), {1: 0.4, 2: 0.4})
    assert s["share_unseen"] == {1: 0.0, 2: 2 / 3} and s["final_accuracy_unseen"] == {1: None, 2: 0.5}
    assert s["levels_above_baseline_unseen"] == [2] and s["levels_without_unseen"] == [1]


def test_prepared_sets_flag_the_expressions_seen_in_training(syn_dir):
    """Each example's seen flag is exactly whether its expression hash is among the training rows' hashes."""
    from tokenscale.io import read_token_set

    train = sy.generate(sy.spec_of(ENTRY), ENTRY["train_examples"], seed=0, split="train")
    for name in ("valid_tokens.h5", "levels_tokens.h5"):
        ts = read_token_set(syn_dir / name)
        seen = sy.parse_seen(ts["attrs"].get(sy.SEEN_ATTR), ts["input_ids"].shape[0])
        np.testing.assert_array_equal(seen, np.isin(sy.expression_hash(ts["input_ids"]), train["expr_hash"]))
    assert seen.any() and not seen.all()  # p = 5, l_max = 3: L1 recurs, L3 mostly does not
    with pytest.raises(TokenscaleError, match="train_seen has 2 flags for 3 examples"):
        sy.parse_seen("01", 3)


def test_expression_count_and_expected_unseen():
    """N_L = Catalan(L)·3^L·p^(L+1) (3p² at L1: 1587 for p = 23, as enumerated in test_synthetic); the expected
    unseen share is (1 − 1/N)^n."""
    assert sy.expression_count(23, 1) == 1587 and sy.expression_count(3, 2) == 2 * 9 * 27
    assert sy.expected_unseen(3, 1, 0) == 1.0
    assert sy.expected_unseen(3, 1, 27) == pytest.approx((26 / 27) ** 27)
    assert sy.expected_unseen(3, 1, 48000) < 1e-300


def test_uniform_arm_report_reads_its_power_partner(tmp_path):
    """The workflow gives the uniform arm's synthetic_report the L^-2 arm's report.json (--partner: the pair's
    verdict); the power arm gets none (no cycle)."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    p = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", "--forceall", "--cores", "1", "--configfile",
                        "config/smoke.yaml", "--config", f"results={tmp_path}"], cwd=repo, capture_output=True,
                       text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    cmds = {m.group(1): line for line in (p.stdout + p.stderr).splitlines()
            if (m := re.search(r"tokenscale synthetic-report .*--run (\S+) ", line))}
    assert set(cmds) == {"syn_smoke_uniform", "syn_smoke_power"}
    assert f"--partner {tmp_path}/series/syn_smoke_power/synthetic/report.json " in cmds["syn_smoke_uniform"]
    assert "--partner" not in cmds["syn_smoke_power"]
