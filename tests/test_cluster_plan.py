"""Job requests on a cluster (config `resources`, site facts from profiles/slurm/partitions.yaml), config files that
stand alone (`standalone: true`), and the paper's DAG on the SLURM profile read as the scheduler would.

The fast tests call tokenscale.plan and tokenscale.workflow; the `slow` ones run `snakemake -n` (no sbatch is
called in a dry run)."""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import tokenscale.studies  # noqa: F401  (registers the study sections before any config is validated)
from tokenscale import TokenscaleError
from tokenscale.config import RunConfig, run_configs, validate_config
from tokenscale.plan import (check_requests, cluster_plan, plan, read_profile, read_site, site_fit,
                             site_gpu_model, stage_request, train_request)
from tokenscale.workflow import workflow_config

REPO = Path(__file__).resolve().parents[1]
SITE = REPO / "profiles" / "slurm" / "partitions.yaml"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _run(name="r", **kw) -> RunConfig:
    spec = {"name": name, "axis": "T", "model": {"preset": "moe-nano"}, "tokens": 10**6, "batch_size": 64, **kw}
    return RunConfig.from_dict(spec, 32)


def _resources(*entries) -> dict:
    from tokenscale.plan import resources_section

    return resources_section({"resources": {"train": list(entries)}})


# ------------------------------------------------------------------------------------------------ requests
def test_defaults_are_todays_train_job():
    """No `resources`: one node, no GPU, the run's nproc CPU ranks, 16 GB, 24 h (the train rule's old literals)."""
    req = train_request(_run(nproc=2), _resources(), threads=3)
    assert req == {"match": "*", "nodes": 1, "gpus_per_node": 0, "ranks_per_node": 2, "world": 2,
                   "cpus_per_node": 3, "cpus_per_gpu": 8, "mem_mb": 16000, "time_min": 1440}


def test_first_matching_entry_applies():
    section = _resources({"runs": "t_*", "nodes": 2, "gpus_per_node": 8, "time_min": 600},
                         {"runs": "*", "gpus_per_node": 1})
    assert train_request(_run("t_main"), section, 1)["world"] == 16
    assert train_request(_run("d-x"), section, 1)["world"] == 1
    assert train_request(_run("t_main"), section, 1)["time_min"] == 600


def test_ranks_must_divide_the_batch():
    with pytest.raises(TokenscaleError, match=r"run r .*3 nodes x 8 ranks = 24 ranks do not divide batch_size 64"):
        train_request(_run(), _resources({"runs": "*", "nodes": 3, "gpus_per_node": 8}), 1)
    with pytest.raises(TokenscaleError, match=r"micro_batch_size 16 does not divide the per-rank batch 8"):
        train_request(_run(micro_batch_size=16), _resources({"runs": "*", "gpus_per_node": 8}), 1)
    with pytest.raises(TokenscaleError, match=r"nproc 8 ranks per node but 4 GPUs per node"):
        train_request(_run(nproc=8), _resources({"runs": "*", "gpus_per_node": 4}), 1)


def test_site_limits():
    site = read_site(SITE)
    assert site_gpu_model(site) == "a100"
    ok = {"nodes": 8, "gpus_per_node": 8, "time_min": 2880, "mem_mb": 1000000}
    assert site_fit(ok, site) is None
    assert site_fit({**ok, "gpus_per_node": 16}, site) == (
        f"asks for 16 GPUs per node; the site ({SITE}) has at most 8")
    assert "at most 8" in site_fit({**ok, "nodes": 9}, site)
    assert "2880 minutes" not in site_fit({**ok, "time_min": 2881}, site)  # names the request, then the limit
    assert site_fit({**ok, "time_min": 2881}, site).startswith("asks for 2881 minutes")
    cpu = {"nodes": 1, "gpus_per_node": 0, "time_min": 60, "mem_mb": 300000}  # more than the cpu partition's
    assert "at most 250000" in site_fit(cpu, site)
    assert site_fit(ok, None) is None


def test_site_time_formats(tmp_path):
    f = tmp_path / "p.yaml"
    f.write_text("partitions:\n  a: {max_gpu: 4, max_runtime: '2-00:00:00'}\n  b: {max_runtime: '12:30:00'}\n")
    assert [p["max_runtime"] for p in read_site(f)["partitions"]] == [2880, 750]
    f.write_text("partitions:\n  a: {max_runtime: soon}\n")
    with pytest.raises(TokenscaleError, match="max_runtime 'soon' is not minutes"):
        read_site(f)
    with pytest.raises(TokenscaleError, match="partition file not found"):
        read_site(tmp_path / "none.yaml")


