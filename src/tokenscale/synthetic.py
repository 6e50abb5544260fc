"""Controllable synthetic data: modular-arithmetic expressions of known difficulty (paper App. A.3).

The task (a re-implementation of the "Mano" task of PhysicsLM).  An example of level ``L`` is a random
binary expression with ``L`` operators ``+``, ``-``, ``*`` over values in ``Z_p`` (``p = 23`` in the paper),
written in prefix (Polish) notation; the model must predict its value.  With ``o_i`` uniform on the
three operators, leaves ``v_j`` uniform on ``0..p-1`` and a tree shape ``T`` uniform over the
``Catalan(L)`` binary trees with ``L`` internal nodes,

    answer = eval_T(o_1, ..., o_L; v_1, ..., v_{L+1}) mod p,
    P(L) = 1 / l_max                                    (distribution="uniform")
    P(L) = L**-exponent / sum_{k=1..l_max} k**-exponent  (distribution="power", paper: exponent = 2)

for ``L = 1..l_max`` (paper: ``l_max = 10``).  ``L`` is the difficulty variable: a larger ``L`` needs more
intermediate results composed before the answer can be predicted.

Layout.  Vocabulary ``PAD=0, BOS=1, "="=2, "+"=3, "-"=4, "*"=5`` and values ``0..p-1`` at ids ``6..p+5``
(:func:`vocab`).  A row has exactly ``seq_len + 1`` tokens, right-aligned so the answer is always last::

    [PAD ... PAD, BOS, <2L+1 prefix tokens>, "=", ANSWER]

The trainer reads windows of ``seq_len + 1`` tokens (inputs ``row[:-1]``, labels ``row[1:]``) and
supervises only the last label, the answer.  The longest row has ``2 * l_max + 4`` tokens.

Determinism and disjointness.  Examples are drawn in chunks of :data:`CHUNK`; chunk ``c`` uses its own
generator seeded with ``SeedSequence(seed, spawn_key=(split_id, stream, c))`` where ``split_id`` is 0 for
"train" and 1 for "valid", and ``stream`` is 0 for levels sampled from ``P(L)`` or ``L`` for the
balanced (equal count per level) set.  Hence example ``i`` depends only on ``(seed, split, i)`` (not on
``n``), and the train and validation streams come from disjoint seed material by construction.
Distinct seeds do not imply distinct expressions: at ``L = 1`` only ``3 * p * p`` (1587 for p = 23)
expressions exist, so short expressions recur; :func:`overlap` counts this.

Generation is vectorised per (chunk, level): the shape is a random arrangement of ``L`` operators and
``L + 1`` leaves rotated into the one valid prefix word (cycle lemma), and answers come from a
right-to-left sweep over explicit operand pointers.  :func:`evaluate_prefix` is an independent
stack evaluator used by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tokenscale import TokenscaleError

__all__ = ["BOS", "CHUNK", "DISTRIBUTIONS", "EQ", "OPS", "PAD", "SPLITS", "SyntheticSpec", "evaluate_prefix",
           "expression_hash", "generate", "level_probs", "overlap", "vocab", "vocab_size"]

PAD, BOS, EQ = 0, 1, 2
OPS = ("+", "-", "*")
OP0 = 3  # token id of the first operator
VAL0 = OP0 + len(OPS)  # token id of value 0
DISTRIBUTIONS = ("uniform", "power")
SPLITS = {"train": 0, "valid": 1}
LEVEL_MODES = ("sampled", "balanced")
CHUNK = 2048  # examples per seeded chunk; changing it changes the data
MAX_P = 32768  # answers are stored as int16

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _check_p(p) -> None:
    if not _is_int(p) or not 2 <= p <= MAX_P:
        raise TokenscaleError(f"synthetic p={p!r}: the modulus must be an integer in 2..{MAX_P}")


def vocab(p: int) -> list[str]:
    """Token strings, index = token id: PAD, BOS, '=', the operators, then the values 0..p-1."""
    _check_p(p)
    return ["<pad>", "<bos>", "=", *OPS] + [str(v) for v in range(p)]


def vocab_size(p: int) -> int:
    _check_p(p)
    return VAL0 + p


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate: modulus ``p``, levels ``1..l_max``, their distribution, row length ``seq_len + 1``."""

    p: int = 23
    l_max: int = 10
    distribution: str = "uniform"
    exponent: float = 2.0
    seq_len: int = 64

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        _check_p(self.p)
        if not _is_int(self.l_max) or self.l_max < 1:
            raise TokenscaleError(f"synthetic l_max={self.l_max!r}: must be an integer >= 1")
        if self.distribution not in DISTRIBUTIONS:
            allowed = ", ".join(DISTRIBUTIONS)
            raise TokenscaleError(f"synthetic distribution={self.distribution!r}: must be one of {allowed}")
        e = self.exponent
        if self.distribution == "power" and not (isinstance(e, (int, float, np.number)) and 0 < e < np.inf):
            raise TokenscaleError(f"synthetic exponent={e!r}: the power distribution needs a finite exponent > 0")
        need = 2 * self.l_max + 3
        if not _is_int(self.seq_len) or self.seq_len < need:
            raise TokenscaleError(f"synthetic seq_len={self.seq_len!r} is too short: l_max={self.l_max} needs "
                                  f"seq_len >= {need} (rows of 2*l_max+4 = {need + 1} tokens)")


