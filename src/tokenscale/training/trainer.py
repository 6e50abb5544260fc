"""Training: one linear loop, two engines (plain PyTorch, DeepSpeed), dense atomic checkpoints, resumable.

Both engines run on several ranks (nodes x ranks per node, one world; tokenscale.training.launch): DeepSpeed with
its ZeRO stage and optional expert parallelism, plain PyTorch as data parallelism (each rank a contiguous share of
the global batch, gradients averaged by one all-reduce per step: :func:`average_gradients`; the state is replicated
and rank 0 writes it).

Run folder layout (``results/runs/{run}/``)::

    checkpoints/step{step:08d}/   HF model + tokenizer + tokenscale.json, COMPLETE written last (atomic rename)
    state/                        resumable trainer state (model, optimizer, scheduler, RNG, data position;
                                  trainer.json written last), and summary.json: the train.json of the training that
                                  brought it to the final step (Snakemake removes train.json before a rerun)
    snapshots/step{step:08d}/     the same state kept at the run's ``snapshots`` steps (written once, never replaced
                                  by a resume), for decay branches to start from
    log.jsonl                     one line per optimizer step: step, loss, lr, tokens_seen, tokens_per_s, flops_per_s,
                                  mfu, grad_norm (throughput of that step alone)
    val_loss.csv                  step, tokens_seen, val_loss at every checkpoint (with ``in_loop_validation``;
                                  otherwise the workflow writes it from the per-token evaluation: ``tokenscale val-loss``)
    train.json                    written at the end: params, model FLOPs/token, tokens/s, achieved FLOP/s and MFU
                                  (end to end, and model steps only), where the time went (steps, validation,
                                  checkpoints, state, other), the device's peak and its source, the resolved
                                  fast-path settings (``perf``), ``branch``, ``steps_trained`` (optimizer steps this
                                  run computed itself) and ``epochs`` (passes over the training split)
    LOCK                          while a trainer runs: its host, PID, start time, SLURM job (tokenscale.training.runlock)

Data order: sample indices come from a position-indexed sampler (:mod:`tokenscale.training.sampler`); the global batch
at step ``s`` is positions ``[s*B, (s+1)*B)``, split contiguously over ranks, so the order is independent of
the number of ranks and resuming needs only the step. A run killed at any point (SIGKILL included) and
restarted continues from the last saved state and reproduces the uninterrupted loss curve bit for bit on CPU.
Without state/ it continues from its latest complete snapshot. A resume first checks that every checkpoint and
snapshot the run has passed is there and complete; when one is not, it trains again from the latest full state below
it (an own snapshot, the branch point, or step 0), which writes it back (bit-identical on CPU; later checkpoints are
rewritten by the same steps). A state folder that cannot be read (truncated trainer.json or trainer.pt) is one line
naming the file and what to delete. A resume that trains nothing keeps train.json's record of the training that did.
SIGTERM (what SLURM sends at the time limit) saves state at the end of the current step and exits 143.
A run longer than a job is trained in segments (:mod:`tokenscale.training.segments`): the segment signal (SIGURG,
``sbatch --signal=URG@<s>``) saves state at the end of the current step (a checkpoint or state write in progress
completes first) and exits 75 after requeueing its SLURM job; each segment's record is in train.json.
With ``single_pass`` (the default) a run that would need more sequences than the training split holds is
refused before it starts.

Decay branches: a run with ``branch: {from, step}`` starts from ``../{from}/snapshots/step{step:08d}/`` next to
its own folder (the trunk's complete state: weights, optimizer, RNG, data position) after checking that the
trunk is the same training (architecture, seed, batch, lr, ..., sampler) with the same lr multiplier at every
step below ``step``; its own schedule takes over at ``step``. On CPU its checkpoints are bit-identical to those
of the same run trained from scratch.

The model step: the HF transformer body (optionally ``torch.compile``-d), then the LM head and the loss through
:func:`tokenscale.training.loss.linear_cross_entropy` (fused and chunked by default), plus the MoE router's
load-balancing loss; the experts and attention implementations, fused AdamW, batch prefetch and bf16 autocast
(float32 master weights) are the run's ``perf`` settings (docs/training-speed.md). Checkpoints are plain HF
``save_pretrained`` folders whichever path trained them.

One trainer per run folder: rank 0 holds ``LOCK`` (:mod:`tokenscale.training.runlock`) before anything in the folder is
read or written; the other ranks wait for it at a barrier. Every file and folder is written through
:mod:`tokenscale.atomic` (a full disk ends in one line naming the output; no temp is left).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import random
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tokenscale import TokenscaleError, __version__
from tokenscale.atomic import atomic_output, disk_full_error, remove, write_json, write_text
from tokenscale.io import checkpoint_val_loss_rows, write_val_loss_csv
from tokenscale.config import RunConfig, lr_lambda
from tokenscale.data import TrainTokens, load_tokenizer
from tokenscale.evaluation.evaluate import load_token_set, mean_loss
from tokenscale.training import expert_parallel
from tokenscale.training.expert_parallel import check as check_expert_parallel
from tokenscale.training.loss import linear_cross_entropy
from tokenscale.training.model import build_model, model_stats, resolve_arch
from tokenscale.training.runlock import RunLock
from tokenscale.training import segments
from tokenscale.training.sampler import load_sampler, rank_slice
from tokenscale.training.throughput import achieved_flops, mfu, peak_flops

SIGTERM_EXIT = 143
SEGMENT_EXIT = segments.SEGMENT_EXIT

try:  # checkpoints are written dozens of times per run: no per-save progress bars
    from transformers.utils import logging as _hf_logging

    _hf_logging.disable_progress_bar()
except ImportError:  # pragma: no cover
    pass


# --------------------------------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self):
        if self.world > 1:
            torch.distributed.barrier()

    def mean_and_any(self, x: float, *flags: bool) -> tuple[float, ...]:
        """Mean of ``x`` over ranks and, for each flag, whether any rank has it set (one all-reduce)."""
        if self.world == 1:
            return (x, *flags)
        t = torch.tensor([x, *map(float, flags)], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return (float(t[0].item() / self.world), *(bool(v > 0) for v in t[1:].tolist()))


def init_process_group(device: torch.device) -> None:
    """The process group of a plain multi-rank run (RANK, WORLD_SIZE, MASTER_ADDR/PORT from the launcher): NCCL on
    GPUs, gloo on CPUs."""
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")


def average_gradients(params: list, world: int) -> None:
    """Data parallelism for the plain engine: every rank's gradients become their mean over the ranks (one
    all-reduce of one flat buffer, so every rank then takes the same optimizer step from the same weights).

    A parameter that got no gradient on any rank (an MoE expert no token was routed to) keeps ``grad = None``, as
    in a one-rank run, so AdamW skips it (no weight decay, no moment update); one that got a gradient on some
    ranks only counts zeros for the others."""
    has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [has.to(grads[0].device)])
    torch.distributed.all_reduce(flat)
    flat /= world
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p)  # views into this step's buffer (freed with the grads)
        offset += n
    for p, any_rank in zip(params, flat[offset:].tolist()):
        if any_rank == 0:
            p.grad = None


def dist_from_env() -> Dist:
    return Dist(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def threads_per_rank(threads: int, env=os.environ) -> int:
    """CPU threads of one rank: ``threads`` (the node's, as a job gets them per node) split over the ranks on this
    node -- torchrun's ``LOCAL_WORLD_SIZE``, else ``WORLD_SIZE`` (one node) -- at least 1. On N nodes the world is
    N times the ranks per node, so splitting over the world would leave each node's cores (N-1)/N idle."""
    local = int(env.get("LOCAL_WORLD_SIZE") or env.get("WORLD_SIZE") or 1)
    return max(1, threads // max(1, local))


def pick_device(name: str, dist: Dist) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TokenscaleError("device: cuda requested but torch.cuda.is_available() is False")
        return torch.device("cuda", dist.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name (train.json records it next to the MFU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    import platform

    return platform.processor() or "cpu"


# --------------------------------------------------------------------------------------------- fast paths
def resolve_perf(perf: dict, device: torch.device, family: str) -> dict:
    """The run's ``perf`` settings with every ``auto`` replaced by what runs on this device type.

    The choices are the measured ones (benchmarks/bench_train.py, docs/training-speed.md); the resolved
    dict is what train.json records."""
    cuda = device.type == "cuda"
    out = dict(perf)
    out["loss"] = "chunked" if perf["loss"] == "auto" else perf["loss"]
    if family != "moe":
        out["experts"] = None
    elif perf["experts"] == "auto":
        out["experts"] = "grouped_mm" if cuda else "eager"
    out["fused_adamw"] = cuda if perf["fused_adamw"] == "auto" else perf["fused_adamw"] == "on"
    return out


class BatchReader:
    """The batch of each step, in order; with ``prefetch`` the next step's batch is read in a background thread
    (into pinned memory on CUDA, copied without blocking)."""

    def __init__(self, read, device: torch.device, prefetch: bool):
        self.read, self.device = read, device  # read(step) -> (b, T+1) int64 numpy array
        self.pin = device.type == "cuda"
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="tokenscale-batches") if prefetch else None
        self.pending: tuple[int, object] | None = None

    def _host(self, step: int) -> torch.Tensor:
        t = torch.from_numpy(self.read(step))
        return t.pin_memory() if self.pin else t

    def get(self, step: int, last: int) -> torch.Tensor:
        """(b, T+1) ids of ``step`` on the device; starts reading ``step + 1`` when it is below ``last``."""
        if self.pending is not None and self.pending[0] == step:
            host = self.pending[1].result()
        else:
            host = self._host(step)
        self.pending = None
        if self.pool is not None and step + 1 < last:
            self.pending = (step + 1, self.pool.submit(self._host, step + 1))
        return host.to(self.device, non_blocking=self.pin)

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


# --------------------------------------------------------------------------------------------- state I/O
def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    np.random.set_state(s["numpy"])
    random.setstate(s["python"])


class Trainer:
    def __init__(self, run: RunConfig, data_dir: str | Path, run_dir: str | Path, *, threads: int | None = None,
                 sampler_weights: str | Path | None = None, init_from: str | Path | None = None, progress: bool = True,
                 expert_parallel: int = 1):
        self.run, self.data_dir, self.run_dir = run, Path(data_dir), Path(run_dir)
        self.dist = dist_from_env()
        self.progress = progress and self.dist.main
        self.ep = expert_parallel  # MoE expert parallelism (tokenscale.training.expert_parallel)
        arch = resolve_arch(run.model, run.seq_len)
        check_expert_parallel(self.ep, world=self.dist.world, engine=run.engine, where=f"run {run.name}",
                              num_experts=arch["num_experts"] if arch["family"] == "moe" else None)
        if threads:
            torch.set_num_threads(threads_per_rank(threads))
        self.device = pick_device(run.device, self.dist)
        self.tokens = TrainTokens(self.data_dir)
        if self.tokens.seq_len != run.seq_len:
            raise TokenscaleError(f"run {run.name}: seq_len {run.seq_len} differs from the prepared data ({self.tokens.seq_len})")
        if self.tokens.supervise != "all" and run.in_loop_validation:
            raise TokenscaleError(f"run {run.name}: its data supervises only the answer token; set in_loop_validation: "
                                  "false (its validation loss comes from the per-token evaluation)")
        self.sampler = self._sampler(sampler_weights)
        self.total = run.total_steps
        need = self.total * run.batch_size
        if run.single_pass and need > len(self.tokens):
            raise TokenscaleError(
                f"run {run.name}: tokens={run.tokens} need {need} training sequences but the training split has "
                f"{len(self.tokens)} (single_pass); lower tokens, add corpora or set single_pass: false")
        self.ckpt_steps = set(run.checkpoint_steps())
        self.snap_steps = set(run.snapshots)
        self.resumed = False
        self.trained_nothing = False  # set by _summary: the state was already at the final step
        self.micro = run.micro_batch_size or run.batch_size // self.dist.world
        self.local_batch = rank_slice(run.batch_size, self.dist.rank, self.dist.world)
        per_rank = run.batch_size // self.dist.world
        if per_rank % self.micro:
            raise TokenscaleError(f"run {run.name}: micro_batch_size={self.micro} does not divide the per-rank batch {per_rank}")
        self.accum = per_rank // self.micro
        self.init_from = Path(init_from) if init_from else None
        self.stop_requested = False
        self.segment_requested = False  # the segment signal: save state, end this job's segment
        self.history: list[dict] = []  # records of the segments before this one (from the saved state)

    # ------------------------------------------------------------------ setup
    def _build(self):
        run = self.run
        self.perf = resolve_perf(run.perf, self.device, resolve_arch(run.model, run.seq_len)["family"])
        self.model = build_model(run.model, self.tokens.vocab_size, run.seq_len, run.seed,
                                 attention=self.perf["attention"], experts=self.perf["experts"])
        if self.init_from is not None:
            self._load_weights(self.init_from)
        self.model.to(self.device)
        self.stats = model_stats(self.model, run.seq_len)
        # the transformer body (embeddings -> final norm); the LM head and the loss are computed in _forward_loss
        self.body = torch.compile(self.model.model) if self.perf["compile"] else self.model.model
        decay, no_decay = [], []
        for n, p in self.model.named_parameters():
            (no_decay if p.ndim < 2 or "norm" in n else decay).append(p)
        groups = [{"params": decay, "weight_decay": run.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.opt = torch.optim.AdamW(groups, lr=run.lr, betas=(0.9, 0.95), eps=1e-8,
                                     **({"fused": True} if self.perf["fused_adamw"] else {}))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lr_lambda(run.schedule, self.total))
        self.engine = None
        if run.engine == "deepspeed":
            self._init_deepspeed()
        elif self.dist.world > 1:
            init_process_group(self.device)
        valid = self.data_dir / "valid_tokens.h5"
        self.valid_ids = torch.as_tensor(load_token_set(valid)["input_ids"], dtype=torch.long)
        self.tokenizer = load_tokenizer(self.data_dir / "tokenizer")

    def _load_weights(self, path: Path):
        from safetensors.torch import load_file

        f = path / "model.safetensors" if path.is_dir() else path
        if not f.is_file():
            raise TokenscaleError(f"init_from: no model.safetensors in {path}")
        missing, unexpected = self.model.load_state_dict(load_file(str(f)), strict=False)
        bad = [k for k in missing if "lm_head" not in k] + list(unexpected)
        if bad:
            raise TokenscaleError(f"init_from: {f} does not match the run's architecture (e.g. {bad[0]})")

    def _init_deepspeed(self):
        import deepspeed

        p = Path(self.run.deepspeed_config)
        if not p.is_file():
            raise TokenscaleError(f"run {self.run.name}: deepspeed_config not found: {p}")
        ds = json.loads(p.read_text())
        stage = ds.get("zero_optimization", {}).get("stage", 0)
        if stage > 2:
            raise TokenscaleError(f"{p}: ZeRO stage {stage} is not supported (checkpoints need full weights on rank 0); use 0-2")
        ds.update(
            train_batch_size=self.run.batch_size,
            train_micro_batch_size_per_gpu=self.micro,
            gradient_accumulation_steps=self.accum,
            gradient_clipping=self.run.grad_clip or 0.0,
            steps_per_print=10**9,
        )
        ds.setdefault("wall_clock_breakdown", False)
        if not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            deepspeed.init_distributed(dist_backend=backend)
        if self.ep > 1:  # AutoEP replaces the MoE blocks; the optimizer is built over its parameters
            ds["expert_parallel"] = expert_parallel.ds_section(self.ep, self.device.type)
            lam = lr_lambda(self.run.schedule, self.total)
            params, opt, sched = expert_parallel.optimizer_factories(
                self.opt, lambda o: torch.optim.lr_scheduler.LambdaLR(o, lam))
            with expert_parallel.recorder_registry_compat():
                self.engine, self.opt, _, self.sched = deepspeed.initialize(
                    model=self.model, model_parameters=params, optimizer=opt, lr_scheduler=sched, config=ds)
            return
        self.engine, self.opt, _, self.sched = deepspeed.initialize(
            model=self.model, optimizer=self.opt, lr_scheduler=self.sched, config=ds
        )

    # ------------------------------------------------------------------ state
    @property
    def state_dir(self) -> Path:
        return self.run_dir / "state"

    def snapshot_dir(self, step: int) -> Path:
        return self.run_dir / "snapshots" / f"step{step:08d}"

    def _sampler(self, weights):
        """The run's data order: a reshape arm drawing from a pool (reshaped / uniform) needs its weights and uses
        its own data-order seed; every other run is the seeded permutation (or the given weights) of its seed."""
        rs = self.run.reshape
        if rs is not None and rs["arm"] != "original":
            if weights is None:
                raise TokenscaleError(f"run {self.run.name}: reshape arm {rs['arm']!r} needs --sampler-weights "
                                      f"(the experiment's weights-{rs['arm']}.npy)")
            return load_sampler(len(self.tokens), rs["data_seed"], weights)
        return load_sampler(len(self.tokens), self.run.seed, weights)

    @property
    def branch_dir(self) -> Path | None:
        """The trunk's snapshot a branched run starts from: ``<run dir>/../<from>/snapshots/step<step:08d>/``."""
        b = self.run.branch
        return None if b is None else self.run_dir.absolute().parent / b["from"] / "snapshots" / f"step{b['step']:08d}"

    def _branch_key(self) -> dict:
        """What a branch checks against its trunk's snapshot (:meth:`RunConfig.branch_key` plus the sampler), as JSON."""
        key = {**self.run.branch_key(), "sampler": self.sampler.state()}
        if self.engine is not None:
            key["world"] = self.dist.world  # DeepSpeed's optimizer state is partitioned over the ranks
            if self.ep > 1:  # and the experts over the expert-parallel groups
                key["expert_parallel"] = self.ep
        return json.loads(json.dumps(key))

    def _save_state(self, step: int, dest: Path | None = None):
        """The full trainer state at ``step`` into ``dest`` (default state/): dest.tmp/ is filled by every rank, then
        rank 0 writes trainer.json (the completion marker) last and publishes it (swapped through dest.old/)."""
        dest = dest or self.state_dir
        meta = {"step": step, "run": self.run.name, "run_hash": self.run.hash, "position": step * self.run.batch_size,
                "sampler": self.sampler.state(), "engine": self.run.engine, "world": self.dist.world,
                "schedule": self.run.schedule, "total_steps": self.total, "branch_key": self._branch_key(),
                "segments": self.history, "expert_parallel": self.ep}
        if self.dist.main:
            with atomic_output(dest, is_dir=True) as tmp:
                self._write_state(tmp, step, dest)
                write_json(tmp / "trainer.json", meta)
        else:
            self._write_state(dest.with_name(dest.name + ".tmp"), step, dest)
        self.dist.barrier()

    def _save_snapshot(self, step: int):
        """Keep the state at ``step`` in snapshots/ once: a complete snapshot of this run config is not rewritten."""
        d = self.snapshot_dir(step)
        if self._snapshot_ok(d):
            return
        t = time.time()
        self._save_state(step, d)
        self.seconds["state"] += time.time() - t

    def _write_state(self, tmp: Path, step: int, dest: Path):
        self.dist.barrier()  # rank 0 has created tmp
        try:
            if self.engine is not None:
                self.engine.save_checkpoint(str(tmp), tag="ds", client_state={"step": step})
            elif self.dist.main:
                torch.save({"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                            "sched": self.sched.state_dict(), "rng": _rng_state()}, tmp / "trainer.pt")
        except Exception as e:  # ranks > 0 write outside atomic_output: say "disk full" here too
            full = disk_full_error(e, dest)
            if full is not None:
                raise full from None
            raise
        self.dist.barrier()  # every rank's part is written

    def _load_state(self) -> int:
        """The step to continue from (sets ``self.resumed``): this run's own state (:meth:`_own_state`), else the
        trunk's snapshot for a branched run, else 0. When a checkpoint or snapshot the run has already passed is
        missing or incomplete, the run restarts from the latest full state below it instead (:meth:`_rewind`), so
        that training on rebuilds it."""
        d, step = self._own_state()
        missing = self._missing(step) if d is not None else []
        if missing:
            d, step = self._rewind(missing)
        self.dist.barrier()  # every rank has decided before rank 0 cleans the folder
        if d is None:
            return self._load_branch() if self.run.branch else 0
        self._restore(d)
        self.resumed = True
        self.history = segments.history_before(self._read_meta(d).get("segments"), step)
        return step

    def _own_state(self) -> tuple[Path | None, int]:
        """This run's state/ (state.old/ after a kill between the two renames of :meth:`_save_state`), else its
        latest complete snapshot; (None, 0) when it has neither. A state/ of another config or engine is one line."""
        for d in (self.state_dir, self.run_dir / "state.old"):
            if (d / "trainer.json").is_file():
                meta = self._read_meta(d)
                if meta["run_hash"] != self.run.hash:
                    raise TokenscaleError(
                        f"run {self.run.name}: saved state in {d} was written by a different run config; "
                        "delete that folder to start over or restore the config")
                if meta["engine"] != self.run.engine:
                    raise TokenscaleError(f"run {self.run.name}: state in {d} is from engine {meta['engine']!r}, "
                                          f"not {self.run.engine!r}")
                if meta.get("expert_parallel", 1) != self.ep:
                    raise TokenscaleError(f"run {self.run.name}: state in {d} was written with expert_parallel="
                                          f"{meta.get('expert_parallel', 1)}, not {self.ep}; restore that setting")
                return d, int(meta["step"])
        snaps = self._own_snapshots()
        return (self.snapshot_dir(snaps[-1]), snaps[-1]) if snaps else (None, 0)

    def _read_meta(self, d: Path) -> dict:
        """A state folder's trainer.json; an unreadable or truncated one is one line naming it and the remedy."""
        f = d / "trainer.json"
        try:
            meta = json.loads(f.read_text())
            if not isinstance(meta, dict) or not {"step", "run_hash", "engine"} <= meta.keys():
                raise ValueError("not an object with step, run_hash and engine")
            meta["step"] = int(meta["step"])
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
            raise self._corrupt(f, d, e) from None
        return meta

    def _corrupt(self, f: Path, d: Path, e: BaseException) -> TokenscaleError:
        why = (str(e).strip().splitlines() or [""])[0].split(". ")[0][:120]  # its first sentence
        return TokenscaleError(f"{f}: unreadable trainer state ({type(e).__name__}: {why}); {self._remedy(d)}")

    def _remedy(self, d: Path) -> str:
        """What to delete and rerun when the state folder ``d`` cannot be read."""
        name = self.run.name
        if self.run.branch and d == self.branch_dir:
            return f"delete {d} and train run {self.run.branch['from']} again (it rebuilds the snapshot), then rerun"
        if d.parent == self.run_dir / "snapshots":
            return f"delete {d} and rerun (run {name} rebuilds it from an earlier state)"
        snaps = self._own_snapshots()
        since = (f"its snapshot at step {snaps[-1]}" if snaps else
                 f"its branch point (run {self.run.branch['from']}'s snapshot at step {self.run.branch['step']})"
                 if self.run.branch else "step 0, rewriting its checkpoints")
        return f"delete {d} and rerun (run {name} then resumes from {since})"

    def _snapshot_ok(self, d: Path) -> bool:
        """Whether ``d`` holds a complete state of this run config (trainer.json, written last, and the weights)."""
        try:
            meta = json.loads((d / "trainer.json").read_text())
            ok = meta["run_hash"] == self.run.hash and meta["engine"] == self.run.engine
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
            return False
        return ok and ((d / "trainer.pt").is_file() if self.run.engine == "plain" else (d / "ds").is_dir())

    def _own_snapshots(self) -> list[int]:
        """Steps of this run's complete snapshots on disk (of this run config), ascending."""
        root = self.run_dir / "snapshots"
        steps = [int(p.name[4:]) for p in root.glob("step*") if p.name[4:].isdigit()] if root.is_dir() else []
        return sorted(s for s in steps if self._snapshot_ok(self.snapshot_dir(s)))

    def checkpoint_dir(self, step: int) -> Path:
        return self.run_dir / "checkpoints" / f"step{step:08d}"

    def _missing(self, step: int) -> list[tuple[int, Path]]:
        """The checkpoints at or below ``step`` and the snapshots below it (one at ``step`` is written from the state
        itself) that this run writes, absent or incomplete: [(step, folder)], ascending."""
        low = self.run.branch["step"] if self.run.branch else 0  # a branch's earlier steps are its trunk's
        ck = [(s, self.checkpoint_dir(s)) for s in self.ckpt_steps if low < s <= step]
        out = [(s, d) for s, d in ck if not ((d / "COMPLETE").is_file() and (d / "model.safetensors").is_file())]
        snaps = [(s, self.snapshot_dir(s)) for s in self.snap_steps if low <= s < step]
        out += [(s, d) for s, d in snaps if not self._snapshot_ok(d)]
        return sorted(out)

    def _rewind(self, missing: list[tuple[int, Path]]) -> tuple[Path | None, int]:
        """The latest full state below the first missing output: an own snapshot, else (None) the branch point or 0.

        Training on from there is the same training (on CPU bit for bit), so it writes the missing outputs again;
        later checkpoints are rewritten by the same steps."""
        first = missing[0][0]
        snaps = [s for s in self._own_snapshots() if s < first]
        start = self.run.branch["step"] if self.run.branch else 0
        d, step = (self.snapshot_dir(snaps[-1]), snaps[-1]) if snaps else (None, start)
        if self.dist.main:
            names = ", ".join(str(p.relative_to(self.run_dir)) for _, p in missing)
            since = (f"its snapshot at step {step}" if d is not None else
                     f"its branch point (step {step})" if self.run.branch else "step 0")
            print(f"[{self.run.name}] missing or incomplete: {names}; rebuilding by training again from {since}",
                  file=sys.stderr, flush=True)
        return d, step

    def _restore(self, d: Path, schedule: bool = True):
        """Load model, optimizer, RNG and (with ``schedule``) the lr scheduler from a state folder; a folder that
        cannot be loaded (truncated, missing a file) is one line naming it and the remedy."""
        try:
            self._restore_from(d, schedule)
        except TokenscaleError:
            raise
        except (OSError, EOFError, RuntimeError, ValueError, KeyError, TypeError, AttributeError, ImportError,
                pickle.UnpicklingError) as e:
            raise self._corrupt(d / ("trainer.pt" if self.engine is None else "ds"), d, e) from None

    def _restore_from(self, d: Path, schedule: bool):
        if self.engine is not None:
            _, client = self.engine.load_checkpoint(str(d), tag="ds", load_lr_scheduler_states=schedule)
            if client is None:
                raise TokenscaleError(f"{d}: DeepSpeed state could not be loaded; {self._remedy(d)}")
        else:
            st = torch.load(d / "trainer.pt", map_location=self.device, weights_only=False)
            self.model.load_state_dict(st["model"])
            self.opt.load_state_dict(st["opt"])
            if schedule:
                self.sched.load_state_dict(st["sched"])
            _set_rng_state(st["rng"])

    def _load_branch(self) -> int:
        """Start from the trunk's snapshot at the branch step (checked first), with this run's own schedule there."""
        d, step = self.branch_dir, self.run.branch["step"]
        if not (d / "trainer.json").is_file():
            raise TokenscaleError(f"run {self.run.name}: branch snapshot not found: {d} "
                                  f"(train run {self.run.branch['from']} with snapshots: [{step}] first; in the "
                                  f"workflow: delete {d.parent.parent / 'train.json'} and rerun)")
        self._check_trunk(self._read_meta(d), d)
        self._restore(d, schedule=False)
        self._position_schedule(step)
        return step

    def _check_trunk(self, meta: dict, d: Path):
        """One line if the snapshot in ``d`` is not the same training as this run up to the branch step."""
        src, step, name = self.run.branch["from"], self.run.branch["step"], self.run.name
        theirs, own = meta.get("branch_key") or {}, self._branch_key()
        if self.run.reshape is not None and self.run.reshape["arm"] != "original":
            own.pop("sampler")  # a reshape arm continues the trunk's training with another data order, by design
        if meta.get("step") != step:
            raise TokenscaleError(f"run {name}: snapshot {d} holds step {meta.get('step')}, not the branch step {step}")
        for key in own:
            if theirs.get(key) != own[key]:
                raise TokenscaleError(f"run {name}: trunk {src} is incompatible ({d}): {key} is {theirs.get(key)!r} "
                                      f"there, {own[key]!r} here")
        f, g = lr_lambda(meta["schedule"], meta["total_steps"]), lr_lambda(self.run.schedule, self.total)
        for s in range(step):
            if f(s) != g(s):
                raise TokenscaleError(f"run {name}: lr schedule differs from trunk {src}'s ({d}) at step {s} below the "
                                      f"branch step {step}: lr x{f(s):.6g} there, x{g(s):.6g} here")

    def _position_schedule(self, step: int):
        """This run's own LambdaLR as if it had stepped ``step`` times, the optimizer's lr included."""
        lam = lr_lambda(self.run.schedule, self.total)
        self.sched.last_epoch = step
        groups = self.sched.optimizer.param_groups
        for g, base in zip(groups, self.sched.base_lrs):
            g["lr"] = base * lam(step)
        self.sched._last_lr = [g["lr"] for g in groups]

    # ------------------------------------------------------------------ checkpoints
    def _val_loss(self) -> float:
        return mean_loss(self.model, self.valid_ids, device=self.device)

    def _save_checkpoint(self, step: int, val_loss: float | None):
        """A dense HF checkpoint written by rank 0; with expert parallelism every rank calls it (the experts are
        gathered: tokenscale.training.expert_parallel)."""
        model = self.model if self.ep == 1 else expert_parallel.dense_model(self.model, self.dist.main)
        if not self.dist.main:
            return
        final = self.checkpoint_dir(step)
        with atomic_output(final, is_dir=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            write_json(tmp / "tokenscale.json", {
                "run": self.run.name, "step": step, "tokens_seen": step * self.run.batch_size * self.run.seq_len,
                "val_loss": val_loss, "config_sha256": self.run.hash, "tokenscale_version": __version__,
                "model_stats": self.stats.as_dict(),
            })
            write_text(tmp / "COMPLETE", f"{step}\n")

    def _write_val_csv(self):
        write_val_loss_csv(self.run_dir / "val_loss.csv", checkpoint_val_loss_rows(self.run_dir))

    def _clean_after(self, step: int):
        """Remove anything a killed run left beyond ``step``: temp dirs, later checkpoints, later log lines."""
        ck = self.run_dir / "checkpoints"
        if ck.is_dir():
            for d in ck.iterdir():
                if d.name.endswith((".tmp", ".old")) or not (d / "COMPLETE").is_file():
                    remove(d)
                elif d.name.startswith("step") and int(d.name[4:]) > step:
                    remove(d)
        snaps = self.run_dir / "snapshots"
        if snaps.is_dir():  # complete snapshots are kept, whatever step the run resumes from
            for d in snaps.iterdir():
                if d.name.endswith((".tmp", ".old")) or not (d / "trainer.json").is_file():
                    remove(d)
        log = self.run_dir / "log.jsonl"
        if log.is_file():
            keep = []
            for line in log.read_text().splitlines():
                try:
                    if json.loads(line)["step"] <= step:
                        keep.append(line)
                except (json.JSONDecodeError, KeyError):
                    break  # a torn last line from a kill or a full disk
            write_text(log, "".join(k + "\n" for k in keep))

    # ------------------------------------------------------------------ loop
    def _forward_loss(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (b, T+1) -> (training loss incl. router aux loss, CE) scalars.

        The body runs as the HF model's own forward would (DeepSpeed ZeRO 1-2 needs no forward hooks); the LM
        head and cross-entropy go through :func:`tokenscale.training.loss.linear_cross_entropy`."""
        return self._loss_on(ids[:, :-1], ids[:, 1:])

    def _loss_on(self, inp: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs (b, T), labels (b, T) -> (training loss, CE); with ``supervise: last`` (synthetic data) only the
        last label of each row (the answer) enters the loss: the others are never read."""
        cfg = self.model.config
        is_moe = hasattr(cfg, "num_experts")
        kw = {"output_router_logits": True} if is_moe else {}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.run.precision == "bf16"):
            out = self.body(input_ids=inp, **kw)
            h = out.last_hidden_state  # (b, T, d)
            if self.tokens.supervise == "last":
                h, tgt = h[:, -1:], tgt[:, -1:]  # (b, 1, d), (b, 1)
            ce = linear_cross_entropy(h.reshape(-1, h.shape[-1]), self.model.lm_head.weight, tgt.reshape(-1),
                                      self.perf["loss"])
        loss = ce
        if is_moe:
            from transformers.models.qwen3_moe.modeling_qwen3_moe import load_balancing_loss_func

            aux = load_balancing_loss_func(out.router_logits, cfg.num_experts, cfg.num_experts_per_tok, None)
            loss = ce + cfg.router_aux_loss_coef * aux.float()
        return loss, ce

    def _on_sigterm(self, signum, frame):
        self.stop_requested = True

    def _on_segment_signal(self, signum, frame):
        self.segment_requested = True

    def _listen(self) -> list:
        """Install the SIGTERM and segment-signal handlers; returns the previous ones (for :meth:`train`)."""
        old = [(signal.SIGTERM, signal.signal(signal.SIGTERM, self._on_sigterm)),
               (segments.SEGMENT_SIGNAL, signal.signal(segments.SEGMENT_SIGNAL, self._on_segment_signal))]
        self.segment_requested = self.segment_requested or segments.requested_early()
        return old

    def train(self) -> dict:
        """Train to the last step, resuming from the folder's state; rank 0 holds the folder's lock throughout."""
        handlers = []  # SIGTERM, segment signal: rank 0 at once (the lock is released on the way out); ranks > 0 after
        if self.dist.main:  # the barrier
            handlers += self._listen()
        lock = RunLock(self.run_dir) if self.dist.main else None
        try:
            if lock is not None:
                lock.acquire()  # before the model is built: a refused trainer takes no memory from the holder
            self._build()
            self.dist.barrier()  # ranks > 0 read or write the folder only once rank 0 holds its lock
            if not self.dist.main:
                handlers += self._listen()
            if self.stop_requested and self.dist.world == 1:  # SIGTERM before the first step: nothing to save
                raise SystemExit(SIGTERM_EXIT)
            return self._train()
        finally:
            if lock is not None:
                lock.release()
            for sig, h in handlers:
                signal.signal(sig, h)

    def _train(self) -> dict:
        run = self.run
        start = self._load_state()
        if self.dist.main:
            self._clean_after(start if self.resumed else 0)  # a fresh branch keeps nothing of an earlier attempt
        self.dist.barrier()
        log_path = self.run_dir / "log.jsonl"
        if not self.resumed and self.dist.main:
            write_text(log_path, "")
        self.log = open(log_path, "a") if self.dist.main else None
        self.peak, self.peak_source = peak_flops(self.device, run.precision, run.perf["peak_tflops"])
        self.seconds = {"steps": 0.0, "validation": 0.0, "checkpoints": 0.0, "state": 0.0}
        t_begin = time.time()
        self.segment = segments.open_segment(start, run.batch_size * run.seq_len)
        if start in self.snap_steps:  # a snapshot step added to a run that has passed it only now
            self._save_snapshot(start)
        if self.progress:
            how = (f"resuming at step {start}" if self.resumed else
                   f"branching from {run.branch['from']} at step {start}" if run.branch else "from scratch")
            print(f"[{run.name}] {self.stats.total_params/1e6:.2f}M params ({self.stats.active_params/1e6:.2f}M active), "
                  f"{self.total} steps, engine={run.engine}, world={self.dist.world}, device={self.device}, "
                  f"perf={self.perf}, {how}", file=sys.stderr, flush=True)
        model = self.engine if self.engine is not None else self.model
        model.train()
        batches = BatchReader(self._read_batch, self.device, self.perf["prefetch"])
        try:
            for step in range(start, self.total):
                t0 = time.time()
                loss_val, lr, gn, stop, seg = self._step(batches.get(step, self.total))
                dt = time.time() - t0
                self.seconds["steps"] += dt
                done = step + 1
                self._log_step(log_path, done, loss_val, lr, gn, dt)
                if not math.isfinite(loss_val):
                    raise TokenscaleError(f"run {run.name}: loss is {loss_val} at step {done}; lower lr or check the data")
                self._save_after_step(done, model, loss_val, lr, start, t_begin)
                if self.dist.world == 1:  # also a signal that came during this step's saves
                    stop, seg = self.stop_requested, self.segment_requested
                if stop or (seg and done < self.total):  # a segment signal in the last step: the run completes
                    self._end_segment(done, "sigterm" if stop else "signal")
        finally:
            batches.close()
            if self.log is not None:
                with contextlib.suppress(OSError):  # a flush that failed (full disk) fails again here
                    self.log.close()
        return self._summary(start, time.time() - t_begin)

    def _read_batch(self, step: int) -> np.ndarray:
        """(B/W, T+1) token ids of this rank's share of the global batch of ``step``."""
        idx = self.sampler.indices(step * self.run.batch_size, self.run.batch_size)[self.local_batch]  # (B/W,)
        return self.tokens.batch(idx)

    def _step(self, batch: torch.Tensor) -> tuple[float, float, float, bool, bool]:
        """One optimizer step on ``batch`` (B/W, T+1) -> (mean CE over ranks, lr used, grad norm, SIGTERM?, segment
        signal?)."""
        ce_sum = 0.0
        for m in range(self.accum):
            loss, ce = self._forward_loss(batch[m * self.micro:(m + 1) * self.micro])
            if self.engine is not None:
                self.engine.backward(loss)
                self.engine.step()
            else:
                (loss / self.accum).backward()
            ce_sum += ce.item()
        lr = self.opt.param_groups[0]["lr"]
        if self.engine is None:
            if self.dist.world > 1:
                average_gradients(list(self.model.parameters()), self.dist.world)
            gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.run.grad_clip or float("inf")).item()
            self.opt.step()
            self.sched.step()
            self.opt.zero_grad(set_to_none=True)
        else:
            gn = float(self.engine.get_global_grad_norm() or float("nan"))
        # ranks stop at the same step even if a signal reaches them at different times
        return self._step_result(ce_sum / self.accum, lr, gn)

    def _step_result(self, ce: float, lr: float, gn: float) -> tuple[float, float, float, bool, bool]:
        """(mean CE over ranks, lr, grad norm, SIGTERM on any rank?, segment signal on any rank?)."""
        loss_val, stop, seg = self.dist.mean_and_any(ce, self.stop_requested, self.segment_requested)
        return loss_val, lr, gn, stop, seg

    def _end_segment(self, done: int, reason: str):
        """Save state at ``done`` with this segment's record in it and exit: 143 on SIGTERM, else
        :data:`SEGMENT_EXIT` (the CLI then requeues the SLURM job, after the lock is released)."""
        tps = self.run.batch_size * self.run.seq_len
        self.history = self.history + [segments.close_segment(self.segment, done, tps, reason)]
        self._save_state(done)
        if self.progress:
            what = "SIGTERM" if reason == "sigterm" else "segment signal"
            print(f"[{self.run.name}] {what}: state saved at step {done}; exiting", file=sys.stderr, flush=True)
        raise SystemExit(SIGTERM_EXIT if reason == "sigterm" else SEGMENT_EXIT)

    def _throughput(self, tokens: int, seconds: float) -> dict:
        """tokens/s, achieved model FLOP/s and MFU (:mod:`tokenscale.training.throughput`) over all ranks."""
        tps = tokens / max(seconds, 1e-9)
        return {"tokens_per_s": tps, "flops_per_s": achieved_flops(tps, self.stats.model_flops_per_token),
                "mfu": mfu(tps, self.stats.model_flops_per_token, self.peak * self.dist.world)}

    def _log_step(self, log_path: Path, done: int, loss_val: float, lr: float, gn: float, dt: float):
        if self.log is None:
            return
        tokens_per_step = self.run.batch_size * self.run.seq_len
        row = {"step": done, "loss": loss_val, "lr": lr, "tokens_seen": done * tokens_per_step,
               **self._throughput(tokens_per_step, dt), "grad_norm": gn}
        try:
            self.log.write(json.dumps(row) + "\n")
            self.log.flush()
        except OSError as e:  # an append cannot be atomic; a torn last line is dropped on resume
            full = disk_full_error(e, log_path)
            if full is not None:
                raise full from None
            raise

    def _save_after_step(self, done: int, model, loss_val: float, lr: float, start: int, t_begin: float):
        """Snapshot, checkpoint (with in-loop validation) at the planned steps, trainer state every ``state_every``.

        The snapshot comes before the state: a run resumed from the state of a step has that step's snapshot."""
        if done in self.snap_steps:
            self._save_snapshot(done)
        if done in self.ckpt_steps:
            model.eval()
            val = None
            every = self.ep > 1  # expert parallelism: the forward pass and the checkpoint need every rank
            if (self.dist.main or every) and self.run.in_loop_validation:
                t = time.time()
                val = self._val_loss()
                self.seconds["validation"] += time.time() - t
            if self.dist.main or every:
                t = time.time()
                self._save_checkpoint(done, val)
                if val is not None and self.dist.main:
                    self._write_val_csv()
                self.seconds["checkpoints"] += time.time() - t
            model.train()
            self._timed_state_save(done)
            if self.progress:
                el = time.time() - t_begin
                shown = "" if val is None else f" val {val:.4f}"
                print(f"[{self.run.name}] step {done}/{self.total} loss {loss_val:.4f}{shown} lr {lr:.2e} "
                      f"{(done - start) * self.run.batch_size * self.run.seq_len / el:,.0f} tok/s",
                      file=sys.stderr, flush=True)
        elif done % self.run.state_every == 0:
            self._timed_state_save(done)

    def _timed_state_save(self, done: int):
        t = time.time()
        self._save_state(done)
        self.seconds["state"] += time.time() - t

    @property
    def _record_path(self) -> Path:
        """The copy of train.json kept with the state it describes (Snakemake removes train.json before a rerun)."""
        return self.state_dir / "summary.json"

    def _kept_record(self) -> dict | None:
        """train.json of the training that brought the state to its final step (itself, else the copy in state/)."""
        for f in (self.run_dir / "train.json", self._record_path):
            with contextlib.suppress(OSError, ValueError, TypeError):
                rec = json.loads(f.read_text())
                if rec.get("config_sha256") == self.run.hash and rec.get("steps") == self.total:
                    return rec
        return None

    def _summary(self, start: int, wall: float) -> dict:
        """train.json: what this call trained. A call that trained nothing (the state was at the final step and
        nothing was missing) keeps the record of the training that did, instead of one of zero tokens."""
        self.trained_nothing = start == self.total
        rec = self._kept_record() if self.trained_nothing else None
        if start == self.total and self.dist.main:
            kept = "train.json keeps its record" if rec else "no earlier train.json record was kept"
            print(f"[{self.run.name}] nothing to train: its state is at the final step {self.total} and every "
                  f"checkpoint and snapshot is complete; {kept}", file=sys.stderr, flush=True)
        summary = rec or self._new_summary(start, wall)
        if self.dist.main:
            write_json(self.run_dir / "train.json", summary)
            if (rec or start < self.total) and (self.state_dir / "trainer.json").is_file():
                write_json(self._record_path, summary)
        self.dist.barrier()
        return summary

    def _new_summary(self, start: int, wall: float) -> dict:
        run = self.run
        tokens = (self.total - start) * run.batch_size * run.seq_len
        summary = {
            "run": run.name, "axis": run.axis, "steps": self.total, "tokens": self.total * run.batch_size * run.seq_len,
            "resumed_from": start if self.resumed else 0, "branch": run.branch,
            "steps_trained": self.total - (run.branch["step"] if run.branch else 0),
            "epochs": self.total * run.batch_size / len(self.tokens), "snapshots": sorted(self.snap_steps),
            "wall_s": wall, **self._throughput(tokens, wall),
            "steps_only": self._throughput(tokens, self.seconds["steps"]),
            "seconds": {**self.seconds, "other": wall - sum(self.seconds.values())},
            "model_flops_per_token": self.stats.model_flops_per_token,
            "peak_flops_per_s": self.peak if math.isfinite(self.peak) else None, "peak_source": self.peak_source,
            "perf": self.perf, "in_loop_validation": run.in_loop_validation,
            "precision": run.precision, "engine": run.engine, "world": self.dist.world, "device": str(self.device),
            "device_name": device_name(self.device),
            "checkpoints": sorted(self.ckpt_steps), "config_sha256": run.hash, "model_stats": self.stats.as_dict(),
            "arch": run.model, "tokenscale_version": __version__,
            "segments": self.history + [segments.close_segment(self.segment, self.total, run.batch_size * run.seq_len,
                                                               "complete")],
        }
        return summary
