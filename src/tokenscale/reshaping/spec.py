"""The reshaping study's spec: its ``reshape`` config section, the continuation runs it adds, and its two series
kinds (the candidates at the reference's checkpoints, and each arm's continuation).

:func:`register` (called by :mod:`tokenscale.studies`) registers the section with :mod:`tokenscale.config` and the
builders with :mod:`tokenscale.series`; neither imports this package. Plain data only (Snakemake builds the DAG
from it): the computation is :mod:`tokenscale.reshaping.compute`.
"""

from __future__ import annotations

import copy
from typing import Iterator

import numpy as np

from tokenscale import TokenscaleError
from tokenscale.config import (
    duplicate_names,
    fill_defaults,
    register_section,
    run_config,
    run_configs,
    run_seq_len,
    section_entry,
    warmup_steps,
)
from tokenscale.series import VALID_TOKENS, Series, Source, TokenSet, Workflow, register_builder

__all__ = ["candidate_first_step", "candidate_steps", "bucket_weights", "pool_sample_weights", "draws_per_sample",
           "effective_size", "pool_size_needed", "reshape_entry", "reshape_runs",
           "candidate_series", "continuation_series", "register"]


def candidate_first_step(ex: dict) -> int:
    """First reference step the candidates are evaluated at: ``candidate_from_step``, default window start / 10."""
    return ex["candidate_from_step"] if ex["candidate_from_step"] is not None else max(1, ex["window"][0] // 10)


def candidate_steps(reference, ex: dict) -> list[int]:
    """The ``reference`` run's (a RunConfig) checkpoint steps the experiment's candidates are evaluated at."""
    first, last = candidate_first_step(ex), ex.get("candidate_to_step")
    return [s for s in reference.checkpoint_steps() if s >= first and (last is None or s <= last)]


def bucket_weights(spec, buckets: int, *, where: str = "reshape") -> np.ndarray:
    """(B,) weights from a list of B numbers or ``{"ramp": [lo, hi]}``; refuses negative or all-zero weights."""
    if isinstance(spec, dict):
        lo, hi = spec["ramp"]
        w = np.linspace(float(lo), float(hi), buckets)
    else:
        w = np.asarray(spec, dtype=np.float64)
        if w.shape != (buckets,):
            raise TokenscaleError(f"{where}: weights has {w.size} entries for {buckets} buckets")
    if not np.all(np.isfinite(w)) or (w < 0).any():
        raise TokenscaleError(f"{where}: bucket weights {w.round(4).tolist()} must be finite and non-negative")
    if w.sum() <= 0:
        raise TokenscaleError(f"{where}: bucket weights {w.round(4).tolist()} give a zero total weight")
    return w


def pool_sample_weights(n_pool: int, weights: np.ndarray) -> np.ndarray:
    """(n_pool,) per-sample weights of the reshaped arm before scoring: B equal-count buckets (sizes differ by at
    most one, as :func:`tokenscale.reshaping.compute.assign_buckets` cuts them), bucket b weighing ``weights[b]``."""
    w = np.asarray(weights, dtype=np.float64)
    return w[np.arange(n_pool) * w.size // n_pool]


def draws_per_sample(sample_weights: np.ndarray, draws: int) -> float:
    """Expected draws per distinct sample drawn when ``draws`` i.i.d. draws take sample i with probability
    p_i = w_i / Σw: ``draws / Σ_i (1 − (1 − p_i)^draws)`` (1 = no repeats; 2.6 for 2,400 uniform draws of 1,000)."""
    p = np.asarray(sample_weights, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(draws / np.sum(-np.expm1(draws * np.log1p(-np.minimum(p, 1 - 1e-16)))))


def effective_size(sample_weights: np.ndarray) -> float:
    """Kish's effective sample size ``1 / Σ p_i²`` of the normalized weights (the pool's size when uniform)."""
    p = np.asarray(sample_weights, dtype=np.float64)
    return float(1.0 / np.sum((p / p.sum()) ** 2))


def pool_size_needed(weights: np.ndarray, draws: int, limit: float) -> int:
    """Smallest pool on which the reshaped arm (bucket ``weights``) and the uniform arm both draw at most ``limit``
    times per distinct drawn sample in expectation (:func:`draws_per_sample`; the reshaped arm, being skewed, binds)."""
    def ok(n: int) -> bool:
        return max(draws_per_sample(pool_sample_weights(n, weights), draws),
                   draws_per_sample(np.ones(n), draws)) <= limit
    lo, hi = max(2, len(weights)), max(2, len(weights))
    while not ok(hi):
        lo, hi = hi, hi * 2
    while lo < hi:  # ok(hi) and (lo == hi or not ok(lo)); the expectation falls as the pool grows
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid + 1, hi)
    return hi


# ----------------------------------------------------------------------------- config: the arms' runs
def reshape_entry(ex: dict) -> dict:
    """One ``reshape`` entry on its own (a job's ``--experiment``): defaults filled, checked against its schema."""
    return section_entry("reshape", ex)


def _check_experiment(cfg: dict, ex: dict, ref: dict | None, where: str) -> None:
    """One line naming what is wrong with an experiment's reference, window, candidates or weights."""
    if ref is None or ref["axis"] != "T" or ref["reshape"] is not None:
        raise TokenscaleError(f"{where}: reference {ex['reference']!r} is not a T run of this config")
    total = run_config(cfg, ref).total_steps
    s_a, s_b = ex["window"]
    if not 1 <= s_a < s_b <= total:
        raise TokenscaleError(f"{where}: window {ex['window']} is not within the reference's steps 1..{total} "
                              f"with start < end")
    first = candidate_first_step(ex)
    n_ckpt = len(candidate_steps(run_config(cfg, ref), ex))
    if first > s_a or n_ckpt < 5:
        last = "" if ex.get("candidate_to_step") is None else f" to candidate_to_step {ex['candidate_to_step']}"
        raise TokenscaleError(f"{where}: candidate_from_step {first}{last} leaves {n_ckpt} reference checkpoints "
                              f"(need >= 5 from a step <= the window start {s_a})")
    if ex["candidates"] < ex["buckets"]:
        raise TokenscaleError(f"{where}: {ex['candidates']} candidate samples for {ex['buckets']} buckets "
                              "(need at least one sample per bucket)")
    wb = bucket_weights(ex["weights"], ex["buckets"], where=where)
    limit = ex.get("max_draws_per_sample")
    if limit is not None:
        draws = (s_b - s_a) * ref["batch_size"]
        got = max(draws_per_sample(pool_sample_weights(ex["candidates"], wb), draws),
                  draws_per_sample(np.ones(ex["candidates"]), draws))
        if got > limit:
            raise TokenscaleError(f"{where}: {ex['candidates']} candidates give {got:.2f} draws per drawn sample over "
                                  f"the window's {draws} draws (max_draws_per_sample {limit:g}): need candidates >= "
                                  f"{pool_size_needed(wb, draws, limit)}")


def _arm_runs(cfg: dict, ex: dict, ref: dict, run_schema: dict) -> list[dict]:
    """An experiment's continuation runs, in order: reshaped per seed, uniform per seed, then original."""
    total = run_config(cfg, ref).total_steps
    s_a, s_b = ex["window"]
    schedule = {**ref["schedule"], "warmup_steps": warmup_steps(ref["schedule"], total)}
    base = {k: v for k, v in ref.items() if k not in ("name", "snapshots", "sweep")}
    arms = [(arm, seed) for arm in ("reshaped", "uniform") for seed in ex["seeds"]]
    arms += [("original", ref["seed"])] if ex["original_arm"] else []
    out = []
    for arm, seed in arms:
        run = {**copy.deepcopy(base), "name": f"{ex['name']}-{arm}" + (f"-s{seed}" if arm != "original" else ""),
               "tokens": s_b * ref["batch_size"] * run_seq_len(cfg, ref), "schedule": schedule, "single_pass": False,
               "checkpoints": {"count": ex["checkpoints"], "first_step": s_a + 1}, "in_loop_validation": False,
               "branch": {"from": ref["name"], "step": s_a}, "threads": ex["threads"] or ref["threads"],
               "reshape": {"experiment": ex["name"], "arm": arm,
                           "data_seed": seed + (cfg["seed_offset"] if arm != "original" else 0)}}
        fill_defaults(run, run_schema)
        out.append(run)
    return out


def reshape_runs(cfg: dict, run_schema: dict) -> list[dict]:
    """Each ``reshape`` experiment's continuation runs ``{name}-{arm}-s{seed}`` (and ``{name}-original``): the
    reference's recipe, branched from its snapshot at the window start (added to its snapshots), ending at the
    window end, with the reference's warmup in steps. Bad experiments are refused in one line here."""
    runs = {r["name"]: r for r in cfg["runs"]}
    out = []
    for i, ex in enumerate(cfg["reshape"]):
        ref = runs.get(ex["reference"])
        _check_experiment(cfg, ex, ref, f"config: reshape[{i}] ({ex['name']})")
        out += _arm_runs(cfg, ex, ref, run_schema)
        ref["snapshots"] = sorted(set(ref["snapshots"]) | {ex["window"][0]})
    dup = duplicate_names(cfg["runs"] + out)
    if dup:
        raise TokenscaleError(f"config: reshape run name(s) {', '.join(dup)} clash with other runs")
    return out


# ----------------------------------------------------------------------------- series kinds
def candidate_series(cfg: dict, wf: Workflow) -> Iterator[Series]:
    """Each reshape experiment's candidate tokens (training samples) at the reference's checkpoints around the
    window: a token set of its own and a source that is the reference's checkpoints from ``candidate_from_step``."""
    runs = run_configs(cfg)
    for ex in cfg["reshape"]:
        ref, steps = wf.sources[ex["reference"]], candidate_steps(runs[ex["reference"]], ex)
        src = Source(f"{ex['reference']}.from{steps[0]}", tuple((s, ref.checkpoint(s)) for s in steps), ref.ready)
        wf.add(sources=[src], token_sets=[TokenSet(ex["name"], f"{cfg['results']}/reshape/{ex['name']}/candidates.h5",
                                                    f"{cfg['results']}/data")])
        yield Series(f"{ex['name']}-candidates", "candidates", ex["name"], tuple((src.name, s) for s in steps),
                     (src.name,), "reshape")


def continuation_series(cfg: dict, wf: Workflow) -> Iterator[Series]:
    """Each reshape arm's validation-token trajectories: the reference's checkpoints up to the window start (the
    state the arm continues from), then the arm's checkpoints over the window; named like the arm's run. The arms
    form the bundle group named like the experiment."""
    for name, run in run_configs(cfg).items():
        if run.reshape is None:
            continue
        ref, s_a = run.branch["from"], run.branch["step"]
        head = tuple((ref, s) for s in wf.sources[ref].steps if s <= s_a)
        tail = tuple((name, s) for s in wf.sources[name].steps)
        # the experiment's arms are evaluated a few to a job (eval.sources_per_job), like a sweep's runs
        yield Series(name, "continuation", VALID_TOKENS, head + tail, (ref, name), run.hash,
                     bundle=run.reshape["experiment"])


def register() -> None:
    """Config expands the ``reshape`` section into runs; series builds the ``candidates`` and ``continuation`` kinds."""
    register_section("reshape", expand_runs=reshape_runs)
    register_builder("candidates", candidate_series)
    register_builder("continuation", continuation_series)