def test_stage_requests_one_gpu_or_none():
    cfg = validate_config({"eval": {"device": "cuda"}, "fit": {"device": "cpu"}})
    assert stage_request(cfg, "evaluate", None, 2)["gpus_per_node"] == 1
    assert stage_request(cfg, "fit", None, 2)["gpus_per_node"] == 0
    auto = validate_config({})
    assert stage_request(auto, "evaluate", None, 2)["gpus_per_node"] == 0  # auto, no site: a laptop
    assert stage_request(auto, "evaluate", read_site(SITE), 2)["gpus_per_node"] == 1


def test_paper_fits_the_site_and_too_many_gpus_is_one_line():
    cfg = workflow_config("config/paper.yaml")
    reqs = check_requests(cfg, read_site(SITE))
    assert reqs["t_main"]["world"] == 32 and reqs["syn_uniform"]["gpus_per_node"] == 1
    bad = {**cfg, "resources": {**cfg["resources"], "train": [{"runs": "t_*", "gpus_per_node": 16}]}}
    with pytest.raises(TokenscaleError, match=r"^run t_main \(resources.train 't_\*'\) asks for 16 GPUs per node; "
                                              r"the site .* has at most 8$"):
        check_requests(bad, read_site(SITE))


def test_plain_engine_runs_on_several_ranks_that_divide_its_batch():
    """engine plain is data-parallel: 2 nodes x 1 rank or 1 node x 2 ranks is a world of 2 (trainer
    average_gradients); a world that does not divide the batch stops the DAG build in one line, as for DeepSpeed."""
    cfg = workflow_config("config/smoke.yaml")
    two_nodes = {**cfg, "resources": {"train": [{"runs": "t_smoke", "nodes": 2}]}}
    assert check_requests(two_nodes, None)["t_smoke"]["world"] == 2
    two_ranks = {**cfg, "runs": [{**r, "nproc": 2} if r["name"] == "t_smoke_s1" else r for r in cfg["runs"]]}
    assert check_requests(two_ranks, None)["t_smoke_s1"]["ranks_per_node"] == 2
    three = {**cfg, "resources": {"train": [{"runs": "t_smoke", "nodes": 3}]}}
    with pytest.raises(TokenscaleError, match=r"^run t_smoke \(resources.train 't_smoke'\): 3 nodes x 1 ranks = 3 "
                                              r"ranks do not divide batch_size 16$"):
        check_requests(three, None)
    assert all(r["world"] == 1 for r in check_requests(cfg, None).values())  # smoke: every run one rank


def test_paper_cluster_plan():
    cfg = workflow_config("config/paper.yaml")
    prof = read_profile(REPO / "profiles" / "slurm")
    rows = cluster_plan(cfg, prof, plan(cfg))
    assert all(r["fit"] is None for r in rows)
    t = next(r for r in rows if r["job"] == "train t_*")
    assert (t["jobs"], t["nodes"], t["gpus_per_node"], t["segments"]) == (3, 4, 8, 2)  # 1,870 GPU-h / 32 in 47 h
    ev = next(r for r in rows if r["job"].startswith("evaluate"))
    assert ev["gpus_per_node"] == 1 and ev["submissions"] <= 300


# ------------------------------------------------------------------------------------------------ standalone
def test_standalone_config_starts_from_the_schema():
    demo, smoke, paper = workflow_config(), workflow_config("config/smoke.yaml"), workflow_config("config/paper.yaml")
    assert demo["reference"] == "reference/default.json"
    assert smoke["reference"] == "reference/smoke.json"  # an overlay keeps the demo underneath
    assert paper["standalone"] is True and paper["reference"] is None  # no demo reference, no verify rule
    assert demo["standalone"] is None and demo["site"] is None and demo["resources"] is None


# ------------------------------------------------------------------------------------------------ dry runs
def parse_dryrun(text: str) -> list[dict]:
    """Jobs of a `snakemake -n` listing: rule, group header (None outside a group job), output, wildcards and
    resources (as printed, strings)."""
    jobs, group, cur = [], None, None
    for line in text.splitlines():
        m = re.match(r"^\[.*\] Group job (\S+) ", line)
        if m:
            group = object()
            continue
        m = re.match(r"^(\s*)(local)?(rule|checkpoint) (\w+):$", line)
        if m:
            if not m.group(1):
                group = None
            cur = {"rule": m.group(4), "group": group, "output": "", "wildcards": {}, "resources": {}}
            jobs.append(cur)
            continue
        s = line.strip()
        if cur is not None and s.startswith(("output:", "wildcards:", "resources:")):
            key, _, rest = s.partition(": ")
            cur[key] = rest if key == "output" else dict(kv.split("=", 1) for kv in rest.split(", ") if "=" in kv)
    return jobs


