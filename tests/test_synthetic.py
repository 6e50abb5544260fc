"""Tests of the synthetic modular-arithmetic generator (paper App. A.3)."""

from __future__ import annotations

import ast
import itertools
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import chisquare

from tokenscale import TokenscaleError
from tokenscale.synthetic import arithmetic as syn
from tokenscale.synthetic.arithmetic import (BOS, CHUNK, EQ, PAD, SyntheticSpec, evaluate_prefix, expression_hash, generate,
                                  level_baseline, level_probs, overlap, vocab, vocab_size)

OP0, VAL0 = syn.OP0, syn.VAL0


def balanced(p=23, l_max=10, per_level=300, seed=0, split="valid", **kw):
    spec = SyntheticSpec(p=p, l_max=l_max, **kw)
    return spec, generate(spec, l_max * per_level, seed=seed, split=split, levels="balanced")


def expression(row):
    """The prefix tokens of a row: between BOS and '='."""
    row = list(row)
    return row[row.index(BOS) + 1:row.index(EQ)]


def infix_value(expr, p):
    """Third, unrelated evaluation: recursive descent left to right into an infix string, evaluated by Python."""
    it = iter(expr)

    def parse():
        tok = next(it)
        if tok >= VAL0:
            return str(tok - VAL0)
        left, right = parse(), parse()
        return f"({left} {'+-*'[tok - OP0]} {right})"

    text = parse()
    assert next(it, None) is None
    return eval(text) % p


# --- vocabulary and spec ---------------------------------------------------------------------------------

def test_vocab():
    v = vocab(23)
    assert len(v) == vocab_size(23) == 29
    assert v[PAD] == "<pad>" and v[BOS] == "<bos>" and v[EQ] == "="
    assert v[3:6] == ["+", "-", "*"] and v[VAL0] == "0" and v[-1] == "22"


def test_level_probs():
    np.testing.assert_allclose(level_probs(SyntheticSpec()), np.full(10, 0.1))
    q = level_probs(SyntheticSpec(distribution="power", exponent=2.0))
    L = np.arange(1, 11)
    np.testing.assert_allclose(q, L ** -2.0 / np.sum(L ** -2.0))
    np.testing.assert_allclose(q[0] / q[1], 4.0)


@pytest.mark.parametrize("kw, match", [
    ({"p": 1}, r"p=1\b"),
    ({"p": 40000}, r"p=40000"),
    ({"l_max": 0}, r"l_max=0\b"),
    ({"distribution": "zipf"}, r"distribution='zipf'.*uniform, power"),
    ({"distribution": "power", "exponent": 0.0}, r"exponent=0\.0"),
    ({"distribution": "power", "exponent": -1.0}, r"exponent=-1\.0"),
    ({"seq_len": 22}, r"seq_len=22 is too short.*seq_len >= 23"),
    ({"l_max": 3, "seq_len": 8}, r"seq_len=8 is too short: l_max=3 needs seq_len >= 9"),
])
def test_bad_spec(kw, match):
    with pytest.raises(TokenscaleError, match=match):
        SyntheticSpec(**kw)


def test_shortest_seq_len_is_accepted():
    spec = SyntheticSpec(l_max=10, seq_len=23)
    d = generate(spec, 10, seed=0, split="train", levels="balanced")
    assert d["tokens"].shape == (10, 24) and d["tokens"][-1, 0] == BOS  # the L = 10 row fills the window


@pytest.mark.parametrize("kw, match", [
    ({"split": "test"}, r"split='test'.*train, valid"),
    ({"levels": "even"}, r"levels='even'.*sampled, balanced"),
    ({"levels": "balanced", "n": 15}, r"n=15.*multiple of l_max=10"),
    ({"n": -1}, r"n=-1"),
    ({"seed": -3}, r"seed=-3"),
])
def test_bad_generate_args(kw, match):
    args = {"n": 20, "seed": 0, "split": "train", **kw}
    n = args.pop("n")
    with pytest.raises(TokenscaleError, match=match):
        generate(SyntheticSpec(), n, **args)


