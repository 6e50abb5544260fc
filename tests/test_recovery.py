"""Recovery after Snakemake itself is SIGKILLed mid-training (local executor).

Before: the training job kept running as an orphan; the README's recovery (``snakemake --unlock``, rerun)
started a second trainer on the same run folder, which truncated log.jsonl and crashed on state.tmp, and
the next run said "Nothing to be done" over a log holding part of the steps. Now the trainer notices that
its Snakemake is gone and stops (SIGTERM: state saved, exit 143), the run folder's lock keeps any second
trainer out, and the recovery ends in exactly the run an uninterrupted training produces.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile")]
RUN = "t_smoke"
CONFIGS = [str(REPO / "config" / "smoke.yaml"), str(REPO / "tests" / "data" / "recovery_long.yaml")]


def _env() -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


def smk(*args, results: Path, workdir: Path, timeout=900, check=True) -> subprocess.CompletedProcess:
    # Its own working directory: `--unlock` clears every Snakemake lock of a directory, not only this test's.
    cmd = [*SNAKEMAKE, *args, "--cores", "2", "--configfile", *CONFIGS, "--config", f"results={results}"]
    p = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout, env=_env())
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-6000:]}")
    return p


def _proc(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, None once it is gone."""
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return f[0], int(f[3])


def _alive(pid: int) -> bool:
    p = _proc(pid)
    return p is not None and p[0] not in "ZX"


def _trainer_in_session(sid: int) -> int | None:
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (p := _proc(int(d.name))) and p[1] == sid:
            try:
                argv = (d / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"train" in argv and any(a.endswith((b"tokenscale", b"tokenscale.cli")) for a in argv):
                return int(d.name)
    return None


def _steps(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the job guard reads /proc")
def test_sigkilled_snakemake_stops_its_trainer_and_recovery_is_exact(tmp_path):
    results, workdir = tmp_path / "results", tmp_path / "wd"
    workdir.mkdir()
    run = results / "runs" / RUN
    target = str(run / "train.json")
    t_start = time.time()
    with open(tmp_path / "snakemake.out", "w") as out:
        proc = subprocess.Popen([*SNAKEMAKE, target, "--cores", "2", "--configfile", *CONFIGS,
                                 "--config", f"results={results}"], cwd=workdir, env=_env(), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:  # past the first state save (step 25), not finished
            if (run / "log.jsonl").is_file() and len(_steps(run)) >= 28:
                break
            time.sleep(0.1)
        assert proc.poll() is None, (tmp_path / "snakemake.out").read_text()[-3000:]
        trainer = _trainer_in_session(proc.pid)
        assert trainer is not None
        argv = [a.decode() for a in Path(f"/proc/{trainer}/cmdline").read_bytes().split(b"\0")[:-1]]
        job_env = dict(x.decode().split("=", 1) for x in Path(f"/proc/{trainer}/environ").read_bytes().split(b"\0") if b"=" in x)
        os.kill(proc.pid, signal.SIGKILL)  # Snakemake only: its job is orphaned, as after an OOM kill or a lost login
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    t_kill = time.time()
    while _alive(trainer) and time.time() - t_kill < 30:
        time.sleep(0.05)
    stopped_in = time.time() - t_kill
    assert not _alive(trainer), "the training job outlived its Snakemake"
    print(f"killed after {t_kill - t_start:.1f}s at step {len(_steps(run))}; trainer stopped in {stopped_in:.1f}s")
    assert stopped_in < 20
    job_log = (results / "logs" / "train" / f"{RUN}.log").read_text()
    assert "the Snakemake process that started this job" in job_log and "SIGTERM: state saved" in job_log, job_log
    saved = json.loads((run / "state" / "trainer.json").read_text())["step"]
    assert saved == len(_steps(run)) and not (run / "LOCK").exists() and not (run / "train.json").exists()

    # the README's recovery
    smk("--unlock", results=results, workdir=workdir)
    smk(target, results=results, workdir=workdir)
    rows = _steps(run)
    summary = json.loads((run / "train.json").read_text())
    assert [r["step"] for r in rows] == list(range(1, summary["steps"] + 1))  # every step once
    assert summary["resumed_from"] == saved and not (run / "LOCK").exists()
    dry = smk("-n", target, results=results, workdir=workdir)
    assert "Nothing to be done" in dry.stdout + dry.stderr

    # the same job, uninterrupted: same command line and environment, another run folder
    ref = tmp_path / "ref"
    argv[argv.index("--out") + 1] = str(ref)
    subprocess.run(argv, env=job_env, cwd=workdir, check=True, capture_output=True, timeout=900)
    assert [r["loss"] for r in rows] == [r["loss"] for r in _steps(ref)]  # bit-identical floats
    assert [r["grad_norm"] for r in rows] == [r["grad_norm"] for r in _steps(ref)]
    ckpts = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert ckpts == sorted(p.name for p in (ref / "checkpoints").iterdir()) and len(ckpts) == len(summary["checkpoints"])
    for name in ckpts:
        for f in ("model.safetensors", "tokenscale.json", "COMPLETE"):
            assert (run / "checkpoints" / name / f).read_bytes() == (ref / "checkpoints" / name / f).read_bytes(), (name, f)
    # smoke.yaml trains without in-loop validation (val_loss.csv then comes from rule val_loss); with it, the
    # trainer's val_loss.csv must match too
    assert (run / "val_loss.csv").exists() == (ref / "val_loss.csv").exists()
    if (ref / "val_loss.csv").exists():
        assert (run / "val_loss.csv").read_text() == (ref / "val_loss.csv").read_text()
    print(f"total {time.time() - t_start:.1f}s")
