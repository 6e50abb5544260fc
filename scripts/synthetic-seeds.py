#!/usr/bin/env python3
"""Seed pilot for the synthetic pair (issue #31 item 2): per candidate CPU setting and seed, train both arms
(uniform and L^-2) and check the paper's qualitative result, one line of JSON per (setting, seed, arm).

Per arm and seed (data seed = training seed = the seed):
  * final per-level accuracy on the balanced levels set, the level-only baseline, the accuracy on the levels'
    expressions not in the training rows (unseen) and their share;
  * per-token sigmoid fits of the validation answers from the ``fit.start: unigram`` start
    (tokenscale.fit.window) and the median τ (steps) per level;
  * the shape test from the same start, from ``dpeak`` on every checkpoint (the report's rule) and from each
    checkpoint (the verdict over starts).
Criteria (printed per seed): uniform — every level above its baseline, L1 >= 0.95, median τ rising with level;
shape — linear for uniform, power law for L^-2 (fit.start rule).

Usage: scripts/synthetic-seeds.py --setting A --seeds 0 1 2 3 4 [--out /tmp/synth-pilot]  (repository root,
project venv; --stop-after-fails 2 stops a setting after 2 failed seeds).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

import tokenscale.studies  # noqa: F401  (registers the config sections)
from tokenscale.config import RunConfig
from tokenscale.evaluation.evaluate import scored_predictions
from tokenscale.fit.api import fit_sigmoids
from tokenscale.fit.window import fit_window
from tokenscale.synthetic import arithmetic as sy
from tokenscale.synthetic.levels import answer_levels
from tokenscale.synthetic.shape import shape_test
from tokenscale.training.trainer import Trainer

SETTINGS = {  # the config default (A) and CPU-sized alternatives
    "A": dict(p=3, l_max=4, preset="dense-tiny", steps=3000, batch=64, lr=3e-3, warmup=0.05, clip=None, sched="constant"),
    "B": dict(p=3, l_max=4, preset="dense-tiny", steps=3000, batch=64, lr=1e-3, warmup=0.1, clip=0.5, sched="constant"),
    "D": dict(p=3, l_max=3, preset="dense-tiny", steps=3000, batch=64, lr=3e-3, warmup=0.05, clip=None, sched="constant"),
    "tiny": dict(p=3, l_max=2, preset="dense-tiny", steps=200, batch=16, lr=3e-3, warmup=0.05, clip=None, sched="constant"),
    "C": dict(p=3, l_max=4, preset="dense-tiny", steps=5000, batch=64, lr=2e-3, warmup=0.1, clip=1.0, sched="constant"),
}


def _data(s: dict, arm: str, seed: int, d: Path) -> dict:
    T = max(8, 2 * s["l_max"] + 3)
    entry = dict(name="pilot", p=s["p"], l_max=s["l_max"], distribution=arm, exponent=2.0, seq_len=T, seed=seed,
                 train_examples=s["steps"] * s["batch"], valid_examples=2000, level_examples=250)
    if not (d / "train_tokens.json").exists():
        sy.prepare(entry, d)
    return entry


def _train(s: dict, seed: int, T: int, data: Path, out: Path) -> tuple[RunConfig, float]:
    run = dict(name="pilot", axis="T", model={"preset": s["preset"]}, lr=s["lr"], seed=seed,
               tokens=s["steps"] * s["batch"] * T, batch_size=s["batch"],
               schedule={"kind": s["sched"], "warmup_frac": s["warmup"]},
               checkpoints={"count": 30, "first_step": 10}, in_loop_validation=False, synthetic="pilot")
    if s["clip"] is not None:
        run["grad_clip"] = s["clip"]
    rc = RunConfig.from_dict(run, T)
    t0 = time.time()
    Trainer(rc, data, out, threads=1, progress=False).train()
    return rc, time.time() - t0


def _fits(losses: np.ndarray, steps: np.ndarray, data: Path, valid_ids: np.ndarray, level: np.ndarray) -> dict:
    meta = json.loads((data / "train_tokens.json").read_text())
    T = meta["seq_len"]
    rows = np.fromfile(data / "train_tokens.bin", dtype=meta["dtype"]).reshape(-1, T + 1)
    counts = np.bincount(rows[:, -1].astype(np.int64), minlength=meta["vocab_size"])
    w = fit_window("unigram", losses, steps, counts=counts, target_ids=valid_ids)
    k = w["start_index"]
    return {"fit_start_step": float(steps[k]), "fit_start_note": w["note"], **tau_by_level(losses, steps, k, level)}


def tau_by_level(losses: np.ndarray, steps: np.ndarray, k: int, level: np.ndarray) -> dict:
    """Median τ (steps) per level of the fits from checkpoint k, over the rows the report selects
    (tokenscale.analysis.instances.selected_rows with the config's analysis selection: τ inside the window)."""
    import yaml

    from tokenscale.analysis.instances import selected_rows
    from tokenscale.analysis.options import AnalysisOptions
    from tokenscale.config import validate_config

    analysis = validate_config({"analysis": yaml.safe_load(open("config/config.yaml"))["analysis"]})["analysis"]
    f = fit_sigmoids(losses[:, k:], steps[k:], transform="log10", engine="auto", workers=1)
    tau = np.asarray(f.tau_orig)
    ok = selected_rows(f, AnalysisOptions.from_config(analysis).main)
    med = {int(L): (float(np.median(tau[ok & (level == L)])) if (ok & (level == L)).any() else None)
           for L in np.unique(level)}
    return {"median_tau": med, "n_learned": {int(L): int((ok & (level == L)).sum()) for L in np.unique(level)}}


def retau(root: Path) -> None:
    """Recompute τ and the verdicts of pilot.jsonl from the saved losses -> pilot-retau.jsonl."""
    with open(root / "pilot.jsonl") as fh, open(root / "pilot-retau.jsonl", "w") as out:
        for line in map(json.loads, fh):
            for arm, r in line["arms"].items():
                npz = root / f"{line['setting']}-{arm}-s{line['seed']}" / "valid_losses.npz"
                if npz.exists():
                    z = np.load(npz)
                    k = int(np.searchsorted(z["steps"], r["fit_start_step"]))
                    r.update(tau_by_level(z["losses"], z["steps"], k, z["level"]))
            line["criteria"] = verdict(line["arms"]["uniform"], line["arms"]["power"])
            line["pass"] = all(line["criteria"].values())
            out.write(json.dumps(line) + "\n")


def _shapes(curve: np.ndarray, steps: np.ndarray, start: float) -> dict:
    out = {"fit_start": shape_test(steps, curve, transient=("start", start), transform="none"),
           "dpeak": shape_test(steps, curve, transient="dpeak", transform="none")}
    over = {}
    for s0 in steps[:-4]:
        r = shape_test(steps, curve, transient=("start", float(s0)), transform="none")
        over[int(s0)] = [r["preferred"], round(r["delta_aic"], 2)]
    return {k: {"preferred": v["preferred"], "delta_aic": v["delta_aic"], "start": v["transient_step"]}
            for k, v in out.items()} | {"over_starts": over}


def one(setting: str, arm: str, seed: int, root: Path) -> dict:
    s = SETTINGS[setting]
    d = root / f"{setting}-{arm}-s{seed}"
    entry = _data(s, arm, seed, d / "data")
    rc, secs = _train(s, seed, entry["seq_len"], d / "data", d / "run")
    steps = np.array(rc.checkpoint_steps(), dtype=np.float64)
    ck = [d / "run" / "checkpoints" / f"step{int(x):08d}" for x in steps]
    vl = answer_levels(d / "data" / "valid_tokens.h5")
    losses = np.stack([scored_predictions(c, d / "data" / "valid_tokens.h5")[0] for c in ck], axis=1)  # (N, K)
    from tokenscale.io import read_token_set
    vt = read_token_set(d / "data" / "valid_tokens.h5", datasets=("input_ids",))
    np.savez_compressed(d / "valid_losses.npz", losses=losses, steps=steps, level=vl)
    fits = _fits(losses, steps, d / "data", vt["input_ids"][:, -1].astype(np.int64), vl)
    ll = d / "data" / "levels_tokens.h5"
    lev = answer_levels(ll)
    seen = sy.parse_seen(read_token_set(ll, datasets=("domain",))["attrs"].get(sy.SEEN_ATTR), lev.size)
    _, correct = scored_predictions(ck[-1], ll)
    ov = json.loads((d / "data" / "overlap.json").read_text())
    acc = {int(L): float(correct[lev == L].mean()) for L in np.unique(lev)}
    u = {int(L): (float(correct[(lev == L) & ~seen].mean()) if ((lev == L) & ~seen).any() else None)
         for L in np.unique(lev)}
    share = {int(L): float((~seen[lev == L]).mean()) for L in np.unique(lev)}
    return {"setting": setting, "arm": arm, "seed": seed, "train_s": round(secs, 1), "acc": acc,
            "baseline": {int(k): v for k, v in ov["level_baseline"].items()}, "acc_unseen": u,
            "unseen_share": share, **fits, "shape": _shapes(losses.mean(axis=0), steps, fits["fit_start_step"])}


def verdict(uni: dict, pw: dict) -> dict:
    acc, base, tau = ({int(k): v for k, v in uni[key].items()} for key in ("acc", "baseline", "median_tau"))
    L = sorted(acc)
    taus = [tau[x] for x in L]
    return {"above_baseline": all(acc[x] > base[x] for x in L),
            "L1_ge_0.95": acc[1] >= 0.95,
            "tau_rising": None not in taus and all(a < b for a, b in zip(taus, taus[1:])),
            "uniform_linear": uni["shape"]["fit_start"]["preferred"] == "linear",
            "power_powerlaw": pw["shape"]["fit_start"]["preferred"] == "power_law"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", required=True, choices=sorted(SETTINGS))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--stop-after-fails", type=int, default=2)
    ap.add_argument("--out", default="/tmp/synth-pilot")
    ap.add_argument("--retau", action="store_true", help="only recompute τ from the saved losses")
    a = ap.parse_args()
    root = Path(a.out)
    if a.retau:
        return retau(root)
    root.mkdir(parents=True, exist_ok=True)
    fails = 0
    for seed in a.seeds:
        res = {arm: one(a.setting, arm, seed, root) for arm in ("uniform", "power")}
        v = verdict(res["uniform"], res["power"])
        line = {"setting": a.setting, "seed": seed, "criteria": v, "pass": all(v.values()),
                "train_s": {k: r["train_s"] for k, r in res.items()}, "arms": res}
        with open(root / "pilot.jsonl", "a") as fh:
            fh.write(json.dumps(line) + "\n")
        print(json.dumps({k: line[k] for k in ("setting", "seed", "criteria", "pass", "train_s")}), flush=True)
        fails += not line["pass"]
        if fails >= a.stop_after_fails and seed != a.seeds[-1]:
            print(f"setting {a.setting}: {fails} failed seeds, stopping", flush=True)
            break


if __name__ == "__main__":
    main()
