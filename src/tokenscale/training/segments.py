"""Runs longer than a job: segments, their records, and how a SLURM job ends one.

A run is trained in **segments**, one per job. ``sbatch --signal=URG@<seconds>`` asks SLURM to send
:data:`SEGMENT_SIGNAL` (SIGURG) to every process of the job's steps that long before the time limit. The trainer
then finishes its current step (and any checkpoint or state write in it: the handler only sets a flag), saves
its full state and ends the segment: it leaves the run folder (its lock released) and, inside a SLURM job,
requeues that job (``scontrol requeue $SLURM_JOB_ID``) before exiting with :data:`SEGMENT_EXIT`. The requeued
job keeps its job id and its (fixed) time request, runs the same command again and resumes from the saved state.
Outside SLURM the exit code alone says "not done, run me again".

Why SIGURG and requeue (snakemake-executor-plugin-slurm 2.8 with the slurm-jobstep plugin 0.6):

* The plugin's job script is ``/bin/sh`` running ``snakemake --executor slurm-jobstep``, which starts the rule
  in a job step (``srun ... snakemake`` -> ``bash -c`` -> ``tokenscale train``). ``--signal`` without ``B:``
  reaches every process of the steps, not only the trainer; SIGURG's default action is to ignore it, so the
  Snakemake and shell processes around the trainer live on (SIGUSR1 or SIGTERM would end them, and with
  ``B:`` only the batch shell, which dies of it, is signalled).
* The plugin polls ``squeue``/``sacct`` by job id and treats every state but COMPLETED and its failure states
  (FAILED, TIMEOUT, CANCELLED, NODE_FAIL, OUT_OF_MEMORY, ...) as still running. A requeued job goes through
  REQUEUED/PENDING to RUNNING under the same id, so Snakemake keeps waiting for it: the segment does not count
  as a failure and Snakemake's ``retries`` are not used. A real failure (an error, a TIMEOUT because no
  signal came) ends the job FAILED/TIMEOUT, which the plugin reports; Snakemake resubmits it up to the
  profile's ``retries`` times. So clean segment ends are unbounded and failures bounded.
* The job step's spawned Snakemake runs with ``--force`` and ``--ignore-incomplete``, so the requeued job runs
  the rule again although its outputs are missing; the trainer resumes from ``runs/{run}/state/``.

Each segment's record (start and end time, step and tokens at both ends, why it ended: ``signal``,
``sigterm`` or ``complete``) is kept in the state's ``trainer.json`` and listed under ``segments`` in
``train.json``. A segment killed hard (SIGKILL, node failure) leaves no record; its steps are trained again by
the next one.

This module imports no torch (the CLI uses it before the trainer is loaded).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

SEGMENT_SIGNAL = signal.SIGURG
SEGMENT_EXIT = 75  # EX_TEMPFAIL: not done yet, run again
REASONS = ("signal", "sigterm", "complete")


def now_iso() -> str:
    """The wall-clock time as an ISO 8601 UTC string (seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def open_segment(step: int, tokens_per_step: int) -> dict:
    """The record of a segment starting at ``step`` (closed by :func:`close_segment`)."""
    return {"start_time": now_iso(), "end_time": None, "start_step": step, "end_step": None,
            "start_tokens": step * tokens_per_step, "end_tokens": None, "reason": None, "_t0": time.time()}


def close_segment(seg: dict, step: int, tokens_per_step: int, reason: str) -> dict:
    """The finished record of ``seg``: ended at ``step`` because of ``reason`` (one of :data:`REASONS`)."""
    if reason not in REASONS:
        raise ValueError(f"segment reason {reason!r} is not one of {REASONS}")
    out = {k: v for k, v in seg.items() if not k.startswith("_")}
    out.update(end_time=now_iso(), end_step=step, end_tokens=step * tokens_per_step, reason=reason,
               wall_s=round(time.time() - seg["_t0"], 3))
    return out


def history_before(records, step: int) -> list[dict]:
    """The segment records of a saved state that lie at or below ``step`` (the state a segment starts from)."""
    if not isinstance(records, list):
        return []
    return [r for r in records if isinstance(r, dict) and isinstance(r.get("end_step"), int) and r["end_step"] <= step]


def requeue_job(run: str) -> bool:
    """Inside a SLURM batch job: requeue it (``scontrol requeue``) so that it runs again and resumes; True if
    requested. Outside SLURM (or when scontrol is missing or refuses) say so on stderr and return False."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        print(f"[{run}] segment ended (exit {SEGMENT_EXIT}); rerun to continue", file=sys.stderr, flush=True)
        return False
    scontrol = shutil.which("scontrol") or shutil.which("scontrol", path="/usr/sbin:/usr/local/sbin")
    if scontrol is None:
        print(f"[{run}] segment ended but scontrol is not on PATH: SLURM job {job} is not requeued "
              f"(exit {SEGMENT_EXIT})", file=sys.stderr, flush=True)
        return False
    p = subprocess.run([scontrol, "requeue", job], capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        why = (p.stderr.strip().splitlines() or ["?"])[-1]
        print(f"[{run}] segment ended; scontrol requeue {job} failed ({why}); exit {SEGMENT_EXIT}",
              file=sys.stderr, flush=True)
        return False
    print(f"[{run}] segment ended: SLURM job {job} requeued", file=sys.stderr, flush=True)
    return True


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (Linux /proc; [] elsewhere)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = [int(x) for x in task.read_text().split()]
            except (OSError, ValueError):
                continue
            out += kids
            todo += kids
    return out


def forward(pid: int, sig: int = SEGMENT_SIGNAL) -> None:
    """Send ``sig`` to ``pid``'s descendants (torchrun's ranks: torchrun itself ignores SIGURG)."""
    for p in descendants(pid):
        try:
            os.kill(p, sig)
        except OSError:
            pass


_early = {"requested": False}


def _note_early(signum, frame):
    _early["requested"] = True


def listen_early() -> None:
    """Note a segment signal that arrives before the trainer listens for it (while torch and the model load);
    the trainer reads it with :func:`requested_early`. Main thread only."""
    signal.signal(SEGMENT_SIGNAL, _note_early)


def requested_early() -> bool:
    """Whether a segment signal reached this process through :func:`listen_early`'s handler."""
    return _early["requested"]
