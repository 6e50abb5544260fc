"""Fixtures and helpers for the SLURM tests (tests/test_slurm.py).

A plain module (not a conftest.py) so that nothing here runs unless test_slurm.py imports it.

* ``slurm_cluster``: session fixture.  Reuses a cluster that scripts/slurm-local.sh already started
  (``.ci/run`` starts one and stops it itself), otherwise starts one -- installing Slurm first when
  the binaries are missing and CI is set -- and stops every daemon it started afterwards.  Skips
  only when Slurm is absent *and* ``CI`` is not set.
* ``run_workflow_slurm`` / ``run_workflow_local``: Snakemake under ``timeout -k``, through
  profiles/slurm (plus a generated overlay that fits the GPU jobs onto the local node) or through
  profiles/default; ``background=True`` returns a :class:`Pending` to ``wait()`` on.
* ``compare_results``: the SLURM-vs-local contract: every file the local run wrote under results/
  (minus logs, benchmarks and trainer state) exists on the SLURM side with the same content --
  HDF5 datasets/attributes, JSON/JSONL and CSV values compared by value (timing fields ignored),
  safetensors/npz arrays by value, figures by existence, anything else byte for byte.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-local.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm"
DEFAULT_PROFILE = REPO / "profiles" / "default"
TINY_WORKFLOW = REPO / "tests" / "data" / "slurm_gpu" / "Snakefile"
SMOKE_CONFIG = REPO / "config" / "smoke.yaml"

# partition defined by scripts/slurm-local.sh
LOCAL_PARTITION = "debug"
# GRES type / count of the fake GPUs of scripts/slurm-local.sh (its TOKENSCALE_SLURM_GPU_*)
LOCAL_GPU_TYPE = os.environ.get("TOKENSCALE_SLURM_GPU_TYPE", "fake")
LOCAL_GPUS = int(os.environ.get("TOKENSCALE_SLURM_GPUS", "2"))
# CPUs of the local node (scripts/slurm-local.sh declares the machine's real CPUs)
NODE_CPUS = os.cpu_count() or 1

# Wall-clock limit (seconds) of every snakemake call; `timeout -k` also kills a hung one.
SNAKEMAKE_TIMEOUT = int(os.environ.get("TOKENSCALE_SLURM_TEST_TIMEOUT", "600"))
SCRIPT_TIMEOUT = 300
# First status check after 2 s instead of the plugin's 40 s (the local cluster's MinJobAge is
# 600 s >= 3 x 2, so the plugin keeps using squeue).
STATUS_INIT_SECONDS = 2

SLURM_BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol", "scancel", "munged")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def in_ci() -> bool:
    return _truthy(os.environ.get("CI"))


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


def missing_slurm_binaries() -> list[str]:
    return [b for b in SLURM_BINARIES if _which(b) is None]


def state_dir() -> Path:
    return Path(os.environ.get("TOKENSCALE_SLURM_DIR", "/tmp/tokenscale-slurm"))


def run_script(action: str, timeout: int = SCRIPT_TIMEOUT, nodes: int | None = None) -> subprocess.CompletedProcess:
    """Run scripts/slurm-local.sh ACTION under timeout -k (``nodes``: its TOKENSCALE_SLURM_NODES for a start)."""
    env = {**os.environ, "TOKENSCALE_SLURM_DIR": str(state_dir())}
    if nodes is not None:
        env["TOKENSCALE_SLURM_NODES"] = str(nodes)
    return subprocess.run(
        ["timeout", "-k", "10", str(timeout), "bash", str(SCRIPT), action],
        capture_output=True,
        text=True,
        env=env,
    )


@dataclass
class LocalCluster:
    conf: Path
    state_dir: Path
    owned: bool  # started by the fixture (and so stopped by it)
    timings: dict = field(default_factory=dict)

    def env(self) -> dict:
        return slurm_env(self.conf)


def slurm_env(conf: Path | None = None) -> dict:
    """Environment for client commands/snakemake talking to the local cluster."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    env["SLURM_CONF"] = str(conf or state_dir() / "etc" / "slurm.conf")
    # placeholders of profiles/slurm/config.yaml (see its default-resources)
    env["TOKENSCALE_SLURM_PARTITION"] = LOCAL_PARTITION
    env["TOKENSCALE_SLURM_ACCOUNT"] = ""
    # jobs (sbatch --export=ALL) must find the same interpreter/snakemake/tokenscale as this process
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def our_daemon_pids(sdir: Path | None = None) -> list[int]:
    """PIDs of processes started by scripts/slurm-local.sh for this state dir (by env marker)."""
    mark = f"TOKENSCALE_SLURM_OWNER={sdir or state_dir()}".encode()
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if mark in (p / "environ").read_bytes().split(b"\0"):
                pids.append(int(p.name))
        except OSError:
            continue
    return pids