@pytest.mark.parametrize("expr, match", [
    ([OP0, VAL0 + 1], r"not a value < 23 or an operator with two operands"),
    ([VAL0 + 1, VAL0 + 2], r"leaves 2 values, not one"),
    ([VAL0 + 23], r"token 29"),
    ([], r"leaves 0 values"),
])
def test_evaluate_prefix_rejects_malformed(expr, match):
    with pytest.raises(TokenscaleError, match=match):
        evaluate_prefix(expr, 23)


def test_evaluate_prefix_by_hand():
    v = lambda x: VAL0 + x  # noqa: E731
    plus, minus, times = OP0, OP0 + 1, OP0 + 2
    assert evaluate_prefix([v(7)], 23) == 7
    assert evaluate_prefix([minus, v(3), times, v(4), v(5)], 23) == (3 - 20) % 23  # 3 - 4*5
    assert evaluate_prefix([times, plus, v(2), v(3), v(4)], 23) == 20  # (2+3)*4
    assert evaluate_prefix([minus, minus, v(1), v(2), v(3)], 5) == (1 - 2 - 3) % 5  # left-assoc: (1-2)-3
    row = [PAD, PAD, BOS, minus, v(1), minus, v(2), v(3), EQ, v(2)]
    assert evaluate_prefix(row, 5) == (1 - (2 - 3)) % 5  # a whole row: padding, '=' and answer dropped


# --- correctness and layout ------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [2, 5, 23])
def test_every_answer_matches_independent_evaluator(p):
    spec, d = balanced(p=p, per_level=300)
    assert np.array_equal(d["answer"], d["tokens"][:, -1] - VAL0)
    got = np.array([evaluate_prefix(row, p) for row in d["tokens"]])
    bad = np.flatnonzero(got != d["answer"])
    assert bad.size == 0, f"{bad.size} wrong answers, first at row {bad[:1]}: {d['tokens'][bad[:1]]}"
    assert set(np.unique(d["answer"])) == set(range(p))


def test_answers_match_python_infix():
    _, d = balanced(p=23, per_level=50, seed=3)
    for row, ans in zip(d["tokens"], d["answer"]):
        assert infix_value(expression(row), 23) == ans


@pytest.mark.parametrize("p", [2, 23])
def test_layout(p):
    spec, d = balanced(p=p, per_level=100, seq_len=40)
    tok, level = d["tokens"], d["level"]
    assert tok.dtype == np.int32 and tok.shape == (1000, 41)
    assert d["level"].dtype == np.int16 and d["answer"].dtype == np.int16 and d["expr_hash"].dtype == np.uint64
    assert tok.min() >= 0 and tok.max() < vocab_size(p)
    assert np.array_equal(level, np.repeat(np.arange(1, 11), 100))
    for row, L in zip(tok, level.astype(int)):
        start = int(np.argmax(row != PAD))
        assert (row[:start] == PAD).all() and (row[start:] != PAD).all(), "not right-aligned"
        assert row.size - start == 2 * L + 4
        assert row[start] == BOS and row[-2] == EQ and row[-1] >= VAL0
        assert (row == BOS).sum() == 1 and (row == EQ).sum() == 1
        expr = row[start + 1:-2]
        assert expr.size == 2 * L + 1 and ((expr >= OP0) & (expr < VAL0 + p)).all()
        assert (expr < VAL0).sum() == L
        open_ = 1 + np.cumsum(np.where(expr < VAL0, 1, -1))  # subtrees still to read after each token
        assert (open_[:-1] >= 1).all() and open_[-1] == 0, "not a single prefix expression"


def test_tree_shapes_uniform_over_catalan():
    _, d = balanced(l_max=3, per_level=5000, seed=1)
    words = [tuple(np.array(expression(r)) < VAL0) for r in d["tokens"][d["level"] == 3]]
    shapes, counts = np.unique(np.array(words), axis=0, return_counts=True)
    assert len(shapes) == 5  # Catalan(3)
    assert chisquare(counts).pvalue > 1e-3


