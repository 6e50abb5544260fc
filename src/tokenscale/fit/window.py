"""Where a series' per-token fits start: the checkpoints a token's sigmoid is fitted on (docs/fit.md).

Eq. (1) describes one learning event per contextualized token: a plateau ``ℓ_pre``, one sigmoid drop, a plateau
``ℓ_post``. From random initialisation a language model first learns the marginal (unigram) distribution of its
targets: every token's loss moves together from about ``ln V`` towards ``−ln q(y_i)`` (``q`` = the training
targets' unigram distribution), in the first few percent of training — part of the paper's "initial transient
stage", which its checkpoints do not resolve. A series whose first checkpoints do resolve it gives every token
learned later a trajectory with two descents, and one sigmoid fitted across both smears them into one
(docs/reconstruction.md; a planted two-stage population moves the recovered β by about 30 %, tests/test_fit_window.py).

Rules (config ``fit.start``):

* ``unigram``: the fits start at the first checkpoint ``k`` at which the series' mean loss is at or below the
  context-free cross-entropy ``H₁ = mean_i −ln q(y_i)`` over the series' target tokens — the first checkpoint at
  which the model predicts better than any predictor that ignores the context, i.e. where the tokens' own
  (contextual) learning can start. ``q`` = training target counts with add-½ (Krichevsky–Trofimov) smoothing, so
  a target never seen in training has a finite ``−ln q``. The checkpoints before ``k`` stay in the trajectories
  (and the figures) but not in the fits or the decomposition's window.
* ``first``: every checkpoint (the whole trajectory).

``unigram`` falls back to the first checkpoint, with a note saying why, when the series has no training data to
count (an external model), when the mean loss never reaches ``H₁``, or when fewer than ``MIN_POINTS`` checkpoints
would remain. The rule reads the mean loss only, so every shard of a series gets the same start.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from tokenscale import TokenscaleError

__all__ = ["RULES", "MIN_POINTS", "target_counts", "context_free_entropy", "fit_start", "fit_window",
           "read_window_start"]

RULES = ("unigram", "first")
MIN_POINTS = 8  # checkpoints the fits need after the start (4 parameters, and a plateau on each side)


def target_counts(train) -> np.ndarray:
    """Occurrences (V,) int64 of every token id among the training *targets* (the labels the trainer's loss
    uses) of a :class:`tokenscale.data.TrainTokens` (stream: ``tokens[1 : n·T + 1]``; rows: positions 1..T of
    each row, or only T with ``supervise="last"``)."""
    from tokenscale.data.tokensets import token_frequencies

    T, n = int(train.seq_len), int(train.n_samples)
    if train.stride == T:  # stream layout: sample i = tokens[i*T : i*T + T + 1]
        return token_frequencies(train.tokens[1:n * T + 1], train.vocab_size)
    rows = np.asarray(train.tokens[: n * (T + 1)]).reshape(n, T + 1)  # (n, T+1)
    targets = rows[:, T:] if train.supervise == "last" else rows[:, 1:]
    return token_frequencies(targets.reshape(-1), train.vocab_size)


def context_free_entropy(counts, target_ids) -> float:
    """``mean_i −ln q(y_i)`` in nats, ``q = (c + ½) / (Σc + V/2)``: the loss of the unigram predictor."""
    c = np.asarray(counts, dtype=np.float64).ravel()
    ids = np.asarray(target_ids).ravel()
    if c.size == 0 or np.any(c < 0):
        raise TokenscaleError("target counts must be a non-empty array of non-negative counts")
    if ids.size == 0:
        raise TokenscaleError("no target tokens to average over")
    if ids.dtype.kind not in "iu" or ids.min() < 0 or ids.max() >= c.size:
        bad = ids.dtype if ids.dtype.kind not in "iu" else (ids.min() if ids.min() < 0 else ids.max())
        raise TokenscaleError(f"target token id {bad} is outside the vocabulary [0, {c.size})")
    q = (c + 0.5) / (c.sum() + 0.5 * c.size)
    return float(-np.log(q[ids]).mean())


def fit_start(mean_loss, h1: float, min_points: int = MIN_POINTS) -> tuple[int, str]:
    """(first checkpoint index of the fits, note) for the ``unigram`` rule: the first ``k`` with
    ``mean_loss[k] <= h1``; 0 and a note when there is none or fewer than ``min_points`` would remain."""
    m = np.asarray(mean_loss, dtype=np.float64).ravel()
    if not (m.size and np.all(np.isfinite(m))):
        raise TokenscaleError("the mean loss must be a non-empty finite curve")
    if not math.isfinite(h1):
        raise TokenscaleError(f"context-free cross-entropy must be finite, got {h1!r}")
    below = np.nonzero(m <= h1)[0]
    if below.size == 0:
        return 0, (f"the mean loss never reaches the unigram cross-entropy {h1:.4g} (lowest {m.min():.4g}): "
                   f"the fits use every checkpoint")
    k = int(below[0])
    if m.size - k < min_points:
        return 0, (f"the mean loss reaches the unigram cross-entropy {h1:.4g} only at checkpoint {k} of {m.size}, "
                   f"leaving fewer than {min_points}: the fits use every checkpoint")
    return k, ""


def _finite_row_mean(losses, chunk: int = 1 << 16) -> tuple[np.ndarray, np.ndarray]:
    """(N,) rows finite at every checkpoint, and their (K,) mean in float64, ``chunk`` rows at a time (no float64
    copy of the whole matrix)."""
    n, k = int(losses.shape[0]), int(losses.shape[1])
    rows, total = np.zeros(n, dtype=bool), np.zeros(k)
    for i0 in range(0, n, chunk):
        block = np.asarray(losses[i0:i0 + chunk], dtype=np.float64)  # (chunk, K)
        ok = np.all(np.isfinite(block), axis=1)
        rows[i0:i0 + chunk] = ok
        total += block[ok].sum(axis=0)
    if not rows.any():
        raise TokenscaleError("no trajectory row is finite at every checkpoint")
    return rows, total / rows.sum()


def fit_window(rule: str, losses, axis, *, counts=None, target_ids=None) -> dict:
    """The fit window of a series as a JSON-ready dict: ``start_index``, ``start`` (axis value), ``rule``,
    ``h_unigram`` (nats, null for ``first`` or without counts), ``mean_loss`` (K,), ``axis`` (K,), ``note``.

    ``losses`` (N, K) of the series' trajectories; ``counts`` (V,) training target counts and ``target_ids`` (N,)
    each row's target token (both None when the series has no training data: the rule falls back)."""
    if rule not in RULES:
        raise TokenscaleError(f"fit.start must be one of {', '.join(RULES)}, got {rule!r}")
    a = np.asarray(axis, dtype=np.float64).ravel()
    if len(getattr(losses, "shape", ())) != 2 or losses.shape[1] != a.size:
        raise TokenscaleError(f"losses {getattr(losses, 'shape', None)} do not match an axis of {a.size} points")
    rows, mean = _finite_row_mean(losses)
    h1, k, note = None, 0, ""
    if rule == "unigram":
        if counts is None or target_ids is None:
            note = "no training data to count targets on (an external model): the fits use every checkpoint"
        else:
            h1 = context_free_entropy(counts, np.asarray(target_ids)[rows])
            k, note = fit_start(mean, h1)
    return {"rule": rule, "start_index": k, "start": float(a[k]), "h_unigram": h1, "n_rows": int(rows.sum()),
            "mean_loss": mean.tolist(), "axis": a.tolist(), "note": note}


def read_window_start(path, axis) -> int:
    """First checkpoint index of the fits from a fit window file (``tokenscale fit-window``), checked against the
    axis of the shard it is applied to."""
    w = json.loads(Path(path).read_text())
    k0 = int(w["start_index"])
    if not np.array_equal(np.asarray(w["axis"], dtype=np.float64), axis):
        raise TokenscaleError(f"{path}: fit window of another axis ({len(w['axis'])} points, the shard has {axis.size}); "
                              f"rerun its fit_window job")
    return k0
