import numpy as np
import pytest

from tokenscale import TokenscaleError
from tokenscale.training.sampler import PermutationSampler, WeightedSampler, load_sampler, rank_slice


def test_permutation_covers_each_epoch_and_is_position_indexed():
    s = PermutationSampler(100, seed=1)
    a = s.indices(0, 250)
    assert sorted(a[:100]) == list(range(100)) and sorted(a[100:200]) == list(range(100))
    assert np.array_equal(PermutationSampler(100, 1).indices(137, 50), a[137:187])  # resume at any position
    assert not np.array_equal(PermutationSampler(100, 2).indices(0, 100), a[:100])


def test_order_is_independent_of_rank_count():
    s = PermutationSampler(1000, seed=0)
    batch = s.indices(5 * 16, 16)
    parts = [batch[rank_slice(16, r, 4)] for r in range(4)]
    assert np.array_equal(np.concatenate(parts), batch)
    with pytest.raises(TokenscaleError, match="batch_size=16 is not divisible by the number of ranks \\(3\\)"):
        rank_slice(16, 0, 3)


def test_weighted_sampler_follows_weights_and_resumes():
    w = np.array([0.0, 1.0, 3.0, 6.0])
    s = WeightedSampler(w, seed=0)
    x = s.indices(0, 40000)
    freq = np.bincount(x, minlength=4) / x.size
    assert freq[0] == 0 and np.allclose(freq, w / w.sum(), atol=0.01)
    assert np.array_equal(WeightedSampler(w, 0).indices(5000, 10000), x[5000:15000])


def test_bad_weights(tmp_path):
    with pytest.raises(TokenscaleError, match="not all zero"):
        WeightedSampler(np.zeros(3), 0)
    np.save(tmp_path / "w.npy", np.ones(5))
    with pytest.raises(TokenscaleError, match=r"has shape \(5,\), expected \(7,\)"):
        load_sampler(7, 0, tmp_path / "w.npy")
    with pytest.raises(TokenscaleError, match="weights file not found"):
        load_sampler(7, 0, tmp_path / "missing.npy")
