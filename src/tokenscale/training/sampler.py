"""Training-sample order as a pure function of position.

A sampler maps a global position ``p`` (the p-th training sample the run consumes, counted over the whole
run and all ranks) to a sample index. Step ``s`` with global batch ``G`` consumes positions
``[s*G, (s+1)*G)``; rank ``r`` of ``W`` takes the contiguous slice ``r*G/W .. (r+1)*G/W`` of that batch. So the
data order depends only on the seed, never on the number of ranks, and resuming needs only the position.

* :class:`PermutationSampler` -- epochs of seeded permutations (uniform, without replacement in an epoch).
* :class:`WeightedSampler` -- i.i.d. draws with per-sample weights (the reshaping step reweights training
  samples by when their tokens become learnable and continues a run with this sampler).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tokenscale import TokenscaleError


class PermutationSampler:
    kind = "permutation"

    def __init__(self, n_samples: int, seed: int):
        if n_samples < 1:
            raise TokenscaleError(f"sampler: n_samples must be >= 1, got {n_samples}")
        self.n, self.seed = int(n_samples), int(seed)
        self._cache: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 2:
                self._cache.clear()
            self._cache[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._cache[epoch]

    def indices(self, start: int, count: int) -> np.ndarray:
        pos = np.arange(start, start + count, dtype=np.int64)
        out = np.empty(count, dtype=np.int64)
        for ep in np.unique(pos // self.n):
            m = pos // self.n == ep
            out[m] = self._perm(int(ep))[pos[m] % self.n]
        return out

    def state(self) -> dict:
        return {"kind": self.kind, "n": self.n, "seed": self.seed}


class WeightedSampler:
    """i.i.d. sampling with probabilities proportional to ``weights``; block-seeded so any position is O(1)."""

    kind = "weighted"
    BLOCK = 4096

    def __init__(self, weights: np.ndarray, seed: int):
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 1 or w.size == 0:
            raise TokenscaleError(f"sampler: weights must be a non-empty 1-D array, got shape {w.shape}")
        if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
            raise TokenscaleError("sampler: weights must be finite, non-negative and not all zero")
        self.n, self.seed = w.size, int(seed)
        self.cdf = np.cumsum(w / w.sum())
        self.cdf[-1] = 1.0

    def _block(self, b: int) -> np.ndarray:
        u = np.random.default_rng([self.seed, 7919, b]).random(self.BLOCK)
        return np.searchsorted(self.cdf, u, side="right")

    def indices(self, start: int, count: int) -> np.ndarray:
        pos = np.arange(start, start + count, dtype=np.int64)
        out = np.empty(count, dtype=np.int64)
        for b in np.unique(pos // self.BLOCK):
            m = pos // self.BLOCK == b
            out[m] = self._block(int(b))[pos[m] % self.BLOCK]
        return out

    def state(self) -> dict:
        return {"kind": self.kind, "n": self.n, "seed": self.seed}


def load_sampler(n_samples: int, seed: int, weights_path: str | Path | None = None):
    """Uniform permutation sampler, or a weighted one from a ``.npy`` of per-sample weights."""
    if weights_path is None:
        return PermutationSampler(n_samples, seed)
    p = Path(weights_path)
    if not p.is_file():
        raise TokenscaleError(f"sampler: weights file not found: {p}")
    w = np.load(p)
    if w.shape != (n_samples,):
        raise TokenscaleError(f"sampler: {p} has shape {w.shape}, expected ({n_samples},) (one weight per training sample)")
    return WeightedSampler(w, seed)


def rank_slice(global_batch: int, rank: int, world: int) -> slice:
    if global_batch % world:
        raise TokenscaleError(f"batch_size={global_batch} is not divisible by the number of ranks ({world})")
    per = global_batch // world
    return slice(rank * per, (rank + 1) * per)

