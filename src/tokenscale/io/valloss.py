"""The ``val_loss.csv`` of a run: one ``step,tokens_seen,val_loss`` row per checkpoint (writer and reader).

numpy and the csv module only (no h5py): the frontier resolver reads these curves while Snakemake builds the DAG.
The rows come from the trainer's in-loop validation or from the per-token eval files
(:func:`tokenscale.io.evaluations.val_loss_rows`).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from tokenscale import TokenscaleError, atomic

VAL_LOSS_HEADER = "step,tokens_seen,val_loss"


def write_val_loss_csv(path: os.PathLike | str, rows: Iterable[tuple[int, int, float]]) -> Path:
    """``val_loss.csv`` of a run: one ``step,tokens_seen,val_loss`` row per checkpoint, by step (atomic)."""
    body = "".join(f"{step},{tokens},{loss:.9g}\n" for step, tokens, loss in sorted(rows))
    atomic.write_text(path, VAL_LOSS_HEADER + "\n" + body)
    return Path(path)


@dataclass(frozen=True)
class Curve:
    """One run's validation-loss curve: ``steps``, ``tokens`` seen and ``loss`` at its checkpoints (K,)."""

    run: str
    group: float  # the run's axis value a_r
    steps: np.ndarray
    tokens: np.ndarray
    loss: np.ndarray

    @property
    def final(self) -> tuple[int, int, float]:
        return int(self.steps[-1]), int(self.tokens[-1]), float(self.loss[-1])


def read_curve(path: str | Path, run: str, group: float) -> Curve:
    """A run's ``val_loss.csv`` (step, tokens_seen, val_loss) as a :class:`Curve`."""
    p = Path(path)
    try:
        with open(p, newline="") as fh:
            rows = list(csv.DictReader(fh))
        steps = np.array([int(r["step"]) for r in rows], dtype=np.int64)
        tokens = np.array([int(r["tokens_seen"]) for r in rows], dtype=np.int64)
        loss = np.array([float(r["val_loss"]) for r in rows], dtype=np.float64)
    except (OSError, KeyError, ValueError) as e:
        raise TokenscaleError(f"{p}: cannot read a validation-loss curve ({e}); rerun its val_loss job") from None
    if steps.size == 0 or np.any(np.diff(steps) <= 0) or not np.all(np.isfinite(loss)):
        raise TokenscaleError(f"{p}: validation-loss curve is empty, unordered or not finite")
    return Curve(run, float(group), steps, tokens, loss)
