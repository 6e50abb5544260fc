"""A run longer than a job, through Snakemake's SLURM profile on the local cluster (scripts/slurm-local.sh).

Run:  pytest -m slurm tests/test_slurm_segments.py -rA -s

The train job goes to a partition with a 1-minute time limit (``limit1m``, tests/conftest_slurm.py) and asks
for the segment signal (``--signal=URG@1``). The run needs several such jobs: each segment ends on the
signal, saves state and requeues its job (tokenscale.training.segments), which Snakemake's SLURM plugin sees as
still running, so the one submission continues unattended until the run is done. Its final checkpoint is
bit-identical to the same run trained without interruption, and train.json lists the segments.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest_slurm import (  # noqa: E402  (fixtures are used by name)
    SMOKE_CONFIG,
    read_losses,
    run_workflow_slurm,
    scontrol_job,
    short_partition,  # noqa: F401
    slurm_cluster,  # noqa: F401
    slurm_env,
)

pytestmark = pytest.mark.slurm

RUN = "seg_long"
STEPS = 8000  # about 100 s of training on one core, and a segment trains at most ~50 s: >= 3 segments


def _config(dest: Path) -> Path:
    """config/smoke.yaml (its data) with one long run (smoke's T run, many more steps, few checkpoints)."""
    smoke = yaml.safe_load(SMOKE_CONFIG.read_text())
    base = next(r for r in smoke["runs"] if r["name"] == "t_smoke")
    run = {**base, "name": RUN, "tokens": base["batch_size"] * smoke["data"]["seq_len"] * STEPS,
           "checkpoints": {"count": 3}, "state_every": 1000, "single_pass": False}
    dest.write_text(yaml.safe_dump({**smoke, "runs": smoke["runs"] + [run], "sweeps": []}, sort_keys=False))
    return dest


def _profile(dest: Path) -> Path:
    """The settings of profiles/slurm that segments rely on (slurm executor, squeue status, --requeue, 3
    retries for real failures), on the local node's one partition: profiles/slurm's site facts (GPU and CPU
    partitions) do not exist here."""
    dest.mkdir(parents=True, exist_ok=True)
    prof = {"executor": "slurm", "jobs": 4, "latency-wait": 10, "retries": 3, "rerun-incomplete": True,
            "printshellcmds": True, "show-failed-logs": True,
            "default-resources": {"slurm_partition": "'debug'", "slurm_account": "''", "runtime": 10, "mem_mb": 2000},
            "set-resources": {"train": {}},
            "slurm-status-command": "squeue", "slurm-requeue": True, "slurm-keep-successful-logs": True}
    (dest / "config.yaml").write_text(yaml.safe_dump(prof, sort_keys=False))
    return dest


def test_run_longer_than_a_job_completes_unattended(slurm_cluster, short_partition, tmp_path):
    wd = tmp_path / "wd"
    cfg = _config(tmp_path / "segments.yaml")
    target = f"results/runs/{RUN}/train.json"
    # the data jobs run in the default partition, the train job in the 1-minute one
    # each requeue waits ~2 min (Slurm delays a requeued job's start by the credential lifetime, 120 s)
    run = run_workflow_slurm(wd, [cfg], ["--verbose", target], profile=_profile(tmp_path / "profile"), timeout=1500,
                             train_resources={"slurm_partition": f"'{short_partition}'", "runtime": 1,
                                              "slurm_extra": "'--signal=URG@1'"})
    train_log = wd / f"results/logs/train/{RUN}.log"
    assert run.returncode == 0, str(run) + "\n--- train log:\n" + (train_log.read_text()[-3000:] if train_log.exists() else "")
    # the same run without interruption, afterwards (not competing with the segments for the CPUs)
    ref = tmp_path / "ref"
    r = subprocess.run([sys.executable, "-m", "tokenscale.cli", "train", "--config", str(cfg), "--run", RUN,
                        "--data", str(wd / "results/data"), "--out", str(ref), "--threads", "1", "--quiet"],
                       env={**slurm_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    out = wd / "results/runs" / RUN

    # one submission, requeued in place: the segments used none of Snakemake's retries
    sbatch = run.sbatch_calls("train")
    assert len(sbatch) == 1 and f"-p {short_partition}" in sbatch[0] and "--signal=URG@1" in sbatch[0], str(run)
    logs = sorted((wd / ".snakemake/slurm_logs/rule_train").rglob("*.log"))
    assert len(logs) == 1, logs  # the train job's SLURM log, named by its job id
    info = scontrol_job(slurm_cluster, logs[0].stem)  # slurmctld keeps it for MinJobAge
    summary = json.loads((wd / target).read_text())
    segs = summary["segments"]
    print(f"\nSLURM run {run.seconds:.0f}s wall, {len(segs)} segments: "
          + ", ".join(f"{g['start_step']}->{g['end_step']} ({g['reason']}, {g['wall_s']:.0f}s)" for g in segs)
          + "; " + " ".join(re.findall(r"Restarts=\d+|JobState=\w+", info)))
    assert len(segs) >= 3, segs
    assert [g["reason"] for g in segs] == ["signal"] * (len(segs) - 1) + ["complete"], segs
    assert segs[0]["start_step"] == 0 and segs[-1]["end_step"] == STEPS
    assert all(a["end_step"] == b["start_step"] and a["end_step"] > a["start_step"] for a, b in zip(segs, segs[1:]))
    assert "JobState=COMPLETED" in info and f"Restarts={len(segs) - 1}" in info, info

    last = sorted((ref / "checkpoints").iterdir())[-1].name
    assert last == f"step{STEPS:08d}"
    assert (out / "checkpoints" / last / "model.safetensors").read_bytes() == \
        (ref / "checkpoints" / last / "model.safetensors").read_bytes()
    assert read_losses(out) == read_losses(ref)
