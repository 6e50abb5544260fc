"""The launch plan of ``tokenscale train`` (tokenscale.training.launch) over SLURM environments, and a real c10d
rendezvous: two launchers on this host as two "nodes" of one SLURM step form one world of 2 CPU ranks."""

import json
import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, tiny_config, write_config
from tokenscale import TokenscaleError
from tokenscale.training import segments
from tokenscale.training.launch import (
    RDZV_PORT,
    WORKER_ARGV,
    exit_code,
    expand_nodelist,
    node_count,
    plan_launch,
)

PY = "/py"
ARGV = ["train", "--config", "c.yaml", "--run", "t"]


def fake_hosts(table):
    """A ``hostnames`` function: node list -> hosts from ``table`` (records its calls)."""
    calls = []

    def f(nodelist, env):
        calls.append(nodelist)
        return list(table[nodelist])

    f.calls = calls
    return f


def step_env(nodes, nodelist, **extra):
    return {"SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_NNODES": str(nodes), "SLURM_STEP_NUM_NODES": str(nodes),
            "SLURM_JOB_NODELIST": nodelist, "SLURM_STEP_NODELIST": nodelist, **extra}


def fake_tool(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text("#!/bin/sh\n" + body + "\n")
    p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return p


# ------------------------------------------------------------------------------------------------ plan builder
def test_one_process_outside_slurm_is_inline():
    plan = plan_launch({}, nproc=1, argv=ARGV, python=PY)
    assert plan.kind == "inline" and plan.cmd == () and plan.world == 1


def test_ranks_started_by_torchrun_train_inline():
    assert plan_launch({"RANK": "3", "SLURM_NNODES": "4"}, nproc=8, argv=ARGV, python=PY).kind == "inline"


def test_one_node_keeps_standalone_and_carries_the_argv():
    plan = plan_launch(step_env(1, "gpu01"), nproc=4, argv=ARGV, python=PY, hostnames=fake_hosts({}))
    assert plan.kind == "standalone" and plan.world == 4
    assert list(plan.cmd) == [PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m",
                              "tokenscale.cli"]
    assert json.loads(plan.env[WORKER_ARGV]) == ARGV


def test_two_nodes_two_gpus_rendezvous_at_the_first_host_of_a_compressed_nodelist():
    hosts = fake_hosts({"gpu[01-02]": ["gpu01", "gpu02"]})
    plan = plan_launch(step_env(2, "gpu[01-02]", SLURM_NODEID="1"), nproc=2, argv=ARGV, python=PY, hostnames=hosts)
    assert hosts.calls == ["gpu[01-02]"]
    assert plan.kind == "rendezvous" and plan.nodes == 2 and plan.world == 4
    assert list(plan.cmd) == [PY, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2",
                              "--rdzv_backend=c10d", f"--rdzv_endpoint=gpu01:{RDZV_PORT}", "--rdzv_id=77",
                              "-m", "tokenscale.cli"]
    assert "--standalone" not in plan.cmd and json.loads(plan.env[WORKER_ARGV]) == ARGV


def test_rendezvous_port_from_the_environment_and_bad_port_is_one_line():
    hosts = fake_hosts({"n[1-3]": ["n1", "n2", "n3"]})
    plan = plan_launch(step_env(3, "n[1-3]", TOKENSCALE_RDZV_PORT="31000"), nproc=1, argv=ARGV, python=PY,
                       hostnames=hosts)
    assert "--rdzv_endpoint=n1:31000" in plan.cmd and plan.world == 3
    with pytest.raises(TokenscaleError, match=r"TOKENSCALE_RDZV_PORT: 'x' is not a port"):
        plan_launch(step_env(3, "n[1-3]", TOKENSCALE_RDZV_PORT="x"), nproc=1, argv=ARGV, python=PY, hostnames=hosts)


def test_batch_shell_of_a_multi_node_job_starts_one_task_per_node(tmp_path):
    srun = fake_tool(tmp_path / "bin", "srun", "exit 0")
    env = {"SLURM_JOB_ID": "77", "PATH": str(srun.parent)}  # the jobstep plugin strips every other SLURM_ variable
    plan = plan_launch(env, nproc=8, nodes=4, argv=[*ARGV, "--nodes", "4"], python=PY)
    assert plan.kind == "srun" and plan.world == 32
    assert list(plan.cmd) == [str(srun), "--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--kill-on-bad-exit=1",
                              PY, "-m", "tokenscale.cli", *ARGV, "--nodes", "4"]
    assert WORKER_ARGV not in plan.env  # the tasks get the argv on their command line


def test_node_count_from_slurm_and_from_nodes():
    assert node_count({}) == 1 and node_count({"SLURM_JOB_NUM_NODES": "3"}) == 3
    assert node_count({"SLURM_NNODES": "2", "SLURM_JOB_NUM_NODES": "4"}) == 2  # the step's, inside a step
    assert node_count({"SLURM_NNODES": "2"}, nodes=5) == 5
    with pytest.raises(TokenscaleError, match=r"SLURM_NNODES: 'two' is not a node count"):
        node_count({"SLURM_NNODES": "two"})


@pytest.mark.parametrize("env, nodes, match", [
    ({}, 2, r"--nodes 2: a multi-node run needs a SLURM allocation \(\$SLURM_JOB_ID is unset"),
    ({"SLURM_JOB_ID": "5", "PATH": "/nonexistent"}, 2, r"--nodes 2: srun is not on PATH"),
    (step_env(1, "a"), 2, r"--nodes 2: this SLURM step spans 1 node\(s\)"),
    ({"SLURM_JOB_ID": "5", "SLURM_STEP_ID": "0", "SLURM_NNODES": "2"}, None, r"no node list"),
])
def test_bad_multi_node_environments_are_one_line(env, nodes, match):
    with pytest.raises(TokenscaleError, match=match):
        plan_launch(env, nproc=1, nodes=nodes, argv=ARGV, python=PY, hostnames=fake_hosts({"a": ["a"]}))


def test_nodelist_with_fewer_hosts_than_nodes_is_one_line():
    with pytest.raises(TokenscaleError, match=r"2 node\(s\) wanted but the node list 'a' has 1 \(a\)"):
        plan_launch(step_env(2, "a"), nproc=1, argv=ARGV, python=PY, hostnames=fake_hosts({"a": ["a"]}))


def test_expand_nodelist_calls_scontrol_show_hostnames(tmp_path):
    fake_tool(tmp_path / "bin", "scontrol", f'echo "$@" > {tmp_path}/bin/args; printf "gpu01\\ngpu02\\n"')
    assert expand_nodelist("gpu[01-02]", {"PATH": str(tmp_path / "bin")}) == ["gpu01", "gpu02"]
    assert (tmp_path / "bin" / "args").read_text().split() == ["show", "hostnames", "gpu[01-02]"]


def test_missing_or_failing_scontrol_is_one_line(tmp_path):
    if os.path.exists("/usr/sbin/scontrol") or os.path.exists("/usr/local/sbin/scontrol"):
        pytest.skip("scontrol in the sbin fallback")
    with pytest.raises(TokenscaleError, match=r"scontrol is not on PATH \(needed to expand the node list 'g\[1-2\]'\)"):
        expand_nodelist("g[1-2]", {"PATH": str(tmp_path)})
    fake_tool(tmp_path / "bin", "scontrol", 'echo "scontrol: error: bad list" >&2; exit 1')
    with pytest.raises(TokenscaleError, match=r"show hostnames 'g\[1-2\]' failed: scontrol: error: bad list"):
        expand_nodelist("g[1-2]", {"PATH": str(tmp_path / "bin")})


def test_exit_codes_are_those_of_a_single_process_trainer():
    assert exit_code(0, sigterm=True, segment=True) == 0
    assert exit_code(1, sigterm=True, segment=False) == 143
    assert exit_code(1, sigterm=False, segment=True) == segments.SEGMENT_EXIT
    assert exit_code(137, sigterm=False, segment=False) == 137


# ------------------------------------------------------------------------------------- a real rendezvous on CPUs
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_localhost_form_one_world(tmp_path, data_dir):
    """Two launchers as the two tasks of a 2-node SLURM step (SLURM_STEP_ID set: no srun), the node list
    resolving to localhost through a fake scontrol; one CPU rank each (DeepSpeed ZeRO-1, gloo)."""
    cfg = tiny_config(engine="deepspeed", deepspeed_config=str(REPO / "config/deepspeed/zero1.json"),
                      tokens=8 * 16 * 8, checkpoints={"count": 2}, state_every=4)
    path = write_config(tmp_path / "c.yaml", cfg)
    out = tmp_path / "run"
    bin_dir = tmp_path / "bin"
    fake_tool(bin_dir, "scontrol", 'printf "localhost\\nlocalhost\\n"')
    base = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
            "TOKENSCALE_RDZV_PORT": str(_free_port()), **step_env(2, "fake[01-02]")}
    base.pop("RANK", None)
    cmd = [sys.executable, "-m", "tokenscale.cli", "train", "--config", str(path), "--run", "tiny", "--data",
           str(data_dir), "--out", str(out), "--threads", "1", "--quiet"]
    procs = [subprocess.Popen(cmd, env={**base, "SLURM_NODEID": str(i), "SLURM_PROCID": str(i)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    try:
        res = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
    errs = "\n---\n".join(e[-3000:] for _, e in res)
    assert [p.returncode for p in procs] == [0, 0], errs
    assert all("--rdzv_backend=c10d" in e and "--nnodes=2" in e and "--standalone" not in e for _, e in res), errs
    summary = json.loads((out / "train.json").read_text())
    assert summary["world"] == 2 and summary["engine"] == "deepspeed", summary
    assert summary["steps"] == 8 and len(summary["checkpoints"]) == 2


def test_expert_parallelism_is_a_positive_integer_at_config_time():
    """EP > 1 is validated per run at DAG build (tests/test_expert_parallel.py); the schema wants an integer >= 1."""
    import tokenscale.studies  # noqa: F401  (registers the study sections)
    from tokenscale.config import validate_config

    with pytest.raises(TokenscaleError, match=r"resources.train\[0\].expert_parallel: 0 is less than the minimum of 1"):
        validate_config({"resources": {"train": [{"runs": "t*", "expert_parallel": 0}]}})
    cfg = validate_config({"resources": {"train": [{"runs": "t*", "expert_parallel": 2}]}})
    assert cfg["resources"]["train"][0]["expert_parallel"] == 2


@pytest.mark.parametrize("env, threads, want", [
    ({}, 8, 8),                                                          # one process
    ({"WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "4"}, 8, 2),                # one node, 4 ranks (as before)
    ({"WORLD_SIZE": "4"}, 8, 2),                                         # no LOCAL_WORLD_SIZE: the world is one node
    ({"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1"}, 8, 8),                # 2 nodes x 1 rank: the node's 8 threads
    ({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}, 32, 4),              # 2 nodes x 8 ranks, 32 cores per node
    ({"WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}, 4, 1),               # fewer threads than ranks: at least 1
])
def test_threads_are_split_over_the_ranks_of_a_node_not_the_world(env, threads, want):
    from tokenscale.training.trainer import threads_per_rank

    assert threads_per_rank(threads, env) == want