def _dryrun(tmp_path, *configfiles, profile=True, extra=()) -> tuple[subprocess.CompletedProcess, float]:
    args = ["-n", "--forceall", "--directory", str(REPO), "--snakefile", str(REPO / "Snakefile")]
    if profile:
        args += ["--profile", str(REPO / "profiles" / "slurm"), "--workflow-profile", "none"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    res = subprocess.run([*SNAKEMAKE, *args, "--configfile", *map(str, configfiles), *extra], capture_output=True,
                         text=True, cwd=REPO, env=env, timeout=600)
    return res, time.perf_counter() - t0


@pytest.fixture
def fake_corpus(tmp_path) -> Path:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "a b c"}\n')
    overlay = tmp_path / "corpus.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"corpora": [{"path": str(corpus), "format": "jsonl"}]}}))
    return overlay


@pytest.mark.slow
def test_paper_dryrun_on_the_slurm_profile(tmp_path, fake_corpus):
    """Every train job asks for what its run says; evaluation/fit jobs for <= 1 GPU (also a group job, its blocks
    stacked in series); CPU-only rules for none; evaluations in <= 300 submissions; the DAG in < 60 s."""
    res, seconds = _dryrun(tmp_path, REPO / "config" / "paper.yaml", fake_corpus)
    assert res.returncode == 0, res.stderr[-2000:]
    assert seconds < 60, f"DAG build took {seconds:.1f} s"
    jobs = parse_dryrun(res.stdout + res.stderr)
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    runs = run_configs(workflow_config("config/paper.yaml"))
    trains = [j for j in jobs if j["rule"] == "train"]
    assert len(trains) == len(runs) == 123
    for j in trains:
        run = runs[j["wildcards"]["run"]]
        entry = next(e for e in paper["resources"]["train"] if fnmatch.fnmatchcase(run.name, e["runs"]))
        r = j["resources"]
        assert int(r["nodes"]) == entry["nodes"] and int(r["gpus_per_node"]) == entry["gpus_per_node"]
        assert r["gres"] == f"gpu:a100:{entry['gpus_per_node']}"
        assert int(r["mem_mb"]) == entry["mem_mb"] and int(r["runtime"]) == entry["time_min"] <= 2880
        assert int(r["cpus_per_gpu"]) == entry["cpus_per_gpu"] and "gpu" not in r
        assert run.batch_size % (entry["nodes"] * entry["gpus_per_node"]) == 0
    gpu_rules = {"train", "evaluate_checkpoint", "fit_shard", "dependency"}
    for j in jobs:
        gpus = int(j["resources"].get("gpu", 0) or 0)
        if j["rule"] in gpu_rules - {"train"}:
            assert gpus <= 1 and not j["resources"].get("gres"), j
        elif j["rule"] != "train":
            assert gpus == 0 and not j["resources"].get("gres"), j  # CPU-only: the plugin sends it to `cpu`
    evals = [j for j in jobs if j["rule"] == "evaluate_checkpoint"]
    groups = {}
    for j in evals:
        groups.setdefault(j["group"] or id(j), {})[j["output"]] = j
    assert len(groups) <= 300, f"{len(groups)} evaluation submissions"
    for members in groups.values():  # a group job, as Snakemake sizes it: gpu capped at 1 -> blocks in series
        assert sum(int(m["resources"]["runtime"]) for m in members.values()) <= 2880
    print(f"paper.yaml dry run: {len(jobs)} job entries, {len(evals)} evaluation blocks in {len(groups)} "
          f"submissions, {seconds:.1f} s")


@pytest.mark.slow
@pytest.mark.parametrize("overlay, message", [
    ({"resources": {"train": [{"runs": "t_smoke*", "nodes": 3}]}},
     r"run t_smoke \(resources.train 't_smoke\*'\): 3 nodes x 1 ranks = 3 ranks do not divide batch_size 16"),
    ({"resources": {"train": [{"runs": "t_smoke*", "gpus_per_node": 16}]}},
     r"run t_smoke \(resources.train 't_smoke\*'\) asks for 16 GPUs per node; the site \(profiles/slurm/partitions"
     r".yaml\) has at most 8"),
    ({"data": {"builtin": False, "corpora": [{"path": "/path/to/your/corpus.jsonl"}]}},
     r"data.corpora\[0\].path: /path/to/your/corpus.jsonl does not exist"),
])
def test_bad_requests_stop_the_dag_build_in_one_line(tmp_path, overlay, message):
    f = tmp_path / "bad.yaml"
    f.write_text(yaml.safe_dump(overlay))
    res, _ = _dryrun(tmp_path, REPO / "config" / "smoke.yaml", f)
    assert res.returncode != 0
    hits = [line for line in (res.stdout + res.stderr).splitlines() if re.search(message, line)]
    assert len(hits) == 1, (res.stdout + res.stderr)[-2000:]
