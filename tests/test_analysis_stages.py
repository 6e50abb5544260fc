"""The staged analysis (tokenscale.analysis) against the pinned outputs of the unsplit one, and its file."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis_reference import ARRAYS, CASES, REFERENCE, SUBSAMPLED, outputs, reference_inputs
from tokenscale import TokenscaleError
from tokenscale import analysis as an


@pytest.fixture(scope="module")
def inputs():
    return reference_inputs()


def _close(a, b, path=""):
    """Equal up to float summation order: relative 1e-9 (NaN/None alike)."""
    if isinstance(a, dict):
        assert set(a) <= set(b) or path.endswith("settings"), (path, set(a) ^ set(b))
        for k in a:
            if k in b:
                _close(a[k], b[k], f"{path}.{k}")
        return
    if isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _close(u, v, f"{path}[{i}]")
        return
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            assert a is None and b is None or (a is None and math.isnan(b)) or (b is None and math.isnan(a)), path
            return
        assert b == pytest.approx(a, rel=1e-9, abs=1e-12), path
        return
    assert a == b, path


@pytest.mark.parametrize("case", sorted(CASES))
def test_staged_analysis_equals_the_unsplit_one(inputs, case):
    import json

    ref = json.loads(REFERENCE.read_text())[case]
    res = an.analyze(*inputs, **CASES[case], selection="all")
    got = outputs(res)
    got["singular_values"] = np.asarray(res.svd["singular_values_bins"], dtype=float).tolist()  # #31: groups' SVD
    for k in ("svd_energy1", "svd_energy2", "source"):  # the pinned SVD is the spectrum bins' (suffix _bins now)
        got["summary"]["svd"][k] = got["summary"]["svd"].pop(f"{k}_bins")
    got["summary"]["metrics"].update({k: got["summary"]["svd"][k] for k in ("svd_energy1", "svd_energy2")})
    for name in (*ARRAYS, *SUBSAMPLED, "singular_values"):
        _close(ref[name], got[name], name)
    s_ref, s_got = ref["summary"], got["summary"]
    for key in ("power_law", "tail", "svd", "metrics", "alpha_fit", "alpha_predicted", "transient_start"):
        _close(s_ref[key], s_got[key], key)
    ref_tokens = dict(s_ref["tokens"])
    assert {k: s_got["tokens"][k] for k in ref_tokens} == ref_tokens
    assert s_got["category_counts"] == s_ref["category_counts"]


def test_analysis_file_round_trip(inputs, tmp_path):
    res = an.analyze(*inputs, n_bins=12, n_boot=5, min_bin_count=10)
    an.write_analysis(res, tmp_path / "a.h5", extra={"run": "r"})
    back = an.read_analysis(tmp_path / "a.h5")
    assert back.summary() == res.summary()
    for name in ("loss_emp", "template", "aligned_emp", "sample_losses", "post_mask", "u_grid"):
        np.testing.assert_array_equal(getattr(back, name), getattr(res, name))
    np.testing.assert_array_equal(back.svd["vectors"], res.svd["vectors"])
    np.testing.assert_array_equal(back.sample_params["collapse"], res.sample_params["collapse"])
    assert set(back.category_examples) == set(res.category_examples)
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(TokenscaleError, match="cannot read the analysis file"):
        an.read_analysis(tmp_path / "bad.h5")


def test_selection_errors(inputs):
    with pytest.raises(TokenscaleError, match="selection 'nope' is not defined"):
        an.AnalysisOptions(selection="nope")
    with pytest.raises(TokenscaleError, match="weight must be one of"):
        an.Selection("x", weight="r2")
    strict = {"none": an.Selection("none", min_delta=1e9)}
    with pytest.raises(TokenscaleError, match=r"selection 'none' \(Δ ≥ 1e\+09\) keeps none of the"):
        an.analyze(*inputs, selection="none", selections=strict)