def level_probs(spec: SyntheticSpec) -> np.ndarray:
    """P(L) for L = 1..l_max, float64 (l_max,)."""
    L = np.arange(1, spec.l_max + 1, dtype=np.float64)
    w = np.ones_like(L) if spec.distribution == "uniform" else L ** -float(spec.exponent)
    return w / w.sum()


def _seed_sequence(seed: int, split: str, stream: int, chunk: int) -> np.random.SeedSequence:
    """The seed material of one chunk: train (split_id 0) and valid (split_id 1) never share it."""
    return np.random.SeedSequence(seed, spawn_key=(SPLITS[split], stream, chunk))


def _operand_values(is_op: np.ndarray, ops: np.ndarray, vals: np.ndarray, p: int) -> np.ndarray:
    """Values of prefix words (m, n), via explicit pointers to each operator's right operand."""
    m, n = is_op.shape
    step = np.where(is_op, 1, -1)
    open_before = 1 + np.cumsum(step, axis=1) - step  # subtrees still to read before token i
    # the left operand of the operator at i starts at i+1; the right one where open_before first returns
    later = np.triu(np.ones((n, n), dtype=bool), 1)
    right = np.argmax((open_before[:, :, None] == open_before[:, None, :]) & later, axis=2)
    value = vals.astype(np.int64)
    rows = np.arange(m)
    for i in range(n - 2, -1, -1):  # operands lie right of their operator
        a, b = value[:, i + 1], value[rows, right[:, i]]
        v = np.choose(ops[:, i], [a + b, a - b, a * b]) % p
        value[:, i] = np.where(is_op[:, i], v, value[:, i])
    return value[:, 0]


def _expressions(rng: np.random.Generator, m: int, L: int, p: int) -> tuple[np.ndarray, np.ndarray]:
    """m random prefix expressions with L operators: tokens (m, 2L+1) int32 and values (m,) int64."""
    n = 2 * L + 1
    is_op = np.argsort(rng.random((m, n)), axis=1) < L  # L operators (+1) and L+1 leaves (-1), shuffled
    # cycle lemma: the one rotation with every proper prefix sum >= 0 starts after the first minimum
    start = np.argmin(np.cumsum(np.where(is_op, 1, -1), axis=1), axis=1) + 1
    is_op = np.take_along_axis(is_op, (start[:, None] + np.arange(n)) % n, axis=1)
    ops = rng.integers(0, len(OPS), size=(m, n))
    vals = rng.integers(0, p, size=(m, n))
    tokens = np.where(is_op, OP0 + ops, VAL0 + vals).astype(np.int32)
    return tokens, _operand_values(is_op, ops, vals, p)


def _chunk(spec: SyntheticSpec, seed: int, split: str, stream: int, chunk: int) -> dict:
    """CHUNK examples: levels from P(L) (stream 0) or all at level ``stream``."""
    rng = np.random.default_rng(_seed_sequence(seed, split, stream, chunk))
    if stream == 0:
        level = rng.choice(spec.l_max, size=CHUNK, p=level_probs(spec)) + 1
    else:
        level = np.full(CHUNK, stream)
    tokens = np.zeros((CHUNK, spec.seq_len + 1), dtype=np.int32)
    answer = np.zeros(CHUNK, dtype=np.int64)
    for L in np.unique(level):
        idx = np.flatnonzero(level == L)
        expr, answer[idx] = _expressions(rng, idx.size, int(L), spec.p)
        tokens[idx, -(2 * L + 4)] = BOS
        tokens[idx, -(2 * L + 3):-2] = expr
        tokens[idx, -2] = EQ
        tokens[idx, -1] = VAL0 + answer[idx]
    return {"tokens": tokens, "level": level.astype(np.int16), "answer": answer.astype(np.int16)}


