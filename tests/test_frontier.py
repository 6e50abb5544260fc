"""Frontiers of D / M sweeps: envelope and frontier points on planted curves (known answers), the resolver that
picks a frontier series' members, the build-time checks and the shard axis of a frontier series."""

import json

import numpy as np
import pytest

from tokenscale import TokenscaleError, series

from tokenscale.frontiers import compute as frontier
from tokenscale.config import validate_config
from tokenscale.frontiers.compute import Curve, envelope, frontier_points


def _curve(run, group, steps, loss, per_step=1000):
    steps = np.asarray(steps)
    return Curve(run, float(group), steps, steps * per_step, np.asarray(loss, float))


def test_envelope_is_the_running_minimum_over_sorted_points():
    # two crossing curves: A better early, B better late; the envelope follows A then B (known answer)
    x = np.array([1, 2, 4, 8, 1.5, 3, 6, 12], float)
    y = np.array([5.0, 4.0, 3.5, 3.4, 6.0, 3.8, 3.0, 2.5])
    ex, ey = envelope(x, y)
    assert ex.tolist() == [1, 1.5, 2, 3, 4, 6, 8, 12]
    assert ey.tolist() == [5.0, 5.0, 4.0, 3.8, 3.5, 3.0, 3.0, 2.5]
    # ties in x keep the lower loss
    assert envelope(np.array([1.0, 1.0]), np.array([2.0, 1.0]))[1].tolist() == [1.0]
    with pytest.raises(TokenscaleError, match="equal in size"):
        envelope(np.array([1.0]), np.array([1.0, 2.0]))


def test_frontier_points_pick_the_best_final_checkpoint_per_group():
    """Planted sweep: 3 budgets, 2 learning rates on the first two; the best *final* loss wins, not the lowest loss
    anywhere on the curve, and a group that does not improve on a smaller one is flagged."""
    curves = [
        _curve("d1-lrA", 1e6, [10, 20], [4.0, 3.0]),
        _curve("d1-lrB", 1e6, [10, 20], [2.5, 3.2]),  # lower mid-run, worse at the end
        _curve("d2-lrA", 2e6, [20, 40], [3.0, 2.6]),
        _curve("d2-lrB", 2e6, [20, 40], [3.0, 2.4]),
        _curve("d4-lrA", 4e6, [40, 80], [2.6, 2.5]),  # above d2's best: not monotone
    ]
    pts = frontier_points(curves)
    assert [(p.run, p.step, p.val_loss, p.n_candidates) for p in pts] == [
        ("d1-lrA", 20, 3.0, 2), ("d2-lrB", 40, 2.4, 2), ("d4-lrA", 80, 2.5, 1)]
    assert [p.monotone for p in pts] == [True, True, False]
    assert pts[0].runner_up_loss == 3.2 and np.isnan(pts[2].runner_up_loss)
    assert pts[1].tokens_seen == 40_000


def _write_csv(path, steps, loss, per_step=1000):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("step,tokens_seen,val_loss\n" + "".join(f"{s},{s * per_step},{v}\n" for s, v in zip(steps, loss)))
    return str(path)


def _frontier_series(tmp_path, axis, groups):
    runs = sorted(groups)
    sources = {r: series.Source(r, ((10, "a"), (20, "b"))) for r in runs}
    s = series.Series("f", "frontier", "valid", None, tuple(runs), resolver="tokenscale.frontiers.compute:resolve",
                      axis=frontier.AXES[axis][0], options=frontier.frontier_options(axis, groups))
    return s, sources


def test_resolver_gives_members_axis_and_table(tmp_path):
    groups = {"m-a": 1e6, "m-b": 3e6, "m-c": 2e6, "m-c2": 2e6}
    s, sources = _frontier_series(tmp_path, "M", groups)
    finals = {"m-a": 3.0, "m-b": 2.0, "m-c": 2.6, "m-c2": 2.5}
    inputs = [_write_csv(tmp_path / r / "val_loss.csv", [10, 20], [4.0, v]) for r, v in finals.items()]
    members, extra = series.resolve_manifest(s, sources, inputs)
    assert members == [("m-a", 20), ("m-c2", 20), ("m-b", 20)]
    assert extra["axis"] == {"name": "flops", "values": [1e6, 2e6, 3e6]}
    assert [r["val_loss"] for r in extra["table"]] == [3.0, 2.5, 2.0]
    out = series.write_manifest(tmp_path / "manifest.json", s, members, extra)
    assert series.read_manifest(out) == members
    assert series.read_manifest_data(out)["table"][1]["run"] == "m-c2"
    # the D axis is fitted on tokens seen at the final checkpoints (the checkpoints' own values)
    sd, _ = _frontier_series(tmp_path, "D", {"m-a": 1e6, "m-b": 3e6, "m-c": 2e6, "m-c2": 2e6})
    for r, per_step in (("m-a", 1000), ("m-b", 3000), ("m-c", 2000), ("m-c2", 2000)):
        _write_csv(tmp_path / r / "val_loss.csv", [10, 20], [4.0, finals[r]], per_step)
    _, extra = series.resolve_manifest(sd, sources, inputs)
    assert extra["axis"] == {"name": "tokens", "values": [20_000.0, 40_000.0, 60_000.0]}


