"""Per-token dependency length (paper App. A.2.3).

Definition.  A validation sequence ``input_ids[s, :T+1]`` has targets ``input_ids[s, t+1]`` (t = 0..T-1), each
predicted from its *full context* ``input_ids[s, :t+1]``.  A context of length c shows the model only the last
``min(c, t+1)`` input tokens ``input_ids[s, t+1-c : t+1]``, fed alone (positions 0..c-1).  Over the grid
c in {1, 2, 4, ..., T} (powers of two below T, plus T itself), the dependency length of token (s, t) at a
checkpoint is the smallest c with ``p_c >= threshold * p_full`` (threshold 0.9), ``p_full`` being the
probability of the target under the full context (c = T).  For ``t+1 <= c`` the context *is* the full context,
so such c always qualify: a token's dependency length is at most the smallest grid c >= t+1.

Methods (all return log-probabilities (C, S, T) of the targets under each context length):

* :func:`windowed_log_probs` (exact; what :func:`compute_dependency` uses): one plain forward for the full
  contexts, then one forward per window ``input_ids[s, a : a+L]`` for every start a >= 1; its logits at offsets
  c-1 (every grid c <= L) are the targets ``t = a+c-1`` under context c.  Cost per sequence ~T^2/3 tokens
  (vs T for an evaluation forward): every truncated context needs its own hidden states.
* :func:`truncated_log_probs`: the plain reference, one window per (t, min(c, t+1)), last logit only.
* :func:`banded_log_probs`: one forward per c with a banded causal mask (position t attends to t-c+1..t).
  With RoPE this equals truncation only for a ONE-layer model (and for c = 1, and targets with t+1 <= c): in
  layer 2 position t reads hidden states of t-c+1.. that themselves read c-1 further back, so the receptive
  field is n_layers*(c-1)+1 tokens.  Kept for that comparison; not a dependency-length method for real models.
  The mask goes in as ``attention_mask`` (1, 1, T, T), float in the model's dtype (0 = attend, ``finfo.min`` =
  blocked): transformers (checked on 5.24) hands a 4-D mask through ``masking_utils.create_causal_mask``
  unchanged; sdpa passes it as ``attn_mask`` (without ``is_causal``), eager adds it to the scores.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from tokenscale import TokenscaleError, __version__
from tokenscale.evaluation import evaluate as ev
from tokenscale import io as tio
from tokenscale.io.dependency import FORMAT, read_dependency, write_dependency

__all__ = [
    "FORMAT",
    "context_grid",
    "windowed_log_probs",
    "truncated_log_probs",
    "banded_mask",
    "banded_log_probs",
    "dependency_lengths",
    "check_positions",
    "compute_dependency",
    "read_dependency",
]

CHECK_TOLERANCE = 1e-4  # max |windowed - truncated| of log-probs (float32) accepted by compute_dependency
_CHECK_SPREAD = 16  # evenly spaced positions checked per sequence, besides the grid boundaries


# ----------------------------------------------------------------------------- grid and inputs
def context_grid(seq_len: int) -> list[int]:
    """Context lengths ``[1, 2, 4, ..., seq_len]``: powers of two below ``seq_len``, then ``seq_len``."""
    if int(seq_len) < 1:
        raise TokenscaleError(f"seq_len must be >= 1, got {seq_len}")
    grid, c = [], 1
    while c < seq_len:
        grid.append(c)
        c *= 2
    return grid + [int(seq_len)]


def _check_contexts(contexts: Sequence[int], T: int) -> list[int]:
    cs = [int(c) for c in contexts]
    if not cs or cs[0] < 1 or any(b <= a for a, b in zip(cs, cs[1:])):
        raise TokenscaleError(f"contexts must be increasing positive integers, got {list(contexts)}")
    if cs[-1] < T:
        raise TokenscaleError(f"the largest context ({cs[-1]}) must be >= seq_len ({T}): it is the full context")
    return cs


def _prepare(model: Any, input_ids: Any, device: Any) -> tuple[torch.Tensor, torch.device]:
    """Checked (S, T+1) int64 ids on the CPU, and the device the model now sits on."""
    ids = ev._as_input_ids(input_ids).long()
    V = ev._vocab_size(model)
    if ids.numel() and (int(ids.min()) < 0 or (V is not None and int(ids.max()) >= V)):
        raise TokenscaleError(f"input_ids contain token ids outside [0, {V}) "
                              f"(min {int(ids.min())}, max {int(ids.max())})")
    dev = ev._resolve_device(model, device)
    if device is not None and ev._resolve_device(model, None) != dev:
        model.to(dev)
    return ids, dev


def _model_dtype(model: Any) -> torch.dtype:
    try:
        return next(model.parameters()).dtype
    except (StopIteration, AttributeError, TypeError):
        return torch.float32


# ----------------------------------------------------------------------------- forward passes
@contextlib.contextmanager
def _eval_mode(model: Any) -> Iterator[None]:
    """``model.eval()`` under ``torch.inference_mode`` for the block; the previous train/eval mode is restored."""
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def _target_log_probs(model: Any, x: torch.Tensor, y: torch.Tensor, *, mask: torch.Tensor | None = None,
                      keep: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y | x): x (B, L) -> (B, L) float32, or (B, K) at positions ``keep`` (K,) only (y then (B, K)).

    The loss is the evaluator's (``-evaluate._ce_rows``); ``keep`` goes in as ``logits_to_keep``."""
    kw = {} if keep is None else {"logits_to_keep": keep}
    res = model(input_ids=x, attention_mask=mask, use_cache=False, **kw)
    logits = res.logits if hasattr(res, "logits") else res[0]  # (B, L or K, V)
    if logits.shape[:2] != y.shape:
        raise TokenscaleError(f"model returned logits of shape {tuple(logits.shape)} for targets {tuple(y.shape)}")
    return -ev._ce_rows(logits, y).view(y.shape)


