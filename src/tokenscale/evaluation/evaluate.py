"""Per-token losses of a causal LM on a token set, at one checkpoint or along a checkpoint series.

* :func:`token_losses` is THE loss function of the project: the trainer computes its logged
  validation loss as ``mean_loss(model, valid_input_ids)``, so ``mean(token_losses) == val_loss``.
* :func:`evaluate_checkpoint` writes one per-checkpoint eval HDF5 (atomic tmp + fsync + rename);
  :func:`tokenscale.io.write_trajectory_shards` assembles these into trajectory shards.
* checkpoint folders of a series (Pythia ``step1000/``, ``step00001000/``, HF Trainer ``checkpoint-1000/``)
  are found by :func:`tokenscale.series.discover_checkpoints`.

Analysis module: never imports deepspeed.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from tokenscale import TokenscaleError, __version__
from tokenscale import io as tio
from tokenscale.data import tokenizer_sha256
from tokenscale.series import step_from_name

__all__ = [
    "token_losses",
    "mean_loss",
    "load_token_set",
    "load_checkpoint_model",
    "evaluate_checkpoint",
    "scored_predictions",
]

# Max number of logits elements handled by one F.cross_entropy call (rows x vocab).  On CPU a small
# chunk (1 Mi elements = 4 MiB fp32) keeps log-softmax in cache: 3x faster than one call over the
# whole batch (30 ms vs 90 ms for 4096 x 8192 logits), which is what lifts the evaluator from ~0.87
# to >= 0.9 of a bare forward.  On CUDA larger chunks (64 Mi elements = 256 MiB fp32) bound the
# fp32 upcast of the bf16 logits without many kernel launches.
CE_CHUNK_ELEMENTS = 1 << 20
CE_CHUNK_ELEMENTS_CUDA = 1 << 26


def _resolve_device(model: Any, device: Any) -> torch.device:
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError, TypeError):
        return torch.device("cpu")


def _as_input_ids(input_ids: Any) -> torch.Tensor:
    if isinstance(input_ids, np.ndarray):
        if not np.issubdtype(input_ids.dtype, np.integer):
            raise TokenscaleError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
        input_ids = torch.from_numpy(np.ascontiguousarray(input_ids))
    if not isinstance(input_ids, torch.Tensor):
        raise TokenscaleError(f"input_ids must be a torch.Tensor or numpy array, got {type(input_ids).__name__}")
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise TokenscaleError(f"input_ids must be integer token ids, got dtype {input_ids.dtype}")
    if input_ids.dim() != 2 or input_ids.shape[1] < 2:
        raise TokenscaleError(f"input_ids must have shape (S, T+1) with T >= 1, got {tuple(input_ids.shape)}")
    return input_ids


def _vocab_size(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    v = getattr(cfg, "vocab_size", None)
    return int(v) if v else None


def _ce_rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(logits.float().view(-1, V), targets, reduction="none")`` in row chunks.

    Row-wise identical to the one-shot call (each row's log-softmax is independent; tested
    bit-for-bit), but the float32 upcast / log-softmax buffer never exceeds the chunk size.
    """
    V = logits.shape[-1]
    flat = logits.reshape(-1, V)
    tgt = targets.reshape(-1)
    if flat.is_cuda:
        fused = _fused_ce()
        out = fused(flat, tgt) if fused is not None else None
        if out is not None:
            return out
    rows = max(1, (CE_CHUNK_ELEMENTS_CUDA if flat.is_cuda else CE_CHUNK_ELEMENTS) // V)
    if flat.shape[0] <= rows:
        return F.cross_entropy(flat.float(), tgt, reduction="none")
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)
    for r0 in range(0, flat.shape[0], rows):
        r1 = min(r0 + rows, flat.shape[0])
        out[r0:r1] = F.cross_entropy(flat[r0:r1].float(), tgt[r0:r1], reduction="none")
    return out


