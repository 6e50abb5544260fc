"""Multi-node training through SLURM on a two-node cluster on this host (scripts/slurm-local.sh with
TOKENSCALE_SLURM_NODES=2: one slurmd per network namespace, nodes tsn1 and tsn2).

Run:  pytest -m slurm tests/test_slurm_multinode.py -rA      (root; ~2-3 min on 2 cores)

A smoke-sized run trains through ``snakemake --profile profiles/slurm`` as 2 nodes x 1 rank, once with DeepSpeed
(CPU, gloo, ZeRO-1) and once with the plain engine (data parallelism, trainer.average_gradients): the batch shell's ``srun`` starts one task per node, whose torchrun agents meet in a c10d
rendezvous at the first node (tokenscale.training.launch). Its checkpoints are compared with the same run trained
as 2 ranks on one node (``tokenscale train --nproc 2``, torchrun --standalone, outside SLURM) on the same data.

**Tolerance: none -- bit-identical.** Both worlds have 2 ranks; each rank draws the same rows of each batch
(the sampler's rank slice depends on rank and world only), runs the same kernels on 1 thread (the node's
threads split over its ranks: 1 of 1 per node under SLURM, 2 over 2 on one node), and ZeRO-1 (or the plain
engine's one all-reduce per step) over gloo sums 2 fp32 gradients (x + y is commutative, so the order of arrival
cannot change a bit). Only the transport differs (TCP between namespaces vs loopback), and a transport moves bytes,
not values.

The cluster: a running cluster with >= 2 nodes is reused; a running one-node cluster (e.g. test_slurm.py's) is
restarted with two nodes and restarted with one afterwards; else two nodes are started here and stopped after.
If two nodes cannot start (no root, no network namespaces) the tests skip with the script's error -- unless
TOKENSCALE_SLURM_NODES=2 is set, which makes that a failure.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from conftest_slurm import (  # noqa: E402
    REPO,
    SMOKE_CONFIG,
    LocalCluster,
    in_ci,
    missing_slurm_binaries,
    read_losses,
    run_script,
    run_workflow_slurm,
    scontrol_job,
    state_dir,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

NODES = 2
STEPS = 24  # 24 steps of 16 x 32 tokens; 3 checkpoints


def _sinfo_nodes(env: dict) -> list[str]:
    p = subprocess.run(["timeout", "10", "sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True, env=env)
    return sorted(set(p.stdout.split())) if p.returncode == 0 else []


def _start(nodes: int, action: str = "start") -> subprocess.CompletedProcess:
    return run_script(action, nodes=nodes)


@pytest.fixture(scope="module")
def two_nodes():
    """A running local cluster with >= 2 nodes (see the module docstring for reuse/restart/stop)."""
    required = os.environ.get("TOKENSCALE_SLURM_NODES", "") == str(NODES)
    missing = missing_slurm_binaries()
    if missing and not in_ci():
        pytest.skip(f"SLURM not installed (missing {', '.join(missing)}); run `scripts/slurm-local.sh install`")
    if missing:
        res = run_script("install", timeout=900)
        assert res.returncode == 0, f"slurm-local.sh install failed:\n{res.stdout}\n{res.stderr}"
    conf = state_dir() / "etc" / "slurm.conf"
    env = LocalCluster(conf=conf, state_dir=state_dir(), owned=False).env()
    timings: dict = {}
    up = run_script("status", timeout=30).returncode == 0
    have = _sinfo_nodes(env) if up else []
    restore = None  # what to do afterwards: "stop", "one" (restart with one node) or None (leave it)
    if len(have) < NODES:
        restore = "one" if up else "stop"
        t0 = time.monotonic()
        res = _start(NODES, "restart" if up else "start")
        timings["start_s"] = round(time.monotonic() - t0, 1)
        if res.returncode != 0:
            run_script("stop")
            if restore == "one":
                _start(1)
            why = "\n".join((res.stderr or res.stdout).strip().splitlines()[-6:])
            if required:
                pytest.fail(f"two-node cluster did not start (TOKENSCALE_SLURM_NODES=2 is set):\n{why}")
            pytest.skip(f"two-node cluster cannot start on this host: {why}")
        have = _sinfo_nodes(env)
    assert len(have) >= NODES, f"sinfo lists {have}"
    cluster = LocalCluster(conf=conf, state_dir=state_dir(), owned=restore is not None, timings=timings)
    try:
        yield cluster
    finally:
        if restore == "stop":
            res = run_script("stop")
            assert res.returncode == 0, f"slurm-local.sh stop failed:\n{res.stdout}\n{res.stderr}"
        elif restore == "one":
            res = _start(1, "restart")
            assert res.returncode == 0, f"slurm-local.sh restart (one node) failed:\n{res.stdout}\n{res.stderr}"
        sys.stderr.write(f"\n[two_nodes] nodes {have}, restore={restore}, timings {timings}\n")


def _run_entry(name: str, engine: str) -> dict:
    smoke = yaml.safe_load(SMOKE_CONFIG.read_text())
    base = next(r for r in smoke["runs"] if r["name"] == "t_smoke")
    entry = {**base, "name": name, "engine": engine, "nproc": 1, "tokens": base["batch_size"] * smoke["data"]["seq_len"] * STEPS,
             "checkpoints": {"count": 3}, "state_every": 10, "in_loop_validation": False}
    if engine == "deepspeed":
        entry["deepspeed_config"] = str(REPO / "config" / "deepspeed" / "zero1.json")
    return entry


RUNS = {"deepspeed": "t_2n_ds", "plain": "t_2n_plain"}


def _config(dest: Path) -> Path:
    """smoke.yaml's runs plus t_2n_ds and t_2n_plain (24 steps, nproc 1 each) asking for 2 CPU nodes."""
    smoke = yaml.safe_load(SMOKE_CONFIG.read_text())
    runs = smoke["runs"] + [_run_entry(run, engine) for engine, run in RUNS.items()]
    train = [{"runs": "t_2n_*", "nodes": NODES, "gpus_per_node": 0, "mem_mb": 2000, "time_min": 30}]
    dest.write_text(yaml.safe_dump({"runs": runs, "sweeps": [], "resources": {"train": train}}, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    return root, _config(root / "runs.yaml")


def _slurm_train(cluster, workdir, run: str):
    root, extra = workdir
    sdir = root / "slurm"
    target = f"results/runs/{run}/train.json"
    t0 = time.monotonic()
    res = run_workflow_slurm(sdir, [SMOKE_CONFIG, extra], ["--verbose", "--retries", "0", target], max_nodes=NODES,
                             env=cluster.env())
    log = sdir / f"results/logs/train/{run}.log"
    return sdir, res, (log.read_text() if log.exists() else ""), time.monotonic() - t0


def _reference_train(sdir: Path, dest: Path, run: str, engine: str) -> float:
    """The same run as 2 ranks on one node, outside SLURM, on the SLURM run's prepared data."""
    spec = json.dumps({"data": {"seq_len": 32}, "runs": [_run_entry(run, engine)], "threads": 1})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE", "LOCAL_"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = ["timeout", "-k", "10", "600", sys.executable, "-m", "tokenscale.cli", "train", "--spec", spec, "--run", run,
           "--data", str(sdir / "results/data"), "--out", str(dest), "--threads", "2", "--nproc", "2", "--nodes", "1",
           "--quiet"]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "--standalone" in p.stderr and "--nproc_per_node=2" in p.stderr, p.stderr[-2000:]
    return time.monotonic() - t0


def _tensors_equal(a: Path, b: Path) -> list[str]:
    """Tensor names whose bytes differ (with the largest |difference|)."""
    import numpy as np
    from safetensors.numpy import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys():
        return [f"names differ: {sorted(set(ta) ^ set(tb))}"]
    return [f"{k}: max |diff| {float(np.max(np.abs(ta[k].astype(np.float64) - tb[k].astype(np.float64)))):.3g}"
            for k in sorted(ta) if ta[k].dtype != tb[k].dtype or ta[k].tobytes() != tb[k].tobytes()]


@pytest.mark.parametrize("engine", ["deepspeed", "plain"])
def test_two_nodes_one_rank_each_equals_two_ranks_on_one_node(two_nodes, workdir, engine):
    run = RUNS[engine]
    sdir, res, log, slurm_s = _slurm_train(two_nodes, workdir, run)
    assert res.returncode == 0, str(res) + "\n--- train log:\n" + log[-4000:]
    # the job held 2 nodes; its batch shell ran srun (one task per node); each task's torchrun joined a c10d
    # rendezvous at the first node of the step
    sbatch = res.sbatch_calls("train")
    assert len(sbatch) == 1 and re.search(r"--nodes[ =]2\b", sbatch[0].split("--wrap")[0]), str(res)
    assert "--nodes=2 --ntasks=2 --ntasks-per-node=1" in log and "--nnodes=2" in log, log[-3000:]
    assert "--rdzv_endpoint=tsn1:" in log and "--standalone" not in log, log[-3000:]
    summary = json.loads((sdir / f"results/runs/{run}/train.json").read_text())
    assert summary["world"] == 2 and summary["engine"] == engine and summary["steps"] == STEPS, summary
    jobid = next((sdir / f".snakemake/slurm_logs/rule_train/{run}").glob("*.log")).stem
    info = scontrol_job(two_nodes, jobid)
    assert "NumNodes=2" in info and re.search(r"\bNodeList=tsn\[1-2\]", info), info

    ref = workdir[0] / "reference" / run
    ref_s = _reference_train(sdir, ref, run, engine)
    ref_summary = json.loads((ref / "train.json").read_text())
    assert ref_summary["world"] == 2 and ref_summary["checkpoints"] == summary["checkpoints"], ref_summary
    cks = sorted(p.name for p in (ref / "checkpoints").iterdir())
    assert len(cks) == 3 and cks == sorted(p.name for p in (sdir / f"results/runs/{run}/checkpoints").iterdir())
    for ck in cks:  # bit-identical weights at every checkpoint (tolerance: none, see the module docstring)
        bad = _tensors_equal(sdir / f"results/runs/{run}/checkpoints/{ck}/model.safetensors",
                             ref / "checkpoints" / ck / "model.safetensors")
        assert not bad, f"{ck}: 2 nodes x 1 rank differs from 1 node x 2 ranks: {bad[:10]}"
    assert read_losses(sdir / f"results/runs/{run}") == read_losses(ref)  # the loss curves too, bit for bit
    print(f"{engine}: 2 nodes x 1 rank through SLURM (data prep + train): {slurm_s:.1f}s; 1 node x 2 ranks: {ref_s:.1f}s; "
          f"{len(cks)} checkpoints bit-identical; cluster {two_nodes.timings}")

