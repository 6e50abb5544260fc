"""Runs longer than a job (tokenscale.training.segments): the segment signal (SIGURG) saves state and ends the
segment with exit 75; rerunning continues, and the run's final checkpoint is bit-identical to an uninterrupted
run's; train.json lists every segment; a signal during a checkpoint write ends the segment only once the checkpoint
is whole; inside a SLURM job the job requeues itself. The same through SLURM with a 1-minute limit:
tests/test_slurm_segments.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import read_losses, run_cli, tiny_config, write_config
from tokenscale.config import run_configs, validate_config
from tokenscale.training import segments

TOKENS_PER_STEP = 8 * 16  # tiny_config: batch 8 x seq_len 16
TOTAL = 40


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("seg-ref")
    cfg = write_config(root / "c.yaml", tiny_config())
    out = root / "ref"
    run_cli("train", "--config", cfg, "--run", "tiny", "--data", data_dir, "--out", out, "--threads", 1)
    return out


def _logged(out: Path) -> int:
    log = out / "log.jsonl"
    return len(log.read_text().splitlines()) if log.is_file() else 0


def _segment(cfg: Path, data_dir: Path, out: Path, signal_after: int | None) -> subprocess.CompletedProcess:
    """One segment: `tokenscale train`, sent SIGURG once ``signal_after`` steps are in log.jsonl (None: no signal)."""
    cmd = [sys.executable, "-m", "tokenscale.cli", "train", "--config", str(cfg), "--run", "tiny", "--data",
           str(data_dir), "--out", str(out), "--threads", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    p = subprocess.Popen(cmd, env={**env, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    if signal_after is not None:
        deadline = time.time() + 300
        while _logged(out) < signal_after and p.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        p.send_signal(segments.SEGMENT_SIGNAL)
    _, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, p.returncode, "", err)


def test_three_segments_equal_an_uninterrupted_run(tmp_path, data_dir, uninterrupted):
    cfg = write_config(tmp_path / "c.yaml", tiny_config())
    out = tmp_path / "seg"
    ends = []
    for after in (9, 22):  # the signal lands while a later step runs: the segment ends after that step
        p = _segment(cfg, data_dir, out, after)
        assert p.returncode == segments.SEGMENT_EXIT, p.stderr[-3000:]
        assert "segment signal: state saved at step" in p.stderr and "rerun to continue" in p.stderr, p.stderr
        assert not (out / "train.json").exists()
        ends.append(json.loads((out / "state" / "trainer.json").read_text())["step"])
    assert 9 <= ends[0] < ends[1] < TOTAL, ends
    p = _segment(cfg, data_dir, out, None)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"resuming at step {ends[1]}" in p.stderr

    last = sorted((uninterrupted / "checkpoints").iterdir())[-1].name
    assert (out / "checkpoints" / last / "model.safetensors").read_bytes() == \
        (uninterrupted / "checkpoints" / last / "model.safetensors").read_bytes()
    assert read_losses(out) == read_losses(uninterrupted)
    assert (out / "val_loss.csv").read_text() == (uninterrupted / "val_loss.csv").read_text()

    s = json.loads((out / "train.json").read_text())
    segs = s["segments"]
    assert [g["reason"] for g in segs] == ["signal", "signal", "complete"]
    assert [(g["start_step"], g["end_step"]) for g in segs] == [(0, ends[0]), (ends[0], ends[1]), (ends[1], TOTAL)]
    assert all(g["start_tokens"] == g["start_step"] * TOKENS_PER_STEP and
               g["end_tokens"] == g["end_step"] * TOKENS_PER_STEP for g in segs)
    assert all(g["start_time"] <= g["end_time"] for g in segs) and segs[0]["end_time"] <= segs[1]["start_time"]
    assert s["resumed_from"] == ends[1] and s["steps"] == TOTAL
    # the uninterrupted run: one segment; every other train.json key as before
    ref = json.loads((uninterrupted / "train.json").read_text())
    assert [(g["start_step"], g["end_step"], g["reason"]) for g in ref["segments"]] == [(0, TOTAL, "complete")]
    assert set(ref) == set(s)


def test_sigterm_then_segment_records_both(tmp_path, data_dir):
    """SIGTERM (143) is a segment end too; its record says so, and the next segment continues the history."""
    cfg = write_config(tmp_path / "c.yaml", tiny_config())
    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "tokenscale.cli", "train", "--config", str(cfg), "--run", "tiny", "--data",
           str(data_dir), "--out", str(out), "--threads", "1"]
    p = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    while _logged(out) < 12 and p.poll() is None:
        time.sleep(0.02)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=300) == 143
    run_cli("train", "--config", cfg, "--run", "tiny", "--data", data_dir, "--out", out, "--threads", 1)
    segs = json.loads((out / "train.json").read_text())["segments"]
    assert [g["reason"] for g in segs] == ["sigterm", "complete"] and segs[0]["end_step"] == segs[1]["start_step"]


def test_signal_during_checkpoint_write_keeps_it_whole(tmp_path, data_dir, monkeypatch):
    """The signal arrives inside the checkpoint writer (between the weights and tokenscale.json): the write
    completes, the checkpoint is whole, the state is saved at that step and only then the segment ends."""
    from safetensors.torch import load_file

    import tokenscale.training.trainer as tr

    run = run_configs(validate_config(tiny_config()))["tiny"]
    ck_steps = sorted(run.checkpoint_steps())
    at = ck_steps[2]
    orig = tr.write_json
    seen = []

    def write_and_signal(path, obj, *a, **k):
        if Path(path).name == "tokenscale.json" and obj.get("step") == at:
            os.kill(os.getpid(), segments.SEGMENT_SIGNAL)  # handled at once (main thread): sets the flag only
            time.sleep(0.05)
            seen.append(Path(path).parent.name)  # the temp folder: the write is still in progress
        return orig(path, obj, *a, **k)

    monkeypatch.setattr(tr, "write_json", write_and_signal)
    out = tmp_path / "ck"
    trainer = tr.Trainer(run, data_dir, out, threads=1, progress=False)
    with pytest.raises(SystemExit) as e:
        trainer.train()
    assert e.value.code == segments.SEGMENT_EXIT
    assert seen == [f"step{at:08d}.tmp"], seen
    ck = out / "checkpoints" / f"step{at:08d}"
    assert (ck / "COMPLETE").read_text().strip() == str(at)
    assert json.loads((ck / "tokenscale.json").read_text())["step"] == at
    assert load_file(str(ck / "model.safetensors"))  # loads
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.old"))
    assert sorted(int(d.name[4:]) for d in (out / "checkpoints").iterdir()) == ck_steps[:3]
    meta = json.loads((out / "state" / "trainer.json").read_text())
    assert meta["step"] == at and meta["segments"][-1]["end_step"] == at and meta["segments"][-1]["reason"] == "signal"
    assert not (out / "LOCK").exists()  # released before the job is requeued


def test_signal_in_the_last_step_completes_the_run(tmp_path, data_dir, monkeypatch):
    import tokenscale.training.trainer as tr

    run = run_configs(validate_config(tiny_config()))["tiny"]
    orig = tr.Trainer._log_step

    def log_and_signal(self, log_path, done, *a):
        orig(self, log_path, done, *a)
        self.segment_requested = done == TOTAL

    monkeypatch.setattr(tr.Trainer, "_log_step", log_and_signal)
    s = tr.Trainer(run, data_dir, tmp_path / "last", threads=1, progress=False).train()
    assert [g["reason"] for g in s["segments"]] == ["complete"]


# ------------------------------------------------------------------------------------ the helpers
def test_history_keeps_only_segments_below_the_resumed_step():
    recs = [{"end_step": 5}, {"end_step": 9}, {"end_step": 14}, "junk", {"end_step": None}]
    assert segments.history_before(recs, 9) == [{"end_step": 5}, {"end_step": 9}]
    assert segments.history_before(None, 9) == []


def test_close_segment_record_and_bad_reason():
    seg = segments.open_segment(3, 10)
    rec = segments.close_segment(seg, 7, 10, "signal")
    assert {k: rec[k] for k in ("start_step", "end_step", "start_tokens", "end_tokens", "reason")} == \
        {"start_step": 3, "end_step": 7, "start_tokens": 30, "end_tokens": 70, "reason": "signal"}
    assert not any(k.startswith("_") for k in rec) and rec["end_time"].endswith("Z")
    with pytest.raises(ValueError, match="segment reason 'oops' is not one of"):
        segments.close_segment(seg, 7, 10, "oops")


def _fake_scontrol(tmp_path: Path, rc: int) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    f = bin_dir / "scontrol"
    f.write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path}/args\n[ {rc} -eq 0 ] || echo 'scontrol: error: nope' >&2\n"
                 f"exit {rc}\n")
    f.chmod(0o755)
    return bin_dir


def test_requeue_inside_a_slurm_job_calls_scontrol(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", f"{_fake_scontrol(tmp_path, 0)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert segments.requeue_job("r") is True
    assert (tmp_path / "args").read_text().split() == ["requeue", "4242"]
    assert "SLURM job 4242 requeued" in capsys.readouterr().err


def test_requeue_refused_or_outside_slurm_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", f"{_fake_scontrol(tmp_path, 1)}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert segments.requeue_job("r") is False
    assert "scontrol requeue 4242 failed (scontrol: error: nope); exit 75" in capsys.readouterr().err
    monkeypatch.delenv("SLURM_JOB_ID")
    assert segments.requeue_job("r") is False
    assert "rerun to continue" in capsys.readouterr().err
