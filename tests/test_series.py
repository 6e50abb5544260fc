"""tokenscale.series: the workflow's unit downstream of training, its builders, and a DAG built without torch."""

from __future__ import annotations

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
    cfg = _cfg(tmp_path)
    (s,) = series.build_series(cfg).values()
    assert s.name == "tiny" and s.kind == "run" and s.steps == sorted(s.steps) and len(s.steps) >= 4
    assert s.checkpoint(s.steps[-1]) == f"{tmp_path}/r/runs/tiny/checkpoints/step{s.steps[-1]:08d}"
    assert s.token_set == f"{tmp_path}/r/data/valid_tokens.h5" and s.ready == (f"{tmp_path}/r/runs/tiny/train.json",)
    with pytest.raises(TokenscaleError, match=r"series tiny: no checkpoint at step 999999"):
        s.checkpoint(999999)


def test_external_series_discovers_steps_and_names_clash(tmp_path):
    folder = tmp_path / "pythia"
    for name in ("step1000", "step00000010", "checkpoint-100", "notes"):
        (folder / name).mkdir(parents=True)
    cfg = _cfg(tmp_path, external=[{"name": "ext", "path": str(folder)}])
    ext = series.build_series(cfg)["ext"]
    assert ext.kind == "external" and ext.steps == [10, 100, 1000]
    assert ext.checkpoint(100) == str(folder / "checkpoint-100") and ext.ready == ()
    clash = _cfg(tmp_path, external=[{"name": "tiny", "path": str(folder)}])
    with pytest.raises(TokenscaleError, match=r"config: series name 'tiny' is used by both run and external"):
        series.build_series(clash)


def test_a_new_kind_is_one_builder(tmp_path, monkeypatch):
    def toy(cfg):
        yield series.Series("toy1", "toy", "tokens.h5", ((5, "a/step5"), (50, "a/step50")))

    monkeypatch.setitem(series.BUILDERS, "toy", toy)
    got = series.build_series(_cfg(tmp_path))
    assert set(got) == {"tiny", "toy1"} and got["toy1"].steps == [5, 50]


def _dry_run(*args, cwd=REPO) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    cmd = [sys.executable, "-X", "importtime", "-m", "snakemake", "-n", "--cores", "1", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def test_toy_kind_gets_every_downstream_rule_and_no_torch_is_imported(tmp_path):
    """A kind registered in BUILDERS (tests/data/toy_series/Snakefile) is evaluated, fitted and analysed by the
    same rules; building the DAG imports no torch (Snakemake starts fast, --lint too)."""
    p = _dry_run("-s", "tests/data/toy_series/Snakefile", "-d", str(REPO), "--configfile", "config/smoke.yaml",
                 "--config", f"results={tmp_path}", "--", "all")
    assert p.returncode == 0, p.stderr[-3000:]
    for rule in ("evaluate_checkpoint", "assemble_shard", "fit_shard", "fit_table", "analyze"):
        assert re.search(rf"rule {rule}:\n(?:    .*\n)*?    wildcards: .*series=toy1", p.stdout), rule
    imported = {ln.rsplit("|", 1)[1].strip() for ln in p.stderr.splitlines() if ln.startswith("import time:")}
    assert "snakemake" in imported and "tokenscale.series" in imported
    assert not {m for m in imported if m == "torch" or m.startswith("torch.")}, "torch imported while building the DAG"