def _stream(spec: SyntheticSpec, n: int, seed: int, split: str, stream: int) -> dict:
    chunks = [_chunk(spec, seed, split, stream, c) for c in range(-(-n // CHUNK))]
    if not chunks:
        return {"tokens": np.zeros((0, spec.seq_len + 1), np.int32), "level": np.zeros(0, np.int16),
                "answer": np.zeros(0, np.int16)}
    return {k: np.concatenate([c[k] for c in chunks])[:n] for k in chunks[0]}


def generate(spec: SyntheticSpec, n: int, *, seed: int, split: str, levels: str = "sampled") -> dict:
    """n examples: ``tokens`` (n, seq_len+1) int32, ``level``, ``answer`` (n,) int16, ``expr_hash`` (n,) uint64.

    ``levels="sampled"`` draws L from :func:`level_probs`; ``levels="balanced"`` gives n // l_max examples per
    level in level order (n must be a multiple of l_max).  Example i depends only on (seed, split, i) (per
    level for "balanced"), so a smaller n yields a prefix of a larger one.
    """
    spec.validate()
    if not _is_int(n) or n < 0:
        raise TokenscaleError(f"synthetic n={n!r}: must be an integer >= 0")
    if not _is_int(seed) or seed < 0:
        raise TokenscaleError(f"synthetic seed={seed!r}: must be an integer >= 0")
    if split not in SPLITS:
        raise TokenscaleError(f"synthetic split={split!r}: must be one of {', '.join(SPLITS)}")
    if levels not in LEVEL_MODES:
        raise TokenscaleError(f"synthetic levels={levels!r}: must be one of {', '.join(LEVEL_MODES)}")
    if levels == "sampled":
        out = _stream(spec, n, seed, split, 0)
    elif n % spec.l_max:
        raise TokenscaleError(f"synthetic n={n}: balanced levels need a multiple of l_max={spec.l_max}")
    else:
        parts = [_stream(spec, n // spec.l_max, seed, split, L) for L in range(1, spec.l_max + 1)]
        out = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
    out["expr_hash"] = expression_hash(out["tokens"])
    return out


def expression_hash(tokens: np.ndarray) -> np.ndarray:
    """64-bit FNV-1a over the non-PAD tokens of each row (independent of seq_len): uint64 (n,)."""
    t = np.atleast_2d(np.asarray(tokens))
    h = np.full(t.shape[0], _FNV_OFFSET, dtype=np.uint64)
    for col in t.T:
        if col.any():  # all-PAD columns (most of a right-aligned batch) change nothing
            h = np.where(col != PAD, (h ^ col.astype(np.uint64)) * _FNV_PRIME, h)
    return h


def evaluate_prefix(tokens, p: int) -> int:
    """Value of a prefix expression mod p, read from the right end with a stack (independent of the generator).

    Accepts a bare expression or a whole row (everything up to BOS and from '=' on is dropped).
    """
    t = [int(x) for x in np.asarray(tokens).ravel()]
    if BOS in t:
        t = t[t.index(BOS) + 1:]
    if EQ in t:
        t = t[:t.index(EQ)]
    stack = []
    for tok in reversed(t):
        if VAL0 <= tok < VAL0 + p:
            stack.append(tok - VAL0)
        elif OP0 <= tok < VAL0 and len(stack) >= 2:
            a, b = stack.pop(), stack.pop()
            stack.append((a + b, a - b, a * b)[tok - OP0] % p)
        else:
            raise TokenscaleError(f"evaluate_prefix: token {tok} in {t} is not a value < {p} "
                                  "or an operator with two operands")
    if len(stack) != 1:
        raise TokenscaleError(f"evaluate_prefix: {t} leaves {len(stack)} values, not one")
    return stack[0]


def overlap(train: dict, valid: dict) -> dict:
    """How many validation expressions also occur in the training set, overall and per level."""
    seen = np.isin(valid["expr_hash"], train["expr_hash"])

    def count(mask):
        k, m = int(seen[mask].sum()), int(mask.sum())
        return {"n": m, "overlap": k, "fraction": k / m if m else 0.0}

    level = np.asarray(valid["level"])
    out = count(np.ones(seen.size, dtype=bool))
    out["by_level"] = {int(L): count(level == L) for L in np.unique(level)}
    return out
