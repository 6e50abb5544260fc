"""Recovering a run folder (issue 34): a corrupt trainer state is one line naming the file and the remedy, and
following the remedy ends in the run an uninterrupted training produces; a checkpoint or snapshot lost after the
run passed it is rebuilt by the next resume (bit-identical on CPU); a resume that trains nothing keeps train.json's
throughput record."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import read_losses, run_cli, tiny_config, write_config

SNAPSHOTS = [8, 30]  # the tiny run's checkpoints are at steps 1, 2, 4, 9, 19 and 40


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir) -> dict:
    """A finished 40-step run with snapshots at steps 8 and 30: every test damages a copy of it."""
    root = tmp_path_factory.mktemp("recover")
    cfg = write_config(root / "c.yaml", tiny_config(snapshots=SNAPSHOTS))
    run_cli("train", "--config", cfg, "--run", "tiny", "--data", data_dir, "--out", root / "ref", "--threads", 1)
    return {"cfg": cfg, "ref": root / "ref"}


def _copy(finished, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished["ref"], run)
    return run


def _train(finished, data_dir, run: Path, check=True):
    return run_cli("train", "--config", finished["cfg"], "--run", "tiny", "--data", data_dir, "--out", run,
                   "--threads", 1, "--quiet", check=check)


def _same_outputs(run: Path, ref: Path):
    """Every checkpoint and snapshot of ``run`` byte for byte those of ``ref``, and the same loss curve."""
    assert read_losses(run) == read_losses(ref)
    for kind, files in (("checkpoints", ("model.safetensors", "tokenscale.json", "COMPLETE")),
                        ("snapshots", ("trainer.pt", "trainer.json"))):
        names = sorted(p.name for p in (ref / kind).iterdir())
        assert sorted(p.name for p in (run / kind).iterdir()) == names
        for name in names:
            for f in files:
                assert (run / kind / name / f).read_bytes() == (ref / kind / name / f).read_bytes(), (kind, name, f)


def _error_line(p) -> str:
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, p.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("name", ["trainer.pt", "trainer.json"])
def test_truncated_state_is_one_line_and_its_remedy_works(finished, data_dir, tmp_path, name):
    run = _copy(finished, tmp_path)
    f = run / "state" / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    line = _error_line(_train(finished, data_dir, run, check=False))
    assert line.startswith(f"tokenscale: error: {f}: unreadable trainer state ("), line
    assert line.endswith(f"; delete {run / 'state'} and rerun (run tiny then resumes from its snapshot at step 30)"), line
    assert not (run / "LOCK").exists()
    shutil.rmtree(run / "state")  # the remedy, as the line says
    _train(finished, data_dir, run)
    assert json.loads((run / "train.json").read_text())["resumed_from"] == 30
    _same_outputs(run, finished["ref"])


def test_truncated_state_without_snapshots_names_step_0(finished, data_dir, tmp_path):
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / "snapshots")
    (run / "state" / "trainer.json").write_text('{"step": 4')
    line = _error_line(_train(finished, data_dir, run, check=False))
    assert line.endswith(f"; delete {run / 'state'} and rerun (run tiny then resumes from step 0, rewriting its "
                         "checkpoints)"), line


@pytest.mark.parametrize("lost, resumed_from", [("checkpoints/step00000009", 8), ("checkpoints/step00000040", 30),
                                                ("snapshots/step00000030", 8), ("checkpoints/step00000004", 0)])
def test_lost_checkpoint_or_snapshot_is_rebuilt_on_resume(finished, data_dir, tmp_path, lost, resumed_from):
    """Snakemake says "Nothing to be done" while train.json exists: the remedy is to delete it and rerun (what
    `--forcerun train` does too). The trainer, at its final step, finds the hole and trains again from the latest
    full state below it."""
    from tokenscale import TokenscaleError
    from tokenscale.evaluation.evaluate import load_checkpoint_model

    run = _copy(finished, tmp_path)
    shutil.rmtree(run / lost)
    if lost.startswith("checkpoints"):  # what evaluating it says
        line = (f"checkpoint directory not found: {run / lost} (lost after training: delete {run / 'train.json'} "
                "and rerun; the trainer rebuilds it)")
        with pytest.raises(TokenscaleError, match=f"^{re.escape(line)}$"):
            load_checkpoint_model(run / lost)
    (run / "train.json").unlink()  # the advice
    p = _train(finished, data_dir, run)
    assert f"missing or incomplete: {lost}; rebuilding by training again from " in p.stderr
    s = json.loads((run / "train.json").read_text())
    assert s["resumed_from"] == resumed_from and s["tokens_per_s"] > 0
    _same_outputs(run, finished["ref"])


def test_incomplete_checkpoint_is_rebuilt(finished, data_dir, tmp_path):
    run = _copy(finished, tmp_path)
    (run / "checkpoints" / "step00000040" / "model.safetensors").unlink()  # COMPLETE is there, the weights are not
    _train(finished, data_dir, run)
    assert json.loads((run / "train.json").read_text())["resumed_from"] == 30
    _same_outputs(run, finished["ref"])


@pytest.mark.parametrize("snakemake_removed_it", [False, True])
def test_resume_that_trains_nothing_keeps_the_throughput_record(finished, data_dir, tmp_path, snakemake_removed_it):
    """`snakemake --forcerun train` on a finished run used to write tokens_per_s 0, mfu 0, wall_s 0.0005."""
    run = _copy(finished, tmp_path)
    record = (run / "train.json").read_text()
    log = (run / "log.jsonl").read_bytes()
    if snakemake_removed_it:
        (run / "train.json").unlink()  # Snakemake removes a job's outputs before it runs it
    p = _train(finished, data_dir, run)
    assert "nothing to train: its state is at the final step 40" in p.stderr
    assert (run / "train.json").read_text() == record and json.loads(record)["tokens_per_s"] > 0
    assert (run / "log.jsonl").read_bytes() == log
    _same_outputs(run, finished["ref"])


def test_torn_state_write_leaves_the_previous_state_in_use(finished, data_dir, tmp_path):
    """A kill while state at step 35 was being written leaves state.tmp/ (here even with its trainer.json and half
    its trainer.pt) next to the complete state of step 30: the rerun resumes from step 30 and ends as the reference."""
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / "state")
    shutil.copytree(run / "snapshots" / "step00000030", run / "state")
    torn = run / "state.tmp"
    shutil.copytree(finished["ref"] / "state", torn)
    (torn / "trainer.pt").write_bytes((torn / "trainer.pt").read_bytes()[:1000])
    (torn / "trainer.json").write_text(json.dumps({**json.loads((torn / "trainer.json").read_text()), "step": 35}))
    (run / "train.json").unlink()
    _train(finished, data_dir, run)
    assert json.loads((run / "train.json").read_text())["resumed_from"] == 30 and not torn.exists()
    _same_outputs(run, finished["ref"])