@pytest.fixture(scope="session")
def slurm_cluster():
    """The local one-node SLURM cluster: reused if already up, else started and stopped here."""
    timings: dict = {}
    missing = missing_slurm_binaries()
    if missing:
        if not in_ci():
            pytest.skip(f"SLURM not installed (missing {', '.join(missing)}) and CI is not set; "
                        f"run `scripts/slurm-local.sh install` to enable these tests")
        t0 = time.monotonic()
        res = run_script("install", timeout=900)
        timings["install_s"] = round(time.monotonic() - t0, 1)
        assert res.returncode == 0, f"slurm-local.sh install failed:\n{res.stdout}\n{res.stderr}"

    status = run_script("status", timeout=30)
    owned = status.returncode != 0
    if owned:
        t0 = time.monotonic()
        res = run_script("start")
        timings["start_s"] = round(time.monotonic() - t0, 1)
        if res.returncode != 0:
            run_script("stop")
            pytest.fail(f"slurm-local.sh start failed (rc={res.returncode}):\n{res.stdout}\n{res.stderr}")
    else:
        res = status
    m = re.search(r"export SLURM_CONF=(\S+)", res.stdout)
    assert m, f"no SLURM_CONF in slurm-local.sh output:\n{res.stdout}\n{res.stderr}"
    cluster = LocalCluster(conf=Path(m.group(1)), state_dir=state_dir(), owned=owned, timings=timings)
    try:
        yield cluster
    finally:
        if owned:
            t0 = time.monotonic()
            res = run_script("stop")
            timings["stop_s"] = round(time.monotonic() - t0, 1)
            left = our_daemon_pids(cluster.state_dir)
            sys.stderr.write(f"\n[slurm_cluster] started and stopped here; timings: {timings}\n")
            assert res.returncode == 0 and not left, (
                f"slurm-local.sh stop failed (rc={res.returncode}, left PIDs {left}):\n{res.stdout}\n{res.stderr}"
            )
        else:
            sys.stderr.write("\n[slurm_cluster] reused a running cluster; left it running\n")


# A partition with a 1-minute time limit (runs longer than a job: tests/test_slurm_segments.py)
SHORT_PARTITION = "limit1m"


