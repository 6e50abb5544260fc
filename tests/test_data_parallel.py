"""The plain engine on several ranks (data parallelism, trainer.average_gradients): gradient averaging against a
hand-computed mean on 2 gloo ranks, and a 2-rank training run against the same run on one rank."""

import json
import os

import numpy as np
import pytest
import torch

from conftest import read_losses, run_cli, tiny_config, write_config


def _average_on_two_ranks(rank: int, store_path: str, out_path: str):
    import torch.distributed as dist

    from tokenscale.training.trainer import average_gradients

    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=2)
    try:
        a, b, unused, half = (torch.nn.Parameter(torch.zeros(3)) for _ in range(4))
        a.grad = torch.tensor([1.0, 2.0, 3.0]) * (rank + 1)  # rank 0: [1, 2, 3]; rank 1: [2, 4, 6]
        b.grad = torch.full((3,), 10.0 * rank)
        half.grad = torch.ones(3) * 4 if rank == 1 else None  # an expert only rank 1 routed tokens to
        average_gradients([a, b, unused, half], 2)
        grads = [None if p.grad is None else p.grad.tolist() for p in (a, b, unused, half)]
        with open(f"{out_path}.{rank}", "w") as f:
            json.dump(grads, f)
    finally:
        dist.destroy_process_group()


def test_average_gradients_is_the_mean_over_ranks_and_keeps_none_where_no_rank_has_one(tmp_path):
    torch.multiprocessing.spawn(_average_on_two_ranks, args=(str(tmp_path / "store"), str(tmp_path / "g")), nprocs=2)
    expect = [[1.5, 3.0, 4.5], [5.0, 5.0, 5.0], None, [2.0, 2.0, 2.0]]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"g.{rank}").read_text()) == expect


STEPS = 12


def _train(tmp_path, data_dir, name, nproc, model="moe-nano"):
    run = {"tokens": 8 * 16 * STEPS, "checkpoints": {"count": 3}, "state_every": 6, "nproc": nproc,
           "model": {"preset": model}}
    path = write_config(tmp_path / f"{name}.yaml", tiny_config(**run))
    out = tmp_path / name
    run_cli("train", "--config", path, "--run", "tiny", "--data", data_dir, "--out", out, "--threads", 2)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model, rtol, w_atol", [("dense-nano", 1e-6, 1e-4), ("moe-nano", 2e-3, 0.1)])
def test_plain_two_ranks_train_the_one_rank_curve(tmp_path, data_dir, model, rtol, w_atol):
    """Same seed, data and global batch: each rank takes half of every batch and the averaged gradient is the
    full batch's up to float reduction order: a dense model's losses agree to 4e-8 relative here and its weights
    after 12 Adam steps to 8e-6. An MoE model's losses agree to ~5e-4 and its weights to ~0.04 (lr 5e-3 x 12
    steps): its load-balancing loss is computed over each rank's tokens (per-rank routing fractions, not the global
    batch's), as under DeepSpeed, and a router that differs a little routes some tokens to other experts."""
    from safetensors.numpy import load_file

    one = _train(tmp_path, data_dir, "one", 1, model)
    two = _train(tmp_path, data_dir, "two", 2, model)
    assert json.loads((two / "train.json").read_text())["world"] == 2
    np.testing.assert_allclose(read_losses(two), read_losses(one), rtol=rtol)
    final = f"checkpoints/step{STEPS:08d}/model.safetensors"
    w1, w2 = load_file(str(one / final)), load_file(str(two / final))
    assert w1.keys() == w2.keys()
    for k in w1:
        np.testing.assert_allclose(w2[k], w1[k], atol=w_atol, err_msg=k)
    # rank 0 wrote one replicated state, the same files as the one-rank run's
    assert sorted(os.listdir(two / "state")) == sorted(os.listdir(one / "state"))
