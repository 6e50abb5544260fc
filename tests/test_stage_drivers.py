"""Stage drivers that moved out of the CLI, each where it landed: the frontier stage
(tokenscale.frontiers.stage), the fit window file read by the fit stage (tokenscale.fit.window /
tokenscale.fit.stage), the synthetic levels (tokenscale.synthetic.levels) and the evaluate block folder
(tokenscale.evaluation.stage)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tokenscale import TokenscaleError, series
from tokenscale.data import write_token_set
from tokenscale.evaluation.stage import block_outputs, checkpoint_step
from tokenscale.fit.window import read_window_start
from tokenscale.frontiers import compute as frontier
from tokenscale.frontiers import stage as frontier_stage
from tokenscale.io import EVAL_MANIFEST
from tokenscale.synthetic.levels import answer_levels


# ------------------------------------------------------------------------------------------------- frontier
def _csv(path, steps, loss):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("step,tokens_seen,val_loss\n" + "".join(f"{s},{s * 1000},{v}\n" for s, v in zip(steps, loss)))
    return str(path)


def _frontier(tmp_path):
    groups = {"m-a": 1e6, "m-b": 3e6, "m-c": 2e6, "m-c2": 2e6}
    runs = sorted(groups)
    sources = {r: series.Source(r, ((10, "a"), (20, "b"))) for r in runs}
    options = frontier.frontier_options("M", groups)
    s = series.Series("f", "frontier", "valid", None, tuple(runs), resolver="tokenscale.frontiers.compute:resolve",
                      axis=frontier.AXES["M"][0], options=options)
    finals = {"m-a": 3.0, "m-b": 2.0, "m-c": 2.6, "m-c2": 2.5}
    curves = [_csv(tmp_path / r / "val_loss.csv", [10, 20], [4.0, v]) for r, v in finals.items()]
    members, extra = series.resolve_manifest(s, sources, curves)
    manifest = series.write_manifest(tmp_path / "manifest.json", s, members, extra)
    trunk = _csv(tmp_path / "trunk" / "val_loss.csv", [5, 10], [5.0, 4.5])
    (tmp_path / "summary.json").write_text(json.dumps({"alpha_fit": 0.3}))
    return options, manifest, curves + [trunk], extra


def test_frontier_stage_splits_runs_from_the_trunk_and_checks_the_mean_loss(tmp_path, monkeypatch):
    options, manifest, curves, extra = _frontier(tmp_path)
    mean = np.array([r["val_loss"] for r in extra["table"]])  # what the trajectories of the members average to
    monkeypatch.setattr(frontier_stage, "read_run_trajectories", lambda paths: (np.tile(mean, (3, 1)), {}, {}))
    drawn = {}

    def figures(runs, trunks, table, axis_values, summary, axis, outdir, *, title):
        drawn.update(runs=sorted(c.run for c in runs), trunks=[c.run for c in trunks], axis=axis, title=title,
                     summary=summary, axis_values=axis_values)
        return {"a": "a.png", "b": "b.png"}

    monkeypatch.setattr(frontier_stage, "frontier_figures", figures)
    kw = dict(series="f", options=options, manifest=manifest, curves=curves, trajectories=["t.h5"],
              summary=tmp_path / "summary.json", table=tmp_path / "frontier.csv", figures=tmp_path / "fig")
    r = frontier_stage.run_frontier(**kw)
    assert r["n_curves"] == 4 and len(r["figures"]) == 2
    assert [row["run"] for row in r["table"]] == [row["run"] for row in extra["table"]]
    assert drawn == {"runs": ["m-a", "m-b", "m-c", "m-c2"], "trunks": ["trunk"], "axis": "M", "title": "f",
                     "summary": {"alpha_fit": 0.3}, "axis_values": [1e6, 2e6, 3e6]}
    assert [row["run"] for row in frontier.read_frontier_csv(tmp_path / "frontier.csv")] == ["m-a", "m-c2", "m-b"]
    monkeypatch.setattr(frontier_stage, "read_run_trajectories", lambda paths: (np.tile(mean + 0.1, (3, 1)), {}, {}))
    with pytest.raises(TokenscaleError):
        frontier_stage.run_frontier(**kw)
    plain = series.write_manifest(tmp_path / "plain.json", series.Series("p", "t", "valid", None, ("m-a",)),
                                  [("m-a", 20)], {})
    with pytest.raises(TokenscaleError, match="not a frontier manifest"):
        frontier_stage.run_frontier(**{**kw, "manifest": plain})


# ------------------------------------------------------------------------------------------------ fit window
def test_the_fit_window_file_gives_the_start_on_its_own_axis_only(tmp_path):
    axis = np.array([10.0, 20.0, 40.0, 80.0])
    (tmp_path / "w.json").write_text(json.dumps({"start_index": 2, "axis": axis.tolist()}))
    assert read_window_start(tmp_path / "w.json", axis) == 2
    with pytest.raises(TokenscaleError, match="fit window of another axis"):
        read_window_start(tmp_path / "w.json", axis[:3])
    with pytest.raises(TokenscaleError, match="fit window of another axis"):
        read_window_start(tmp_path / "w.json", axis * 2)


# ------------------------------------------------------------------------------------------ synthetic levels
def test_answer_levels_are_the_domain_plus_one_at_the_last_position(tmp_path):
    S, T = 4, 3
    domain = np.zeros((S, T), np.int16)
    domain[:, -1] = [0, 2, 1, 2]
    write_token_set(tmp_path / "levels.h5", np.zeros((S, T + 1), np.int64), np.zeros((S, T), np.int64),
                    np.zeros((S, T), np.int64), domain, kind="synthetic-levels", domain_names=["L1", "L2", "L3"])
    np.testing.assert_array_equal(answer_levels(tmp_path / "levels.h5"), [1, 3, 2, 3])


# -------------------------------------------------------------------------------------- evaluate block folder
def test_block_outputs_name_one_file_per_step_and_refuse_strangers(tmp_path):
    block = tmp_path / "block"
    outs = block_outputs(["run/step200", "run/step100"], block)
    assert [o.name for o in outs] == ["step00000200.h5", "step00000100.h5"] and block.is_dir()
    (block / EVAL_MANIFEST).write_text("{}")
    block_outputs(["run/step100"], block)
    assert not (block / EVAL_MANIFEST).exists()  # incomplete until the new manifest is written
    with pytest.raises(TokenscaleError, match="have the same step"):
        block_outputs(["a/step100", "b/step100"], tmp_path / "other")
    (block / "step00000300.h5").write_text("")
    with pytest.raises(TokenscaleError, match="not a checkpoint of this evaluate job"):
        block_outputs(["run/step100"], block)
    with pytest.raises(TokenscaleError, match="cannot tell the step"):
        checkpoint_step("final")
