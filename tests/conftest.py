"""Shared fixtures: a tiny prepared data folder (built once per session) and helpers to run the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import tokenscale.studies  # noqa: F401  (the entry points register the studies; so do the tests)

REPO = Path(__file__).resolve().parents[1]

TINY_DATA = {
    "builtin": True,
    "builtin_max_chars": 60000,
    "vocab_size": 512,
    "seq_len": 16,
    "valid_sequences": 16,
}


def tiny_config(**run_overrides) -> dict:
    run = {"name": "tiny", "axis": "T", "model": {"preset": "moe-nano"}, "tokens": 8 * 16 * 40, "batch_size": 8,
           "lr": 0.005, "checkpoints": {"count": 6}, "state_every": 5}
    run.update(run_overrides)
    return {"threads": 1, "data": dict(TINY_DATA), "runs": [run]}


def write_config(path: Path, cfg: dict) -> Path:
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args, cwd=None, env=None, check=True, timeout=600) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.update(env or {})
    e.setdefault("OMP_NUM_THREADS", "1")
    p = subprocess.run([sys.executable, "-m", "tokenscale.cli", *map(str, args)], cwd=cwd, env=e, capture_output=True,
                       text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"tokenscale {' '.join(map(str, args))} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """results/data for the tiny config, prepared once."""
    root = tmp_path_factory.mktemp("data")
    cfg = write_config(root / "config.yaml", tiny_config())
    run_cli("prepare-data", "--config", cfg, "--out", root / "data")
    return root / "data"


def read_losses(run_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (run_dir / "log.jsonl").read_text().splitlines() if x.strip()]
