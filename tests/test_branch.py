"""Decay branches from full-state snapshots, and single-pass runs (CPU, plain engine, moe-nano).

Known answer: a WSD run branched from a constant-schedule trunk's snapshot at its decay start computes only its
decay, and its checkpoints are bit-identical to those of the same run trained from scratch."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tokenscale import TokenscaleError
from tokenscale.config import (RunConfig, config_hash, lr_lambda, lr_multipliers, run_configs, schedule_mismatch,
                               validate_config)
from tokenscale.training.trainer import Trainer

from conftest import read_losses, tiny_config

SEQ = 8 * 16  # tokens per step of the tiny runs (batch 8 x seq_len 16)
BRANCH = "d-tok3.84k"  # 30 steps, decay from step 24


def branch_config(**base) -> dict:
    """A 40-step constant trunk (warmup 4 steps) and a D sweep of WSD runs (20 and 30 steps) branching from it."""
    cfg = tiny_config(name="trunk", schedule={"kind": "constant", "warmup_frac": 0.1})
    sweep_base = {"model": {"preset": "moe-nano"}, "batch_size": 8, "lr": 0.005, "state_every": 5,
                  "checkpoints": {"count": 10, "first_step": 20},
                  "schedule": {"kind": "wsd", "warmup_steps": 4, "decay_frac": 0.2}, **base}
    cfg["sweeps"] = [{"name": "d", "axis": "D", "branch_from": "trunk", "base": sweep_base,
                      "grid": {"tokens": [SEQ * 20, SEQ * 30]}}]
    return cfg


def scratch_run(cfg: dict) -> RunConfig:
    """The branch run as it would be trained from scratch (no branch)."""
    v = validate_config(cfg)
    run = {**next(r for r in v["runs"] if r["name"] == BRANCH), "branch": None, "name": "scratch", "sweep": None}
    run["checkpoints"] = {**run["checkpoints"], "first_step": 25}  # the branch's plan: log-spaced after its step 24
    return run_configs(validate_config({**tiny_config(), "runs": [run]}))["scratch"]


def train(run: RunConfig, data_dir, run_dir) -> dict:
    return Trainer(run, data_dir, run_dir, threads=1, progress=False).train()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
    """trunk/, the branch run and the same run from scratch, side by side."""
    root = tmp_path_factory.mktemp("branch")
    rc = run_configs(validate_config(branch_config()))
    out = {"root": root, "cfg": rc}
    for name in ("trunk", BRANCH):
        out[name] = train(rc[name], data_dir, root / name)
    out["scratch"] = train(scratch_run(branch_config()), data_dir, root / "scratch")
    return out


def _weights(ck):
    return load_file(str(ck / "model.safetensors"))


def test_branch_checkpoints_are_bit_identical_to_training_from_scratch(runs):
    root = runs["root"]
    ck = sorted((root / BRANCH / "checkpoints").iterdir())
    assert [int(d.name[4:]) for d in ck] == runs[BRANCH]["checkpoints"] == [25, 26, 27, 28, 29, 30]
    for d in ck:
        a, b = _weights(d), _weights(root / "scratch" / "checkpoints" / d.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), d.name
    # its log holds only the steps it computed, with the scratch run's losses and lrs
    rows = [json.loads(x) for x in (root / BRANCH / "log.jsonl").read_text().splitlines()]
    scratch = [json.loads(x) for x in (root / "scratch" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(25, 31))
    assert [(r["loss"], r["lr"]) for r in rows] == [(r["loss"], r["lr"]) for r in scratch[24:]]


def test_snapshots_written_at_configured_steps(runs):
    root = runs["root"]
    assert runs["cfg"]["trunk"].snapshots == [16, 24]
    snaps = sorted(d.name for d in (root / "trunk" / "snapshots").iterdir())
    assert snaps == ["step00000016", "step00000024"]
    for s in (16, 24):
        d = root / "trunk" / "snapshots" / f"step{s:08d}"
        meta = json.loads((d / "trainer.json").read_text())
        assert (d / "trainer.pt").is_file() and meta["step"] == s and meta["position"] == s * 8
        assert meta["run_hash"] == runs["cfg"]["trunk"].hash  # = the hash without snapshots
    assert not (root / BRANCH / "snapshots").exists()


def test_snapshots_kept_on_resume_and_resume_from_a_snapshot_is_exact(runs, data_dir, tmp_path):
    """A trunk resumed from step 16 (its state replaced by the snapshot) keeps both snapshots untouched."""
    run_dir = tmp_path / "trunk"
    shutil.copytree(runs["root"] / "trunk", run_dir)
    (run_dir / "train.json").unlink()
    shutil.rmtree(run_dir / "state")
    shutil.copytree(run_dir / "snapshots" / "step00000016", run_dir / "state")
    before = {p: p.stat().st_mtime_ns for p in (run_dir / "snapshots").rglob("*")}
    s = train(runs["cfg"]["trunk"], data_dir, run_dir)
    assert s["resumed_from"] == 16
    assert {p: p.stat().st_mtime_ns for p in (run_dir / "snapshots").rglob("*")} == before
    assert read_losses(run_dir) == read_losses(runs["root"] / "trunk")


def test_branch_run_resumes_from_its_own_state(runs, data_dir, monkeypatch):
    """Stopped (as on SIGTERM) after step 27 and rerun: it continues from its own state, not the trunk's."""
    root = runs["root"]
    name = "d-tok3.84k-again"
    stop_at = {"step": 27}
    orig = Trainer._log_step

    def log_and_stop(self, log_path, done, *a):
        orig(self, log_path, done, *a)
        self.stop_requested = done == stop_at["step"]

    monkeypatch.setattr(Trainer, "_log_step", log_and_stop)
    with pytest.raises(SystemExit):
        train(runs["cfg"][BRANCH], data_dir, root / name)
    stop_at["step"] = None
    s = train(runs["cfg"][BRANCH], data_dir, root / name)
    assert s["resumed_from"] == 27 and read_losses(root / name) == read_losses(root / BRANCH)
    for d in (root / BRANCH / "checkpoints").iterdir():
        a, b = _weights(d), _weights(root / name / "checkpoints" / d.name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_deleted_trunk_snapshot_is_rebuilt_by_following_the_error(runs, data_dir, tmp_path):
    """The branch's one line says to train the trunk first; the trunk, finished, used to resume at its end and leave
    the snapshot missing. Now it finds the hole, trains again from its snapshot at step 16 and writes it back."""
    root, snap = runs["root"], tmp_path / "trunk" / "snapshots" / "step00000024"
    shutil.copytree(root / "trunk", tmp_path / "trunk")
    shutil.rmtree(snap)
    with pytest.raises(TokenscaleError, match=r"^run d-tok3\.84k: branch snapshot not found: .*/trunk/snapshots/"
                                              r"step00000024 \(train run trunk with snapshots: \[24\] first; in the workflow: delete "
                                              r".*/trunk/train\.json and rerun\)$"):
        train(runs["cfg"][BRANCH], data_dir, tmp_path / BRANCH)
    s = train(runs["cfg"]["trunk"], data_dir, tmp_path / "trunk")  # the advice
    assert s["resumed_from"] == 16
    for f in ("trainer.json", "trainer.pt"):
        assert (snap / f).read_bytes() == (root / "trunk" / "snapshots" / snap.name / f).read_bytes(), f
    assert read_losses(tmp_path / "trunk") == read_losses(root / "trunk")
    train(runs["cfg"][BRANCH], data_dir, tmp_path / BRANCH)
    for d in (root / BRANCH / "checkpoints").iterdir():
        a, b = _weights(d), _weights(tmp_path / BRANCH / "checkpoints" / d.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), d.name


def test_steps_trained_and_epochs(runs, data_dir):
    n = json.loads((data_dir / "train_tokens.json").read_text())["n_samples"]
    trunk, br = runs["trunk"], runs[BRANCH]
    assert (trunk["steps_trained"], trunk["branch"]) == (40, None)
    assert (br["steps_trained"], br["branch"]) == (6, {"from": "trunk", "step": 24})
    assert trunk["epochs"] == pytest.approx(40 * 8 / n) and br["epochs"] == pytest.approx(30 * 8 / n)
    saved = json.loads((runs["root"] / BRANCH / "train.json").read_text())
    assert (saved["steps_trained"], saved["epochs"]) == (6, br["epochs"])


# ------------------------------------------------------------------------------------------- config
def test_sweep_branch_from_wires_branches_and_snapshots():
    rc = run_configs(validate_config(branch_config()))
    assert rc["d-tok2.56k"].branch == {"from": "trunk", "step": 16} and rc[BRANCH].branch == {"from": "trunk", "step": 24}
    assert rc["d-tok2.56k"].checkpoint_steps() == [20] and rc[BRANCH].checkpoint_steps() == [25, 26, 27, 28, 29, 30]
    plain = run_configs(validate_config(tiny_config(name="trunk", schedule={"kind": "constant", "warmup_frac": 0.1})))
    assert rc["trunk"].hash == plain["trunk"].hash  # snapshots do not change the run's hash
    spec = {k: v for k, v in plain["trunk"].spec.items() if k not in ("snapshots", "branch", "single_pass", "threads")}
    spec["schedule"] = {k: v for k, v in spec["schedule"].items() if k != "warmup_steps"}
    assert plain["trunk"].hash == config_hash(spec)  # runs written before these keys keep their hash


def test_warmup_steps_override_and_vectorised_multipliers():
    f = lr_lambda({"kind": "wsd", "warmup_frac": 0.5, "warmup_steps": 3, "decay_frac": 0.25, "final_lr_frac": 0.1}, 12)
    assert [f(s) for s in range(12)] == pytest.approx([1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1, 1, 0.7, 0.4, 0.1])
    rng = np.random.default_rng(0)
    for _ in range(200):
        sched = {"kind": str(rng.choice(["constant", "wsd"])), "warmup_frac": float(rng.random()),
                 "warmup_steps": None if rng.random() < 0.5 else int(rng.integers(0, 50)),
                 "decay_frac": float(rng.random()), "final_lr_frac": float(rng.random())}
        total = int(rng.integers(1, 300))
        g = lr_lambda(sched, total)
        assert lr_multipliers(sched, total, total).tolist() == [g(s) for s in range(total)]


def test_schedule_mismatch_names_first_step():
    const = {"kind": "constant", "warmup_frac": 0.1}
    wsd = {"kind": "wsd", "warmup_frac": 0.1, "warmup_steps": None, "decay_frac": 0.2}
    assert schedule_mismatch(const, 1950, {**wsd, "warmup_steps": 195}, 1000, 800) is None
    step, a, b = schedule_mismatch(const, 1950, wsd, 1000, 800)
    assert (step, a, b) == (0, 1 / 195, 1 / 100)


@pytest.mark.parametrize("change, message", [
    (lambda c: c["sweeps"][0].update(branch_from="nope"),
     r"^config: sweep d: branch_from 'nope' is not a run of this config$"),
    (lambda c: c["sweeps"][0]["base"]["schedule"].update(warmup_steps=None),
     r"^config: run d-tok2\.56k: lr schedule differs from trunk trunk's before branch step 16 \(step 0: "
     r"lr x0\.25 in trunk, x0\.5 here\)$"),
    (lambda c: c["sweeps"][0]["base"]["schedule"].update(kind="constant"),
     r"^config: sweep d: branch_from: run d-tok2\.56k has schedule.kind 'constant', needs 'wsd'$"),
    (lambda c: c["sweeps"][0]["grid"].update(tokens=[SEQ * 60]),
     r"^config: sweep d: branch_from: run d-tok7\.68k decays from step 48, not within trunk trunk's steps 1\.\.39$"),
    (lambda c: c["sweeps"][0]["base"].update(lr=0.004),
     r"^config: run d-tok2\.56k: trunk trunk differs in lr \(0\.005 vs 0\.004\); a branch must continue"),
])
def test_bad_sweep_branches_are_one_line(change, message):
    cfg = branch_config()
    change(cfg)
    with pytest.raises(TokenscaleError, match=message):
        validate_config(cfg)


def test_bad_hand_written_branches_are_one_line():
    trunk = tiny_config(name="trunk", snapshots=[10])["runs"][0]
    branch = {**trunk, "name": "b", "snapshots": [], "branch": {"from": "trunk", "step": 12},
              "schedule": {"kind": "wsd", "decay_frac": 0.2}}
    with pytest.raises(TokenscaleError, match=r"^config: run b: branch step 12 is not in run trunk's snapshots \(\[10\]\)"):
        validate_config({**tiny_config(), "runs": [trunk, branch]})
    with pytest.raises(TokenscaleError, match=r"^config: run b: branch\.from 'x' is not another run of this config$"):
        validate_config({**tiny_config(), "runs": [trunk, {**branch, "branch": {"from": "x", "step": 10}}]})
    with pytest.raises(TokenscaleError, match=r"^config: run b: branch step 40 is not below its steps \(40\)"):
        validate_config({**tiny_config(), "runs": [trunk, {**branch, "branch": {"from": "trunk", "step": 40}}]})
    with pytest.raises(TokenscaleError, match=r"^config: run b: snapshot step 5 is before its branch step 10$"):
        validate_config({**tiny_config(), "runs": [trunk, {**branch, "branch": {"from": "trunk", "step": 10},
                                                           "snapshots": [5]}]})
    with pytest.raises(TokenscaleError, match=r"^config: run trunk: snapshot step 41 is beyond its 40 steps$"):
        validate_config({**tiny_config(), "runs": [{**trunk, "snapshots": [41]}]})


# ------------------------------------------------------------------------------------------- trainer checks
def test_missing_snapshot_is_one_line(tmp_path, data_dir):
    rc = run_configs(validate_config(branch_config()))
    with pytest.raises(TokenscaleError, match=r"^run d-tok3\.84k: branch snapshot not found: .*/trunk/snapshots/"
                                              r"step00000024 \(train run trunk with snapshots: \[24\] first; in the workflow: delete "
                                              r".*/trunk/train\.json and rerun\)$"):
        train(rc[BRANCH], data_dir, tmp_path / BRANCH)


def test_incompatible_trunk_is_one_line(runs, data_dir):
    """The trunk on disk was trained with lr 0.005; a config now saying 0.004 for both cannot branch from it."""
    cfg = branch_config(lr=0.004)
    cfg["runs"][0]["lr"] = 0.004
    rc = run_configs(validate_config(cfg))
    with pytest.raises(TokenscaleError, match=r"^run d-tok3\.84k: trunk trunk is incompatible \(.*step00000024\): "
                                              r"lr is 0\.005 there, 0\.004 here$"):
        train(rc[BRANCH], data_dir, runs["root"] / "badlr")
    assert not (runs["root"] / "badlr" / "log.jsonl").exists()


def test_schedule_differing_from_the_snapshot_is_one_line(runs, data_dir):
    """A trunk config edited after training (warmup 8 steps) no longer matches the snapshot's schedule."""
    cfg = branch_config()
    cfg["sweeps"][0]["base"]["schedule"]["warmup_steps"] = 8
    cfg["runs"][0]["schedule"] = {"kind": "constant", "warmup_steps": 8}
    rc = run_configs(validate_config(cfg))
    with pytest.raises(TokenscaleError, match=r"^run d-tok3\.84k: lr schedule differs from trunk trunk's \(.*\) at step 0 "
                                              r"below the branch step 24: lr x0\.25 there, x0\.125 here$"):
        train(rc[BRANCH], data_dir, runs["root"] / "badsched")


def test_single_pass_violation_is_one_line(data_dir):
    n = json.loads((data_dir / "train_tokens.json").read_text())["n_samples"]
    steps = n // 8 + 1
    run = run_configs(validate_config(tiny_config(name="big", tokens=SEQ * steps)))["big"]
    with pytest.raises(TokenscaleError, match=rf"^run big: tokens={SEQ * steps} need {steps * 8} training sequences but "
                                              rf"the training split has {n} \(single_pass\); lower tokens, add corpora "
                                              r"or set single_pass: false$"):
        Trainer(run, data_dir, data_dir.parent / "big")
    repeat = run_configs(validate_config(tiny_config(name="big", tokens=SEQ * steps, single_pass=False)))["big"]
    assert Trainer(repeat, data_dir, data_dir.parent / "big").total == steps  # allowed, nothing trained
