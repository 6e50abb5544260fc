"""``tokenscale watch``: a tiny run's checkpoints appear in two batches; each is evaluated once into the watch cache,
the partial series is refitted and analysed; a restart re-evaluates nothing; the workflow's evaluate job reuses the
cached files (same bytes, same losses as a fresh evaluation, the model never run); bad input is one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli, tiny_config, write_config
from tokenscale import TokenscaleError
from tokenscale.config import load_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """A finished tiny run (trained elsewhere; the tests copy its checkpoints into a results tree one by one)."""
    root = tmp_path_factory.mktemp("watch-train")
    cfg = tiny_config()
    cfg["analysis"] = {"n_boot": 10}
    path = write_config(root / "config.yaml", cfg)
    run_cli("train", "--config", path, "--run", "tiny", "--data", data_dir, "--out", root / "tiny", "--threads", 1)
    return root / "tiny", path


def _results(tmp_path: Path, data_dir: Path) -> Path:
    res = tmp_path / "results"
    (res / "runs" / "tiny" / "checkpoints").mkdir(parents=True)
    (res / "data").symlink_to(data_dir, target_is_directory=True)
    return res


def _publish(src: Path, run: Path, names: list[str]) -> None:
    """Checkpoints appear the way the trainer publishes them: the complete folder renamed into place."""
    for n in names:
        shutil.copytree(src / "checkpoints" / n, run / "checkpoints" / (n + ".tmp"))
        (run / "checkpoints" / (n + ".tmp")).rename(run / "checkpoints" / n)


def test_watch_incremental_restart_and_evaluator_reuse(tmp_path, data_dir, trained, monkeypatch):
    from tokenscale.evaluation import stage as ev_stage
    from tokenscale.forecast.watch import watch
    from tokenscale.io import read_eval_header

    src, cfg_path = trained
    cfg = load_config(cfg_path)
    res = _results(tmp_path, data_dir)
    run = res / "runs" / "tiny"
    names = sorted(p.name for p in (src / "checkpoints").iterdir())
    assert len(names) == 6
    lines: list[str] = []
    _publish(src, run, names[:3])
    (run / "checkpoints" / "step99999999.tmp").mkdir()  # a checkpoint being written: not complete, ignored
    s1 = watch(run, cfg, once=True, nice=0, log=lines.append)
    assert s1["steps"] == [int(n[4:]) for n in names[:3]] and s1["evaluated_now"] == s1["steps"]
    assert "no forecast yet" in s1["waiting"] and "needs >= 4" in s1["waiting"]  # too few points: said, not an error
    cache = res / "evals" / "valid" / "tiny" / "watch-cache"
    assert len(list(cache.glob("step*.h5"))) == 3
    assert (res / "watch" / "tiny" / "watch.png").is_file() and (res / "watch" / "tiny" / "watch.json").is_file()

    _publish(src, run, names[3:])
    shutil.rmtree(run / "checkpoints" / "step99999999.tmp")
    s2 = watch(run, cfg, once=True, nice=0, log=lines.append)
    assert s2["evaluated_now"] == [int(n[4:]) for n in names[3:]] and len(s2["steps"]) == 6
    assert s2["seconds"]["fit"] >= 0 and len(s2["history"]) == 2 and s2["warm_start"] is False
    mtimes = {p: p.stat().st_mtime_ns for p in cache.glob("*.h5")}

    # restart: nothing re-evaluated, nothing refitted, no cached file rewritten
    monkeypatch.setattr("tokenscale.evaluation.evaluate.evaluate_checkpoint",
                        lambda *a, **k: pytest.fail("watch re-evaluated a checkpoint after a restart"))
    s3 = watch(run, cfg, once=True, nice=0, log=lines.append)
    assert s3["evaluated_now"] == [] and s3["idle"] is True
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*.h5")} == mtimes

    # the workflow's evaluate job (block folder next to the cache) copies the cached files: the model never runs
    ckpts = [str(run / "checkpoints" / n) for n in names]
    tokens = res / "data" / "valid_tokens.h5"
    out = ev_stage.run_evaluate(checkpoints=ckpts, tokens=tokens, out_dir=cache.parent / "block-000",
                                batch_size=cfg["eval"]["batch_size"], device="cpu", log=lines.append)
    assert sum("reused" in x for x in lines) == 6
    by_step = {p.name.split("-")[0]: p for p in cache.glob("*.h5")}
    for o in out:
        assert o.read_bytes() == by_step[o.stem].read_bytes()
    monkeypatch.undo()
    # ... and the losses are those of a fresh evaluation (a folder with no cache beside it)
    fresh = ev_stage.run_evaluate(checkpoints=ckpts, tokens=tokens, out_dir=tmp_path / "fresh" / "t" / "block-000",
                                  batch_size=cfg["eval"]["batch_size"], device="cpu", log=lines.append)
    for o, f in zip(out, fresh):
        assert read_eval_header(o)["loss_sha256"] == read_eval_header(f)["loss_sha256"]


def test_stale_cache_file_is_not_reused(tmp_path, data_dir, trained):
    """A cached file whose checkpoint changed (another sha256) is not found; a corrupt one is ignored."""
    from tokenscale.evaluation.stage import cached_eval_path, reuse_cached_eval
    from tokenscale.io.checksum import sha256_file

    src, _ = trained
    res = _results(tmp_path, data_dir)
    run = res / "runs" / "tiny"
    name = sorted(p.name for p in (src / "checkpoints").iterdir())[0]
    _publish(src, run, [name])
    ck = run / "checkpoints" / name
    ts = sha256_file(res / "data" / "valid_tokens.h5")
    cache = tmp_path / "cache"
    cache.mkdir()
    p = cached_eval_path(cache, ck, ts)
    p.write_bytes(b"not hdf5")
    assert reuse_cached_eval(cache, ck, ts, tmp_path / "o.h5") is None  # corrupt: ignored (evaluated instead)
    (ck / "tokenscale.json").write_text((ck / "tokenscale.json").read_text() + " ")
    assert cached_eval_path(cache, ck, ts) != p  # the checkpoint changed: another key


def test_bad_input_is_one_line(tmp_path, data_dir, trained):
    from tokenscale.forecast.watch import watch

    src, cfg_path = trained
    cfg = load_config(cfg_path)
    res = _results(tmp_path, data_dir)
    empty = res / "runs" / "other"
    empty.mkdir()
    with pytest.raises(TokenscaleError, match="not a training run folder: no trainer writes it"):
        watch(empty, cfg, once=True, nice=0)
    (empty / "checkpoints").mkdir()
    with pytest.raises(TokenscaleError, match="run 'other' .* is not in the config"):
        watch(empty, cfg, once=True, nice=0)
    run = res / "runs" / "tiny"
    shutil.copytree(src / "checkpoints" / sorted(p.name for p in (src / "checkpoints").iterdir())[0],
                    run / "checkpoints" / "step00000777")
    with pytest.raises(TokenscaleError, match="step00000777 is not a checkpoint of run tiny's config"):
        watch(run, cfg, once=True, nice=0)
    shutil.rmtree(run / "checkpoints" / "step00000777")
    other = tiny_config(lr=0.001)
    _publish(src, run, sorted(p.name for p in (src / "checkpoints").iterdir())[:1])
    with pytest.raises(TokenscaleError, match="was trained with run config .* the config gives"):
        watch(run, load_config(write_config(tmp_path / "other.yaml", other)), once=True, nice=0)
    # through the CLI: one line, exit 2
    p = run_cli("watch", empty.parent / "nothing-here", "--once", "--nice", "0", "--config", cfg_path, check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "run folder not found" in p.stderr
    # no checkpoint yet: said, not an error
    fresh = res / "runs" / "tiny"
    shutil.rmtree(fresh / "checkpoints")
    (fresh / "checkpoints").mkdir()
    lines: list[str] = []
    s = watch(fresh, cfg, once=True, nice=0, log=lines.append)
    assert s["idle"] and any("no complete checkpoint yet" in x for x in lines)
    assert json.loads(json.dumps(s)) == s