def test_l1_has_1587_distinct_expressions_and_all_occur():
    enumerated = {(OP0 + o, VAL0 + a, VAL0 + b) for o in range(3) for a in range(23) for b in range(23)}
    assert len(enumerated) == 3 * 23 * 23 == 1587
    spec = SyntheticSpec(p=23, l_max=1, seq_len=5)
    d = generate(spec, 40000, seed=0, split="train")
    generated = {tuple(r[1:4]) for r in d["tokens"].tolist()}
    assert generated == enumerated
    assert np.unique(d["expr_hash"]).size == 1587  # the hash separates all of them


# --- determinism, streams, disjointness ------------------------------------------------------------------

def test_deterministic_and_prefix_in_n():
    spec = SyntheticSpec(distribution="power")
    big = generate(spec, 2 * CHUNK + 5, seed=11, split="train")
    again = generate(spec, 2 * CHUNK + 5, seed=11, split="train")
    for k in big:
        assert np.array_equal(big[k], again[k])
    for n in (0, 10, CHUNK + 7):
        small = generate(spec, n, seed=11, split="train")
        for k in big:
            assert np.array_equal(small[k], big[k][:n]), (n, k)
    other = generate(spec, 2 * CHUNK + 5, seed=12, split="train")
    assert not np.array_equal(other["tokens"], big["tokens"])


def test_balanced_prefix_in_n_per_level():
    spec = SyntheticSpec()
    small = generate(spec, 10 * 5, seed=2, split="valid", levels="balanced")
    big = generate(spec, 10 * (CHUNK + 3), seed=2, split="valid", levels="balanced")
    for L in range(1, 11):
        a, b = small["tokens"][small["level"] == L], big["tokens"][big["level"] == L]
        assert a.shape[0] == 5 and b.shape[0] == CHUNK + 3
        assert np.array_equal(a, b[:5])


def test_balanced_counts():
    _, d = balanced(l_max=7, per_level=123, seq_len=20)
    assert np.array_equal(np.bincount(d["level"], minlength=8)[1:], np.full(7, 123))
    assert (np.diff(d["level"]) >= 0).all()  # level order


def test_hash_ignores_padding():
    long = generate(SyntheticSpec(seq_len=64), 500, seed=4, split="train")
    short = generate(SyntheticSpec(seq_len=23), 500, seed=4, split="train")
    assert np.array_equal(long["tokens"][:, -24:], short["tokens"])
    assert np.array_equal(long["expr_hash"], short["expr_hash"])
    assert np.array_equal(expression_hash(short["tokens"][:3]), short["expr_hash"][:3])


def test_train_valid_seed_material_disjoint():
    streams, chunks = range(11), range(100)
    seqs = {s: [syn._seed_sequence(5, s, k, c) for k in streams for c in chunks] for s in ("train", "valid")}
    material = {s: {(q.entropy, tuple(q.spawn_key)) for q in qs} for s, qs in seqs.items()}
    states = {s: {q.generate_state(4).tobytes() for q in qs} for s, qs in seqs.items()}
    assert len(states["train"]) == len(states["valid"]) == len(streams) * len(chunks)  # all chunks distinct
    assert material["train"].isdisjoint(material["valid"])
    assert states["train"].isdisjoint(states["valid"])


def test_train_and_valid_streams_differ():
    spec = SyntheticSpec()
    tr = generate(spec, 3000, seed=0, split="train")
    va = generate(spec, 3000, seed=0, split="valid")
    assert (tr["tokens"] != va["tokens"]).any(axis=1).mean() > 0.9


