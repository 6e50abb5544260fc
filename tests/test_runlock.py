"""One trainer per run folder (tokenscale.training.runlock.RunLock) and the job guard that stops a job whose local
Snakemake or whose shell died."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import run_cli, tiny_config, write_config
from tokenscale import TokenscaleError
from tokenscale.training.runlock import RunLock, _is_snakemake, install_job_guard, lock_info, snakemake_ancestors

HOST = socket.gethostname()


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def _write_lock(run: Path, **over) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    info = lock_info()
    info.update(over)
    (run / "LOCK").write_text(json.dumps(info) + "\n")
    return run / "LOCK"


@pytest.fixture
def no_slurm_job(monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)


@pytest.fixture
def no_slurm(no_slurm_job, monkeypatch, tmp_path):
    """No SLURM job around us and no squeue on PATH (the folder returned is on PATH, for a fake squeue)."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


def _fake_squeue(bindir: Path, script: str) -> None:
    p = bindir / "squeue"
    p.write_text("#!/bin/sh\n" + script + "\n")
    p.chmod(0o755)


# --------------------------------------------------------------------------------------------- RunLock
def test_lock_names_its_holder_and_is_released(tmp_path, no_slurm):
    run = tmp_path / "run"
    with RunLock(run) as lock:
        info = json.loads((run / "LOCK").read_text())
        assert info["host"] == HOST and info["pid"] == os.getpid() and info["start_time"] > 0
        assert lock.held and sorted(p.name for p in run.iterdir()) == ["LOCK"]  # no temp left
    assert not (run / "LOCK").exists()
    with pytest.raises(RuntimeError):  # released on exceptions too
        with RunLock(run):
            raise RuntimeError("boom")
    assert not (run / "LOCK").exists()


def test_live_holder_is_refused_in_one_line(tmp_path, no_slurm):
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(TokenscaleError) as e:
            RunLock(run).acquire()
        with pytest.raises(TokenscaleError):
            RunLock(run).check()
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"run folder {run} is locked by pid {os.getpid()} on host {HOST} since ")
    assert f"kill {os.getpid()} on {HOST}" in msg


