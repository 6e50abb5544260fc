r"""The paper's qualitative result for the synthetic pair (App. A.3; issue #31 item 2), from a report's own numbers.

The pair is two arms on the same task (p, levels 1..l_max), one with uniform level frequencies and one with
``P(L) ∝ L^-2``. The paper's result holds at a scale when all five criteria hold:

    uniform_above_baseline   acc_L − base_L > 0 for every L = 1..l_max     (final accuracy on the balanced
                             levels set; base_L: always answering level L's most frequent training answer)
    uniform_l1_accuracy      acc_1 ≥ 0.95
    uniform_tau_rising       m_1 < m_2 < … < m_lmax                        (m_L: median τ, steps, of the
                             level's selected fits; a level without one, or a tie, fails)
    uniform_shape_linear     ΔAIC ≤ 0 on the uniform arm                    (ΔAIC = AIC_line − AIC_power law
    power_shape_power_law    ΔAIC > 0 on the L^-2 arm                        from the fit.start checkpoint:
                                                                             ``shape_test_fit_start``)

A level missing from the report (no examples in the levels table, no baseline) fails the criteria that need it.
A criterion is known from the arm it is about; one arm's report knows its own (4 for uniform, 1 for L^-2) and the
pair's verdict needs the other arm's report (``partner``). ``shows_paper_result`` is true only when all five are
known and hold: one arm alone never claims it. The thresholds are issue #31's reading of the paper's statements,
the ones scripts/synthetic-seeds.py checks; none is tuned to a run.
"""

from __future__ import annotations

import math

from tokenscale import TokenscaleError

__all__ = ["ARM_CRITERIA", "L1_MIN", "README_SECTION", "arm_criteria", "arm_of", "paper_criteria", "power_partner"]

L1_MIN = 0.95
README_SECTION = "README 'Seed pilot (issue #31)' (under 'The synthetic pair')"
ARM_CRITERIA = {"uniform": ("uniform_above_baseline", "uniform_l1_accuracy", "uniform_tau_rising",
                            "uniform_shape_linear"),
                "power": ("power_shape_power_law",)}
ORDER = ARM_CRITERIA["uniform"] + ARM_CRITERIA["power"]


def _by_level(d: dict | None) -> dict[int, object]:
    return {int(k): v for k, v in (d or {}).items()}


