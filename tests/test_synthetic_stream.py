"""The synthetic generator streams its training rows to disk (:func:`stream_train`): the same bytes and report
numbers as the in-memory :func:`generate`, with memory bounded by one chunk."""

from __future__ import annotations

import io
import tracemalloc

import numpy as np
import pytest

from tokenscale.synthetic.arithmetic import (CHUNK, SyntheticSpec, generate, level_baseline, overlap,
                                             stream_train)


@pytest.mark.parametrize("n", [0, 5, CHUNK, 3 * CHUNK + 7])
def test_stream_equals_generate(n):
    spec = SyntheticSpec(p=5, l_max=3, distribution="power", exponent=2.0, seq_len=10)
    train = generate(spec, n, seed=3, split="train")
    valid = generate(spec, 300, seed=3, split="valid")
    levels = generate(spec, 90, seed=3, split="valid", levels="balanced")
    buf = io.BytesIO()
    s = stream_train(spec, n, 3, buf, np.uint8, [valid["expr_hash"], levels["expr_hash"]])
    assert buf.getvalue() == train["tokens"].astype(np.uint8).tobytes()
    assert s["level_counts"].tolist() == np.bincount(train["level"], minlength=4)[1:].tolist()
    assert overlap(s, valid, seen=s["seen"][0]) == overlap(train, valid)
    assert overlap(s, levels, seen=s["seen"][1]) == overlap(train, levels)
    assert level_baseline(s, levels, counts=s["answer_counts"]) == level_baseline(train, levels)


def test_stream_memory_is_one_chunk():
    spec = SyntheticSpec(p=7, l_max=4, distribution="uniform", exponent=0.0, seq_len=40)
    n = 40 * CHUNK  # the whole array would be n * 41 * 4 bytes = 13 MB as int32

    class Sink:
        def write(self, b):
            return len(b)

    tracemalloc.start()
    stream_train(spec, n, 0, Sink(), np.uint8, [np.zeros(10, dtype=np.uint64)])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < n * (spec.seq_len + 1) * 4 / 8
