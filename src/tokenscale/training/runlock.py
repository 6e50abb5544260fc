"""One trainer per run folder, and no job outliving the local Snakemake that started it.

**Run-folder lock.** The trainer holds ``<run>/LOCK`` while it writes the folder. The file is created
exclusively and whole: the holder's JSON is written to a private temp file, fsynced and hard-linked to
``LOCK`` (``link`` fails if ``LOCK`` exists, atomically also on NFS; filesystems without hard links fall back
to ``O_CREAT|O_EXCL``). It names the holder::

    {"host": ..., "pid": ..., "start_time": <clock ticks after boot, /proc/<pid>/stat>, "boot_id": ...,
     "pid_ns": ..., "slurm_job_id": ..., "slurm_restart_count": ..., "since": "2025-01-01 12:00:00 +0000"}

A second trainer finding a live holder stops with one line naming it. A stale lock is taken over:

* same host (and PID namespace): the PID is not running, is a zombie, or is now another process (its start
  time differs: PID reuse), or the host has rebooted since (boot id);
* another host: the lock names a SLURM job that ``squeue`` no longer lists as pending/running (or, under
  SLURM, an earlier incarnation of our own requeued job). Without ``squeue``, or for a lock from another
  host outside SLURM, liveness cannot be checked: the trainer refuses and says which file to delete.

A takeover happens under ``LOCK.takeover`` (created exclusively, removed right after) and removes ``LOCK``
only if it still holds the bytes judged stale, so two trainers taking over the same stale lock cannot both
win. The holder removes ``LOCK`` on exit (normal, SIGTERM's exit 143, exceptions); after SIGKILL the next
trainer on the same host takes it over.

**Job guard.** Snakemake's local executor runs a shell rule from a worker thread with
``subprocess.Popen("bash -c '... tokenscale ...'")``: if Snakemake is SIGKILLed, bash and the tokenscale
process keep running (orphans) and a rerun would start a second job on the same outputs; if the job's bash
is killed instead, Snakemake sees the job fail and removes its outputs while the tokenscale process keeps
running and writes them again. :func:`install_job_guard` (called for every subcommand) finds the Snakemake
processes among our ancestors and, from a daemon thread, polls them and our direct parent; once a Snakemake
ancestor is gone (exited, a zombie, or its PID reused) or we have been re-parented (``os.getppid()``
changed: the bash, or torchrun for a rank, died) it sends SIGTERM to our own main thread: the trainer saves
state at the end of the step and exits 143, other commands stop at once. ``prctl(PR_SET_PDEATHSIG)`` is no
substitute: it fires when the *thread* that forked us exits, not the process (Snakemake forks from a thread
pool, and our parent is Snakemake itself where bash ``exec``-s the command), it misses a parent that died
before it was set, and it cannot see Snakemake behind the bash, which survives Snakemake.
The guard is on only under a Snakemake ancestor, so ``nohup tokenscale ... &`` outlives its shell as usual.
Inside a SLURM job (``SLURM_JOB_ID`` set) the guard is off: there jobs outliving Snakemake is by design,
and the lock keeps a resubmitted job from running next to the old one. Linux only; a no-op elsewhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from tokenscale import TokenscaleError
from tokenscale.atomic import disk_full_error, fsync_dir, is_full_disk

__all__ = ["RunLock", "install_job_guard", "lock_info", "snakemake_ancestors"]

LOCK_NAME = "LOCK"
# squeue -o %T states of a job that no longer runs (anything else, e.g. PENDING, RUNNING, COMPLETING, counts as alive)
_ENDED = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
          "REVOKED", "SPECIAL_EXIT", "TIMEOUT"}
ALIVE, STALE, UNKNOWN = "alive", "stale", "unknown"


# --------------------------------------------------------------------------------------------- /proc
class _Stat(NamedTuple):
    state: str
    ppid: int
    start: int


def _proc_stat(pid: int) -> _Stat | None:
    """State, parent and start time (clock ticks after boot) of ``pid`` from /proc, None if there is none."""
    try:
        raw = Path(f"/proc/{int(pid)}/stat").read_bytes().decode(errors="replace")
    except (OSError, ValueError):
        return None
    f = raw[raw.rfind(")") + 2:].split()  # the command name in (...) may hold spaces
    try:
        return _Stat(f[0], int(f[1]), int(f[19]))
    except (IndexError, ValueError):
        return None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] if raw else []


def _read_line(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _pid_ns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    st = _proc_stat(pid)
    if st is not None:
        return st.state not in "ZX"
    if os.path.isdir("/proc/self"):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --------------------------------------------------------------------------------------------- lock
def lock_info() -> dict:
    """What this process writes into a lock it takes."""
    st = _proc_stat(os.getpid())
    return {
        "host": socket.gethostname(), "pid": os.getpid(), "start_time": st.start if st else None,
        "boot_id": _read_line("/proc/sys/kernel/random/boot_id"), "pid_ns": _pid_ns(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID") or None,
        "slurm_restart_count": os.environ.get("SLURM_RESTART_COUNT") or None,
        "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _squeue_state(job: str) -> str | None:
    """The job's state as squeue reports it, "" when squeue does not list it, None when squeue is unavailable."""
    exe = shutil.which("squeue")
    if exe is None:
        return None
    try:
        p = subprocess.run([exe, "-h", "-j", str(job), "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if p.returncode != 0:
        return "" if "invalid job id" in p.stderr.lower() else None
    lines = p.stdout.split()
    return lines[0].strip().upper() if lines else ""


def _judge(info: dict) -> tuple[str, str]:
    """(ALIVE | STALE | UNKNOWN, why) for the holder a lock names."""
    host, pid, job = info.get("host"), info.get("pid"), info.get("slurm_job_id")
    if host == socket.gethostname() and isinstance(pid, int):
        boot = _read_line("/proc/sys/kernel/random/boot_id")
        if info.get("boot_id") and boot and info["boot_id"] != boot:
            return STALE, f"host {host} has rebooted since"
        if info.get("pid_ns") == _pid_ns():  # the PID means the same process for us
            if not _pid_alive(pid):
                return STALE, f"pid {pid} is not running"
            st = _proc_stat(pid)
            if info.get("start_time") is not None and st is not None and st.start != info["start_time"]:
                return STALE, f"pid {pid} is now another process"
            return ALIVE, ""
        elif not job:
            return UNKNOWN, f"pid {pid} runs in another PID namespace (container) on this host"
    if job:
        if str(job) == os.environ.get("SLURM_JOB_ID") and info.get("slurm_restart_count") != (
                os.environ.get("SLURM_RESTART_COUNT") or None):
            return STALE, f"it is from an earlier run of this requeued SLURM job {job}"
        state = _squeue_state(str(job))
        if state is None:
            return UNKNOWN, f"squeue is not available here to check SLURM job {job}"
        if state == "" or state.split()[0] in _ENDED:
            return STALE, f"SLURM job {job} has ended" + (f" ({state})" if state else "")
        return ALIVE, ""
    return UNKNOWN, f"a process on host {host} cannot be checked from {socket.gethostname()}"


def _holder(info: dict) -> str:
    if "pid" not in info:
        return f"an unknown holder since {info.get('since')}"
    job = f" (SLURM job {info['slurm_job_id']})" if info.get("slurm_job_id") else ""
    return f"pid {info['pid']} on host {info.get('host')}{job} since {info.get('since')}"


class RunLock:
    """``with RunLock(run_dir):`` -- hold ``run_dir/LOCK`` (see the module docstring)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.dir = Path(run_dir)
        self.path = self.dir / LOCK_NAME
        self._raw: bytes | None = None

    @property
    def held(self) -> bool:
        return self._raw is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    # ------------------------------------------------------------------ public
    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one; TokenscaleError (one line) if a live or uncheckable holder has it."""
        if self.held:
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(50):
            if self._create():
                return self
            verdict = self._inspect()
            if verdict is None:
                continue  # released meanwhile, or being written: look again
            raw, info, state, why = verdict
            if state != STALE:
                raise self._refusal(info, state, why)
            print(f"tokenscale: {self.path}: taking over a stale lock of {_holder(info)} ({why})", file=sys.stderr,
                  flush=True)
            self._take_over(raw)
        raise TokenscaleError(f"run folder {self.dir}: could not take {self.path} (other trainers keep taking it); rerun")

    def check(self) -> None:
        """Raise the refusal :meth:`acquire` would raise, without taking the lock (free or stale: return)."""
        for _ in range(50):
            if not self.path.exists():
                return
            verdict = self._inspect()
            if verdict is None:
                continue
            _, info, state, why = verdict
            if state != STALE:
                raise self._refusal(info, state, why)
            return

    def release(self) -> None:
        """Remove the lock if it is still ours (idempotent)."""
        if self._raw is None:
            return
        raw, self._raw = self._raw, None
        try:
            if self.path.read_bytes() == raw:
                self.path.unlink()
                fsync_dir(self.dir)
            else:
                print(f"tokenscale: {self.path} was taken over by another trainer while this one ran; left it",
                      file=sys.stderr, flush=True)
        except FileNotFoundError:
            pass

    # ------------------------------------------------------------------ internals
    def _create(self) -> bool:
        raw = (json.dumps(lock_info(), sort_keys=True) + "\n").encode()
        tmp = self.dir / f"{LOCK_NAME}.{re.sub(r'[^A-Za-z0-9._-]', '_', socket.gethostname())}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            try:
                self._write_new(tmp, raw)
                try:
                    os.link(tmp, self.path)
                    ok = True
                except FileExistsError:
                    ok = os.stat(tmp).st_nlink == 2  # NFS: a retried link() can say EEXIST after it succeeded
                except OSError as e:
                    if is_full_disk(e):
                        raise
                    try:  # no hard links on this filesystem
                        self._write_new(self.path, raw)
                        ok = True
                    except FileExistsError:
                        ok = False
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        except OSError as e:
            if is_full_disk(e):
                raise disk_full_error(e, self.path) from None
            raise
        if ok:
            self._raw = raw
            fsync_dir(self.dir)
        return ok

    @staticmethod
    def _write_new(path: Path, raw: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, raw)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        os.close(fd)

    def _inspect(self):
        """(raw, info, state, why) of the current lock, or None if it vanished or is still being written."""
        try:
            raw = self.path.read_bytes()
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            info = json.loads(raw)
            if not isinstance(info, dict):
                raise ValueError
        except ValueError:
            if age < 5:  # the O_EXCL fallback publishes the file before its content
                time.sleep(0.2)
                return None
            return raw, {"since": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(time.time() - age))}, STALE, \
                "the lock file is unreadable (left by a crash while it was written)"
        state, why = _judge(info)
        return raw, info, state, why

    def _refusal(self, info: dict, state: str, why: str) -> TokenscaleError:
        if state == ALIVE:
            stop = f"scancel {info['slurm_job_id']}" if info.get("slurm_job_id") else f"kill {info.get('pid')} on {info.get('host')}"
            advice = f"another trainer is writing it: wait for it to finish or stop it ({stop}), then rerun"
        else:
            advice = f"{why}: if no trainer runs there any more, delete {self.path} and rerun"
        return TokenscaleError(f"run folder {self.dir} is locked by {_holder(info)}; {advice}")

    def _take_over(self, stale: bytes) -> None:
        """Remove LOCK if it still holds ``stale``, under the short-lived LOCK.takeover."""
        guard = self.dir / f"{LOCK_NAME}.takeover"
        deadline = time.time() + 60
        while True:
            try:
                self._write_new(guard, f"{socket.gethostname()} {os.getpid()}\n".encode())
                break
            except FileExistsError:
                try:
                    age = time.time() - guard.stat().st_mtime
                except FileNotFoundError:
                    continue
                if age > 30:  # left by a takeover that was killed: a takeover takes milliseconds
                    with contextlib.suppress(FileNotFoundError):
                        guard.unlink()
                    continue
                if time.time() > deadline:
                    raise TokenscaleError(f"run folder {self.dir}: {guard} stays in the way; delete it and rerun") from None
                time.sleep(0.1)
        try:
            with contextlib.suppress(FileNotFoundError):
                if self.path.read_bytes() == stale:
                    self.path.unlink()
        finally:
            with contextlib.suppress(FileNotFoundError):
                guard.unlink()


# --------------------------------------------------------------------------------------------- job guard
def _is_snakemake(argv: list[str]) -> bool:
    """``snakemake ...``, ``python .../bin/snakemake ...`` or ``python -m snakemake ...``."""
    if not argv:
        return False
    exe = os.path.basename(argv[0])
    if exe == "snakemake":
        return True
    if not exe.startswith(("python", "pypy")):
        return False
    args = iter(argv[1:])
    for a in args:
        if a == "-m":
            return next(args, "") == "snakemake"
        if a in ("-c", "-"):
            return False
        if a in ("-X", "-W", "-Q"):
            next(args, None)
            continue
        if a.startswith("-"):
            continue
        return os.path.basename(a) == "snakemake"
    return False


def snakemake_ancestors(pid: int | None = None) -> list[tuple[int, int]]:
    """(pid, start time) of every Snakemake process among the ancestors of ``pid`` (default: us), nearest first."""
    out, seen = [], set()
    st = _proc_stat(os.getpid() if pid is None else pid)
    p = st.ppid if st else 0
    while p > 0 and p not in seen:
        seen.add(p)
        st = _proc_stat(p)
        if st is None:
            break
        if _is_snakemake(_cmdline(p)):
            out.append((p, st.start))
        p = st.ppid
    return out


def _gone(pid: int, start: int) -> bool:
    st = _proc_stat(pid)
    return st is None or st.start != start or st.state in "ZX"


def install_job_guard(interval: float = 1.0) -> threading.Thread | None:
    """Stop this process (SIGTERM to the main thread) once a Snakemake ancestor or our direct parent is gone; see
    the module docstring.

    Returns the polling thread, or None where there is nothing to guard (not Linux, inside a SLURM job, no
    Snakemake among the ancestors).
    """
    global _guard
    if _guard is not None:  # one per process
        return _guard
    if not sys.platform.startswith("linux") or os.environ.get("SLURM_JOB_ID") or _proc_stat(os.getpid()) is None:
        return None
    # Every Snakemake ancestor, not only the nearest: a job run through a spawned `python -m snakemake` (run:
    # rules) is orphaned the same way when the main Snakemake dies.
    watched = snakemake_ancestors()
    if not watched:
        return None
    parent = os.getppid()
    parent_name = os.path.basename((_cmdline(parent) or ["?"])[0])
    main_ident = threading.main_thread().ident

    def why_stop() -> str | None:
        if os.getppid() != parent:  # re-parented: the kernel's own word that the parent has exited
            return f"the parent process of this job (pid {parent}, {parent_name}) is gone"
        for pid, start in watched:
            if _gone(pid, start):
                return f"the Snakemake process that started this job (pid {pid}) is gone"
        return None

    def watch():
        while True:
            time.sleep(interval)
            why = why_stop()
            if why:
                print(f"tokenscale: {why}; stopping (SIGTERM)", file=sys.stderr, flush=True)
                signal.pthread_kill(main_ident, signal.SIGTERM)
                return

    _guard = threading.Thread(target=watch, name="tokenscale-job-guard", daemon=True)
    _guard.start()
    return _guard


_guard: threading.Thread | None = None
