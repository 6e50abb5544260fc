"""How ``tokenscale train`` starts its ranks: in this process, under torchrun on one node, or on N nodes.

A run trains with ``W = N x G`` ranks: ``G`` per node (one per GPU, or the run's ``nproc`` CPU ranks with gloo) on
``N`` nodes. :func:`plan_launch` reads the environment and returns one :class:`LaunchPlan`; :func:`run_plan`
executes it. The plans, in the order a multi-node SLURM job passes through them::

    rule shell (batch shell)   tokenscale train --nodes N ...      -> "srun":  srun --nodes=N --ntasks=N
                                                                      --ntasks-per-node=1 --kill-on-bad-exit=1
                                                                      python -m tokenscale.cli train ...
    one task per node (a step) tokenscale train ...                -> "rendezvous": python -m torch.distributed.run
                                                                      --nnodes=N --nproc_per_node=G
                                                                      --rdzv_backend=c10d --rdzv_id=$SLURM_JOB_ID
                                                                      --rdzv_endpoint=<first host>:<port>
    G ranks per node           (RANK set by torchrun)              -> "inline": the trainer

and on one node ``"standalone"`` (``torchrun --standalone --nproc_per_node=G``) or ``"inline"`` (G = 1).

**Nodes.** ``--nodes`` if given, else the step's (``SLURM_STEP_NUM_NODES``, ``SLURM_NNODES``) or the job's
(``SLURM_JOB_NUM_NODES``) node count, else 1. **Inside a step or not** is ``SLURM_STEP_ID``: the launcher calls
``srun`` itself only when it is in a multi-node allocation (``SLURM_JOB_ID``) and not yet in a step. That is how
the workflow runs it: a multi-node train job carries the generic resource ``mpi=srun``, so the slurm-jobstep
executor runs the rule's shell in the batch script instead of in an ``srun -n1`` step (which would hold one
node), and strips every ``SLURM_*`` variable but the job id from its environment (hence ``--nodes`` on the
command line). srun's step gets, by default, every CPU, all memory and every GPU (GRES) the job holds on each
node, so it needs no resource flags beyond the task layout.

**Rendezvous.** Every node's torchrun joins one c10d rendezvous hosted at the first host of the step's node
list (``SLURM_STEP_NODELIST``, else ``SLURM_JOB_NODELIST`` / ``SLURM_NODELIST``, expanded by ``scontrol show
hostnames``: ``gpu[01-02]`` -> ``gpu01``, ``gpu02``) on port :data:`RDZV_PORT` (``TOKENSCALE_RDZV_PORT``
overrides it), with the job id as its id. torchrun then sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and
``MASTER_ADDR``/``MASTER_PORT`` of every rank; the trainer reads them (``trainer.dist_from_env``).

**Signals.** SIGTERM (the time limit, preemption, scancel) and the segment signal (``sbatch --signal=URG@<s>``
without ``B:``: SLURM sends it to every process of the job's steps on every node, not to the batch shell)
reach every node's launcher and ranks directly from slurmd. Each launcher forwards SIGTERM to its child once
(torchrun passes it to its ranks; srun to its tasks) and SIGURG to its child's descendants (torchrun ignores it),
so a signal sent by hand to the top launcher reaches every rank too. The ranks agree on stopping through one
all-reduce per step, save state together and leave ``train()`` together; rank 0 requeues the SLURM job after a
final barrier (``cli.training``), so ``--kill-on-bad-exit`` cannot cut a rank's state write short. The exit code
of a launcher is the one a single-process trainer gives: 143 after SIGTERM, :data:`~segments.SEGMENT_EXIT` after a
segment signal, else its child's.

This module imports no torch.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from tokenscale import TokenscaleError
from tokenscale.training import segments

WORKER_ARGV = "TOKENSCALE_WORKER_ARGV"  # the worker argv under torchrun (its parser would claim --run)
PORT_ENV = "TOKENSCALE_RDZV_PORT"
RDZV_PORT = 29400  # torchrun's c10d default
KINDS = ("inline", "standalone", "srun", "rendezvous")
SIGTERM_EXIT = 143


@dataclass(frozen=True)
class LaunchPlan:
    """How to start the ranks: ``kind`` (one of :data:`KINDS`), ``nodes`` x ``nproc_per_node`` ranks, and the
    command to run (empty for ``inline``) with the variables to add to its environment."""

    kind: str
    nodes: int
    nproc_per_node: int
    cmd: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def world(self) -> int:
        return self.nodes * self.nproc_per_node

    def describe(self) -> str:
        return f"{self.nodes} node(s) x {self.nproc_per_node} rank(s) ({self.kind})"


def _int_env(env: Mapping[str, str], *names: str) -> int | None:
    for n in names:
        v = env.get(n, "")
        if v.strip():
            try:
                return int(v.split("(")[0])
            except ValueError:
                raise TokenscaleError(f"${n}: {v!r} is not a node count") from None
    return None


def node_count(env: Mapping[str, str], nodes: int | None = None) -> int:
    """Nodes of this launch: ``nodes`` if given, else the SLURM step's or job's node count, else 1."""
    if nodes is not None:
        if nodes < 1:
            raise TokenscaleError(f"--nodes: {nodes} must be >= 1")
        return nodes
    return _int_env(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES", "SLURM_JOB_NUM_NODES") or 1


def expand_nodelist(nodelist: str, env: Mapping[str, str] | None = None) -> list[str]:
    """The host names of a SLURM node list (``gpu[01-02],cpu7``), in order, through ``scontrol show hostnames``."""
    path = (env or os.environ).get("PATH")
    scontrol = shutil.which("scontrol", path=path) or shutil.which("scontrol", path="/usr/sbin:/usr/local/sbin")
    if scontrol is None:
        raise TokenscaleError(f"multi-node launch: scontrol is not on PATH (needed to expand the node list {nodelist!r})")
    p = subprocess.run([scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, timeout=60,
                       env=dict(env) if env is not None else None)
    hosts = p.stdout.split()
    if p.returncode != 0 or not hosts:
        why = (p.stderr.strip().splitlines() or ["no host names"])[-1]
        raise TokenscaleError(f"multi-node launch: scontrol show hostnames {nodelist!r} failed: {why}")
    return hosts


WORKER_MODULE = ("-m", "tokenscale.cli")  # what torchrun starts on each rank (with the argv in WORKER_ARGV)


def _torchrun(python: str) -> list[str]:
    return [python, "-m", "torch.distributed.run"]


def _rendezvous_plan(env, nodes: int, nproc: int, python: str, hostnames) -> LaunchPlan:
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        raise TokenscaleError("multi-node launch: no node list ($SLURM_STEP_NODELIST / $SLURM_JOB_NODELIST unset)")
    hosts = hostnames(nodelist, env)
    if len(hosts) != nodes:
        raise TokenscaleError(f"multi-node launch: {nodes} node(s) wanted but the node list {nodelist!r} has "
                              f"{len(hosts)} ({', '.join(hosts)})")
    port = env.get(PORT_ENV) or str(RDZV_PORT)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise TokenscaleError(f"${PORT_ENV}: {port!r} is not a port number")
    job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID") or "tokenscale"
    cmd = [*_torchrun(python), f"--nnodes={nodes}", f"--nproc_per_node={nproc}", "--rdzv_backend=c10d",
           f"--rdzv_endpoint={hosts[0]}:{port}", f"--rdzv_id={job}", *WORKER_MODULE]
    return LaunchPlan("rendezvous", nodes, nproc, tuple(cmd))


def plan_launch(env: Mapping[str, str], *, nproc: int, argv: Sequence[str], nodes: int | None = None,
                python: str = sys.executable,
                hostnames: Callable[[str, Mapping[str, str]], list[str]] = expand_nodelist) -> LaunchPlan:
    """The launch plan of ``tokenscale <argv>`` with ``nproc`` ranks per node, in environment ``env`` (pure but
    for ``hostnames``, which expands a SLURM node list). See the module docstring for the four kinds."""
    if nproc < 1:
        raise TokenscaleError(f"--nproc: {nproc} must be >= 1")
    if "RANK" in env:  # a rank started by torchrun
        return LaunchPlan("inline", 1, 1)
    n = node_count(env, nodes)
    worker_env = {WORKER_ARGV: json.dumps(list(argv))}
    if n == 1:
        if nproc == 1:
            return LaunchPlan("inline", 1, 1)
        cmd = [*_torchrun(python), "--standalone", f"--nproc_per_node={nproc}", *WORKER_MODULE]
        return LaunchPlan("standalone", 1, nproc, tuple(cmd), worker_env)
    if not (env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")):
        raise TokenscaleError(f"--nodes {n}: a multi-node run needs a SLURM allocation ($SLURM_JOB_ID is unset; "
                              "submit the job with sbatch/salloc --nodes)")
    if "SLURM_STEP_ID" not in env:  # the batch shell: one task per node, each of which plans a rendezvous
        srun = shutil.which("srun", path=env.get("PATH"))
        if srun is None:
            raise TokenscaleError(f"--nodes {n}: srun is not on PATH (a multi-node run starts one task per node)")
        cmd = [srun, f"--nodes={n}", f"--ntasks={n}", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
               python, *WORKER_MODULE, *argv]
        return LaunchPlan("srun", n, nproc, tuple(cmd))
    step_nodes = _int_env(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES")
    if step_nodes is not None and step_nodes != n:
        raise TokenscaleError(f"--nodes {n}: this SLURM step spans {step_nodes} node(s)")
    plan = _rendezvous_plan(env, n, nproc, python, hostnames)
    return LaunchPlan(plan.kind, n, nproc, plan.cmd, worker_env)


def run_plan(plan: LaunchPlan, *, label: str = "") -> int:
    """Run ``plan``'s command (not ``inline``) and return the exit code a single-process trainer would give,
    forwarding SIGTERM (once) and the segment signal to it (see the module docstring)."""
    if plan.kind == "inline":
        raise ValueError("an inline plan runs in this process")
    env = dict(os.environ)
    env.update(plan.env)
    env.setdefault("OMP_NUM_THREADS", "1")
    print(f"tokenscale: launching {plan.world} ranks{label}, {plan.describe()}: {' '.join(plan.cmd)}",
          file=sys.stderr, flush=True)
    procs, got, sent, seg = [], [], [], []

    def forward():  # once: a second SIGTERM would cut torchrun's wait for the ranks' state saves short
        if procs and got and not sent:
            sent.append(True)
            procs[0].send_signal(signal.SIGTERM)

    def on_sigterm(signum, frame):  # SLURM's or the job guard's SIGTERM: every rank saves state
        got.append(signum)
        forward()

    def on_segment(signum, frame):  # the ranks save state and end the segment (under SLURM they get it too)
        seg.append(signum)
        if procs:
            segments.forward(procs[0].pid)

    signal.signal(signal.SIGTERM, on_sigterm)  # before Popen: a SIGTERM in between must not orphan the child
    signal.signal(segments.SEGMENT_SIGNAL, on_segment)
    procs.append(subprocess.Popen(list(plan.cmd), env=env))
    forward()
    rc = procs[0].wait()
    return exit_code(rc, sigterm=bool(got), segment=bool(seg))


def exit_code(rc: int, *, sigterm: bool, segment: bool) -> int:
    """A launcher's exit code from its child's: torchrun itself exits 1 after forwarding SIGTERM or when ranks end a
    segment, srun with the highest of its tasks'; report what a single-process trainer reports."""
    if rc == 0:
        return 0
    return SIGTERM_EXIT if sigterm else segments.SEGMENT_EXIT if segment else rc
