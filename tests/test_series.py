"""tokenscale.series: the workflow's unit downstream of training, its builders, and a DAG built without torch."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tokenscale import TokenscaleError, series
from tokenscale.config import validate_config

from conftest import REPO, tiny_config


def _cfg(tmp_path, **extra):
    return validate_config({**tiny_config(), "results": str(tmp_path / "r"), **extra})


def test_run_series_are_the_runs_own_checkpoints(tmp_path):
    wf = series.build_workflow(_cfg(tmp_path))
    (s,) = wf.series.values()
    src = wf.sources["tiny"]
    assert s.name == "tiny" and s.kind == "run" and not s.deferred and s.token_set == "valid"
    assert [step for _, step in s.members] == src.steps == sorted(src.steps) and len(src.steps) >= 4
    assert src.checkpoint(src.steps[-1]) == f"{tmp_path}/r/runs/tiny/checkpoints/step{src.steps[-1]:08d}"
    assert wf.token_sets["valid"].path == f"{tmp_path}/r/data/valid_tokens.h5"
    assert src.ready == (f"{tmp_path}/r/runs/tiny/train.json",)
    with pytest.raises(TokenscaleError, match=r"source tiny: no checkpoint at step 999999"):
        src.checkpoint(999999)


def test_seed_groups_are_t_runs_that_differ_only_by_seed(tmp_path):
    base = tiny_config()["runs"][0]
    runs = [{**base, "name": "b", "seed": 2, "state_every": 7}, {**base, "name": "a"}, {**base, "name": "c", "seed": 1},
            {**base, "name": "other_lr", "lr": 0.01, "seed": 1},  # another recipe: not in the group
            {**base, "name": "d_run", "axis": "D", "seed": 3}]  # not a T series
    assert series.seed_groups(_cfg(tmp_path, runs=runs)) == {"a": ("a", "c", "b")}
    assert series.seed_groups(_cfg(tmp_path)) == {}
    # a rerun under another name (same seed) adds no seed: the first by name stands for it
    rerun = [{**base, "name": "z_rerun"}, {**base, "name": "a"}, {**base, "name": "c", "seed": 1}]
    assert series.seed_groups(_cfg(tmp_path, runs=rerun)) == {"a": ("a", "c")}
    assert series.seed_groups(_cfg(tmp_path, runs=[{**base, "name": "a"}, {**base, "name": "twin"}])) == {}


def test_eval_blocks_partition_a_source():
    src = series.Source("r", tuple((s, f"c/step{s}") for s in (1, 2, 4, 8, 16)))
    assert series.eval_blocks(src, 0) == [[1, 2, 4, 8, 16]]
    assert series.eval_blocks(src, 2) == [[1, 2], [4, 8], [16]]
    assert [series.block_of(src, s, 2) for s in src.steps] == [0, 0, 1, 1, 2]


def _bundle_wf(n_frontier: int = 7):
    """A frontier series over ``n_frontier`` one-block runs (one of which a second series also uses) and one run of
    three blocks, on the validation token set; a run series on another token set."""
    src = lambda name, steps: series.Source(name, tuple((s, f"{name}/step{s}") for s in steps), (f"{name}/train.json",))
    wf = series.Workflow()
    runs = [src(f"d{i}", (1, 8)) for i in range(n_frontier)] + [src("long", (1, 2, 4, 8, 16))]
    wf.add(sources=runs, token_sets=[series.TokenSet("valid", "v.h5"), series.TokenSet("syn", "s.h5")])
    frontier = series.Series("front", "frontier", "valid", None, tuple(r.name for r in runs), resolver="m:f")
    wf.add(series=[frontier, series.Series("d0", "run", "valid", (("d0", 1), ("d0", 8)), ("d0",)),
                   series.Series("d1s", "run", "syn", (("d1", 8),), ("d1",))])
    return wf


def test_bundles_split_a_series_one_block_sources_evenly():
    wf = _bundle_wf()
    # d0 is shared with its own series and `long` has 3 blocks of 2: neither is bundled; d1..d6 -> 2 bundles of 3
    b = series.bundle_sources(wf, 2, 4)
    assert b == {("valid", f"d{i}"): f"front+{(i - 1) // 3}" for i in range(1, 7)}
    assert series.bundle_sources(wf, 2, 1) == {}  # one source per job: today's layout
    assert series.bundle_sources(wf, 2, 6) == {("valid", f"d{i}"): "front+0" for i in range(1, 7)}
    assert set(series.bundle_sources(_bundle_wf(8), 2, 3).values()) == {"front+0", "front+1", "front+2"}  # 7 -> 3,2,2
    sizes = [len(g) for g in series._split_even(list(range(7)), 3)]
    assert sizes == [2, 3, 2] and sum(sizes) == 7
    with pytest.raises(TokenscaleError, match="eval.sources_per_job: 0 is not >= 1"):
        series.bundle_sources(wf, 2, 0)


def test_a_bundle_group_pools_its_series_sources():
    """A reshape experiment's arms (one continuation series each, on one token set) share bundles `<group>+<k>`;
    the reference run they all continue from is shared, so it is evaluated on its own."""
    src = lambda name: series.Source(name, ((1, f"{name}/step1"), (8, f"{name}/step8")), (f"{name}/train.json",))
    wf = series.Workflow()
    arms = [f"rs-{a}-s{k}" for a in ("uniform", "reshaped") for k in range(3)]
    wf.add(sources=[src("ref")] + [src(a) for a in arms], token_sets=[series.TokenSet("valid", "v.h5")])
    wf.add(series=[series.Series(a, "continuation", "valid", (("ref", 1), (a, 8)), ("ref", a), bundle="rs")
                   for a in arms])
    assert series.bundle_sources(wf, 0, 5) == {("valid", a): f"rs+{int(i >= 3)}" for i, a in enumerate(arms)}
    assert series.bundle_sources(wf, 0, 1) == {}
    ev = series.eval_plan(wf, 0, 5)
    assert ev.job_of("valid", "rs-reshaped-s0", 8).parts == tuple((a, (1, 8)) for a in arms[3:])
    assert ev.block_dir("valid", "ref", 1) == "valid/ref/block-000"
    # without the group each arm is a series with one bundleable source: nothing is bundled
    solo = series.Workflow()
    solo.add(sources=list(wf.sources.values()), token_sets=list(wf.token_sets.values()),
             series=[dataclasses.replace(s, bundle="") for s in wf.series.values()])
    assert series.bundle_sources(solo, 0, 5) == {}


def test_a_bundle_group_named_like_another_series_is_an_error():
    wf = _bundle_wf()
    wf.add(series=[series.Series("x", "continuation", "valid", (("long", 1),), ("long",), bundle="d0")])
    with pytest.raises(TokenscaleError, match="series x: bundle group 'd0' is also a series outside the group"):
        series.bundle_sources(wf, 2, 4)
    wf = _bundle_wf()
    wf.add(series=[series.Series("y", "run", "syn", (("long", 1),), ("long",), bundle="front")])
    with pytest.raises(TokenscaleError, match="series y: bundle group 'front' is also a series outside the group"):
        series.bundle_sources(wf, 2, 4)
    wf = _bundle_wf()
    wf.add(series=[series.Series("g1", "run", "valid", (("long", 1),), ("long",), bundle="g"),
                   series.Series("g2", "run", "syn", (("long", 2),), ("long",), bundle="g")])
    with pytest.raises(TokenscaleError, match="series g2: bundle group 'g' spans token sets 'valid' and 'syn'"):
        series.bundle_sources(wf, 2, 4)


def test_eval_plan_says_where_every_file_is():
    ev = series.eval_plan(_bundle_wf(), 2, 4)
    job = ev.job_of("valid", "d2", 8)
    assert (job.name, job.block, job.bundled) == ("front+0", 0, True)
    assert job.parts == (("d1", (1, 8)), ("d2", (1, 8)), ("d3", (1, 8)))
    assert ev.block_dir("valid", "d2", 8) == "valid/front+0/block-000/d2"
    assert ev.job("valid", "front+0", 0) is job
    # unbundled: the source's own folder, one job per block; a source bundled on one token set is alone on another
    assert ev.block_dir("valid", "long", 4) == "valid/long/block-001"
    assert ev.source_blocks("valid", "long") == [f"valid/long/block-{b:03d}" for b in range(3)]
    assert [j.block for j in ev.source_jobs("valid", "long")] == [0, 1, 2]
    assert ev.source_jobs("valid", "d2") == [job]  # a bundled source: its bundle, once
    assert ev.block_dir("valid", "d0", 1) == "valid/d0/block-000" and not ev.job_of("valid", "d0", 1).bundled
    assert ev.block_dir("syn", "d1", 8) == "syn/d1/block-000"
    with pytest.raises(TokenscaleError, match="evaluation job valid/front\\+5/block-000 does not exist"):
        ev.job("valid", "front+5", 0)
    with pytest.raises(TokenscaleError, match="evaluation job valid/d1/block-000 does not exist"):
        ev.job("valid", "d1", 0)  # d1 is evaluated in its bundle, not on its own
    with pytest.raises(TokenscaleError, match="source long: evaluation block 3 does not exist \\(3 blocks\\)"):
        ev.job("valid", "long", 3)
    with pytest.raises(TokenscaleError, match="source d1: no checkpoint at step 2"):
        ev.job_of("valid", "d1", 2)


def test_external_series_discovers_steps_and_names_clash(tmp_path):
    folder = tmp_path / "pythia"
    for name in ("step1000", "step00000010", "checkpoint-100", "notes"):
        (folder / name).mkdir(parents=True)
    wf = series.build_workflow(_cfg(tmp_path, external=[{"name": "ext", "path": str(folder)}]))
    ext = wf.series["ext"]
    assert ext.kind == "external" and [s for _, s in ext.members] == [10, 100, 1000] and ext.token_set == "ext"
    assert wf.sources["ext"].checkpoint(100) == str(folder / "checkpoint-100") and wf.sources["ext"].ready == ()
    assert wf.token_sets["ext"].path == f"{tmp_path}/r/tokens/ext.h5"
    clash = _cfg(tmp_path, external=[{"name": "tiny", "path": str(folder)}])
    with pytest.raises(TokenscaleError, match=r"config: source name 'tiny' is declared twice"):
        series.build_workflow(clash)


def test_a_new_kind_is_one_builder(tmp_path, monkeypatch):
    def toy(cfg, wf):
        yield series.Series("toy1", "toy", "valid", (("tiny", 1),), ("tiny",))
        yield series.Series("bad", "toy", "valid", (("nope", 1),), ("nope",))

    monkeypatch.setitem(series.BUILDERS, "toy", toy)
    with pytest.raises(TokenscaleError, match=r"series bad: unknown source 'nope'"):
        series.build_workflow(_cfg(tmp_path))


def _pick_two(s, sources, inputs):
    return [(s.sources[0], step) for step in sorted(int(x) for x in open(inputs[0]).read().split())]


def test_deferred_series_is_resolved_checked_and_written(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    wf = series.build_workflow(_cfg(tmp_path))
    steps = wf.sources["tiny"].steps
    d = series.Series("late", "toy", "valid", None, ("tiny",), inputs=("chosen.txt",), resolver="test_series:_pick_two")
    wf.series["late"] = d
    back, sources = series.parse_series_spec(series.series_spec(wf, "late"))
    assert back == d and sources == {"tiny": wf.sources["tiny"]}
    chosen = tmp_path / "chosen.txt"
    chosen.write_text(f"{steps[-1]} {steps[1]}")
    members = series.resolve(back, sources, [str(chosen)])
    assert members == [("tiny", steps[1]), ("tiny", steps[-1])]
    out = series.write_manifest(tmp_path / "m.json", back, members)
    assert series.read_manifest(out) == members
    chosen.write_text("999999")
    with pytest.raises(TokenscaleError, match=r"source tiny: no checkpoint at step 999999"):
        series.resolve(back, sources, [str(chosen)])
    chosen.write_text(f"{steps[1]} {steps[1]}")
    with pytest.raises(TokenscaleError, match=r"series late: a checkpoint is chosen twice"):
        series.resolve(back, sources, [str(chosen)])
    with pytest.raises(TokenscaleError, match=r"resolver 'nope:f' cannot be imported"):
        series.resolve(series.Series("x", "toy", "valid", None, ("tiny",), resolver="nope:f"), sources, [])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TokenscaleError, match=r"bad.json: not a series manifest"):
        series.read_manifest(tmp_path / "bad.json")


def _dry_run(*args, cwd=REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = [sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--cores", "1", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_new_kinds_get_every_downstream_rule_each_checkpoint_evaluated_once_no_torch(tmp_path):
    """Kinds registered in BUILDERS (tests/data/toy_series) are evaluated, fitted and analysed by the same rules;
    the checkpoints the three series share are evaluated by one job; building the DAG imports no torch."""
    p = _dry_run("-s", "tests/data/toy_series/Snakefile", "-d", str(REPO), "--configfile", "config/smoke.yaml",
                 "tests/data/no_sweeps.yaml", "--config", f"results={tmp_path}", "--", "all")
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = re.findall(r"^(?:rule|checkpoint) (\w+):\n(?:    .*\n)*?    wildcards: (.*)$", p.stdout, re.M)
    assert sorted(w for r, w in jobs if r == "evaluate_checkpoint") == sorted(
        [f"tokens=valid, source={run}, block=000" for run in ("t_smoke", "t_smoke_s1", "rs_smoke+0")]  # arms: 1 job
        + ["tokens=rs_smoke, source=t_smoke.from6, block=000"]  # reshape candidates: the reference from step 6
        + [f"tokens=mano_smoke_{d}, source=syn_smoke_{d}, block=000" for d in ("uniform", "power")])  # synthetic
    for name in ("t_smoke", "toy1", "best3"):
        for rule in ("assemble_shard", "fit_shard", "fit_table", "analyze"):
            assert any(r == rule and f"series={name}" in w for r, w in jobs), (rule, name)
    for rule in ("fit_table", "analyze"):  # a reshape arm's continuation is fitted, and compared in its report only
        assert any(r == rule and "series=rs_smoke-uniform-s1" in w for r, w in jobs) == (rule == "fit_table"), rule
    assert [w for r, w in jobs if r == "series_manifest"] == ["series=best3"]
    imported = {ln.rsplit("|", 1)[1].strip() for ln in p.stderr.splitlines() if ln.startswith("import time:")}
    assert "snakemake" in imported and "tokenscale.series" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}, "torch imported while building the DAG"
