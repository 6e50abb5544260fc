"""``tokenscale watch RUN``: follow a training run while it trains (issue #33, item 3).

Each round (``--once``: one round; otherwise every ``interval`` seconds until the run's ``train.json`` exists and
every scheduled checkpoint is processed):

1. the run's complete checkpoints (``COMPLETE`` marker present) are listed and checked against the config's
   checkpoint schedule and run hash (a checkpoint of another schedule or config is one line);
2. every checkpoint without a verified eval file is evaluated once with the project's evaluator
   (:func:`tokenscale.evaluation.evaluate.evaluate_checkpoint`, the config's eval batch size and device) into the
   watch cache ``results/evals/{tokens}/{run}/watch-cache/step<N>-<ckpt sha>-<token set sha>.h5``
   (:func:`tokenscale.evaluation.stage.cached_eval_path`): the workflow's ``evaluate_checkpoint`` job copies a
   cached file whose checksums match instead of running the model, so the final DAG reuses them;
3. when the evaluated steps changed, the partial series is assembled (one trajectory shard), its fit start chosen
   (the config's ``fit.start`` rule, :func:`tokenscale.fit.window.fit_window`) and every token refitted. Every
   token's trajectory gains a point with each checkpoint, so every token changed; the fit engine has no warm
   start (its start is its own grid, :func:`tokenscale.fit.api.grid_init`), so the refit is from scratch and its
   cost is reported (``seconds.fit``);
4. the spectrum so far (the descended tokens' learning times τ, the truncated power-law tail β of
   :func:`tokenscale.forecast.compute.prefix_tail`) and the forecast of the mean loss at the remaining scheduled
   checkpoints (:func:`tokenscale.forecast.stage.forecast_from`: learned tokens keep their sigmoids, partial ones
   are refitted, the rest learn at the tail's rate; a bootstrap band over tokens and β) are computed; too few
   points, learned tokens or no tail yet is a ``waiting`` note, not an error;
5. ``watch.json`` (state, the forecast, timings per phase) and ONE figure ``watch.png`` (loss so far with the
   forecast band, the spectrum so far) are written atomically into ``results/watch/{run}/``.

It only reads the run folder (never the trainer's lock or state), runs at a lower priority (``os.nice``), and its
state is its output files: a restart re-evaluates nothing that has a verified cached eval file and refits nothing
when the evaluated steps are those of ``watch.json``.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tokenscale import TokenscaleError, atomic
from tokenscale.config import run_configs
from tokenscale.series import VALID_TOKENS, build_workflow, discover_checkpoints

TRAINER_FILES = ("checkpoints", "LOCK", "state", "log.jsonl", "train.json")  # what a trainer writes in a run folder
STATE, FIGURE, TRAJ, FITS = "watch.json", "watch.png", "trajectories.h5", "fits.h5"
MIN_FIT_POINTS = 4  # the sigmoid has 4 parameters (tokenscale.fit.api); a forecast needs as many points


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass
class Target:
    """What one watch follows: the run folder, its config entry and schedule, where evals and outputs go."""

    run: str
    run_dir: Path
    run_hash: str
    steps: list  # the config's checkpoint steps
    tokens_per_step: int
    tokens: Path  # token set file
    cache: Path  # watch cache of eval files
    out: Path  # watch outputs
    train_data: str
    eval_opts: dict = field(default_factory=dict)
    fit_opts: dict = field(default_factory=dict)
    analysis: dict = field(default_factory=dict)


def resolve_target(run_dir, cfg: dict, *, tokens=None, out=None) -> Target:
    """The watch target of run folder ``run_dir`` under the validated config ``cfg`` (its results root is the run
    folder's ``../..`` when it sits in a ``runs/`` folder); a folder no trainer writes or a run the config lacks is
    one line."""
    d = Path(run_dir)
    if not d.is_dir():
        raise TokenscaleError(f"watch: run folder not found: {d}")
    if not any((d / f).exists() for f in TRAINER_FILES):
        raise TokenscaleError(f"watch: {d} is not a training run folder: no trainer writes it (none of "
                              f"{', '.join(TRAINER_FILES)})")
    runs = run_configs(cfg)
    name = d.resolve().name
    if name not in runs:
        raise TokenscaleError(f"watch: run {name!r} ({d}) is not in the config (its runs: {', '.join(runs)})")
    rc = runs[name]
    results = d.resolve().parent.parent if d.resolve().parent.name == "runs" else Path(cfg["results"])
    wf = build_workflow({**cfg, "results": str(results)})
    series = [s for s in wf.series.values() if s.kind == "run" and name in s.sources]
    ts_name = series[0].token_set if series else VALID_TOKENS
    ts = wf.token_sets[ts_name]
    return Target(run=name, run_dir=d, run_hash=rc.hash, steps=list(rc.checkpoint_steps()),
                  tokens_per_step=rc.batch_size * rc.seq_len, tokens=Path(tokens or ts.path),
                  cache=results / "evals" / ts_name / name / "watch-cache",
                  out=Path(out) if out else results / "watch" / name, train_data=ts.train_data,
                  eval_opts={"batch_size": cfg["eval"]["batch_size"], "device": cfg["eval"]["device"]},
                  fit_opts={k: cfg["fit"][k] for k in ("transform", "axis", "start", "device", "engine")},
                  analysis={"n_boot": cfg["analysis"]["n_boot"], "seed": cfg["analysis"]["seed"]})


def completed(t: Target) -> list[tuple[int, Path]]:
    """The run's complete checkpoints (COMPLETE marker), each checked against the config's schedule and run hash."""
    if not (t.run_dir / "checkpoints").is_dir():
        return []
    try:
        found = discover_checkpoints(t.run_dir / "checkpoints", complete_only=True)
    except TokenscaleError:  # no complete checkpoint yet
        return []
    sched = set(t.steps)
    for step, p in found:
        if step not in sched:
            raise TokenscaleError(f"watch: {p} is not a checkpoint of run {t.run}'s config (its schedule: steps "
                                  f"{t.steps[0]}..{t.steps[-1]}, {len(t.steps)} checkpoints); watch it with the "
                                  f"config it was trained with")
        meta = json.loads((p / "tokenscale.json").read_text()) if (p / "tokenscale.json").is_file() else {}
        h = meta.get("config_sha256")
        if h and h != t.run_hash:
            raise TokenscaleError(f"watch: {p} was trained with run config {h[:12]}…, the config gives "
                                  f"{t.run_hash[:12]}…; watch it with the config it was trained with")
    return found


def evaluate_new(t: Target, ckpts: list, log=_stderr) -> tuple[list[Path], list[int], list[float]]:
    """The cached eval file of every checkpoint, evaluating those without a verified one. Returns (eval files in
    step order, steps evaluated now, their seconds)."""
    from tokenscale.evaluation.stage import cached_eval_path
    from tokenscale.io import read_eval_header
    from tokenscale.io.checksum import sha256_file

    ts_sha = sha256_file(t.tokens)
    files, new, secs = [], [], []
    for step, ckpt in ckpts:
        path = cached_eval_path(t.cache, ckpt, ts_sha)
        try:
            ok = path.is_file() and read_eval_header(path)["token_set_sha256"] == ts_sha
        except TokenscaleError:
            ok = False
        if not ok:
            from tokenscale.evaluation.evaluate import evaluate_checkpoint  # torch

            t0 = time.perf_counter()
            dev = t.eval_opts["device"]
            evaluate_checkpoint(ckpt, t.tokens, path, batch_size=t.eval_opts["batch_size"],
                                device=None if dev == "auto" else dev)
            secs.append(time.perf_counter() - t0)
            new.append(step)
            log(f"watch: {t.run}: evaluated step {step} in {secs[-1]:.2f}s -> {path}")
        files.append(path)
    return files, new, secs


def _axis(t: Target, steps) -> np.ndarray:
    a = np.asarray(steps, dtype=np.float64)
    return a * t.tokens_per_step if t.fit_opts["axis"] == "tokens" else a


def refit(t: Target, files: list[Path]) -> dict:
    """Assemble the evaluated checkpoints into one trajectory shard, choose the fit start and refit every token.
    Returns the partial series {losses, a, x, transform, fit, start_index, seconds: {assemble, fit}}."""
    from tokenscale.fit.api import fit_sigmoids  # torch
    from tokenscale.fit.window import fit_window, target_counts
    from tokenscale.io import read_trajectories, write_trajectory_shard
    from tokenscale.io.fits import save_fits

    t0 = time.perf_counter()
    write_trajectory_shard(files, t.tokens, t.out / TRAJ, attrs={"run": t.run, "config_sha256": t.run_hash})
    losses, axes, meta = read_trajectories(t.out / TRAJ)
    a = np.asarray(axes[t.fit_opts["axis"]], dtype=np.float64)
    counts = None
    if t.fit_opts["start"] == "unigram" and t.train_data and Path(t.train_data).is_dir():
        from tokenscale.data import TrainTokens

        counts = target_counts(TrainTokens(t.train_data))
    k0 = fit_window(t.fit_opts["start"], losses, a, counts=counts,
                    target_ids=meta["token_id"] if counts is not None else None)["start_index"]
    t1 = time.perf_counter()
    base = {"a": a[k0:], "transform": t.fit_opts["transform"], "start_index": int(k0), "a_all": a,
            "mean_all": np.asarray(losses, dtype=np.float64).mean(0)}
    if a.size - k0 < MIN_FIT_POINTS:
        return {**base, "fit": None, "seconds": {"assemble": t1 - t0, "fit": 0.0}}
    dev = t.fit_opts["device"]
    if dev == "auto":
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
    f = fit_sigmoids(losses[:, k0:], a[k0:], transform=t.fit_opts["transform"], engine=t.fit_opts["engine"],
                     device=dev)
    t2 = time.perf_counter()
    save_fits(t.out / FITS, f, attrs={"trajectories": str(t.out / TRAJ), "fit_start_index": int(k0)},
              token_index=meta["token_index"])
    cols = ("tau", "lam", "delta", "post", "r2", "status")
    return {**base, "losses": np.asarray(losses[:, k0:], dtype=np.float64), "x": np.asarray(f.axis, float),
            "fit": {c: np.asarray(getattr(f, c)) for c in cols}, "seconds": {"assemble": t1 - t0, "fit": t2 - t1}}


def analyse(t: Target, s: dict, done_steps: list[int]) -> dict:
    """The spectrum so far and the forecast at the remaining scheduled checkpoints (a ``waiting`` note instead when
    there are too few points, learned tokens or no tail yet)."""
    from tokenscale.forecast.compute import MIN_DELTA, MIN_R2, classify, cut_points, prefix_tail
    from tokenscale.forecast.stage import forecast_from

    if s["fit"] is None:
        n = s["a"].size
        return {"spectrum": {"tau": [], "n_descended": 0, "n_tokens": 0, "learned": 0, "partial": 0},
                "waiting": f"no forecast yet: {n} checkpoints from the fit start, a fit needs >= {MIN_FIT_POINTS} "
                           f"(keeps watching)"}
    x, fit, tr = s["x"], s["fit"], s["transform"]
    learned, partial, _ = classify(fit, x[-1])
    with np.errstate(invalid="ignore"):
        desc = (fit["status"] != 2) & (fit["delta"] >= MIN_DELTA) & (fit["r2"] >= MIN_R2) & (fit["tau"] <= x[-1])
    tau = fit["tau"][desc]
    out: dict = {"spectrum": {"tau": tau.tolist(), "n_descended": int(desc.sum()), "n_tokens": int(desc.size),
                              "learned": int(learned.sum()), "partial": int(partial.sum())}}
    if x.size >= 2:
        tail = prefix_tail(fit["tau"], desc, x, tr, n_boot=t.analysis["n_boot"], seed=t.analysis["seed"])
        out["spectrum"].update(beta=tail["beta"], beta_ci=list(tail["beta_ci"]), note=tail.get("note", ""))
    rest = [st for st in t.steps if st > done_steps[-1]]
    if not rest:
        out["waiting"] = "the run has reached its last checkpoint: nothing left to forecast"
        return out
    at = _axis(t, rest)
    xt = np.log10(at) if tr == "log10" else at
    try:
        cut_points(x, None, f"{t.run} ({x.size} points from the fit start)")
        out["forecast"] = forecast_from(s, x.size, xt, fit, series=t.run, n_boot=t.analysis["n_boot"],
                                        seed=t.analysis["seed"])
    except TokenscaleError as e:
        out["waiting"] = f"no forecast yet: {e}"
    return out


def watch_figure(t: Target, s: dict, r: dict, path: Path) -> str:
    """ONE figure: the mean loss so far with the forecast band to the run's end (left), the spectrum so far: the
    descended tokens' learning times (right)."""
    from matplotlib.figure import Figure

    from tokenscale.plotting import save_figure

    fig = Figure(figsize=(10, 4))
    ax, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ax.plot(s["a_all"], s["mean_all"], "k.-", lw=1, label="mean loss so far")
    fc = r.get("forecast")
    if fc is not None:
        ax.fill_between(fc["axis"], fc["lo"], fc["hi"], color="C0", alpha=0.3, lw=0)
        ax.plot(fc["axis"], fc["forecast"], "C0-", label="spectrum forecast (95 % band)")
        ax.plot(fc["axis"], fc["power_law"], "C3--", label="power law")
    else:
        ax.text(0.5, 0.9, r.get("waiting", ""), transform=ax.transAxes, ha="center", fontsize=7, wrap=True)
    ax.set_xscale("log")
    ax.set_xlabel(t.fit_opts["axis"])
    ax.set_ylabel("mean validation loss (nats)")
    ax.legend(fontsize=7)
    sp = r["spectrum"]
    tau = np.asarray(sp["tau"], float)
    if tau.size:
        ax2.hist(10.0**tau if s["transform"] == "log10" else tau,
                 bins=np.logspace(np.log10(s["a"][0]), np.log10(s["a"][-1]), 25) if s["transform"] == "log10"
                 else 25, color="C0")
    ax2.set_xscale("log")
    ax2.set_xlabel(f"learning time τ ({t.fit_opts['axis']})")
    ax2.set_ylabel("tokens")
    beta = sp.get("beta", math.nan)
    ax2.set_title(f"spectrum so far: {sp['n_descended']} of {sp['n_tokens']} tokens descended, "
                  f"tail β = {beta:.2f}" if math.isfinite(beta) else f"spectrum so far: {sp['n_descended']} of "
                  f"{sp['n_tokens']} tokens descended (no tail fit yet)", fontsize=8)
    fig.suptitle(f"{t.run}: {len(s['a_all'])} of {len(t.steps)} checkpoints", fontsize=9)
    return save_figure(fig, path.parent, path.stem)


def _read_state(t: Target) -> dict:
    p = t.out / STATE
    try:
        return json.loads(p.read_text()) if p.is_file() else {}
    except ValueError:
        return {}  # a state file is written atomically; an unreadable one is redone


def update(t: Target, log=_stderr) -> dict:
    """One round: evaluate the new checkpoints, and when the evaluated steps changed, refit, analyse, forecast and
    redraw. Returns the state (``watch.json``)."""
    from tokenscale.analysis.numerics import jsonable

    t0 = time.perf_counter()
    ckpts = completed(t)
    files, new, eval_s = evaluate_new(t, ckpts, log)
    steps = [s for s, _ in ckpts]
    state = _read_state(t)
    if not steps or state.get("steps") == steps:
        if not steps:
            log(f"watch: {t.run}: no complete checkpoint yet in {t.run_dir / 'checkpoints'} (keeps watching)")
        state.update(evaluated_now=new, idle=True)
        return state
    s = refit(t, files)
    t1 = time.perf_counter()
    r = analyse(t, s, steps)
    t2 = time.perf_counter()
    watch_figure(t, s, r, t.out / FIGURE)
    t3 = time.perf_counter()
    done = (ckpts[-1][1] / "COMPLETE").stat().st_mtime
    seconds = {"evaluate": float(sum(eval_s)), "evaluate_per_checkpoint": eval_s, **s["seconds"],
               "analysis": t2 - t1, "figure": t3 - t2, "round": t3 - t0, "latency": time.time() - done}
    hist = state.get("history", []) + [{"steps": len(steps), "new": new, "seconds": seconds}]
    state = {"run": t.run, "steps": steps, "scheduled": t.steps, "evaluated_now": new, "idle": False,
             "fit_start_index": s["start_index"], "warm_start": False, "seconds": seconds, "history": hist, **r,
             "cache": str(t.cache), "figure": str(t.out / FIGURE),
             "note": "the fit engine has no warm start: every token is refitted from its grid start"}
    atomic.write_json(t.out / STATE, jsonable(state))
    fc = state.get("forecast")
    what = (f"loss {fc['forecast'][-1]:.4f} [{fc['lo'][-1]:.4f}, {fc['hi'][-1]:.4f}] at step {t.steps[-1]}"
            if fc else state.get("waiting", ""))
    log(f"watch: {t.run}: {len(steps)}/{len(t.steps)} checkpoints ({len(new)} new) in {seconds['round']:.1f}s "
        f"(evaluate {seconds['evaluate']:.1f}s, fit {seconds['fit']:.1f}s, analysis {seconds['analysis']:.1f}s, "
        f"figure {seconds['figure']:.1f}s): {what}")
    return state


def run_done(t: Target, state: dict) -> bool:
    """The trainer wrote train.json and every scheduled checkpoint is processed."""
    return (t.run_dir / "train.json").is_file() and state.get("steps") == t.steps


def watch(run_dir, cfg: dict, *, once: bool = False, interval: float = 30.0, nice: int = 10, tokens=None, out=None,
          log=_stderr) -> dict:
    """Watch run folder ``run_dir`` (module docstring): one round with ``once``, else a round every ``interval``
    seconds until the run is done. Returns the last state."""
    t = resolve_target(run_dir, cfg, tokens=tokens, out=out)
    if nice:
        os.nice(nice)  # never take the trainer's CPU
    if not Path(t.tokens).is_file():
        raise TokenscaleError(f"watch: token set {t.tokens} not found (run the workflow's data rules first, or "
                              f"give --tokens)")
    while True:
        state = update(t, log)
        if once or run_done(t, state):
            return state
        time.sleep(interval)
