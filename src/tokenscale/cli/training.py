"""``tokenscale train``: one run with dense checkpoints, in this process or relaunched with one rank per GPU on one
node or several (:mod:`tokenscale.training.launch` plans and runs the launch; the worker argv travels in
``WORKER_ARGV``). The segment signal (SIGURG) ends a segment of a run longer than a job
(:mod:`tokenscale.training.segments`): state saved, the SLURM job requeued, exit 75."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tokenscale import TokenscaleError
from tokenscale.cli.common import add_config, command, load_config, positive_int
from tokenscale.training.launch import WORKER_ARGV, plan_launch, run_plan

__all__ = ["WORKER_ARGV", "register"]


def register(sub) -> None:
    p = command(sub, "train", _train, "train one run with dense checkpoints (resumes from its own folder)",
                "SIGTERM saves state at the end of the current step and exits 143; SIGURG (sbatch --signal=URG@<s>) "
                "saves state, requeues the SLURM job ($SLURM_JOB_ID) and exits 75 (a run longer than a job); "
                "rerunning resumes.")
    add_config(p)
    p.add_argument("--run", required=True, help="run name from the config's runs list")
    p.add_argument("--data", help="prepared data folder (default: <results>/data)")
    p.add_argument("--out", help="run folder (default: <results>/runs/<run>)")
    p.add_argument("--threads", type=positive_int, help="CPU threads per node, split over that node's ranks")
    p.add_argument("--nproc", type=positive_int, help="ranks on this node (default: max(--gpus, the run's nproc))")
    p.add_argument("--gpus", type=int, default=0,
                   help="GPUs per node granted to this job (the workflow passes resources.gpus_per_node)")
    p.add_argument("--nodes", type=positive_int,
                   help="nodes of this run (default: the SLURM job's or step's node count, else 1); more than 1 "
                        "starts one task per node with srun, each joining one c10d rendezvous "
                        "(tokenscale.training.launch)")
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
    plan = plan_launch(os.environ, nproc=nproc, nodes=args.nodes, argv=sys.argv[1:])
    if plan.kind != "inline":
        if plan.kind in ("standalone", "srun"):
            from tokenscale.training.runlock import RunLock

            RunLock(out).check()  # a held folder stops here in one line, before any rank starts
        return run_plan(plan, label=f" for {run.name}")
    from tokenscale.training.trainer import Trainer
    from tokenscale.plan import expert_parallel_of

    data = Path(args.data) if args.data else Path(cfg["results"]) / "data"
    trainer = Trainer(run, data, out, threads=args.threads or run.threads or cfg["threads"],
                      sampler_weights=args.sampler_weights, init_from=args.init_from, progress=not args.quiet,
                      expert_parallel=expert_parallel_of(cfg, run.name))
    try:
        s = trainer.train()
    except SystemExit as e:  # the segment ended (lock released, state saved): run the job again
        if e.code in (segments.SEGMENT_EXIT, 143):
            trainer.dist.barrier()  # every rank has left train() before rank 0 requeues (srun --kill-on-bad-exit)
        if e.code == segments.SEGMENT_EXIT and trainer.dist.main:
            segments.requeue_job(run.name)
        raise
    if trainer.dist.main and not trainer.trained_nothing:  # else the trainer said "nothing to train"
        print(f"[{run.name}] done: {s['steps']} steps, {s['tokens_per_s']:,.0f} tokens/s, {s['wall_s']:.1f}s",
              file=sys.stderr)
    return 0