def _finite(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _above_baseline(levels: list[int], acc: dict, base: dict) -> dict:
    margin = {L: (acc[L] - base[L] if _finite(acc.get(L)) is not None and _finite(base.get(L)) is not None else None)
              for L in levels}
    missing = [L for L, m in margin.items() if m is None]
    known = [m for m in margin.values() if m is not None]
    ok = not missing and all(m > 0 for m in known)
    return {"value": min(known) if known and not missing else None, "per_level": margin,
            "threshold": "> 0 at every level (final accuracy − level-only baseline; value: the smallest)",
            "pass": ok, "levels_failing": [L for L, m in margin.items() if m is None or m <= 0]}


def _l1(acc: dict) -> dict:
    a = _finite(acc.get(1))
    return {"value": a, "threshold": f">= {L1_MIN}", "pass": a is not None and a >= L1_MIN}


def _tau_rising(levels: list[int], tau: dict) -> dict:
    med = [_finite((tau.get(L) or {}).get("median_tau_step")) for L in levels]
    ok = None not in med and all(a < b for a, b in zip(med, med[1:]))
    return {"value": med, "threshold": "strictly increasing over levels 1..l_max (a level without a selected fit, "
            "or a tie, fails)", "pass": ok, "levels_without_tau": [L for L, m in zip(levels, med) if m is None]}


def _shape(shape: dict | None, want: str) -> dict:
    d = _finite((shape or {}).get("delta_aic"))
    ok = d is not None and (d > 0 if want == "power_law" else d <= 0)
    return {"value": d, "threshold": "> 0 (power law preferred)" if want == "power_law" else "<= 0 (line preferred)",
            "pass": ok, "preferred": None if d is None else ("power_law" if d > 0 else "linear"),
            "shape_test": "shape_test_fit_start"}


def arm_of(report: dict) -> str:
    """"uniform" or "power": the arm a synthetic report is of (its ``synthetic.distribution``)."""
    arm = (report.get("synthetic") or {}).get("distribution", "uniform")
    if arm not in ARM_CRITERIA:
        raise TokenscaleError(f"paper criteria: synthetic distribution {arm!r} is not an arm of the pair "
                              f"({', '.join(ARM_CRITERIA)})")
    return arm


def arm_criteria(report: dict) -> dict:
    """{criterion: {value, threshold, pass, ...}} of the criteria this report's arm decides, from its numbers."""
    arm, lv = arm_of(report), report.get("levels") or {}
    if arm == "power":
        return {"power_shape_power_law": _shape(report.get("shape_test_fit_start"), "power_law")}
    levels = list(range(1, int(report["synthetic"]["l_max"]) + 1))
    acc, base = _by_level(lv.get("final_accuracy")), _by_level(lv.get("level_baseline"))
    return {"uniform_above_baseline": _above_baseline(levels, acc, base), "uniform_l1_accuracy": _l1(acc),
            "uniform_tau_rising": _tau_rising(levels, _by_level(lv.get("tau_by_level"))),
            "uniform_shape_linear": _shape(report.get("shape_test_fit_start"), "linear")}


SAME_TASK = ("p", "l_max", "seq_len", "seed", "train_examples", "valid_examples", "level_examples")


def power_partner(run: str, run_dataset: dict, datasets: dict) -> str | None:
    """The L^-2 arm paired with a uniform arm ``run``: the one run whose dataset is a power arm of the same task
    (``SAME_TASK`` keys equal). ``run_dataset``: run name -> its ``synthetic`` dataset name (or None);
    ``datasets``: dataset name -> config entry. None for a power arm, a non-synthetic run, or no single match
    (the uniform arm's report then holds its own four criteria). Torch-free: the workflow calls it to give the
    uniform arm's report the power arm's report.json (``make_report(partner=...)``)."""
    own = datasets.get(run_dataset.get(run))
    if own is None or own.get("distribution", "uniform") != "uniform":
        return None
    found = [r for r, d in run_dataset.items() if r != run and d in datasets
             and datasets[d].get("distribution") == "power"
             and all(datasets[d].get(k) == own.get(k) for k in SAME_TASK)]
    return found[0] if len(found) == 1 else None


def _check_partner(report: dict, partner: dict) -> None:
    a, b = arm_of(report), arm_of(partner)
    if a == b:
        raise TokenscaleError(f"paper criteria: {report.get('run')} and its partner {partner.get('run')} are both "
                              f"{a} arms; the pair needs one uniform and one power arm")
    for key in ("p", "l_max"):
        x, y = report["synthetic"].get(key), partner["synthetic"].get(key)
        if x != y:
            raise TokenscaleError(f"paper criteria: partner {partner.get('run')} has {key}={y!r}, "
                                  f"{report.get('run')} has {key}={x!r}: not the same task")


def _verdict(crit: dict, missing: list[str], arm: str) -> str:
    n, ok = len(crit), [k for k, c in crit.items() if c["pass"]]
    failing = [k for k in crit if k not in ok]
    if not missing:
        if not failing:
            return f"at this scale the pair shows the paper's result ({n} of {n} criteria hold)"
        return (f"at this scale the pair does not show the paper's result ({len(ok)} of {n} criteria hold; failing: "
                f"{', '.join(failing)}); see {README_SECTION}")
    other = "power (L^-2)" if arm == "uniform" else "uniform"
    if failing:
        return (f"at this scale the pair does not show the paper's result: this {arm} arm fails {len(failing)} of its "
                f"{n} criteria ({', '.join(failing)}); the {other} arm's are in its own report.json; see "
                f"{README_SECTION}")
    return (f"this {arm} arm's {n} criteria hold; the pair's result also needs the {other} arm's "
            f"({', '.join(missing)}), in its own report.json: not claimed here")


def paper_criteria(report: dict, partner: dict | None = None) -> dict:
    """The ``paper_criteria`` block of a synthetic report: each criterion's value, threshold and pass, the ones
    this report cannot decide (``missing``: the other arm's, when ``partner``, the other arm's report, is None),
    ``shows_paper_result`` (all five known and passing) and a one-line ``verdict``."""
    arm = arm_of(report)
    crit = arm_criteria(report)
    if partner is not None:
        _check_partner(report, partner)
        crit |= arm_criteria(partner)
    crit = {k: crit[k] for k in ORDER if k in crit}
    missing = [k for k in ORDER if k not in crit]
    runs = {arm: report.get("run")} | ({arm_of(partner): partner.get("run")} if partner is not None else {})
    return {"scope": "arm" if missing else "pair", "arms": runs, "criteria": crit,
            "n_criteria": len(crit), "n_pass": sum(c["pass"] for c in crit.values()), "missing": missing,
            "shows_paper_result": not missing and all(c["pass"] for c in crit.values()),
            "verdict": _verdict(crit, missing, arm)}
