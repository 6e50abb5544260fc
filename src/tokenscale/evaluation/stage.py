"""The evaluation stages. ``evaluate``: per-token loss of a token set under one or more checkpoints -> one eval HDF5
per checkpoint, either one file (``out``) or a block folder (``out_dir``: step<N>.h5 per checkpoint, then
MANIFEST.json last, which the consumer requires; docs/trajectories.md). ``assemble``: eval files -> one trajectory
shard (tokens x checkpoints)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tokenscale import TokenscaleError, atomic
from tokenscale.io import (EVAL_MANIFEST, expand_eval_paths, shard_ranges, token_set_info, write_eval_manifest,
                           write_trajectory_shard)
from tokenscale.series import step_from_name


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def checkpoint_step(name: str) -> int:
    """The step of a checkpoint folder named step<N>."""
    step = step_from_name(name)
    if step is None:
        raise TokenscaleError(f"evaluate: cannot tell the step of checkpoint folder {name!r} (expected step<N>)")
    return step


def block_outputs(checkpoints: list, out_dir) -> list[Path]:
    """The eval files of a block folder, one step<N>.h5 per checkpoint; refuses two checkpoints of one step and
    eval files of another job in the folder, then creates it and removes its manifest (incomplete until rewritten)."""
    out_dir = Path(out_dir)
    outs = [out_dir / f"step{checkpoint_step(Path(c).name):08d}.h5" for c in checkpoints]
    seen: dict = {}
    for c, o in zip(checkpoints, outs):
        if o.name in seen:
            raise TokenscaleError(f"evaluate: checkpoints {seen[o.name]} and {c} have the same step ({o.name})")
        seen[o.name] = c
    extra = sorted(x.name for x in out_dir.glob("step*.h5") if x.name not in seen)
    if extra:
        raise TokenscaleError(f"{out_dir / extra[0]}: not a checkpoint of this evaluate job; remove it "
                              f"(or the folder {out_dir}) and rerun")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.remove(out_dir / EVAL_MANIFEST)  # the folder is incomplete until the new manifest is written
    return outs


def run_evaluate(*, checkpoints: list, tokens, out=None, out_dir=None, batch_size: int, device: str,
                 log=_stderr) -> list[Path]:
    """Evaluate every checkpoint on ``tokens``; exactly one of ``out`` (one checkpoint) and ``out_dir`` (a block
    folder). ``log`` gets one line per checkpoint (and one for the manifest). Returns the eval files."""
    from tokenscale.evaluation.evaluate import evaluate_checkpoint  # torch

    if (out is None) == (out_dir is None):
        raise TokenscaleError("evaluate: give exactly one of --out (one checkpoint) or --out-dir")
    if out is not None and len(checkpoints) != 1:
        raise TokenscaleError(f"evaluate: --out takes one checkpoint, got {len(checkpoints)}; use --out-dir")
    outs = [Path(out)] if out is not None else block_outputs(checkpoints, out_dir)
    for i, (ckpt, path) in enumerate(zip(checkpoints, outs), 1):
        t0 = time.time()
        path = evaluate_checkpoint(ckpt, tokens, path, batch_size=batch_size, device=device)
        log(f"evaluate [{i}/{len(checkpoints)}]: {ckpt} -> {path} in {time.time() - t0:.1f}s")
    if out_dir is not None:
        m = write_eval_manifest(out_dir, outs, checkpoints=checkpoints)
        log(f"evaluate: {len(outs)} eval files -> {m}")
    return outs



def run_assemble(*, evals: list, tokens, out, shard: int, n_shards: int, run: str, config_hash: str = "",
                 axis: dict | None = None) -> dict:
    """Per-checkpoint eval files (or block folders, verified against their manifests) -> trajectory shard ``shard``
    of ``n_shards`` (a contiguous, even range of the token set's tokens). Returns {token_range, n_checkpoints}."""
    n = token_set_info(tokens, sha256=False)["n_tokens"]
    if not 0 <= shard < n_shards:
        raise TokenscaleError(f"--shard {shard} is outside [0, {n_shards})")
    rng = shard_ranges(n, n_shards)[shard]
    files = expand_eval_paths(evals)
    write_trajectory_shard(files, tokens, out, token_range=rng, shard_index=shard, shard_count=n_shards,
                           attrs={"run": run, "config_sha256": config_hash}, axis=axis)
    return {"token_range": rng, "n_checkpoints": len(files)}
