"""The evaluation stages. ``evaluate``: per-token loss of a token set under one or more checkpoints -> one eval HDF5
per checkpoint, either one file (``out``) or a block folder (``out_dir``: step<N>.h5 per checkpoint, then
MANIFEST.json last, which the consumer requires; docs/trajectories.md). ``assemble``: eval files -> one trajectory
shard (tokens x checkpoints).

Watch cache (``tokenscale watch``, :mod:`tokenscale.forecast.watch`): a block folder's sibling ``watch-cache/`` holds
eval files written while the run trained, named by the checkpoint's and the token set's sha256
(:func:`cached_eval_path`); a block job copies a cached file whose name matches and whose losses verify instead of
running the model (same bytes as the cache, same losses as a fresh evaluation)."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

from tokenscale import TokenscaleError, atomic
from tokenscale.io import (EVAL_MANIFEST, expand_eval_paths, shard_ranges, token_set_info, write_eval_manifest,
                           write_trajectory_shard)
from tokenscale.io.checksum import sha256_file
from tokenscale.series import step_from_name

WATCH_CACHE = "watch-cache"  # evals/{tokens}/{source}/watch-cache/: eval files written by tokenscale watch


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
                 cache=None, log=_stderr) -> list[Path]:
    """Evaluate every checkpoint on ``tokens``; exactly one of ``out`` (one checkpoint) and ``out_dir`` (a block
    folder, whose watch cache is ``cache``, by default its sibling ``watch-cache/``). ``log`` gets one line per
    checkpoint (and one for the manifest). Returns the eval files."""
    from tokenscale.evaluation.evaluate import evaluate_checkpoint  # torch

    if (out is None) == (out_dir is None):
        raise TokenscaleError("evaluate: give exactly one of --out (one checkpoint) or --out-dir")
    if out is not None and len(checkpoints) != 1:
        raise TokenscaleError(f"evaluate: --out takes one checkpoint, got {len(checkpoints)}; use --out-dir")
    outs = [Path(out)] if out is not None else block_outputs(checkpoints, out_dir)
    if out_dir is None:
        cache = None
    else:
        cache = Path(out_dir).parent / WATCH_CACHE if cache is None else Path(cache)
    ts_sha = sha256_file(tokens) if cache is not None and cache.is_dir() else ""
    for i, (ckpt, path) in enumerate(zip(checkpoints, outs), 1):
        t0 = time.time()
        hit = reuse_cached_eval(cache, ckpt, ts_sha, path) if ts_sha else None
        if hit is None:
            path = evaluate_checkpoint(ckpt, tokens, path, batch_size=batch_size, device=device)
        how = f"reused {hit}" if hit is not None else "evaluated"
        log(f"evaluate [{i}/{len(checkpoints)}]: {ckpt} -> {path} {how} in {time.time() - t0:.1f}s")
    if out_dir is not None:
        m = write_eval_manifest(out_dir, outs, checkpoints=checkpoints)
        log(f"evaluate: {len(outs)} eval files -> {m}")
    return outs


def parse_blocks(text: str) -> list[dict]:
    """``--blocks``: a JSON list of {"checkpoints": [folder, ...], "out_dir": folder, "watch_cache": folder (optional)},
    one block folder each (a bundle of sources evaluated by one job)."""
    try:
        blocks = json.loads(text)
        if not isinstance(blocks, list) or not blocks:
            raise ValueError("not a non-empty list")
        return [{"checkpoints": [str(c) for c in b["checkpoints"]], "out_dir": str(b["out_dir"]),
                 "cache": b.get("watch_cache")} for b in blocks]
    except (ValueError, KeyError, TypeError) as e:
        raise TokenscaleError(f"--blocks is not a JSON list of {{\"checkpoints\": [...], \"out_dir\": ...}}: {e}") from None


def run_evaluate_blocks(blocks: list[dict], *, tokens, batch_size: int, device: str, log=_stderr) -> list[Path]:
    """Evaluate several block folders in one process (torch, the model code and the token set are loaded once):
    each as :func:`run_evaluate` with ``out_dir`` (its manifest written when its last checkpoint is done)."""
    outs = []
    for i, b in enumerate(blocks, 1):
        log(f"evaluate: block {i}/{len(blocks)}: {len(b['checkpoints'])} checkpoints -> {b['out_dir']}")
        outs += run_evaluate(checkpoints=b["checkpoints"], tokens=tokens, out_dir=b["out_dir"], cache=b.get("cache"),
                             batch_size=batch_size, device=device, log=log)
    return outs


def checkpoint_sha256(ckpt) -> str:
    """sha256 of a checkpoint folder: of its files' names and sha256 (sorted; temp files left out)."""
    h = hashlib.sha256()
    for f in sorted(Path(ckpt).iterdir()):
        if f.is_file() and not f.name.endswith((".tmp", ".old")):
            h.update(f"{f.name}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


def cached_eval_path(cache, ckpt, token_set_sha256: str) -> Path:
    """The watch cache's eval file of checkpoint ``ckpt`` on the token set with sha256 ``token_set_sha256``."""
    step = checkpoint_step(Path(ckpt).name)
    return Path(cache) / f"step{step:08d}-{checkpoint_sha256(ckpt)[:16]}-{token_set_sha256[:16]}.h5"


def reuse_cached_eval(cache, ckpt, token_set_sha256: str, out) -> Path | None:
    """Copy the cached eval file of ``ckpt`` to ``out`` (atomically) when its name matches the checkpoint's and
    token set's sha256 and its losses, token set and checkpoint verify; else None (the caller evaluates)."""
    from tokenscale.io import read_eval_header

    src = cached_eval_path(cache, ckpt, token_set_sha256)
    if not src.is_file():
        return None
    try:
        h = read_eval_header(src, verify=True)
    except TokenscaleError as e:
        _stderr(f"evaluate: ignoring watch cache file {src}: {e}")
        return None
    if h.get("token_set_sha256") != token_set_sha256 or h.get("checkpoint") != str(Path(ckpt).resolve()):
        return None
    with atomic.atomic_output(out) as tmp:
        shutil.copyfile(src, tmp)
    return src


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
