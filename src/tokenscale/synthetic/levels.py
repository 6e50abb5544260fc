"""The synthetic-levels stage (paper Fig. 8): per-level answer loss and accuracy of a synthetic run's checkpoints
on the dataset's balanced levels token set -> levels.csv (step, level, n, loss, accuracy, n_unseen,
accuracy_unseen: the same on the examples whose expression is not in the training rows, from the token set's
``train_seen`` flags; empty cells for a token set prepared without them)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from tokenscale import TokenscaleError
from tokenscale.io import read_token_set
from tokenscale.series import step_from_name
from tokenscale.synthetic.arithmetic import SEEN_ATTR, level_rows, parse_seen, write_levels


def answer_levels(tokens_path) -> np.ndarray:
    """(n,) level of each scored answer of a synthetic token set (domain + 1 at its last position)."""
    ts = read_token_set(tokens_path, datasets=("domain",))
    return np.asarray(ts["domain"][:, -1], dtype=np.int64) + 1


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def score_levels(*, checkpoints: list, tokens, out, device=None, log=_stderr) -> list[dict]:
    """Evaluate every checkpoint folder (``step<N>/``, any order) on ``tokens`` and write levels.csv (``out``);
    ``log`` gets one progress line per checkpoint. Returns the rows."""
    from tokenscale.evaluation.evaluate import scored_predictions  # torch

    level, rows = answer_levels(tokens), []
    seen = parse_seen(read_token_set(tokens, datasets=("domain",))["attrs"].get(SEEN_ATTR), level.size)
    for i, ckpt in enumerate(checkpoints, 1):
        step = step_from_name(Path(ckpt).name)
        if step is None:
            raise TokenscaleError(f"synthetic-levels: cannot tell the step of checkpoint {ckpt} (not step<N>)")
        loss, correct = scored_predictions(ckpt, tokens, device=device)
        rows += level_rows(step, level, loss, correct, seen)
        log(f"synthetic-levels: {i}/{len(checkpoints)} step {step}: accuracy {correct.mean():.3f}")
    write_levels(out, rows)
    return rows
