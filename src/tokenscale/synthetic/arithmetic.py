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
           "expression_hash", "generate", "level_baseline", "level_probs", "overlap", "prepare", "spec_of", "vocab",
           "vocab_size", "write_tokenizer", "SEEN_ATTR", "seen_string", "parse_seen", "expression_count",
           "expected_unseen", "read_levels_unseen"]

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


def stream_train(spec: SyntheticSpec, n: int, seed: int, fh, dtype, probe_hashes: list[np.ndarray]) -> dict:
    """Write the training rows of ``generate(spec, n, seed=seed, split="train")`` to ``fh`` as ``dtype``, one
    seeded chunk at a time (memory: one chunk, whatever ``n``); return what the report needs of them:
    ``level_counts`` (l_max,), ``answer_counts`` (l_max, p) and ``seen`` (per array of ``probe_hashes``: which of
    its expressions occur in the training rows)."""
    import sys

    level_counts = np.zeros(spec.l_max, dtype=np.int64)
    answer_counts = np.zeros((spec.l_max, spec.p), dtype=np.int64)
    seen = [np.zeros(np.shape(h), dtype=bool) for h in probe_hashes]
    n_chunks = -(-n // CHUNK)
    for c in range(n_chunks):
        part = _chunk(spec, seed, "train", 0, c)
        keep = min(CHUNK, n - c * CHUNK)
        tokens, level, answer = part["tokens"][:keep], part["level"][:keep], part["answer"][:keep]
        fh.write(tokens.astype(dtype).tobytes())
        level_counts += np.bincount(level, minlength=spec.l_max + 1)[1:]
        np.add.at(answer_counts, (level.astype(np.int64) - 1, answer.astype(np.int64)), 1)
        hashes = expression_hash(tokens)
        for s, h in zip(seen, probe_hashes):
            s |= np.isin(h, hashes)
        if n_chunks > 100 and (c + 1) % 100 == 0:
            print(f"synthetic: {(c + 1) * CHUNK:,} of {n:,} training examples", file=sys.stderr, flush=True)
    return {"level_counts": level_counts, "answer_counts": answer_counts, "seen": seen}


def overlap(train: dict, valid: dict, seen: np.ndarray | None = None) -> dict:
    """How many validation expressions also occur in the training set, overall and per level (``seen``: that
    membership already computed, e.g. by :func:`stream_train`; ``train`` is then unused)."""
    seen = np.isin(valid["expr_hash"], train["expr_hash"]) if seen is None else np.asarray(seen, dtype=bool)

    def count(mask):
        k, m = int(seen[mask].sum()), int(mask.sum())
        return {"n": m, "overlap": k, "fraction": k / m if m else 0.0}

    level = np.asarray(valid["level"])
    out = count(np.ones(seen.size, dtype=bool))
    out["by_level"] = {int(L): count(level == L) for L in np.unique(level)}
    return out


def level_baseline(train: dict, evaluated: dict, counts: np.ndarray | None = None) -> dict:
    """Per level, the accuracy on ``evaluated`` of a predictor that knows only the level: the level's most
    frequent training answer ({L: accuracy}).  Small p makes answers far from uniform (x gives 0 more often),
    so this, not 1/p, is the floor a level's accuracy must clear to show the expression was used."""
    out = {}
    for L in np.unique(evaluated["level"]):
        ev = np.asarray(evaluated["answer"])[np.asarray(evaluated["level"]) == L]
        if counts is not None:  # (l_max, p) answer counts per level (stream_train): the same majority
            majority = int(np.argmax(counts[L - 1])) if counts[L - 1].any() else 0
        else:
            tr = np.asarray(train["answer"])[np.asarray(train["level"]) == L]
            majority = np.bincount(tr).argmax() if tr.size else 0
        out[int(L)] = float((ev == majority).mean())
    return out


# ----------------------------------------------------------------------------- seen / unseen expressions
SEEN_ATTR = "train_seen"  # token-set attribute: one '1' (in the training rows) or '0' (unseen) per example


def seen_string(seen) -> str:
    """The :data:`SEEN_ATTR` of a token set: ``"0"``/``"1"`` per example, in row order."""
    return "".join("1" if s else "0" for s in np.asarray(seen, dtype=bool).ravel())


def parse_seen(value, n: int) -> np.ndarray | None:
    """(n,) bool from a :data:`SEEN_ATTR` value; None when the token set predates it (absent)."""
    if value is None:
        return None
    v = value.decode() if isinstance(value, bytes) else str(value)
    if len(v) != n or set(v) - {"0", "1"}:
        raise TokenscaleError(f"synthetic token set: {SEEN_ATTR} has {len(v)} flags for {n} examples "
                              "(or characters other than 0/1); regenerate its synthetic data")
    return np.frombuffer(v.encode(), dtype=np.uint8) == ord("1")


def expression_count(p: int, L: int) -> int:
    """Distinct level-L expressions (token strings): Catalan(L) tree shapes × 3^L operators × p^(L+1) leaves."""
    from math import comb  # noqa: PLC0415  (numpy-only module level)

    return comb(2 * L, L) // (L + 1) * 3 ** L * p ** (L + 1)


def expected_unseen(p: int, L: int, n_train_level: float) -> float:
    """Expected share of uniformly drawn level-L validation expressions absent from ``n_train_level`` uniform
    training draws of that level: ``(1 − 1/N_L)^n ≈ exp(−n/N_L)``, ``N_L`` = :func:`expression_count`."""
    N = float(expression_count(p, L))
    return float(np.exp(n_train_level * np.log1p(-1.0 / N))) if N > 1 else 0.0


# ----------------------------------------------------------------------------- the prepared data folder
def spec_of(entry: dict) -> SyntheticSpec:
    """The :class:`SyntheticSpec` of a config ``synthetic`` entry."""
    return SyntheticSpec(p=entry["p"], l_max=entry["l_max"], distribution=entry["distribution"],
                         exponent=float(entry["exponent"]), seq_len=entry["seq_len"])


def write_tokenizer(p: int, out_dir) -> "Path":  # noqa: F821  (pathlib imported inside: numpy-only module)
    """A word-level tokenizer over :func:`vocab` (tokens separated by spaces), saved like any tokenscale tokenizer
    so checkpoints carry it and evaluation checks it against the token sets."""
    from pathlib import Path

    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({t: i for i, t in enumerate(vocab(p))}, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<bos>")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


def _token_set(path, ex: dict, *, kind: str, spec: SyntheticSpec, attrs: dict) -> None:
    """A token set of examples (answer-scored): domain = level − 1 (names L1..L{l_max}), doc_id = example."""
    from tokenscale.data import write_token_set

    n, T = ex["tokens"].shape[0], spec.seq_len
    mask = np.zeros((n, T), dtype=bool)
    mask[:, -1] = True  # the label at the last position is the answer
    domain = np.broadcast_to((ex["level"].astype(np.int16) - 1)[:, None], (n, T))
    write_token_set(path, ex["tokens"], np.broadcast_to(np.arange(n)[:, None], (n, T)),
                    np.broadcast_to(np.arange(T)[None, :], (n, T)), domain, kind=kind,
                    domain_names=[f"L{L}" for L in range(1, spec.l_max + 1)], attrs=attrs, score_mask=mask)


def prepare(entry: dict, out_dir) -> dict:
    """The data folder of one config ``synthetic`` entry: ``tokenizer/``, ``train_tokens.bin`` + ``.json`` (rows
    of ``seq_len + 1`` tokens, only the answer supervised), ``valid_tokens.h5`` (``valid_examples`` from the
    entry's own level distribution: the series' tokens, one per example), ``levels_tokens.h5`` (``level_examples``
    per level: the per-level diagnosis) and ``overlap.json``; both token sets carry :data:`SEEN_ATTR`, whether each
    example's expression occurs in the training rows (the unseen subset the per-level report scores apart);
    returns the train meta."""
    import json
    from pathlib import Path

    from tokenscale import atomic
    from tokenscale.data import tokenizer_sha256

    spec, seed, out = spec_of(entry), int(entry["seed"]), Path(out_dir)
    tok_sha = tokenizer_sha256(write_tokenizer(spec.p, out / "tokenizer"))
    valid = generate(spec, int(entry["valid_examples"]), seed=seed, split="valid")
    levels = generate(spec, int(entry["level_examples"]) * spec.l_max, seed=seed, split="valid", levels="balanced")
    dtype = np.uint8 if vocab_size(spec.p) <= 256 else np.uint16
    n = int(entry["train_examples"])
    with atomic.atomic_output(out / "train_tokens.bin") as tmp, open(tmp, "wb") as fh:
        train = stream_train(spec, n, seed, fh, dtype, [valid["expr_hash"], levels["expr_hash"]])
    meta = {"dtype": np.dtype(dtype).name, "n_tokens": n * (spec.seq_len + 1), "seq_len": spec.seq_len,
            "n_samples": n, "single_pass_tokens": n * spec.seq_len, "layout": "rows", "supervise": "last",
            "vocab_size": vocab_size(spec.p), "tokenizer_sha256": tok_sha, "synthetic": dict(entry),
            "level_counts": train["level_counts"].tolist()}
    attrs = {"tokenizer_sha256": tok_sha, "synthetic": json.dumps(dict(entry), sort_keys=True)}
    _token_set(out / "valid_tokens.h5", valid, kind="synthetic", spec=spec,
               attrs={**attrs, SEEN_ATTR: seen_string(train["seen"][0])})
    _token_set(out / "levels_tokens.h5", levels, kind="synthetic-levels", spec=spec,
               attrs={**attrs, SEEN_ATTR: seen_string(train["seen"][1])})
    atomic.write_json(out / "overlap.json", {"valid": overlap(train, valid, seen=train["seen"][0]),
                                             "levels": overlap(train, levels, seen=train["seen"][1]),
                                             "level_baseline": level_baseline(train, levels, counts=train["answer_counts"])})
    atomic.write_json(out / "train_tokens.json", meta)  # last: the rule's completion marker
    return meta


# ----------------------------------------------------------------------------- stages the workflow runs
LEVEL_FIELDS = ("step", "level", "n", "loss", "accuracy", "n_unseen", "accuracy_unseen")


def write_levels(path, rows: list[dict]) -> None:
    """levels.csv: per checkpoint step and level, the examples, mean answer loss and answer accuracy."""
    import csv
    import io

    from tokenscale import atomic

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=LEVEL_FIELDS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic.write_text(path, buf.getvalue())


def read_levels(path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps (K,), levels (n_L,), loss (n_L, K), accuracy (n_L, K)) from a levels.csv."""
    import csv

    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        step = np.array([int(r["step"]) for r in rows])
        level = np.array([int(r["level"]) for r in rows])
        loss = np.array([float(r["loss"]) for r in rows])
        acc = np.array([float(r["accuracy"]) for r in rows])
    except (OSError, KeyError, ValueError) as e:
        raise TokenscaleError(f"{path}: cannot read a levels table ({e}); rerun its synthetic_levels job") from None
    steps, levels = np.unique(step), np.unique(level)
    if step.size != steps.size * levels.size:
        raise TokenscaleError(f"{path}: {step.size} rows are not one per (step, level) of {steps.size} x {levels.size}")
    order = np.lexsort((step, level))  # level-major, steps ascending
    return steps, levels, loss[order].reshape(levels.size, steps.size), acc[order].reshape(levels.size, steps.size)


def level_rows(step: int, level: np.ndarray, loss: np.ndarray, correct: np.ndarray,
               seen: np.ndarray | None = None) -> list[dict]:
    """The levels.csv rows of one checkpoint; ``seen`` (n,) marks the examples whose expression is in the
    training rows (``n_unseen``/``accuracy_unseen``: the others; empty cells when unknown, NaN when none)."""
    rows = []
    for L in np.unique(level):
        m = level == L
        row = {"step": int(step), "level": int(L), "n": int(m.sum()), "loss": float(loss[m].mean()),
               "accuracy": float(correct[m].mean()), "n_unseen": "", "accuracy_unseen": ""}
        if seen is not None:
            u = m & ~np.asarray(seen, dtype=bool)
            row.update(n_unseen=int(u.sum()), accuracy_unseen=float(correct[u].mean()) if u.any() else float("nan"))
        rows.append(row)
    return rows


def read_levels_unseen(path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(n (n_L,), n_unseen (n_L,), accuracy_unseen (n_L, K), NaN where no example is unseen) of a levels.csv, in
    :func:`read_levels` order; None for a table written before these columns (or without the seen flags)."""
    import csv

    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or rows[0].get("n_unseen") in (None, ""):
        return None
    step = np.array([int(r["step"]) for r in rows])
    level = np.array([int(r["level"]) for r in rows])
    n = np.array([int(r["n"]) for r in rows])
    n_u = np.array([int(r["n_unseen"]) for r in rows])
    acc_u = np.array([float(r["accuracy_unseen"]) for r in rows])
    order = np.lexsort((step, level))
    n_steps = np.unique(step).size
    return n[order][::n_steps], n_u[order][::n_steps], acc_u[order].reshape(-1, n_steps)


def _fit_params(fits_path, analysis: dict) -> tuple[dict, np.ndarray, object]:
    """({tau, lam, delta, post} (N,) on the fit axis, selected (N,), fit) of a series' fit table; ``selected``
    is the analysis' token selection (the one p(τ) uses: noise rows and τ outside the window excluded)."""
    from tokenscale.analysis.instances import selected_rows
    from tokenscale.analysis.options import AnalysisOptions
    from tokenscale.io.fits import load_fits

    fit = load_fits(fits_path)
    p = {k: np.asarray(getattr(fit, k), dtype=np.float64) for k in ("tau", "lam", "delta", "post")}
    finite = np.all([np.isfinite(v) for v in p.values()], axis=0)
    return p, finite & selected_rows(fit, AnalysisOptions.from_config(analysis).main), fit


def _unseen_summary(levels, unseen, base: dict) -> dict:
    """Per level, the share of the balanced levels set whose expression is not in the training rows and the
    final accuracy on those (None where none is unseen); ``unseen``: :func:`read_levels_unseen` or None."""
    if unseen is None:
        return {"note": "levels table without seen flags (data prepared before them): rerun synthetic_data"}
    n_all, n_u, acc_u = unseen
    final = {int(L): (float(a[-1]) if np.isfinite(a[-1]) else None) for L, a in zip(levels, acc_u)}
    above = [L for L, a in final.items() if a is not None and L in base and a > base[L]]
    return {"n_unseen": {int(L): int(n) for L, n in zip(levels, n_u)},
            "share_unseen": {int(L): float(u / n) if n else None for L, u, n in zip(levels, n_u, n_all)},
            "final_accuracy_unseen": final, "levels_above_baseline_unseen": above,
            "levels_without_unseen": [int(L) for L, n in zip(levels, n_u) if n == 0]}


def _per_level_summary(levels, acc, tau_steps, valid, level_of_token, baseline: dict | None = None) -> dict:
    """Final accuracy, levels past 50% and past the level-only baseline (:func:`level_baseline`, keys as
    strings or ints), and the median τ of the selected fits per level."""
    final = {int(L): float(a[-1]) for L, a in zip(levels, acc)}
    base = {int(k): float(v) for k, v in (baseline or {}).items()}
    med = {}
    for L in levels:
        m = valid & (level_of_token == L)
        med[int(L)] = {"n_selected_fits": int(m.sum()),
                       "median_tau_step": float(np.median(tau_steps[m])) if m.any() else None}
    above_base = [L for L, a in final.items() if L in base and a > base[L]]
    return {"final_accuracy": final, "levels_above_half": [L for L, a in final.items() if a > 0.5],
            "n_levels_above_half": int(sum(a > 0.5 for a in final.values())),
            "level_baseline": base, "levels_above_baseline": above_base, "tau_by_level": med}


def make_report(entry: dict, *, run: str, levels_csv, val_loss, fits, trajectories, summary, overlap_json,
                analysis: dict, out, figures, partner=None) -> dict:
    """report.json and Fig. 8–10 of one synthetic series: per-level loss/accuracy, the shape test on the
    aggregate validation loss (step axis, the analysis' transient rule), the decomposition's headline numbers,
    and ``paper_criteria`` (:mod:`tokenscale.synthetic.criteria`: this arm's criteria; the pair's verdict when
    ``partner``, the other arm's report.json, is given)."""
    import json

    from tokenscale.synthetic.criteria import paper_criteria

    from tokenscale import atomic
    from tokenscale.analysis.numerics import jsonable
    from tokenscale.synthetic.shape import shape_over_starts, shape_test
    from tokenscale.synthetic.figures import (plot_level_trajectories, plot_levels, plot_params_vs_tau,
                                              plot_shape_over_starts)
    from tokenscale.io.valloss import read_curve
    from tokenscale.io import read_run_trajectories

    steps, levels, loss, acc = read_levels(levels_csv)
    curve = read_curve(val_loss, run, 0.0)
    shape = shape_test(curve.steps, curve.loss, transient=analysis.get("transient", "dpeak"), transform="none")
    p, ok, fit = _fit_params(fits, analysis)
    fit_start = float(np.asarray(fit.axis_orig, dtype=np.float64)[0])  # the fit.start rule's first checkpoint
    shape_fs = shape_test(curve.steps, curve.loss, transient=("start", fit_start), transform="none")
    over = shape_over_starts(curve.steps, curve.loss)
    losses, axis, meta = read_run_trajectories(trajectories)
    token_level = np.asarray(meta["domain"], dtype=np.int64) + 1  # (N,) one answer per example
    s = json.loads(open(summary).read())
    tau_steps = 10.0 ** p["tau"] if fit.transform == "log10" else p["tau"]
    ov = json.loads(open(overlap_json).read())
    report = {"run": run, "synthetic": entry, "level_probs": level_probs(spec_of(entry)).tolist(),
              "shape_test": shape,
              "shape_test_fit_start": {**shape_fs, "start_rule": "fit.start (the series' fit window)"},
              "shape_over_starts": over,
              "levels": _per_level_summary(levels, acc, tau_steps, ok, token_level, ov.get("level_baseline")),
              "n_answer_tokens": int(losses.shape[0]), "n_selected_fits": int(ok.sum()),
              "svd_energy": {k: s["svd"].get(k) for k in ("svd_energy1", "svd_energy2", "svd_energy1_fit", "svd_energy2_fit")},
              "metrics": s.get("metrics", {}), "alpha_fit": s.get("alpha_fit"),
              "overlap": {k: v for k, v in ov.items() if k != "level_baseline"},
              "levels_unseen": _unseen_summary(levels, read_levels_unseen(levels_csv),
                                               {int(k): float(v) for k, v in ov.get("level_baseline", {}).items()})}
    report = jsonable(report)  # non-finite numbers -> null
    report["paper_criteria"] = jsonable(paper_criteria(report, json.loads(open(partner).read()) if partner else None))
    atomic.write_json(out, report, allow_nan=False)
    plot_levels(steps, levels, loss, acc, figures, title=f"{run}: per-level answer loss and accuracy",
                baseline=report["levels"]["level_baseline"])
    fp = {**p, "valid": ok}
    x_steps = np.asarray(axis["step"], dtype=np.float64)
    plot_level_trajectories(x_steps, losses, token_level, fp, figures)
    plot_params_vs_tau(tau_steps[ok], p["delta"][ok], p["lam"][ok], token_level[ok], figures)
    plot_shape_over_starts(over, figures, title=f"{run}: shape test by first checkpoint kept",
                           marks={"fit.start": fit_start, "dpeak (shape_test)": shape["transient_step"]})
    return report