def ce_lse(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row cross entropy ``logsumexp(x) - x[target]`` accumulated in float32.

    (R, V) logits of any float dtype, (R,) targets -> (R,) float32.  The same quantity as
    ``F.cross_entropy(logits.float(), targets, reduction="none")``; written as two reductions so that
    ``torch.compile`` fuses the float32 upcast into them (the bf16 logits are read twice, never copied).
    """
    lse = torch.logsumexp(logits.float(), dim=-1)  # (R,)
    return lse - logits.gather(-1, targets[:, None]).squeeze(-1).float()


_FUSED_CE: Any = False  # False: not built yet; None: unavailable


def _fused_ce():
    """``ce_lse`` compiled by ``torch.compile`` for CUDA (one fused kernel pair instead of ~5 passes over
    the fp32 upcast of the logits); ``None`` when compiling is unavailable or fails (eager fallback), or
    when TOKENSCALE_EVAL_COMPILE=0."""
    global _FUSED_CE
    if _FUSED_CE is False:
        _FUSED_CE = None
        if os.environ.get("TOKENSCALE_EVAL_COMPILE", "1") != "0":
            try:
                fn = torch.compile(ce_lse, dynamic=True)

                def checked(flat, tgt):
                    global _FUSED_CE
                    try:
                        return fn(flat, tgt)
                    except Exception as e:  # noqa: BLE001 - compiler/toolchain problems: fall back, say so once
                        print(f"evaluate: torch.compile of the loss failed ({type(e).__name__}: {e}); "
                              "using the eager loss", file=sys.stderr)
                        _FUSED_CE = None
                        return None

                _FUSED_CE = checked
            except Exception:  # noqa: BLE001
                _FUSED_CE = None
    return _FUSED_CE


def token_losses(
    model: Any,
    input_ids: torch.Tensor,
    *,
    batch_size: int = 16,
    device: Any = None,
    autocast_bf16: bool | None = None,
    progress: Callable[[int, int], Any] | Any | None = None,
) -> np.ndarray:
    """Next-token cross entropy (nats) of every target token.

    ``input_ids`` (S, T+1) int (torch or numpy) -> (S, T) float32, ``out[s, t]`` is the loss of
    target ``input_ids[s, t+1]`` given ``input_ids[s, :t+1]``.

    Runs under ``torch.inference_mode`` with ``model.eval()`` (the previous train/eval mode is
    restored afterwards), ``batch_size`` sequences per forward pass.  ``device``: where inputs go
    (default: the model's device; if given and different, the model is moved there).  bf16 autocast
    is used only on CUDA (``autocast_bf16=None`` -> on for CUDA; ignored on other devices).
    ``progress``: ``callable(done_seqs, total_seqs)`` or an object with ``update(n)`` (e.g. tqdm),
    called after each batch.
    """
    ids = _as_input_ids(input_ids)
    if batch_size < 1:
        raise TokenscaleError(f"batch_size must be >= 1, got {batch_size}")
    S = ids.shape[0]
    T = ids.shape[1] - 1
    if S and int(ids.min()) < 0:
        raise TokenscaleError(f"input_ids contain a negative token id ({int(ids.min())})")
    V = _vocab_size(model)
    if S and V is not None and int(ids.max()) >= V:
        raise TokenscaleError(f"input_ids contain token id {int(ids.max())} >= model vocab_size {V}")
    dev = _resolve_device(model, device)
    if device is not None and _resolve_device(model, None) != dev:
        model.to(dev)
    use_amp = dev.type == "cuda" and (autocast_bf16 is None or bool(autocast_bf16))
    out = np.empty((S, T), dtype=np.float32)
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            for s0 in range(0, S, batch_size):
                s1 = min(S, s0 + batch_size)
                batch = ids[s0:s1].to(dev, dtype=torch.long, non_blocking=True)
                x, y = batch[:, :-1], batch[:, 1:]
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                    res = model(input_ids=x, use_cache=False)
                logits = res.logits if hasattr(res, "logits") else res[0]
                if logits.shape[:2] != x.shape:
                    raise TokenscaleError(f"model returned logits of shape {tuple(logits.shape)} for inputs {tuple(x.shape)}")
                ce = _ce_rows(logits, y)
                del logits, res
                out[s0:s1] = ce.view(s1 - s0, T).cpu().numpy()
                if progress is not None:
                    if hasattr(progress, "update"):
                        progress.update(s1 - s0)
                    else:
                        progress(s1, S)
    finally:
        model.train(was_training)
    return out


def mean_loss(model: Any, input_ids: torch.Tensor, **kw: Any) -> float:
    """Mean per-token loss (nats), ``float(np.mean(token_losses(...), dtype=np.float64))``."""
    return float(np.mean(token_losses(model, input_ids, **kw), dtype=np.float64))


def load_token_set(path: os.PathLike | str) -> dict:
    """Read a token-set HDF5 (docs/formats.md): arrays ``input_ids, token_id, doc_id, doc_pos,
    domain[, sample_index]`` plus ``attrs`` (``domain_names`` decoded), ``path``, ``n_seqs``,
    ``seq_len``.  Missing/corrupt/inconsistent files raise a one-line TokenscaleError."""
    return tio.read_token_set(path)


def _read_ckpt_json(ckpt: Path) -> dict:
    p = ckpt / "tokenscale.json"
    if not p.is_file():
        return {}
    try:
        d = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise TokenscaleError(" ".join(f"{p}: cannot parse checkpoint metadata: {e}".split())) from None
    if not isinstance(d, dict):
        raise TokenscaleError(f"{p}: checkpoint metadata is not a JSON object")
    return d


def load_checkpoint_model(ckpt_dir: os.PathLike | str, *, device: Any = None, dtype: Any = None):
    """Load a HF causal LM from a checkpoint directory (``AutoModelForCausalLM.from_pretrained``).

    Refuses this project's own checkpoints (with ``tokenscale.json``) that lack the ``COMPLETE`` marker.  ``dtype`` defaults to float32 (weights
    stored in fp16/bf16 are upcast; use bf16 autocast for speed on CUDA); ``device`` defaults to
    CPU.  Returns the model in eval mode.
    """
    from transformers import AutoModelForCausalLM

    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        run = ckpt.parent.parent  # a training run's checkpoints/step*/: its trainer rebuilds a lost one on resume
        hint = (f" (lost after training: delete {run / 'train.json'} and rerun; the trainer rebuilds it)"
                if ckpt.parent.name == "checkpoints" and (run / "train.json").is_file() else "")
        raise TokenscaleError(f"checkpoint directory not found: {ckpt}{hint}")
    # own checkpoints (tokenscale.json) carry a COMPLETE marker written last; external series (Pythia,
    # HF Trainer) have none and are taken as they are
    if (ckpt / "tokenscale.json").exists() and not (ckpt / "COMPLETE").exists():
        raise TokenscaleError(f"checkpoint is incomplete (no COMPLETE marker): {ckpt}")
    if not (ckpt / "config.json").is_file():
        raise TokenscaleError(f"checkpoint has no config.json: {ckpt}")
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None) if dtype != "auto" else "auto"
        if dtype is None:
            raise TokenscaleError(f"unknown dtype for checkpoint {ckpt}")
    try:
        model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=dtype if dtype is not None else torch.float32)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for broken dirs
        msg = " ".join(str(e).split())[:300]
        raise TokenscaleError(f"cannot load checkpoint {ckpt}: {type(e).__name__}: {msg}") from None
    model.eval()
    if device is not None:
        model.to(torch.device(device))
    return model


def _run_name(ckpt: Path) -> str:
    parent = ckpt.resolve().parent
    return parent.parent.name if parent.name == "checkpoints" else parent.name


def _check_tokenizer(ckpt: Path, token_set_path: os.PathLike | str, ts_attrs: dict) -> str:
    """sha256 of the checkpoint's own ``tokenizer.json`` ("" when it ships none, as external series do); an
    error when the token set records the tokenizer it was cut with and that is another one (losses of token ids
    from a different vocabulary would be silently wrong numbers)."""

    own = tokenizer_sha256(ckpt) if (ckpt / "tokenizer.json").is_file() else ""
    want = str(ts_attrs.get("tokenizer_sha256", ""))
    if own and want and own != want:
        raise TokenscaleError(f"checkpoint {ckpt} has tokenizer sha256 {own[:12]}… but token set {token_set_path} "
                              f"was tokenized with {want[:12]}…; evaluate it on a token set cut with its tokenizer")
    return own


def evaluate_checkpoint(
    ckpt_dir: os.PathLike | str,
    token_set_path: os.PathLike | str,
    out_path: os.PathLike | str,
    *,
    batch_size: int = 16,
    device: Any = None,
    step: int | None = None,
    tokens_seen: int | None = None,
) -> Path:
    """Evaluate one checkpoint on a token set; write ``out_path`` atomically and return it.

    Output: dataset ``loss`` (N,) float32 nats, N = S*T row-major (token instance ``s*T+t``); for a token set with
    a ``score_mask``, only its scored positions (row-major), so ``mean_loss`` is theirs.
    ``step``/``tokens_seen`` come from the checkpoint's ``tokenscale.json`` if present, else from
    the arguments (``step`` falls back to the directory name ``step<N>``/``checkpoint-<N>``;
    ``tokens_seen`` to -1 = unknown).  A conflicting argument is an error.  ``device`` defaults to
    CUDA when available (fp32 weights, bf16 autocast), else CPU.  Layout: docs/trajectories.md.
    """
    t0 = time.perf_counter()
    ckpt = Path(ckpt_dir)
    out = Path(out_path)
    meta = _read_ckpt_json(ckpt) if ckpt.is_dir() else {}
    step_v, tokens_v = _step_and_tokens(ckpt, meta, step, tokens_seen)
    ts = tio.read_token_set(token_set_path)
    mask = ts.get(tio.SCORE_MASK)  # (S, T) bool or None: the positions that are the set's tokens
    ts_sha = tio.sha256_file(token_set_path)
    tok_sha = _check_tokenizer(ckpt, token_set_path, ts["attrs"])
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    model = load_checkpoint_model(ckpt, device=dev)
    t1 = time.perf_counter()
    losses = token_losses(model, ts["input_ids"], batch_size=batch_size, device=dev)
    t2 = time.perf_counter()
    if mask is not None:
        losses = losses[mask]  # (n,) the scored positions, row-major
    if not np.all(np.isfinite(losses)):
        raise TokenscaleError(f"checkpoint {ckpt} produced non-finite losses on {token_set_path}")
    attrs = {"step": int(step_v), "tokens_seen": int(tokens_v) if tokens_v is not None else -1,
             **_model_attrs(ckpt, meta, model), "mean_loss": float(np.mean(losses, dtype=np.float64)),
             **_token_set_attrs(token_set_path, ts, ts_sha, tok_sha),
             **_run_attrs(dev, batch_size), "seconds": 0.0, "seconds_forward": float(t2 - t1)}
    del model
    attrs["seconds"] = float(time.perf_counter() - t0)
    return tio.write_eval_file(out, losses, attrs)


def _step_and_tokens(ckpt: Path, meta: dict, step: int | None, tokens_seen: int | None) -> tuple[int, int | None]:
    """The checkpoint's step and tokens seen: from its metadata, else the arguments (a conflict is an error); the
    step falls back to the directory name; tokens seen may stay None (unknown)."""

    def pick(key: str, arg: int | None) -> int | None:
        if key in meta and meta[key] is not None:
            v = int(meta[key])
            if arg is not None and int(arg) != v:
                raise TokenscaleError(f"{ckpt / 'tokenscale.json'}: {key}={v} conflicts with argument {key}={arg}")
            return v
        return None if arg is None else int(arg)

    step_v = pick("step", step)
    if step_v is None:
        step_v = step_from_name(ckpt.name)
    if step_v is None:
        raise TokenscaleError(f"cannot tell the step of checkpoint {ckpt} (no tokenscale.json, no step argument)")
    return step_v, pick("tokens_seen", tokens_seen)


def _model_attrs(ckpt: Path, meta: dict, model: Any) -> dict[str, Any]:
    """Eval-file attributes naming the checkpoint and its model."""
    cfg = model.config
    n_params = int(sum(p.numel() for p in model.parameters()))
    return {
        "checkpoint": str(ckpt.resolve()),
        "run": str(meta.get("run") or _run_name(ckpt)),
        "model": f"{getattr(cfg, 'model_type', 'model')}-{n_params}",
        "model_type": str(getattr(cfg, "model_type", "")),
        "n_params": n_params,
        "config_sha256": str(meta.get("config_sha256", "")),
        "val_loss_logged": float(meta["val_loss"]) if meta.get("val_loss") is not None else float("nan"),
    }


def _token_set_attrs(token_set_path: os.PathLike | str, ts: dict, ts_sha: str, tok_sha: str) -> dict[str, Any]:
    """Eval-file attributes naming the token set and the tokenizer."""
    return {
        "token_set": str(Path(token_set_path).resolve()),
        "token_set_sha256": ts_sha,
        "token_set_attrs": ts["attrs"],
        "tokenizer_sha256": tok_sha,
        "n_seqs": int(ts["n_seqs"]),
        "seq_len": int(ts["seq_len"]),
    }


def _run_attrs(dev: torch.device, batch_size: int) -> dict[str, Any]:
    """Eval-file attributes of the software and the device the evaluation ran on."""
    return {
        "package_version": __version__,
        "torch_version": torch.__version__,
        "device": str(dev),
        "autocast_bf16": dev.type == "cuda",
        "batch_size": int(batch_size),
    }


def scored_predictions(ckpt_dir: os.PathLike | str, token_set_path: os.PathLike | str, *, batch_size: int = 256,
                       device: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """(loss (n,) float32, correct (n,) bool) of a checkpoint at a token set's scored positions (its
    ``score_mask``, row-major): the cross entropy and whether the argmax next token is the target (a synthetic
    example's answer accuracy)."""
    ts = tio.read_token_set(token_set_path)
    mask = ts.get(tio.SCORE_MASK)
    if mask is None:
        raise TokenscaleError(f"{token_set_path}: no {tio.SCORE_MASK}: answer accuracy needs the scored positions")
    _check_tokenizer(Path(ckpt_dir), token_set_path, ts["attrs"])
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_checkpoint_model(ckpt_dir, device=dev)
    ids = torch.as_tensor(ts["input_ids"], dtype=torch.long)
    m = torch.as_tensor(mask)
    loss, correct = [], []
    with torch.inference_mode():
        for s0 in range(0, ids.shape[0], batch_size):
            batch, mb = ids[s0:s0 + batch_size].to(dev), m[s0:s0 + batch_size].to(dev)
            logits = model(input_ids=batch[:, :-1], use_cache=False).logits[mb].float()  # (n_b, V)
            tgt = batch[:, 1:][mb]  # (n_b,)
            loss.append(F.cross_entropy(logits, tgt, reduction="none").cpu().numpy())
            correct.append((logits.argmax(-1) == tgt).cpu().numpy())
    return np.concatenate(loss).astype(np.float32), np.concatenate(correct)