def _full_log_probs(model: Any, ids: torch.Tensor, batch_size: int, dev: torch.device,
                    mask: torch.Tensor | None = None) -> np.ndarray:
    """Plain causal (or ``mask``ed) forward over whole sequences: ids (S, T+1) -> (S, T) float32."""
    S, T = ids.shape[0], ids.shape[1] - 1
    out = np.empty((S, T), dtype=np.float32)
    for s0 in range(0, S, batch_size):
        batch = ids[s0:s0 + batch_size].to(dev)  # (B, T+1)
        out[s0:s0 + batch.shape[0]] = _target_log_probs(model, batch[:, :-1], batch[:, 1:], mask=mask).cpu().numpy()
    return out


def _say(verbose: bool, what: str, i: int, n: int, t0: float) -> None:
    if verbose:
        print(f"dependency: {what} ({i}/{n}) {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)


def windowed_log_probs(model: Any, input_ids: Any, contexts: Sequence[int], *, batch_size: int = 16,
                       device: Any = None, verbose: bool = False) -> np.ndarray:
    """Log-probability of every target under each context length, by explicit windows (exact).

    ``input_ids`` (S, T+1) int -> (C, S, T) float32, ``out[i, s, t] = log p(input_ids[s, t+1] |
    input_ids[s, max(0, t+1-c_i) : t+1])``.  Targets with t+1 <= c come from one plain forward; the others
    from windows ``input_ids[s, a : a+L]`` (a >= 1, L the largest grid c < T with a+L <= T), each giving the
    targets t = a+c-1 of every grid c <= L.  About ``batch_size * T`` tokens per forward, in the model's dtype
    (no autocast).  ``verbose`` prints one line per window length to stderr.
    """
    if batch_size < 1:
        raise TokenscaleError(f"batch_size must be >= 1, got {batch_size}")
    ids, dev = _prepare(model, input_ids, device)
    S, T = ids.shape[0], ids.shape[1] - 1
    cs = _check_contexts(contexts, T)
    short = [c for c in cs if c < T]  # truncating context lengths
    out = np.empty((len(cs), S, T), dtype=np.float32)
    with _eval_mode(model):
        t0 = time.perf_counter()
        full = _full_log_probs(model, ids, batch_size, dev)  # (S, T)
        out[:] = full[None]  # right wherever t+1 <= c; the windows overwrite the rest
        _say(verbose, f"full context c={T}", 1, len(short) + 1, t0)
        for g, L in enumerate(short):
            t0 = time.perf_counter()
            nxt = short[g + 1] if g + 1 < len(short) else T
            a = np.arange(max(1, T - nxt + 1), T - L + 1)  # (A,) starts whose longest window is L
            _fill_windows(model, ids, a, short[:g + 1], cs, out, max(1, batch_size * T // L), dev)
            _say(verbose, f"{a.size * S} windows of c={L}", g + 2, len(short) + 1, t0)
    return out


def _fill_windows(model: Any, ids: torch.Tensor, starts: np.ndarray, cw: list[int], cs: list[int],
                  out: np.ndarray, rows: int, dev: torch.device) -> None:
    """Windows ``ids[s, a : a+L]`` (L = cw[-1]) for every s and a in ``starts``, ``rows`` per forward: writes
    ``out[cs.index(c), s, a+c-1]`` for every c in ``cw``."""
    S, L = ids.shape[0], cw[-1]
    ci = np.asarray([cs.index(c) for c in cw])  # (J,) rows of out
    c = torch.as_tensor(cw)  # (J,)
    s_all = np.repeat(np.arange(S), starts.size)  # (S*A,) row-major over (s, a)
    a_all = np.tile(starts, S)  # (S*A,)
    for r0 in range(0, s_all.size, rows):
        s, a = torch.from_numpy(s_all[r0:r0 + rows]), torch.from_numpy(a_all[r0:r0 + rows])  # (R,)
        x = ids[s[:, None], a[:, None] + torch.arange(L)[None, :]]  # (R, L)
        y = ids[s[:, None], a[:, None] + c[None, :]]  # (R, J): the target of offset c-1
        lp = _target_log_probs(model, x.to(dev), y.to(dev), keep=(c - 1).to(dev)).cpu().numpy()  # (R, J)
        t = a.numpy()[:, None] + np.asarray(cw)[None, :] - 1  # (R, J)
        out[ci[None, :], s.numpy()[:, None], t] = lp


def truncated_log_probs(model: Any, input_ids: Any, contexts: Sequence[int], *, batch_size: int = 16,
                        device: Any = None, positions: Sequence[int] | None = None) -> np.ndarray:
    """The plain explicit-truncation reference (slow: one window per target and context, last logit only).

    ``input_ids`` (S, T+1) -> (C, S, P) float32 for target positions ``positions`` (default all T, P = T):
    token (s, t) under context c is predicted from the window ``input_ids[s, t+1-L : t+1]``, L = min(c, t+1),
    fed alone (positions 0..L-1).  Each distinct (t, L) is computed once; windows of one length L are batched,
    about ``batch_size * T`` tokens per forward.
    """
    if batch_size < 1:
        raise TokenscaleError(f"batch_size must be >= 1, got {batch_size}")
    ids, dev = _prepare(model, input_ids, device)
    S, T = ids.shape[0], ids.shape[1] - 1
    cs = np.asarray(_check_contexts(contexts, T))  # (C,)
    pos = np.arange(T) if positions is None else np.asarray(positions, dtype=np.int64).reshape(-1)  # (P,)
    if pos.size and (pos.min() < 0 or pos.max() >= T):
        raise TokenscaleError(f"positions must lie in [0, {T}), got min {pos.min()} max {pos.max()}")
    lengths = np.minimum(cs[:, None], pos[None, :] + 1)  # (C, P) window length of each (c, t)
    out = np.full((len(cs), S, pos.size), np.nan, dtype=np.float32)
    with _eval_mode(model):
        for L in np.unique(lengths):
            cols = np.flatnonzero((lengths == L).any(axis=0))  # (K,) indices into pos
            lp = _last_log_probs(model, ids, pos[cols], int(L), max(1, batch_size * T // int(L)), dev)  # (S, K)
            for i in range(len(cs)):
                hit = lengths[i, cols] == L  # (K,)
                out[i][:, cols[hit]] = lp[:, hit]
    return out


def _last_log_probs(model: Any, ids: torch.Tensor, t: np.ndarray, L: int, rows: int, dev: torch.device) -> np.ndarray:
    """log p(ids[s, t+1] | ids[s, t+1-L : t+1]) for every s and each t: (S, K) float32, ``rows`` windows a forward."""
    S, K = ids.shape[0], t.size
    idx = torch.from_numpy(t + 1 - L)[:, None] + torch.arange(L)[None, :]  # (K, L)
    win = ids[:, idx].reshape(S * K, L)  # (S*K, L)
    tgt = ids[:, torch.from_numpy(t + 1)].reshape(S * K, 1)  # (S*K, 1)
    last = torch.tensor([L - 1], device=dev)
    out = np.empty(S * K, dtype=np.float32)
    for r0 in range(0, S * K, rows):
        x, y = win[r0:r0 + rows].to(dev), tgt[r0:r0 + rows].to(dev)
        out[r0:r0 + x.shape[0]] = _target_log_probs(model, x, y, keep=last).cpu().numpy()[:, 0]
    return out.reshape(S, K)


def banded_mask(T: int, c: int, *, dtype: torch.dtype = torch.float32, device: Any = None) -> torch.Tensor:
    """(1, 1, T, T) additive mask: 0 where ``0 <= q - k < c`` (attend), ``finfo(dtype).min`` elsewhere."""
    q = torch.arange(T, device=device)[:, None]  # (T, 1)
    k = torch.arange(T, device=device)[None, :]  # (1, T)
    keep = (k <= q) & (k > q - c)  # (T, T)
    mask = torch.zeros((T, T), dtype=dtype, device=device)
    mask.masked_fill_(~keep, torch.finfo(dtype).min)
    return mask[None, None]


def banded_log_probs(model: Any, input_ids: Any, contexts: Sequence[int], *, batch_size: int = 16,
                     device: Any = None, verbose: bool = False) -> np.ndarray:
    """Log-probabilities of the targets with attention limited to a band of c positions (one forward per c).

    ``input_ids`` (S, T+1) int -> (C, S, T) float32.  Equals :func:`truncated_log_probs` for a one-layer
    model only (see the module docstring); c >= T runs unmasked (the plain causal forward).
    """
    if batch_size < 1:
        raise TokenscaleError(f"batch_size must be >= 1, got {batch_size}")
    ids, dev = _prepare(model, input_ids, device)
    S, T = ids.shape[0], ids.shape[1] - 1
    cs = _check_contexts(contexts, T)
    out = np.empty((len(cs), S, T), dtype=np.float32)
    with _eval_mode(model):
        for i, c in enumerate(cs):
            t0 = time.perf_counter()
            mask = None if c >= T else banded_mask(T, c, dtype=_model_dtype(model), device=dev)  # (1, 1, T, T)
            out[i] = _full_log_probs(model, ids, batch_size, dev, mask)
            _say(verbose, f"banded c={c}", i + 1, len(cs), t0)
    return out


# ----------------------------------------------------------------------------- dependency lengths
def dependency_lengths(logp: np.ndarray, logp_full: np.ndarray, contexts: Sequence[int],
                       threshold: float = 0.9) -> np.ndarray:
    """Smallest c with ``p_c >= threshold * p_full``, per token: logp (C, S, T), logp_full (S, T) -> (S, T) int64.

    Compared in log space in float64 (``logp_c >= logp_full + log(threshold)``; no underflow of tiny
    probabilities).  Every c >= t+1 qualifies whatever the numbers (the context is then the full one).
    """
    _check_threshold(threshold)
    logp, logp_full = np.asarray(logp), np.asarray(logp_full)
    if logp.ndim != 3 or logp_full.shape != logp.shape[1:] or logp.shape[0] != len(contexts):
        raise TokenscaleError(f"logp {logp.shape} must be (C, S, T) with C = {len(contexts)} contexts and "
                              f"logp_full {logp_full.shape} = (S, T)")
    T = logp.shape[2]
    cs = np.asarray(_check_contexts(contexts, T))  # (C,)
    ok = logp.astype(np.float64) >= logp_full.astype(np.float64)[None] + np.log(float(threshold))  # (C, S, T)
    ok |= cs[:, None, None] >= np.arange(1, T + 1)[None, None, :]  # full context: c >= t+1
    return cs[np.argmax(ok, axis=0)]  # (S, T): first qualifying c (the last c >= T always qualifies)


def _check_threshold(threshold: float) -> None:
    if not (isinstance(threshold, (int, float, np.floating)) and 0.0 < float(threshold) <= 1.0):
        raise TokenscaleError(f"threshold must be in (0, 1], got {threshold!r}")


# ----------------------------------------------------------------------------- one checkpoint -> file
def check_positions(T: int, contexts: Sequence[int]) -> np.ndarray:
    """Target positions checked against truncation: evenly spread ones plus t = c-1 and t = c for each c < T."""
    spread = np.linspace(0, T - 1, min(T, _CHECK_SPREAD)).round().astype(np.int64)
    edges = np.asarray([t for c in contexts if c < T for t in (c - 1, c)], dtype=np.int64)
    return np.unique(np.concatenate([spread, edges]))


def _check_sample(model, ids: np.ndarray, logp: np.ndarray, contexts: list[int], n: int, batch_size: int,
                  dev) -> tuple[float, int, int]:
    """max |windowed - truncated| over ``n`` evenly spaced sequences at :func:`check_positions`."""
    S, T = ids.shape[0], ids.shape[1] - 1
    if n <= 0:
        return float("nan"), 0, 0
    rows = np.unique(np.linspace(0, S - 1, min(n, S)).round().astype(np.int64))  # (n,)
    pos = check_positions(T, contexts)  # (P,)
    ref = truncated_log_probs(model, ids[rows], contexts, batch_size=batch_size, device=dev, positions=pos)
    got = logp[:, rows][:, :, pos]  # (C, n, P)
    return float(np.max(np.abs(got.astype(np.float64) - ref))), int(rows.size), int(pos.size)


def compute_dependency(ckpt_dir: os.PathLike | str, token_set_path: os.PathLike | str, out_path: os.PathLike | str,
                       *, threshold: float = 0.9, batch_size: int = 16, device: Any = None,
                       check_sample: int = 8, max_seqs: int | None = None) -> Path:
    """Dependency lengths of every token of a token set at one checkpoint; write ``out_path`` atomically.

    Runs :func:`windowed_log_probs` over :func:`context_grid`, checks ``check_sample`` sequences against
    :func:`truncated_log_probs` (max |diff| <= 1e-4, else TokenscaleError; 0 skips the check) and writes an
    HDF5 with ``dependency_length`` (N,) int32, ``log_prob`` (C, N) float32, ``contexts`` (C,) int32
    (N = S*T, token ``s*T+t``, the evaluation files' order).  float32 throughout (no autocast); ``device``
    defaults to CUDA when available.
    """
    t0 = time.perf_counter()
    _check_threshold(threshold)
    ckpt = Path(ckpt_dir)
    ts = tio.read_token_set(token_set_path, datasets=("input_ids",))
    if max_seqs is not None:  # the first max_seqs sequences: the file covers token instances [0, max_seqs*T)
        if max_seqs < 1:
            raise TokenscaleError(f"max_seqs must be >= 1, got {max_seqs}")
        ts["input_ids"] = ts["input_ids"][:max_seqs]
        ts["n_seqs"] = min(int(ts["n_seqs"]), int(max_seqs))
    S, T = int(ts["n_seqs"]), int(ts["seq_len"])
    if S == 0:
        raise TokenscaleError(f"token set {token_set_path} is empty (0 sequences)")
    ev._check_tokenizer(ckpt, token_set_path, ts["attrs"])
    dev = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))
    model = ev.load_checkpoint_model(ckpt, device=dev)
    max_pos = getattr(model.config, "max_position_embeddings", None)
    if max_pos is not None and T > int(max_pos):
        raise TokenscaleError(f"token set {token_set_path} has sequences of {T} tokens, longer than checkpoint "
                              f"{ckpt}'s max_position_embeddings={max_pos}")
    contexts = context_grid(T)
    logp = windowed_log_probs(model, ts["input_ids"], contexts, batch_size=batch_size, device=dev, verbose=True)
    if not np.all(np.isfinite(logp)):
        raise TokenscaleError(f"checkpoint {ckpt} produced non-finite log-probabilities on {token_set_path}")
    diff, n_seq, n_pos = _check_sample(model, ts["input_ids"], logp, contexts, check_sample, batch_size, dev)
    if n_seq and not diff <= CHECK_TOLERANCE:
        raise TokenscaleError(f"windowed log-probs differ from explicit truncation by up to {diff:.3g} "
                              f"(> {CHECK_TOLERANCE:g}) on checkpoint {ckpt}")
    dep = dependency_lengths(logp, logp[-1], contexts, threshold)  # (S, T); contexts[-1] == T
    attrs = {
        "format": FORMAT,
        "threshold": float(threshold),
        "checkpoint": str(ckpt.resolve()),
        "token_set": str(Path(token_set_path).resolve()),
        "token_set_sha256": tio.sha256_file(token_set_path),
        "n_seqs": S,
        "seq_len": T,
        "max_abs_diff_vs_truncation": diff,
        "n_checked_sequences": n_seq,
        "n_checked_positions": n_pos,
        "device": str(dev),
        "package_version": __version__,
        "seconds": float(time.perf_counter() - t0),
    }
    return write_dependency(Path(out_path), dep.reshape(-1), logp.reshape(len(contexts), -1), contexts, attrs)
