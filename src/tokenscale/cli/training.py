"""``tokenscale train``: one run with dense checkpoints, in this process or relaunched under torchrun with one rank
per GPU (the worker argv travels in ``WORKER_ARGV``). The segment signal (SIGURG) ends a segment of a run longer
than a job (:mod:`tokenscale.training.segments`): state saved, the SLURM job requeued, exit 75."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tokenscale import TokenscaleError
from tokenscale.cli.common import add_config, command, load_config, positive_int

WORKER_ARGV = "TOKENSCALE_WORKER_ARGV"


def register(sub) -> None:
    p = command(sub, "train", _train, "train one run with dense checkpoints (resumes from its own folder)",
                "SIGTERM saves state at the end of the current step and exits 143; SIGURG (sbatch --signal=URG@<s>) "
                "saves state, requeues the SLURM job ($SLURM_JOB_ID) and exits 75 (a run longer than a job); "
                "rerunning resumes.")
    add_config(p)
    p.add_argument("--run", required=True, help="run name from the config's runs list")
    p.add_argument("--data", help="prepared data folder (default: <results>/data)")
    p.add_argument("--out", help="run folder (default: <results>/runs/<run>)")
    p.add_argument("--threads", type=positive_int, help="CPU threads in total (split over ranks)")
    p.add_argument("--nproc", type=positive_int, help="ranks on this node (default: max(--gpus, the run's nproc))")
    p.add_argument("--gpus", type=int, default=0, help="GPUs granted to this job (the workflow passes resources.gpu)")
    p.add_argument("--sampler-weights", help=".npy of per-training-sample weights (reweighted sampling)")
    p.add_argument("--init-from", help="start from these weights (a checkpoint folder) instead of random init")
    p.add_argument("--quiet", action="store_true", help="no per-checkpoint progress lines on stderr")


def _train(args) -> int:
    from tokenscale.training import segments

    segments.listen_early()  # a segment signal while torch loads is not lost
    from tokenscale.config import run_configs

    cfg = load_config(args)
    runs = run_configs(cfg)
    if args.run not in runs:
        raise TokenscaleError(f"--run: no run named {args.run!r} in the config (have: {', '.join(runs)})")
    run = runs[args.run]
    # ranks: --nproc if given, else one per GPU the job was granted (--gpus), at least the run's own nproc
    nproc = args.nproc or max(args.gpus or 0, run.nproc)
    out = Path(args.out) if args.out else Path(cfg["results"]) / "runs" / run.name
    if nproc > 1 and "RANK" not in os.environ:
        from tokenscale.training.runlock import RunLock

        RunLock(out).check()  # a held folder stops here in one line, before torchrun starts any rank
        return _relaunch(nproc)
    from tokenscale.training.trainer import Trainer

    data = Path(args.data) if args.data else Path(cfg["results"]) / "data"
    trainer = Trainer(run, data, out, threads=args.threads or run.threads or cfg["threads"],
                      sampler_weights=args.sampler_weights, init_from=args.init_from, progress=not args.quiet)
    try:
        s = trainer.train()
    except SystemExit as e:  # the segment ended (lock released, state saved): run the job again
        if e.code == segments.SEGMENT_EXIT and trainer.dist.main:
            segments.requeue_job(run.name)
        raise
    if trainer.dist.main and not trainer.trained_nothing:  # else the trainer said "nothing to train"
        print(f"[{run.name}] done: {s['steps']} steps, {s['tokens_per_s']:,.0f} tokens/s, {s['wall_s']:.1f}s",
              file=sys.stderr)
    return 0


def _relaunch(nproc: int) -> int:
    """Re-run this command under torchrun with ``nproc`` ranks on this node (CPU ranks use gloo)."""
    # The worker argv travels in an environment variable: torchrun's own parser would otherwise claim
    # options such as --run (it prefix-matches --run-path).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tokenscale.cli"]
    env = dict(os.environ)
    env[WORKER_ARGV] = json.dumps(sys.argv[1:])
    env.setdefault("OMP_NUM_THREADS", "1")
    print(f"tokenscale: launching {nproc} ranks: {' '.join(cmd)}", file=sys.stderr, flush=True)
    from tokenscale.training import segments

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

    signal.signal(signal.SIGTERM, on_sigterm)  # before Popen: a SIGTERM in between must not orphan torchrun
    signal.signal(segments.SEGMENT_SIGNAL, on_segment)
    procs.append(subprocess.Popen(cmd, env=env))
    forward()
    rc = procs[0].wait()
    # torchrun itself exits 1 after forwarding SIGTERM or when ranks end a segment; report what a single-process
    # trainer reports (rank 0 has requeued the SLURM job)
    return 143 if got and rc != 0 else segments.SEGMENT_EXIT if seg and rc != 0 else rc