def test_level_baseline_known_answer():
    # p = 3, L = 1: + and - give uniform answers, x gives 0 with probability 5/9, so the most frequent answer is 0
    # and a level-only predictor is right with probability (1/3 + 1/3 + 5/9) / 3 = 11/27
    spec = SyntheticSpec(p=3, l_max=1, seq_len=8)
    tr = generate(spec, 30000, seed=0, split="train")
    va = generate(spec, 8000, seed=0, split="valid", levels="balanced")
    assert level_baseline(tr, va)[1] == pytest.approx(11 / 27, abs=0.015)
    planted_train = {"level": np.array([1, 1, 1, 2, 2]), "answer": np.array([4, 4, 0, 1, 2])}
    planted_eval = {"level": np.array([1, 1, 2, 2, 2, 2]), "answer": np.array([4, 3, 1, 1, 1, 0])}
    assert level_baseline(planted_train, planted_eval) == {1: 0.5, 2: 0.75}  # level 2 ties at 1 and 2: the lower


def test_overlap_only_at_short_levels():
    spec = SyntheticSpec()
    tr = generate(spec, 20000, seed=0, split="train")
    va = generate(spec, 5000, seed=0, split="valid", levels="balanced")
    ov = overlap(tr, va)
    assert ov["n"] == 5000 and set(ov["by_level"]) == set(range(1, 11))
    assert ov["by_level"][1]["fraction"] > 0.5  # ~2000 draws of 1587 expressions cover most of them
    assert sum(ov["by_level"][L]["overlap"] for L in range(4, 11)) == 0
    assert ov["overlap"] == sum(v["overlap"] for v in ov["by_level"].values())
    assert overlap(tr, tr)["fraction"] == 1.0


# --- level distribution ----------------------------------------------------------------------------------

@pytest.mark.parametrize("dist", ["uniform", "power"])
def test_level_distribution_chisquare(dist):
    spec = SyntheticSpec(distribution=dist, exponent=2.0)
    n = 20000
    counts = np.bincount(generate(spec, n, seed=9, split="train")["level"], minlength=11)[1:]
    assert chisquare(counts, n * level_probs(spec)).pvalue > 1e-3
    wrong = SyntheticSpec(distribution="power" if dist == "uniform" else "uniform")
    assert chisquare(counts, n * level_probs(wrong)).pvalue < 1e-6
    slightly_wrong = SyntheticSpec(distribution="power", exponent=2.3 if dist == "power" else 0.3)
    assert chisquare(counts, n * level_probs(slightly_wrong)).pvalue < 1e-6


# --- purity and speed ------------------------------------------------------------------------------------

def test_imports_only_numpy_and_tokenscale_error():
    """At module level (the config imports it to validate datasets); the workflow stages import lazily."""
    tree = ast.parse(Path(syn.__file__).read_text())
    imported = {a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names}
    imported |= {f"{node.module}.{a.name}" for node in tree.body if isinstance(node, ast.ImportFrom)
                 for a in node.names}
    assert imported == {"__future__.annotations", "dataclasses.dataclass", "numpy", "tokenscale.TokenscaleError"}
    code = "import sys, tokenscale.synthetic.arithmetic; print(sorted(m for m in ('torch', 'h5py') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_generation_speed():
    spec = SyntheticSpec()
    generate(spec, 100, seed=0, split="train")
    t0 = time.perf_counter()
    generate(spec, 100_000, seed=0, split="train")
    dt = time.perf_counter() - t0
    print(f"\nsynthetic: 100,000 examples (uniform L=1..10, p=23) in {dt:.2f} s = {1e5 / dt:,.0f} examples/s")


def test_enumerated_l2_answers_agree():
    """Every tree shape at L=2 with a few operand choices: generator pointers vs stack vs infix agree."""
    p = 5
    for o1, o2, a, b, c in itertools.product(range(3), range(3), range(p), range(p), range(p)):
        for expr in ([OP0 + o1, OP0 + o2, VAL0 + a, VAL0 + b, VAL0 + c],
                     [OP0 + o1, VAL0 + a, OP0 + o2, VAL0 + b, VAL0 + c]):
            is_op = np.array([expr]) < VAL0
            ops, vals = np.array([expr]) - OP0, np.array([expr]) - VAL0
            want = infix_value(expr, p)
            assert evaluate_prefix(expr, p) == want
            assert syn._operand_values(is_op, np.where(is_op, ops, 0), np.where(is_op, 0, vals), p)[0] == want