@pytest.fixture(scope="session")
def short_partition(slurm_cluster):
    """``limit1m``: the local node under a 1-minute MaxTime, created with scontrol (not in slurm.conf, so a
    restarted cluster does not have it) and deleted afterwards."""
    env = slurm_cluster.env()
    subprocess.run(["timeout", "10", "scontrol", "delete", f"PartitionName={SHORT_PARTITION}"], env=env,
                   capture_output=True)
    res = subprocess.run(["timeout", "10", "scontrol", "create", f"PartitionName={SHORT_PARTITION}", "Nodes=ALL",
                          "MaxTime=1", "State=UP"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, f"scontrol create partition failed: {res.stdout}{res.stderr}"
    try:
        yield SHORT_PARTITION
    finally:
        subprocess.run(["timeout", "10", "scontrol", "delete", f"PartitionName={SHORT_PARTITION}"], env=env,
                       capture_output=True)


# ----------------------------------------------------------------------------- running snakemake
@dataclass
class Run:
    returncode: int
    output: str  # stdout + stderr
    seconds: float
    cmd: list

    def __str__(self) -> str:  # for assertion messages
        tail = "\n".join(self.output.splitlines()[-80:])
        return f"$ {' '.join(map(str, self.cmd))}\n(rc={self.returncode}, {self.seconds:.1f}s)\n{tail}"

    def sbatch_calls(self, rule: str) -> list[str]:
        """The plugin's `sbatch call:` lines (logged with --verbose) for one rule."""
        # the plugin's comment is rule_<rule> or rule_<rule>_wildcards_<values>
        pat = re.compile(rf"--comment rule_{re.escape(rule)}(?:_wildcards_\S*)?\s")
        return [ln for ln in self.output.splitlines() if "sbatch call:" in ln and pat.search(ln)]


class Pending:
    """A snakemake run in the background; ``wait()`` returns its :class:`Run`."""

    def __init__(self, cmd: list, cwd: Path, env: dict, log: Path):
        self.cmd, self.log = cmd, log
        self._fh = open(log, "w")
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._fh, stderr=subprocess.STDOUT, text=True)

    def poll(self):
        return self.proc.poll()

    def wait(self) -> Run:
        rc = self.proc.wait()
        seconds = time.monotonic() - self.t0
        self._fh.close()
        return Run(rc, self.log.read_text(errors="replace"), seconds, self.cmd)


def _run(cmd: Sequence, cwd: Path, env: dict, timeout: int, background: bool = False) -> Run | Pending:
    full = ["timeout", "-k", "15", str(timeout), *map(str, cmd)]
    if background:
        return Pending(full, cwd, env, Path(cwd) / ".snakemake-test.log")
    t0 = time.monotonic()
    proc = subprocess.run(full, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return Run(proc.returncode, proc.stdout, time.monotonic() - t0, full)


def snakemake_cmd() -> list:
    return [sys.executable, "-m", "snakemake"]


def _as_list(configfiles) -> list:
    if configfiles is None:
        return []
    if isinstance(configfiles, (str, Path)):
        return [configfiles]
    return list(configfiles)


def workflow_threads(configfiles) -> int:
    """Threads the workflow's rules use (`threads:` of the last config file that sets it), capped by
    the node.  SLURM and local runs use the same count so that their numbers are bit-comparable."""
    threads = 2  # schema default
    for cf in _as_list(configfiles):
        threads = int((yaml.safe_load(Path(cf).read_text()) or {}).get("threads", threads))
    return max(1, min(threads, NODE_CPUS))


def local_cluster_profile(dest: Path, *, threads: int, train_gpus: int = 1, base: Path = SLURM_PROFILE,
                          train_resources: dict | None = None, max_nodes: int = 1) -> Path:
    """Write an overlay profile that fits profiles/slurm's GPU jobs onto the local node.

    Only `set-resources` and `set-threads` are replaced (a later --profile replaces whole top-level
    keys); everything else -- executor, status command, retries, default-resources with the
    partition/account placeholders -- comes unchanged from profiles/slurm.  GPU rules ask for the
    local GRES type, `train` for `train_gpus` GPUs; every GPU rule gets `threads` CPUs (the same
    thread count as a local run, so results are bit-comparable). ``train_resources`` replace or add
    keys of `train` (e.g. a partition with a short time limit, the segment signal). ``max_nodes``: the nodes
    the site file's partition offers (2 on the two-node cluster, TOKENSCALE_SLURM_NODES=2).
    """
    prof = yaml.safe_load((base / "config.yaml").read_text())
    set_res = {}
    for rule, res in (prof.get("set-resources") or {}).items():
        res = dict(res)
        if "gpu" in res or "gpu_model" in res:
            gpus = train_gpus if rule == "train" else 1
            assert gpus <= LOCAL_GPUS, f"{rule}: {gpus} GPUs > {LOCAL_GPUS} on the local node"
            res["gpu_model"] = LOCAL_GPU_TYPE  # the GRES type the local node offers
            res["gpu"] = gpus
            res["cpus_per_gpu"] = max(1, threads // gpus)
            res["mem_mb"] = 2000
            res["runtime"] = 30
        if rule == "train":
            res.update(train_resources or {})
        set_res[rule] = res
    overlay = {"set-resources": set_res}
    if prof.get("set-threads"):  # an empty --set-threads is a command-line error
        overlay["set-threads"] = {rule: threads for rule in prof["set-threads"]}
    dest.mkdir(parents=True, exist_ok=True)
    if prof.get("slurm-partition-config"):  # the site's partitions -> the local node's one partition
        site = dest / "partitions.yaml"
        site.write_text(yaml.safe_dump({"partitions": {LOCAL_PARTITION: {
            "max_gpu": LOCAL_GPUS, "available_gpu_models": [LOCAL_GPU_TYPE], "max_nodes": max_nodes, "max_runtime": 2880,
            "max_mem_mb": 20000}}}))  # the run's default train request (16 GB, 24 h) fits; slurm-local.sh sets no limit
        overlay["slurm-partition-config"] = str(site)
        overlay["config"] = {**(prof.get("config") or {}), "site": str(site)}
    (dest / "config.yaml").write_text(
        "# generated by tests/conftest_slurm.py: profiles/slurm GPU jobs fitted to the local node\n"
        + yaml.safe_dump(overlay, sort_keys=False)
    )
    return dest


def _snakemake_base(workdir: Path, cfgs: list, snakefile: Path) -> list:
    """The snakemake command line both runners share: snakefile, working directory, config files."""
    return [*snakemake_cmd(), "--snakefile", snakefile, "--directory", workdir,
            *(["--configfile", *cfgs] if cfgs else [])]


def run_workflow_slurm(
    workdir: Path,
    configfiles,
    extra_args: Iterable = (),
    *,
    snakefile: Path = REPO / "Snakefile",
    profile: Path = SLURM_PROFILE,
    train_gpus: int = 1,
    train_resources: dict | None = None,
    env: dict | None = None,
    timeout: int = SNAKEMAKE_TIMEOUT,
    background: bool = False,
    max_nodes: int = 1,
):
    """snakemake --profile profiles/slurm (+ local-node overlay) on the local SLURM cluster."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfgs = _as_list(configfiles)
    overlay = local_cluster_profile(workdir.parent / f".{workdir.name}-profile-gpu{train_gpus}",
                                    threads=workflow_threads(cfgs), train_gpus=train_gpus, base=profile,
                                    train_resources=train_resources, max_nodes=max_nodes)
    cmd = [
        *_snakemake_base(workdir, cfgs, snakefile),
        "--profile", profile,
        "--profile", overlay,
        # profiles/default is the local-run workflow profile; keep it out of cluster runs
        "--workflow-profile", "none",
        "--slurm-init-seconds-before-status-checks", str(STATUS_INIT_SECONDS),
        "--latency-wait", "10",
        *extra_args,
    ]
    return _run(cmd, workdir, env or slurm_env(), timeout, background)


def run_workflow_local(
    workdir: Path,
    configfiles,
    extra_args: Iterable = (),
    *,
    snakefile: Path = REPO / "Snakefile",
    profile: Path = DEFAULT_PROFILE,
    env: dict | None = None,
    timeout: int = SNAKEMAKE_TIMEOUT,
    background: bool = False,
):
    """snakemake with profiles/default (local execution), --cores = the workflow's thread count."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cfgs = _as_list(configfiles)
    cmd = [
        *_snakemake_base(workdir, cfgs, snakefile),
        "--workflow-profile", profile,
        "--cores", str(workflow_threads(cfgs)),
        *extra_args,
    ]
    return _run(cmd, workdir, env or slurm_env(), timeout, background)


def squeue_jobs(cluster, *, rule: str | None = None, state: str | None = None) -> list[dict]:
    """Jobs squeue knows (running, pending and those finished < MinJobAge ago)."""
    out = subprocess.run(
        ["timeout", "10", "squeue", "-h", "-t", "all", "-o", "%i|%k|%T|%j"],
        capture_output=True, text=True, env=cluster.env(), check=True,
    ).stdout
    jobs = []
    for line in out.splitlines():
        jobid, comment, st, name = line.split("|", 3)
        # the plugin's comment is rule_<rule> or rule_<rule>_wildcards_<values>
        if rule is not None and comment != f"rule_{rule}" and not comment.startswith(f"rule_{rule}_wildcards_"):
            continue
        if state is not None and st != state:
            continue
        jobs.append({"id": jobid, "comment": comment, "state": st, "name": name})
    return jobs


def scontrol_job(cluster, jobid: str) -> str:
    return subprocess.run(
        ["timeout", "10", "scontrol", "show", "job", jobid],
        capture_output=True, text=True, env=cluster.env(), check=True,
    ).stdout


# ------------------------------------------------------------------------------ comparing outputs
# Results that legitimately differ between two runs: logs and benchmarks (timings), the trainer's
# private resumable state (an implementation detail, not a result) and its copies kept as snapshots: a trainer.pt
# also holds Python's and numpy's global RNG states, unseeded and never drawn from by training (model, optimizer,
# scheduler and torch RNG agree); the runs branched from a snapshot are compared, checkpoint by checkpoint.
SKIP_PARTS = {"logs", "benchmarks", "state", "state.old", "state.tmp", "snapshots"}
# JSON keys / CSV columns / HDF5 attributes holding timings or machine facts (MFU and the device peak are
# throughput: timings).
TIMING_KEY = re.compile(
    r"(^|_)(wall|elapsed|duration|seconds|timestamp|time|date|created|host|hostname|pid|uuid|mfu|peak)(_|$)|per_s$|_s$",
    re.I,
)
FIGURE_SUFFIXES = {".png", ".pdf", ".svg", ".html", ".jpg"}
RTOL, ATOL = 1e-5, 1e-6


@dataclass
class Diff:
    """Collects mismatches (instead of stopping at the first) and the largest float difference."""

    problems: list = field(default_factory=list)
    max_abs: float = 0.0
    compared: dict = field(default_factory=dict)
    roots: tuple = ()  # (SLURM run dir, local run dir): provenance paths are compared relative to them

    def same_text(self, a: str, b: str) -> bool:
        if len(self.roots) == 2:
            a = a.replace(str(self.roots[0]), "<root>")
            b = b.replace(str(self.roots[1]), "<root>")
        return a == b

    def fail(self, where: str, msg: str):
        self.problems.append(f"{where}: {msg}")

    def floats(self, where: str, a, b) -> None:
        import numpy as np

        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            return self.fail(where, f"shape {a.shape} vs {b.shape}")
        if a.size == 0:
            return
        both_nan = np.isnan(a) & np.isnan(b)
        d = np.where(both_nan, 0.0, np.abs(a - b))
        d = np.where(np.isinf(a) & (a == b), 0.0, d)
        if np.isnan(d).any():
            return self.fail(where, "NaN in one run only")
        self.max_abs = max(self.max_abs, float(d.max()))
        bad = d > ATOL + RTOL * np.abs(b)
        if bad.any():
            self.fail(where, f"{int(bad.sum())}/{a.size} values differ (max |diff| {float(d.max()):.3g})")


def _compare_values(a, b, where: str, diff: Diff) -> None:
    """Deep comparison of JSON-like values; dict keys matching TIMING_KEY are ignored."""
    if isinstance(a, dict) and isinstance(b, dict):
        ka = {k for k in a if not TIMING_KEY.search(str(k))}
        kb = {k for k in b if not TIMING_KEY.search(str(k))}
        if ka != kb:
            diff.fail(where, f"keys differ: only SLURM {sorted(ka - kb)}, only local {sorted(kb - ka)}")
        for k in sorted(ka & kb, key=str):
            _compare_values(a[k], b[k], f"{where}.{k}", diff)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            diff.fail(where, f"length {len(a)} vs {len(b)}")
        else:
            for i, (x, y) in enumerate(zip(a, b)):
                _compare_values(x, y, f"{where}[{i}]", diff)
    elif isinstance(a, bool) or isinstance(b, bool) or a is None or b is None:
        if a != b:
            diff.fail(where, f"{a!r} vs {b!r}")
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, int) and isinstance(b, int):
            if a != b:
                diff.fail(where, f"{a} vs {b}")
        else:
            diff.floats(where, a, b)
    elif isinstance(a, str) and isinstance(b, str):
        if not diff.same_text(a, b):
            diff.fail(where, f"{a[-80:]!r} vs {b[-80:]!r}")
    elif a != b:
        diff.fail(where, f"{str(a)[:80]!r} vs {str(b)[:80]!r}")


def _compare_json(a: Path, b: Path, where: str, diff: Diff) -> None:
    ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
    if a.name == "MANIFEST.json":  # an eval block's checksums cover whole files, provenance paths and timings
        for j in (ja, jb):  # included; the files themselves are compared value by value
            for entry in j.get("files", {}).values():
                entry.pop("sha256", None)
                entry.pop("size", None)
    _compare_values(ja, jb, where, diff)


def _compare_jsonl(a: Path, b: Path, where: str, diff: Diff) -> None:
    la = [json.loads(x) for x in a.read_text().splitlines() if x.strip()]
    lb = [json.loads(x) for x in b.read_text().splitlines() if x.strip()]
    _compare_values(la, lb, where, diff)


def _num(x: str):
    try:
        return float(x)
    except ValueError:
        return None


def _compare_csv(a: Path, b: Path, where: str, diff: Diff) -> None:
    delim = "\t" if a.suffix == ".tsv" else ","
    with open(a, newline="") as fa, open(b, newline="") as fb:
        ra, rb = list(csv.reader(fa, delimiter=delim)), list(csv.reader(fb, delimiter=delim))
    if not ra or not rb or ra[0] != rb[0]:
        return diff.fail(where, f"header {ra[:1]} vs {rb[:1]}")
    header = ra[0]
    if len(ra) != len(rb):
        return diff.fail(where, f"{len(ra) - 1} vs {len(rb) - 1} rows")
    for i, col in enumerate(header):
        if TIMING_KEY.search(col.strip()):
            continue
        xa = [r[i] if i < len(r) else "" for r in ra[1:]]
        xb = [r[i] if i < len(r) else "" for r in rb[1:]]
        na, nb = [_num(x) for x in xa], [_num(x) for x in xb]
        if all(v is not None for v in na + nb):
            diff.floats(f"{where}[{col}]", na, nb)
        elif xa != xb:
            diff.fail(f"{where}[{col}]", "text values differ")


def _compare_arrays(x, y, where: str, diff: Diff) -> None:
    import numpy as np

    x, y = np.asarray(x), np.asarray(y)
    if x.shape != y.shape or x.dtype != y.dtype:
        return diff.fail(where, f"{x.dtype}{x.shape} vs {y.dtype}{y.shape}")
    if x.dtype.kind in "fc":
        diff.floats(where, x.real if x.dtype.kind == "c" else x, y.real if y.dtype.kind == "c" else y)
    elif not np.array_equal(x, y):
        diff.fail(where, "values differ")


def _compare_attrs(aa, ab, where: str, diff: Diff) -> None:
    keys_a = {k for k in aa.keys() if not TIMING_KEY.search(k)}
    keys_b = {k for k in ab.keys() if not TIMING_KEY.search(k)}
    if keys_a != keys_b:
        diff.fail(where, f"attrs differ: only SLURM {sorted(keys_a - keys_b)}, only local {sorted(keys_b - keys_a)}")
    for k in sorted(keys_a & keys_b):
        va, vb = aa[k], ab[k]
        if isinstance(va, (bytes, str)) or isinstance(vb, (bytes, str)):
            va = va.decode() if isinstance(va, bytes) else va
            vb = vb.decode() if isinstance(vb, bytes) else vb
            try:  # JSON-encoded attributes (configs, summaries) are compared by value
                _compare_values(json.loads(va), json.loads(vb), f"{where}@{k}", diff)
            except (TypeError, ValueError):
                if not diff.same_text(str(va), str(vb)):
                    diff.fail(f"{where}@{k}", f"{str(va)[-80:]!r} vs {str(vb)[-80:]!r}")
        else:
            _compare_arrays(va, vb, f"{where}@{k}", diff)


def _compare_h5(a: Path, b: Path, where: str, diff: Diff) -> None:
    import h5py

    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        na, nb = [], []
        fa.visit(na.append)
        fb.visit(nb.append)
        if sorted(na) != sorted(nb):
            diff.fail(where, f"objects differ: only SLURM {sorted(set(na) - set(nb))}, only local {sorted(set(nb) - set(na))}")
        _compare_attrs(fa.attrs, fb.attrs, where, diff)
        for name in sorted(set(na) & set(nb)):
            oa, ob = fa[name], fb[name]
            _compare_attrs(oa.attrs, ob.attrs, f"{where}:{name}", diff)
            if isinstance(oa, h5py.Dataset) and isinstance(ob, h5py.Dataset):
                _compare_arrays(oa[()], ob[()], f"{where}:{name}", diff)


def _compare_safetensors(a: Path, b: Path, where: str, diff: Diff) -> None:
    from safetensors.numpy import load_file

    ta, tb = load_file(str(a)), load_file(str(b))
    if ta.keys() != tb.keys():
        return diff.fail(where, "tensor names differ")
    for k in sorted(ta):
        _compare_arrays(ta[k], tb[k], f"{where}:{k}", diff)


def _compare_npz(a: Path, b: Path, where: str, diff: Diff) -> None:
    import numpy as np

    with np.load(a, allow_pickle=False) as za, np.load(b, allow_pickle=False) as zb:
        if sorted(za.files) != sorted(zb.files):
            return diff.fail(where, "arrays differ")
        for k in za.files:
            _compare_arrays(za[k], zb[k], f"{where}:{k}", diff)


def _compare_bytes(a: Path, b: Path, where: str, diff: Diff) -> None:
    if a.read_bytes() != b.read_bytes():
        diff.fail(where, "content differs")


def _compare_exists(a: Path, b: Path, where: str, diff: Diff) -> None:
    if a.stat().st_size == 0 or b.stat().st_size == 0:
        diff.fail(where, "empty file")


COMPARERS = {
    ".h5": _compare_h5, ".hdf5": _compare_h5, ".json": _compare_json, ".jsonl": _compare_jsonl,
    ".csv": _compare_csv, ".tsv": _compare_csv, ".safetensors": _compare_safetensors, ".npz": _compare_npz,
    ".npy": lambda a, b, w, d: _compare_arrays(__import__("numpy").load(a), __import__("numpy").load(b), w, d),
    **{s: _compare_exists for s in FIGURE_SUFFIXES},
}


def result_files(root: Path) -> list[Path]:
    """Files under root/results that the comparison covers (relative to root)."""
    out = []
    for p in sorted((Path(root) / "results").rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not (set(rel.parts[1:-1]) & SKIP_PARTS) and not p.name.endswith(".tmp"):
            out.append(rel)
    return out


def compare_results(slurm_dir: Path, local_dir: Path) -> dict:
    """Assert the SLURM run produced every result of the local run with the same values.

    Returns {"files": n, "by_type": {suffix: n}, "max_abs_float_diff": x}."""
    local = result_files(local_dir)
    slurm = set(result_files(slurm_dir))
    assert local, f"the local run wrote nothing under {local_dir}/results"
    missing = [str(p) for p in local if p not in slurm]
    extra = sorted(str(p) for p in slurm - set(local))
    assert not missing and not extra, f"different result files\nonly local: {missing}\nonly SLURM: {extra}"
    diff = Diff(roots=(Path(slurm_dir), Path(local_dir)))
    by_type: dict = {}
    for rel in local:
        comparer = COMPARERS.get(rel.suffix, _compare_bytes)
        try:
            comparer(Path(slurm_dir) / rel, Path(local_dir) / rel, str(rel), diff)
        except Exception as e:  # unreadable file: report, keep comparing the rest
            diff.fail(str(rel), f"{type(e).__name__}: {e}")
        by_type[rel.suffix or rel.name] = by_type.get(rel.suffix or rel.name, 0) + 1
    assert not diff.problems, "SLURM and local results differ:\n  " + "\n  ".join(diff.problems[:40])
    return {"files": len(local), "by_type": by_type, "max_abs_float_diff": diff.max_abs}


# ------------------------------------------------------------------------------- checkpoint format
def checkpoint_format(ckpt: Path) -> dict:
    """What 'same format' means for a checkpoint folder: file names, HF config, tensor names/shapes/
    dtypes, tokenscale.json keys."""
    from safetensors import safe_open

    with safe_open(str(ckpt / "model.safetensors"), "np") as f:
        tensors = {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}
    hf = json.loads((ckpt / "config.json").read_text())
    hf.pop("transformers_version", None)
    return {
        "files": sorted(p.name for p in ckpt.iterdir()),
        "config": hf,
        "tensors": tensors,
        "tokenscale_keys": sorted(json.loads((ckpt / "tokenscale.json").read_text())),
    }


def read_losses(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (Path(run_dir) / "log.jsonl").read_text().splitlines() if x.strip()]


def wait_for(cond, timeout: float, what: str, poll: float = 0.2, alive=None):
    """Poll cond() until truthy; fail after timeout or when alive() turns false."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        if alive is not None and not alive():
            raise AssertionError(f"gave up waiting for {what}: the process ended")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
