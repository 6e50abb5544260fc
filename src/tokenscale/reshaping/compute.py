"""Reshaping the training distribution with learning times (paper §6, Fig. 6), as an A/B experiment.

Given a reference run and a target window ``[s_a, s_b]`` of its steps:

1. **Candidates.** ``S`` training samples drawn uniformly without replacement (seeded) form a token set (each
   row a training sequence, ``sample_index`` its index); it is evaluated at the reference's checkpoints and fitted
   like any series, giving τ for each candidate token (fit axis x, e.g. log10 step). The candidates are the arms'
   pool: with ``max_draws_per_sample`` the config refuses a pool on which an arm's n = (s_b − s_a)·batch i.i.d.
   draws would repeat, E[n / #distinct] = n / Σ_i (1 − (1 − p_i)^n) above the limit for either arm
   (:func:`tokenscale.reshaping.spec.draws_per_sample`; the reshaped arm's skewed p binds, so its pool is sized
   for its weights).
2. **Score.** For sample s with tokens t = 1..T: ``score_s = (1/T) Σ_t 1[token selected ∧ x_a ≤ τ_st ≤ x_b]``,
   x_a, x_b the window on the fit axis; "selected" is the spectrum's token selection (``analysis.selection``), so
   noise rows never count.
3. **Buckets.** Samples ranked by score (ties in a seeded random order) and cut into B equal-count buckets
   (bucket 0 = lowest scores; sizes differ by at most one). Bucket b gets weight w_b (a list, or a linear ramp
   from lo to hi); a sample's sampling probability is w_b / Σ_s w_b(s) (the reshaped arm) or 1/S (the uniform
   arm), zero outside the pool.
4. **Arms.** Every arm continues the reference from its complete trainer state at s_a (model, optimizer,
   scheduler, data position) to s_b: ``reshaped`` and ``uniform`` once per data-order seed, ``original`` (the
   reference's own sampler; bit-identical to the reference) once.
5. **Metrics** on the validation loss L(s) of each arm at its checkpoints s_1 < … < s_K = s_b over the window
   (s_1 = s_a + 1, one step after the shared start): drop D = L(s_1) − L(s_b) of the arm's mean curve over
   seeds; acceleration ``D_reshaped / D_control − 1``; the steps the control needs to reach the reshaped arm's
   final loss, over s_b − s_1 (linear interpolation of the control's mean curve; censored, "> 1", when it never
   gets there); the final loss of each arm (its floor). D of an arm is the mean of its seeds' drops d_j, so the
   acceleration's CI is Fieller's interval for the ratio of two independent means, ρ = mean(d^r)/mean(d^c):
   the set of ρ with (mean(d^r) − ρ·mean(d^c))² ≤ t²·(v_r + ρ²·v_c), v = s²/n per arm, t at the
   Welch–Satterthwaite degrees of freedom; unbounded (reported as null) when the control's drop is not
   significantly above zero; a single-seed control (``original``) contributes no variance (it cannot be
   estimated from one run). Drops and floors get Student-t intervals over seeds; steps-to-reach (censored)
   a percentile bootstrap over seeds, resampled independently per arm. Memorising is shown per arm by the
   train−validation gap: mean training loss over the window's last 10% minus validation loss at s_b, per seed
   (Student-t over seeds), beside the pool's size, Kish size 1/Σp_i² and draws per distinct drawn sample.
6. **Mechanism** (beyond the paper). Each arm's continuation series (the reference's checkpoints up to s_a, then
   the arm's) is evaluated on the validation tokens and fitted; τ_i^(arm) is token i's learning time there (the
   analysis selection; NaN when not selected). Per arm, ``f_in`` = the fraction of validation tokens with
   x_a ≤ τ ≤ x_b (mean over seeds). Per pair of a reshaped seed and a control seed (matched by seed index; every
   reshaped seed with the single ``original``): ``shift = mean_i (τ_i^r − τ_i^c)`` over the tokens selected in
   both arms whose mean (τ_i^r + τ_i^c)/2 lies in the window (conditioning on the pair's mean, not on one arm,
   so exchangeable arms give shift 0 without regression to the mean); negative = the reshaped arm learns them
   earlier. CIs: Student-t over seeds (pairs), Welch for differences of fractions.

This module is torch-free (numpy, h5py for the token set); the workflow calls it through ``tokenscale reshape-*``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np

from tokenscale import TokenscaleError, atomic
from tokenscale.analysis.instances import selected_tau
from tokenscale.analysis.numerics import to_orig, to_x
from tokenscale.analysis.options import AnalysisOptions
from tokenscale.data import TrainTokens, write_token_set
from tokenscale.io import read_run_trajectories, read_token_set
from tokenscale.io.fits import load_fits
from tokenscale.io.valloss import read_curve
from tokenscale.reshaping.spec import (bucket_weights, candidate_first_step, candidate_steps, draws_per_sample,
                                       effective_size)
from tokenscale.training.sampler import WeightedSampler

__all__ = ["candidate_first_step", "candidate_steps", "bucket_weights", "score_samples", "assign_buckets",
           "sample_weights", "pool_weights", "build_candidate_set", "write_scores", "read_scores", "bucket_curves", "arm_metrics",
           "spectrum_shift", "SCORES_FIELDS"]

SCORES_FIELDS = ("sample_index", "score", "bucket", "weight", "n_in_window")


# ----------------------------------------------------------------------------- scores and buckets
def score_samples(tau: np.ndarray, valid: np.ndarray, seq_len: int, window_x: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """``(score (S,), n_in_window (S,))``: the fraction (count) of each sample's T tokens that are selected
    (``valid``) with τ inside ``window_x`` (inclusive); ``tau``/``valid`` are (S·T,) row-major over (S, T)."""
    tau, valid = np.asarray(tau, dtype=np.float64).reshape(-1), np.asarray(valid, dtype=bool).reshape(-1)
    if tau.shape != valid.shape or tau.size % seq_len:
        raise TokenscaleError(f"reshape: {tau.size} tau values / {valid.size} flags do not form rows of {seq_len}")
    lo, hi = window_x
    with np.errstate(invalid="ignore"):
        inside = valid & (tau >= lo) & (tau <= hi)  # (S·T,)
    n = inside.reshape(-1, seq_len).sum(1)  # (S,)
    return n / seq_len, n


def assign_buckets(scores: np.ndarray, buckets: int, *, seed: int = 0) -> np.ndarray:
    """(S,) bucket of each sample: rank by score (ties in a seeded random order), ``buckets`` equal-count parts."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size < buckets:
        raise TokenscaleError(f"reshape: {s.size} candidate samples for {buckets} buckets")
    order = np.lexsort((np.random.default_rng([seed, 17]).random(s.size), s))  # ascending score
    rank = np.empty(s.size, dtype=np.int64)
    rank[order] = np.arange(s.size)
    return (rank * buckets // s.size).astype(np.int64)


def sample_weights(bucket: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(S,) per-sample weight of the reshaped arm: its bucket's weight."""
    return np.asarray(weights, dtype=np.float64)[np.asarray(bucket)]


def pool_weights(n_samples: int, sample_index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """(n_samples,) sampler weights over the whole training set: ``weight`` on the pool, zero elsewhere."""
    idx = np.asarray(sample_index, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n_samples):
        raise TokenscaleError(f"reshape: sample index outside [0, {n_samples})")
    w = np.zeros(n_samples, dtype=np.float64)
    w[idx] = weight
    if w.sum() <= 0:
        raise TokenscaleError("reshape: the pool's weights sum to zero")
    return w


# ----------------------------------------------------------------------------- candidate token set
def build_candidate_set(data_dir: str | Path, out_path: str | Path, *, n: int, seed: int) -> Path:
    """A token set (docs/formats.md, kind ``train-sample``) of ``n`` training samples drawn without replacement."""

    data_dir = Path(data_dir)
    tt = TrainTokens(data_dir)
    if n > len(tt):
        raise TokenscaleError(f"reshape: {n} candidates but the training set has {len(tt)} samples")
    idx = np.sort(np.random.default_rng([seed, 23]).choice(len(tt), size=n, replace=False))  # (S,)
    T = tt.seq_len
    pos = idx[:, None] * T + np.arange(1, T + 1)[None, :]  # (S, T) stream position of each target token
    docs = np.load(data_dir / "train_docs.npz")
    doc = np.searchsorted(docs["doc_start"], pos, side="right") - 1  # (S, T)
    return write_token_set(out_path, tt.batch(idx), doc, pos - docs["doc_start"][doc], docs["doc_domain"][doc],
                           kind="train-sample", domain_names=tt.meta["domain_names"], sample_index=idx,
                           attrs={k: tt.meta[k] for k in ("tokenizer_sha256", "corpus_sha256")})


# ----------------------------------------------------------------------------- scores file
def write_scores(path: str | Path, sample_index, score, bucket, weight, n_in_window) -> None:
    rows = zip(np.asarray(sample_index).tolist(), np.asarray(score).tolist(), np.asarray(bucket).tolist(),
               np.asarray(weight).tolist(), np.asarray(n_in_window).tolist())
    lines = [",".join(SCORES_FIELDS)] + [f"{i},{s:.6g},{b},{w:.6g},{k}" for i, s, b, w, k in rows]
    atomic.write_text(path, "\n".join(lines) + "\n")


def read_scores(path: str | Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or tuple(rows[0]) != SCORES_FIELDS:
        raise TokenscaleError(f"{path}: not a scores file (columns {', '.join(SCORES_FIELDS)})")
    out = {k: np.array([float(r[k]) for r in rows]) for k in SCORES_FIELDS}
    for k in ("sample_index", "bucket", "n_in_window"):
        out[k] = out[k].astype(np.int64)
    return out


# ----------------------------------------------------------------------------- measurement
def bucket_curves(losses: np.ndarray, bucket: np.ndarray, buckets: int, seq_len: int) -> np.ndarray:
    """(B, K) mean candidate-token loss per bucket at the reference's checkpoints; ``losses`` (S·T, K)."""
    L = np.asarray(losses, dtype=np.float64).reshape(-1, seq_len, np.shape(losses)[-1]).mean(1)  # (S, K)
    return np.stack([L[bucket == b].mean(0) for b in range(buckets)])


def _interp_steps_to_reach(steps: np.ndarray, loss: np.ndarray, target: float) -> float:
    """First step where the (linearly interpolated) curve reaches ``target``; inf when it never does."""
    below = np.nonzero(loss <= target)[0]
    if below.size == 0:
        return math.inf
    k = below[0]
    if k == 0:
        return float(steps[0])
    x0, x1, y0, y1 = steps[k - 1], steps[k], loss[k - 1], loss[k]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0)) if y1 != y0 else float(x1)


def arm_metrics(steps, curves: dict[str, np.ndarray], *, n_boot: int = 2000, seed: int = 0,
                confidence: float = 0.95) -> dict:
    """Acceleration, steps-to-reach and floors from the arms' validation-loss curves.

    ``steps`` (K,) the arms' checkpoint steps over the window (the first just after s_a, the last s_b);
    ``curves`` {arm: (n_seeds, K)} validation loss per data-order seed. The drop of an arm is its mean curve's
    first minus last value; steps-to-reach is counted from the first checkpoint, over the window's span
    ``steps[-1] - steps[0]``. Arms ``reshaped`` and ``uniform`` are required; ``original`` is a further control."""
    steps = np.asarray(steps, dtype=np.float64)
    for arm in ("reshaped", "uniform"):
        if arm not in curves:
            raise TokenscaleError(f"reshape: no curves for arm {arm!r}")
    C = {a: np.atleast_2d(np.asarray(c, dtype=np.float64)) for a, c in curves.items()}
    bad = [a for a, c in C.items() if c.shape[1] != steps.size or not np.all(np.isfinite(c))]
    if bad or steps.size < 2:
        raise TokenscaleError(f"reshape: arm {bad[0] if bad else 'reshaped'!r} has no finite curve over the "
                              f"{steps.size} window checkpoints")
    span = steps[-1] - steps[0]

    def reach(mean: dict[str, np.ndarray]) -> dict[str, float]:
        """Steps (fraction of the window) each control's mean curve needs to reach the reshaped arm's final loss."""
        return {f"steps_to_reach_vs_{ctrl}": (_interp_steps_to_reach(steps, mean[ctrl], mean["reshaped"][-1])
                                              - steps[0]) / span for ctrl in mean if ctrl != "reshaped"}

    mean = {a: c.mean(0) for a, c in C.items()}  # (K,) per arm
    per_seed = {a: c[:, 0] - c[:, -1] for a, c in C.items()}  # (n_seeds,) each seed's drop
    drop = {a: m[0] - m[-1] for a, m in mean.items()}  # the mean curve's drop = the mean of per-seed drops
    out = {f"drop_{a}": _t_ci(d, confidence) | {"value": _clean(drop[a]), "ci_method": "student_t"}
           for a, d in per_seed.items()}
    out |= {f"final_{a}": _t_ci(c[:, -1], confidence) | {"value": _clean(mean[a][-1]), "ci_method": "student_t"}
            for a, c in C.items()}
    for ctrl in (a for a in C if a != "reshaped"):
        acc = drop["reshaped"] / drop[ctrl] - 1.0 if drop[ctrl] > 0 else math.nan
        out[f"acceleration_vs_{ctrl}"] = _fieller_ci(per_seed["reshaped"], per_seed[ctrl], confidence, shift=-1.0) | {
            "value": _clean(acc), "ci_method": "fieller"}
    # steps-to-reach is censored (a control may never reach the reshaped arm's final loss): seed bootstrap
    rng = np.random.default_rng(seed)
    boots = [reach({a: c[rng.integers(0, c.shape[0], c.shape[0])].mean(0) for a, c in C.items()})
             for _ in range(n_boot)]
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    for k, v in reach(mean).items():
        vals = np.array([b[k] for b in boots], dtype=np.float64)
        finite = vals[np.isfinite(vals)]
        lo, hi = np.quantile(finite, q).tolist() if finite.size else [math.nan, math.nan]
        out[k] = {"value": _clean(v), "ci_low": _clean(lo), "ci_high": _clean(hi), "ci_method": "bootstrap",
                  "censored": not math.isfinite(v),  # the control never reached the reshaped arm's final loss
                  "censored_fraction": float(np.mean(~np.isfinite(vals)))}
        if finite.size < vals.size:
            out[k]["ci_high"] = None  # some draws never reach it: the upper end is "> window"
    out["n_seeds"] = {a: int(c.shape[0]) for a, c in C.items()}
    out["confidence"] = confidence
    return out


def _t_ci(values: np.ndarray, confidence: float) -> dict:
    """Mean of per-seed values with its Student-t interval (None with fewer than 2 finite values)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return {"value": _clean(v.mean()) if v.size else None, "ci_low": None, "ci_high": None}
    lo, hi = t.interval(confidence, v.size - 1, loc=v.mean(), scale=v.std(ddof=1) / np.sqrt(v.size))
    return {"value": _clean(v.mean()), "ci_low": _clean(lo), "ci_high": _clean(hi)}


def _fieller_ci(num: np.ndarray, den: np.ndarray, confidence: float, shift: float = 0.0) -> dict:
    """mean(num)/mean(den) + shift with Fieller's interval (independent samples; module docstring, step 5).

    ``den`` with one value contributes no variance; fewer than 2 ``num`` values, or a denominator not
    significantly above zero (the interval is then unbounded), give null bounds."""
    from scipy.stats import t

    x, y = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    a, b = x.mean(), y.mean()
    out = {"value": _clean(a / b + shift) if b != 0 else None, "ci_low": None, "ci_high": None}
    if x.size < 2 or b == 0:
        return out
    va = x.var(ddof=1) / x.size
    vb = y.var(ddof=1) / y.size if y.size >= 2 else 0.0
    rho = a / b
    parts = [va ** 2 / (x.size - 1)] + ([(rho ** 2 * vb) ** 2 / (y.size - 1)] if y.size >= 2 else [])
    df = (va + rho ** 2 * vb) ** 2 / sum(parts) if sum(parts) > 0 else math.inf
    q = t.ppf((1 + confidence) / 2, df)
    A, B, C = b * b - q * q * vb, -2 * a * b, a * a - q * q * va  # A ρ² + B ρ + C <= 0
    disc = B * B - 4 * A * C
    if A <= 0 or disc < 0:
        return out
    lo, hi = sorted(((-B - math.sqrt(disc)) / (2 * A), (-B + math.sqrt(disc)) / (2 * A)))
    return out | {"ci_low": _clean(lo + shift), "ci_high": _clean(hi + shift)}


def _welch_ci(a: np.ndarray, b: np.ndarray, confidence: float) -> dict:
    """mean(a) − mean(b) with Welch's interval (None unless both have 2 or more values)."""
    from scipy.stats import ttest_ind

    out = {"value": _clean(np.mean(a) - np.mean(b)), "ci_low": None, "ci_high": None}
    if a.size >= 2 and b.size >= 2:
        ci = ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
        out |= {"ci_low": _clean(ci.low), "ci_high": _clean(ci.high)}
    return out


def _pair_shift(xr: np.ndarray, xc: np.ndarray, window_x) -> tuple[float, int]:
    """(mean τ^r − τ^c, tokens) over tokens selected in both arms with their mean τ inside the window."""
    both = np.isfinite(xr) & np.isfinite(xc)
    mid = 0.5 * (xr + xc)
    m = both & (mid >= window_x[0]) & (mid <= window_x[1])
    return (float(np.mean(xr[m] - xc[m])) if m.any() else math.nan), int(m.sum())


def spectrum_shift(tau_x: dict[str, np.ndarray], window_x, *, confidence: float = 0.95) -> dict:
    """Step 6: how the arms' learning-time spectra moved. ``tau_x`` {arm: (n_seeds, N)} τ of every validation
    token on the fit axis in each seed's continuation series, NaN where not selected; ``window_x`` (x_a, x_b).

    CIs are Student-t intervals over seeds (pairs), Welch's for differences of window fractions: with 2–3 seeds a
    percentile bootstrap over seeds covers far below its nominal level (45% instead of 95% on planted null arms)."""
    if "reshaped" not in tau_x:
        raise TokenscaleError("reshape: no continuation fits for arm 'reshaped'")
    X = {a: np.atleast_2d(np.asarray(t, dtype=np.float64)) for a, t in tau_x.items()}
    if len({x.shape[1] for x in X.values()}) != 1:
        raise TokenscaleError(f"reshape: continuation fits cover different token counts {[x.shape[1] for x in X.values()]}")
    lo, hi = window_x
    f_in = {a: np.mean((x >= lo) & (x <= hi), axis=1) for a, x in X.items()}  # (n_seeds,) per arm
    out = {"window_fraction": {a: _t_ci(f, confidence) | {"per_seed": f.tolist()} for a, f in f_in.items()},
           "shift": {}, "n_tokens": int(X["reshaped"].shape[1]), "confidence": confidence}
    for ctrl in (a for a in X if a != "reshaped"):
        nr, nc = X["reshaped"].shape[0], X[ctrl].shape[0]
        idx = [(i, 0) for i in range(nr)] if nc == 1 else [(i, i) for i in range(min(nr, nc))]
        pairs = [_pair_shift(X["reshaped"][i], X[ctrl][j], window_x) for i, j in idx]
        out["shift"][ctrl] = _t_ci(np.array([p[0] for p in pairs]), confidence) | {
            "per_pair": [_clean(p[0]) for p in pairs], "tokens_per_pair": [p[1] for p in pairs]}
        out["window_fraction"][f"reshaped_minus_{ctrl}"] = _welch_ci(f_in["reshaped"], f_in[ctrl], confidence)
    return out


def _clean(v):
    v = float(v)
    return v if math.isfinite(v) else None


# ----------------------------------------------------------------------------- stages the workflow runs
def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic.atomic_output(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, arr)


def _selected_tau(fits_path, tokens_path, analysis: dict):
    """(token set dict, fit, tau (N,), valid (N,)) with the spectrum's main token selection."""

    ts = read_token_set(tokens_path, datasets=("sample_index",))
    if "sample_index" not in ts:
        raise TokenscaleError(f"{tokens_path}: not a training-sample token set (no sample_index)")
    fit = load_fits(fits_path)
    tau, valid = selected_tau(fit, int(ts["n_seqs"]) * int(ts["seq_len"]), AnalysisOptions.from_config(analysis).main)
    return ts, fit, tau, valid


def compute_scores(ex: dict, *, fits, tokens, train_data, analysis: dict, out_dir) -> dict:
    """Stage 2–3: scores.csv, weights-reshaped.npy / weights-uniform.npy (over the whole training set) and
    scores.json (per-bucket summary) in ``out_dir``; returns the summary."""

    ts, fit, tau, valid = _selected_tau(fits, tokens, analysis)
    T, idx = int(ts["seq_len"]), np.asarray(ts["sample_index"], dtype=np.int64)
    window_x = tuple(float(to_x(s, fit.transform)) for s in ex["window"])
    score, n_in = score_samples(tau, valid, T, window_x)  # (S,)
    bucket = assign_buckets(score, ex["buckets"], seed=ex["candidate_seed"])
    wb = bucket_weights(ex["weights"], ex["buckets"], where=f"reshape {ex['name']}")
    w = sample_weights(bucket, wb)
    n_train = len(TrainTokens(train_data))
    out = Path(out_dir)
    _save_npy(out / "weights-reshaped.npy", pool_weights(n_train, idx, w))
    _save_npy(out / "weights-uniform.npy", pool_weights(n_train, idx, np.ones_like(w)))
    write_scores(out / "scores.csv", idx, score, bucket, w, n_in)
    B = ex["buckets"]
    summary = {"experiment": ex["name"], "window": ex["window"], "window_x": list(window_x), "transform": fit.transform,
               "n_candidates": int(idx.size), "n_tokens": int(tau.size), "n_selected": int(valid.sum()),
               "n_in_window": int(n_in.sum()), "samples_with_score": int((score > 0).sum()),
               "bucket_weights": wb.tolist(), "bucket_size": np.bincount(bucket, minlength=B).tolist(),
               "bucket_mean_score": [float(score[bucket == b].mean()) for b in range(B)],
               "bucket_share_reshaped": [float(w[bucket == b].sum() / w.sum()) for b in range(B)]}
    atomic.write_json(out / "scores.json", summary)
    return summary


def pool_draws(weights_path, data_seed: int, start: int, count: int) -> np.ndarray:
    """The training-sample indices a pool arm draws at positions ``[start, start + count)`` (its sampler's)."""
    return WeightedSampler(np.load(weights_path), data_seed).indices(start, count)


def _train_curve(log_path, s_a: int, s_b: int) -> np.ndarray:
    """(s_b − s_a,) per-step training loss of a continuation over (s_a, s_b] from its log.jsonl."""
    by_step = {}
    with open(log_path) as fh:
        for line in fh:
            r = json.loads(line)
            if "loss" in r and s_a < r["step"] <= s_b:
                by_step[int(r["step"])] = float(r["loss"])
    missing = [s for s in range(s_a + 1, s_b + 1) if s not in by_step]
    if missing:
        raise TokenscaleError(f"{log_path}: no training loss at step {missing[0]} of the window ({s_a}, {s_b}]")
    return np.array([by_step[s] for s in range(s_a + 1, s_b + 1)])


def _running_mean(y: np.ndarray, width: int) -> np.ndarray:
    k = max(1, min(width, y.size))
    c = np.cumsum(np.concatenate([[0.0], y]))
    return (c[k:] - c[:-k]) / k


def _bucket_window_drops(curves: np.ndarray, steps: np.ndarray, window) -> list[float]:
    """Per bucket, the candidate loss drop over the window (curves interpolated at s_a and s_b in log step)."""
    lx = np.log10(np.asarray(steps, dtype=float))
    a, b = np.log10(window[0]), np.log10(window[1])
    return [float(np.interp(a, lx, c) - np.interp(b, lx, c)) for c in curves]


def _repeats(arms: list[dict], batch_size: int, s_a: int, s_b: int) -> dict:
    """How often the pool arms draw the same sample over the window (seed by seed)."""
    out = {}
    for a in arms:
        if a["arm"] == "original":
            continue
        draws = pool_draws(a["weights"], a["data_seed"], s_a * batch_size, (s_b - s_a) * batch_size)
        counts = np.unique(draws, return_counts=True)[1]  # draws per distinct sample
        out[a["run"]] = {"draws": int(draws.size), "distinct": int(counts.size),
                         "mean_draws_per_sample": float(draws.size / counts.size), "max_draws": int(counts.max())}
    return out


def _pool_summary(arms: list[dict], repeats: dict) -> dict:
    """Per pool arm: the pool (samples of positive weight), Kish's effective size of its weights, the expected draws
    per distinct drawn sample of i.i.d. draws (:func:`tokenscale.reshaping.spec.draws_per_sample`) and the measured
    one, mean over seeds (``repeats``)."""
    out = {}
    for a in arms:
        if a["arm"] == "original" or a["arm"] in out:
            continue
        w = np.load(a["weights"])
        seeds = [repeats[b["run"]] for b in arms if b["arm"] == a["arm"]]
        draws = seeds[0]["draws"]
        out[a["arm"]] = {"pool_size": int((w > 0).sum()), "effective_size": effective_size(w), "draws": draws,
                         "draws_per_pool_sample": draws / int((w > 0).sum()),
                         "expected_draws_per_sample": draws_per_sample(w, draws),
                         "mean_draws_per_sample": float(np.mean([r["mean_draws_per_sample"] for r in seeds]))}
    return out


def _train_val_gap(train: dict, curves: dict, width: int, confidence: float = 0.95) -> dict:
    """Per arm: final training loss (mean over the window's last ``width`` steps) minus validation loss at s_b, per
    seed, with its Student-t interval over seeds; a gap far below the reference's shows memorising."""
    out = {}
    for arm, runs in train.items():
        gap = np.array([t[-width:].mean() for t in runs]) - curves[arm][:, -1]  # (n_seeds,)
        out[arm] = _t_ci(gap, confidence) | {"per_seed": [_clean(g) for g in gap], "ci_method": "student_t"}
    return out


def _arm_tau(arms: list[dict], valid_tokens, analysis: dict, window) -> tuple[dict, tuple[float, float], str]:
    """({arm: (n_seeds, N) τ on the fit axis, NaN where not selected}, window on the fit axis, fit transform) from
    the arms' continuation fit tables (every validation token, the analysis selection)."""

    missing = [a["run"] for a in arms if "fits" not in a]
    if missing:
        raise TokenscaleError(f"reshape: arm {missing[0]} has no continuation 'fits' (needed with the validation tokens)")
    ts = read_token_set(valid_tokens, datasets=())
    n, sel = int(ts["n_seqs"]) * int(ts["seq_len"]), AnalysisOptions.from_config(analysis).main
    by_arm, transform = {}, None
    for a in sorted(arms, key=lambda a: (a["arm"], a["data_seed"])):
        fit = load_fits(a["fits"])
        if transform not in (None, fit.transform):
            raise TokenscaleError(f"reshape: {a['fits']} is fitted with transform {fit.transform!r}, others {transform!r}")
        transform = fit.transform
        tau, valid = selected_tau(fit, n, sel)
        by_arm.setdefault(a["arm"], []).append(np.where(valid, tau, np.nan))
    window_x = tuple(float(to_x(s, transform)) for s in window)
    return {k: np.stack(v) for k, v in by_arm.items()}, window_x, transform


def _shift_figure_data(tau_x: dict, window, transform: str) -> dict:
    """Per arm, the mean over seeds of the selected validation tokens' τ histogram (log-spaced steps)."""

    edges = np.geomspace(max(1.0, window[0] / 4), window[1], 25)
    hist = {a: np.mean([np.histogram(to_orig(t[np.isfinite(t)], transform), bins=edges)[0] for t in x], axis=0).tolist()
            for a, x in tau_x.items()}
    return {"shift_edges": edges.tolist(), "shift_hist": hist}


def make_report(ex: dict, *, batch_size: int, scores_dir, fits, tokens, trajectories, reference_val_loss,
                arms: list[dict], analysis: dict, out, figures, valid_tokens=None) -> dict:
    """Stages 4–6: ``out`` (report.json) and Fig. 6 A–F in ``figures``. ``arms``: dicts with ``run``, ``arm``,
    ``data_seed``, ``val_loss`` (csv), ``log`` (log.jsonl), for pool arms ``weights`` (npy) and, for step 6
    (with ``valid_tokens``, the validation token set), ``fits``: the arm's continuation fit table."""
    from tokenscale.reshaping.figures import plot_reshape

    s_a, s_b = ex["window"]
    scores = read_scores(Path(scores_dir) / "scores.csv")
    summary = json.loads((Path(scores_dir) / "scores.json").read_text())
    _, fit, tau, valid = _selected_tau(fits, tokens, analysis)
    losses, axis, _ = read_run_trajectories(trajectories)  # (S·T, K) candidate losses at the reference's steps
    T = losses.shape[0] // scores["bucket"].size
    cand_steps = np.asarray(axis["step"], dtype=float)
    curves_b = bucket_curves(losses, scores["bucket"], ex["buckets"], T)  # (B, K)
    ref = read_curve(reference_val_loss, ex["reference"], 0.0)
    by_arm, train, steps = {}, {}, None
    for a in sorted(arms, key=lambda a: (a["arm"], a["data_seed"])):
        c = read_curve(a["val_loss"], a["run"], 0.0)
        if steps is None:
            steps = c.steps
        elif not np.array_equal(steps, c.steps):
            raise TokenscaleError(f"reshape: run {a['run']} has checkpoints {c.steps.tolist()}, others {steps.tolist()}")
        by_arm.setdefault(a["arm"], []).append(c.loss)
        train.setdefault(a["arm"], []).append(_train_curve(a["log"], s_a, s_b))
    curves = {k: np.stack(v) for k, v in by_arm.items()}  # {arm: (n_seeds, K)}
    metrics = arm_metrics(steps, curves, n_boot=max(1000, analysis.get("n_boot", 0)), seed=analysis.get("seed", 0))
    width = max(1, (s_b - s_a) // 10)
    train_floor = {k: float(np.mean([t[-width:].mean() for t in v])) for k, v in train.items()}
    drops = _bucket_window_drops(curves_b, cand_steps, ex["window"])
    from scipy.stats import spearmanr

    rho = spearmanr(np.arange(len(drops)), drops).statistic
    report = {"experiment": ex["name"], "reference": ex["reference"], "window": [s_a, s_b], "scores": summary,
              "metrics": metrics, "arm_steps": steps.tolist(),
              "arm_curves": {k: v.tolist() for k, v in curves.items()},
              "train_loss_floor": train_floor, "bucket_window_drop": drops, "bucket_drop_spearman": _clean(rho),
              "repeats": _repeats(arms, batch_size, s_a, s_b), "train_val_gap": _train_val_gap(train, curves, width)}
    report["pool"] = _pool_summary(arms, report["repeats"])
    shift_fig = {}
    if valid_tokens is not None:
        tau_x, window_x, transform = _arm_tau(arms, valid_tokens, analysis, ex["window"])
        report["spectrum_shift"] = spectrum_shift(tau_x, window_x)
        shift_fig = _shift_figure_data(tau_x, ex["window"], transform)
    atomic.write_json(out, report, allow_nan=False)
    fig = {**report, "reference_steps": ref.steps.tolist(), "reference_loss": ref.loss.tolist(),
           "candidate_tau_steps": to_orig(tau[valid], fit.transform).tolist(), "candidate_steps": cand_steps.tolist(),
           "bucket_curves": curves_b.tolist(), "bucket_weights": summary["bucket_weights"],
           "bucket_mean_score": summary["bucket_mean_score"],
           "train_loss": {k: {"steps": list(range(s_a + width, s_b + 1)),
                              "loss": [_running_mean(t, width).tolist() for t in v]} for k, v in train.items()},
           **shift_fig}
    plot_reshape(fig, figures)
    return report