def test_stale_lock_of_a_dead_pid_is_taken_over(tmp_path, no_slurm, capsys):
    run = tmp_path / "run"
    dead = _dead_pid()
    _write_lock(run, pid=dead)
    RunLock(run).check()  # stale: no refusal
    with RunLock(run):
        assert json.loads((run / "LOCK").read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"taking over a stale lock of pid {dead} on host {HOST}" in err and f"(pid {dead} is not running)" in err


def test_reused_pid_is_stale(tmp_path, no_slurm, capsys):
    run = tmp_path / "run"
    _write_lock(run, start_time=lock_info()["start_time"] - 1)  # our pid, but another process's start time
    with RunLock(run):
        pass
    assert "is now another process" in capsys.readouterr().err


def test_lock_from_before_a_reboot_is_stale(tmp_path, no_slurm, capsys):
    run = tmp_path / "run"
    _write_lock(run, boot_id="0000-not-this-boot")
    with RunLock(run):
        pass
    assert "has rebooted since" in capsys.readouterr().err


def test_foreign_host_without_squeue_refuses_and_says_what_to_delete(tmp_path, no_slurm):
    run = tmp_path / "run"
    _write_lock(run, host="other-node", pid=4242, slurm_job_id="777")
    with pytest.raises(TokenscaleError) as e:
        RunLock(run).acquire()
    msg = str(e.value)
    assert msg.startswith(f"run folder {run} is locked by pid 4242 on host other-node (SLURM job 777) since ")
    assert "squeue is not available" in msg and f"delete {run / 'LOCK'} and rerun" in msg
    _write_lock(run, host="other-node", pid=4242, slurm_job_id=None)  # outside SLURM: cannot be checked
    with pytest.raises(TokenscaleError, match=f"cannot be checked from {HOST}.*delete {run / 'LOCK'}"):
        RunLock(run).acquire()
    assert (run / "LOCK").exists()


def test_foreign_host_slurm_job_checked_with_squeue(tmp_path, no_slurm, capsys):
    run = tmp_path / "run"
    _write_lock(run, host="other-node", pid=4242, slurm_job_id="777")
    _fake_squeue(no_slurm, 'echo RUNNING')
    with pytest.raises(TokenscaleError, match=r"\(SLURM job 777\) .*stop it \(scancel 777\)"):
        RunLock(run).acquire()
    _fake_squeue(no_slurm, 'echo COMPLETED')  # still listed for MinJobAge seconds after it ended
    with RunLock(run):
        pass
    _write_lock(run, host="other-node", pid=4242, slurm_job_id="778")
    _fake_squeue(no_slurm, 'echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1')  # purged
    with RunLock(run):
        pass
    err = capsys.readouterr().err
    assert "SLURM job 777 has ended (COMPLETED)" in err and "SLURM job 778 has ended" in err


def test_requeued_slurm_job_takes_over_its_earlier_incarnation(tmp_path, no_slurm, monkeypatch, capsys):
    run = tmp_path / "run"
    _write_lock(run, host="node-a", pid=4242, slurm_job_id="900", slurm_restart_count=None)
    monkeypatch.setenv("SLURM_JOB_ID", "900")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with RunLock(run):
        assert json.loads((run / "LOCK").read_text())["slurm_restart_count"] == "1"
    assert "earlier run of this requeued SLURM job 900" in capsys.readouterr().err


def test_concurrent_takeover_of_a_stale_lock_has_one_winner(tmp_path, no_slurm):
    run = tmp_path / "run"
    _write_lock(run, pid=_dead_pid())
    results, go = [], threading.Barrier(6)

    def contender():
        go.wait()
        try:
            results.append(RunLock(run).acquire())
        except TokenscaleError as e:
            results.append(e)

    threads = [threading.Thread(target=contender) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [r for r in results if isinstance(r, RunLock)]
    assert len(winners) == 1 and len(results) == 6, results
    assert json.loads((run / "LOCK").read_text())["pid"] == os.getpid()
    winners[0].release()
    assert sorted(p.name for p in run.iterdir()) == []


# --------------------------------------------------------------------------------------------- trainer
def test_second_trainer_refuses_in_one_line(tmp_path, data_dir, no_slurm_job):
    cfg = write_config(tmp_path / "c.yaml", tiny_config())
    out = tmp_path / "run"
    with RunLock(out):  # a live holder: this process
        p = run_cli("train", "--config", cfg, "--run", "tiny", "--data", data_dir, "--out", out, "--threads", 1,
                    check=False)
        assert p.returncode == 2
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, p.stderr
        assert lines[0].startswith(f"tokenscale: error: run folder {out} is locked by pid {os.getpid()} on host {HOST} ")
        assert sorted(x.name for x in out.iterdir()) == ["LOCK"]  # nothing else touched


def test_trainer_takes_over_a_stale_lock_and_releases_it(tmp_path, data_dir, no_slurm_job):
    cfg = write_config(tmp_path / "c.yaml", tiny_config())
    out = tmp_path / "run"
    dead = _dead_pid()
    _write_lock(out, pid=dead)
    p = run_cli("train", "--config", cfg, "--run", "tiny", "--data", data_dir, "--out", out, "--threads", 1, "--quiet")
    assert f"taking over a stale lock of pid {dead} on host {HOST}" in p.stderr
    assert (out / "train.json").is_file() and not (out / "LOCK").exists()


# --------------------------------------------------------------------------------------------- job guard
@pytest.mark.parametrize("argv, expected", [
    (["/venv/bin/python", "/venv/bin/snakemake", "--cores", "2"], True),
    (["python3.11", "-m", "snakemake", "-n"], True),
    (["/usr/bin/python3", "-u", "-X", "dev", "/opt/bin/snakemake"], True),
    (["snakemake", "--cores", "1"], True),
    (["/usr/bin/bash", "-c", "set -euo pipefail; tokenscale train --out .snakemake/x > log 2>&1"], False),
    (["python", "-m", "snakemake_executor_plugin_slurm"], False),
    (["python", "/tmp/.snakemake/scripts/tmpab.py"], False),
    (["python", "-c", "import snakemake"], False),
    ([], False),
])
def test_is_snakemake(argv, expected):
    assert _is_snakemake(argv) is expected


def test_guard_is_off_without_snakemake_ancestor():
    assert snakemake_ancestors() == []  # pytest is not run by Snakemake here
    assert install_job_guard() is None


_CHILD = """
import os, sys, time
from tokenscale.training.runlock import install_job_guard
t = install_job_guard(interval=0.2)
open(sys.argv[1], "w").write(f"{os.getpid()} {'guarded' if t else 'unguarded'} {os.getppid()}")
time.sleep(60)
"""

# A stand-in for Snakemake's local executor: a process named `snakemake` runs the job through `bash -c`
# (the trailing `; echo` keeps bash in between, as `set -euo pipefail; ...` does for Snakemake).
_FAKE_SNAKEMAKE = """
import subprocess, sys
python, child, ready, rc = sys.argv[1:]
subprocess.Popen(["bash", "-c", f"{python} {child} {ready}; echo $? > {rc}"]).wait()
"""


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard reads /proc")
@pytest.mark.parametrize("slurm", [False, True])
def test_guard_stops_the_job_when_snakemake_is_killed(tmp_path, slurm):
    child, ready, rc = tmp_path / "child.py", tmp_path / "ready", tmp_path / "rc"
    child.write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    if slurm:
        env["SLURM_JOB_ID"] = "12345"
    fake = subprocess.Popen(["bash", "-c", 'exec -a snakemake "$0" -c "$1" "$0" "$2" "$3" "$4"', sys.executable,
                             _FAKE_SNAKEMAKE, str(child), str(ready), str(rc)], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (ready.is_file() and ready.read_text()) and time.time() < deadline:
            time.sleep(0.05)
        pid, state, _ = ready.read_text().split()
        pid = int(pid)
        assert state == ("unguarded" if slurm else "guarded")
        os.kill(fake.pid, signal.SIGKILL)  # not reaped yet: a zombie counts as gone
        t0 = time.time()
        while _alive(pid) and time.time() - t0 < (2 if slurm else 10):  # polled every 0.2 s
            time.sleep(0.05)
        if slurm:  # inside a SLURM job jobs outlive Snakemake by design
            assert _alive(pid)
            os.kill(pid, signal.SIGKILL)
        else:
            assert not _alive(pid), "the job outlived its Snakemake"
            while not (rc.is_file() and rc.read_text().strip()) and time.time() - t0 < 10:
                time.sleep(0.05)
            assert rc.read_text().strip() == "143"  # SIGTERM
    finally:
        fake.kill()
        fake.wait()


def _wait_ready(ready: Path) -> tuple[int, str, int]:
    deadline = time.time() + 60
    while not (ready.is_file() and ready.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    pid, state, parent = ready.read_text().split()
    return int(pid), state, int(parent)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard reads /proc")
@pytest.mark.parametrize("under_snakemake", [True, False])
def test_guard_stops_the_job_when_its_shell_is_killed(tmp_path, under_snakemake):
    """The job's bash dies while Snakemake lives (Snakemake then removes the outputs): the job stops too.
    Without a Snakemake ancestor (``nohup tokenscale ... &``) the guard is off and the job outlives its shell."""
    child, ready, err = tmp_path / "child.py", tmp_path / "ready", tmp_path / "err"
    child.write_text(_CHILD)
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    job = ["bash", "-c", f"{sys.executable} {child} {ready} 2> {err}; echo"]
    if under_snakemake:  # a process named `snakemake` that waits on the job's bash and lives on, as Snakemake does
        top = subprocess.Popen(["bash", "-c", 'exec -a snakemake "$0" -c "import subprocess, sys, time; '
                                'subprocess.Popen(sys.argv[1:]).wait(); time.sleep(60)" "$@"', sys.executable, *job],
                               env=env)
    else:
        top = subprocess.Popen(job, env=env)
    pid = None
    try:
        pid, state, bash = _wait_ready(ready)
        assert state == ("guarded" if under_snakemake else "unguarded")
        os.kill(bash, signal.SIGKILL)
        t0 = time.time()
        while _alive(pid) and time.time() - t0 < (5 if under_snakemake else 1.5):  # polled every 0.2 s
            time.sleep(0.05)
        if under_snakemake:
            assert not _alive(pid), "the job outlived its shell"
            assert _alive(top.pid), "the stand-in Snakemake should still run"
            assert f"the parent process of this job (pid {bash}, bash) is gone; stopping (SIGTERM)" in err.read_text()
        else:
            assert _alive(pid)
    finally:
        if pid is not None and _alive(pid):
            os.kill(pid, signal.SIGKILL)
        top.kill()
        top.wait()