def test_resolver_bad_inputs(tmp_path):
    groups = {"a": 1.0, "b": 2.0}
    s, sources = _frontier_series(tmp_path, "M", groups)
    inputs = [_write_csv(tmp_path / "a" / "val_loss.csv", [10, 20], [3.0, 2.0])]
    with pytest.raises(TokenscaleError, match="no val_loss.csv for run 'b'"):
        series.resolve_manifest(s, sources, inputs)
    inputs.append(_write_csv(tmp_path / "b" / "val_loss.csv", [10], [3.0]))
    with pytest.raises(TokenscaleError, match="ends at step 10, not at its final checkpoint 20"):
        series.resolve_manifest(s, sources, inputs)
    sd, _ = _frontier_series(tmp_path, "D", groups)  # two budgets, same tokens seen at the end
    _write_csv(tmp_path / "b" / "val_loss.csv", [10, 20], [3.0, 2.5])
    with pytest.raises(TokenscaleError, match="not strictly increasing"):
        series.resolve_manifest(sd, sources, inputs)
    with pytest.raises(TokenscaleError, match="axis must be one of"):
        frontier.frontier_options("T", groups)
    (tmp_path / "bad.csv").write_text("step,val_loss\n1,2\n")
    with pytest.raises(TokenscaleError, match="cannot read a validation-loss curve"):
        frontier.read_curve(tmp_path / "bad.csv", "x", 1.0)


def test_mean_loss_check_names_the_point():
    table = [{"run": "a", "step": 5, "val_loss": 2.0}, {"run": "b", "step": 9, "val_loss": 1.5}]
    frontier.check_mean_loss(table, np.array([2.00005, 1.5]), "x")
    with pytest.raises(TokenscaleError, match="run b step 9: mean per-token loss 1.600000 differs"):
        frontier.check_mean_loss(table, np.array([2.0, 1.6]), "x")


D_SWEEP = {"name": "d", "axis": "D", "base": {"model": {"preset": "moe-nano"}, "schedule": {"kind": "wsd"}},
           "grid": [{"tokens": [8000, 16000, 32000, 64000], "lr": [0.005]}, {"tokens": [8000], "lr": [0.01]}]}


def test_workflow_has_one_deferred_frontier_series_per_d_or_m_sweep():
    cfg = validate_config({"data": {"seq_len": 32}, "sweeps": [
        D_SWEEP, {"name": "m", "axis": "M", "base": {"tokens": 16384},
                  "grid": {"model.preset": ["moe-nano", "moe-tiny", "dense-nano", "dense-tiny"]}}]})
    wf = series.build_workflow(cfg)
    assert {n: s.kind for n, s in wf.series.items()} == {"t_moe": "run", "d": "frontier", "m": "frontier"}
    d, m = wf.series["d"], wf.series["m"]
    assert d.deferred and len(d.sources) == 5 and d.axis == "tokens" and m.axis == "flops"
    assert all(p.endswith("/val_loss.csv") for p in d.inputs)
    groups = json.loads(m.options)["groups"]
    assert len(set(groups.values())) == 4 and min(groups.values()) > 0
    # sweep runs are sources of the frontier, not series of their own
    assert "d-tok8k-lr5e-3" in wf.sources and "d-tok8k-lr5e-3" not in wf.series


def test_a_frontier_needs_four_settings():
    cfg = validate_config({"data": {"seq_len": 32}, "sweeps": [{**D_SWEEP, "grid": {"tokens": [8000, 16000, 32000]}}]})
    with pytest.raises(TokenscaleError, match="sweep d: a frontier needs at least 4 distinct training tokens values"):
        series.build_workflow(cfg)
