"""The paper's criteria of the synthetic pair (tokenscale.synthetic.criteria): known answers on planted reports,
each criterion failing alone, edge cases (a level with no examples, ties and gaps in the τ medians)."""

import json

import pytest

from tokenscale import TokenscaleError
from tokenscale.synthetic.criteria import ARM_CRITERIA, arm_criteria, paper_criteria


def _uniform(**kw) -> dict:
    """A uniform report that passes all four of its criteria (string keys, as report.json holds them)."""
    levels = {"final_accuracy": {"1": 1.0, "2": 0.9, "3": 0.7, "4": 0.6},
              "level_baseline": {"1": 0.4, "2": 0.4, "3": 0.4, "4": 0.5},
              "tau_by_level": {str(L): {"median_tau_step": t, "n_selected_fits": 10}
                               for L, t in zip((1, 2, 3, 4), (200.0, 500.0, 900.0, 1500.0))}}
    r = {"run": "syn_uniform", "synthetic": {"p": 3, "l_max": 4, "distribution": "uniform"}, "levels": levels,
         "shape_test_fit_start": {"delta_aic": -12.0, "preferred": "linear"}}
    r.update(kw)
    return json.loads(json.dumps(r))


def _power(delta: float | None = 30.0) -> dict:
    return {"run": "syn_power", "synthetic": {"p": 3, "l_max": 4, "distribution": "power", "exponent": 2},
            "levels": {}, "shape_test_fit_start": {"delta_aic": delta}}


def test_all_pass_shows_the_result():
    b = paper_criteria(_uniform(), _power())
    assert b["scope"] == "pair" and b["missing"] == []
    assert list(b["criteria"]) == list(ARM_CRITERIA["uniform"] + ARM_CRITERIA["power"])
    assert b["n_criteria"] == 5 and b["n_pass"] == 5 and b["shows_paper_result"] is True
    assert b["verdict"] == "at this scale the pair shows the paper's result (5 of 5 criteria hold)"
    c = b["criteria"]
    assert c["uniform_l1_accuracy"]["value"] == 1.0 and c["uniform_l1_accuracy"]["threshold"] == ">= 0.95"
    assert c["uniform_above_baseline"]["value"] == pytest.approx(0.1)  # the smallest margin (L4: 0.6 - 0.5)
    assert c["uniform_tau_rising"]["value"] == [200.0, 500.0, 900.0, 1500.0]
    assert c["power_shape_power_law"]["value"] == 30.0
    assert paper_criteria(_power(), _uniform())["shows_paper_result"] is True  # either arm can carry the pair
    json.dumps(b, allow_nan=False)


def _break(name: str) -> tuple[dict, dict]:
    u, p = _uniform(), _power()
    lv = u["levels"]
    if name == "uniform_above_baseline":
        lv["final_accuracy"]["3"] = 0.4  # equal to its baseline: not above
    elif name == "uniform_l1_accuracy":
        lv["final_accuracy"]["1"] = 0.949
    elif name == "uniform_tau_rising":
        lv["tau_by_level"]["4"]["median_tau_step"] = 100.0
    elif name == "uniform_shape_linear":
        u["shape_test_fit_start"]["delta_aic"] = 0.5
    elif name == "power_shape_power_law":
        p["shape_test_fit_start"]["delta_aic"] = -0.5
    return u, p


@pytest.mark.parametrize("name", ARM_CRITERIA["uniform"] + ARM_CRITERIA["power"])
def test_each_criterion_failing_alone_is_named(name):
    b = paper_criteria(*_break(name))
    assert b["shows_paper_result"] is False and b["n_pass"] == 4
    assert [k for k, c in b["criteria"].items() if not c["pass"]] == [name]
    assert b["verdict"] == (f"at this scale the pair does not show the paper's result (4 of 5 criteria hold; "
                            f"failing: {name}); see README 'Seed pilot (issue #31)' (under 'The synthetic pair')")


def test_one_arm_never_claims_the_pair():
    b = paper_criteria(_uniform())
    assert b["scope"] == "arm" and b["missing"] == ["power_shape_power_law"] and b["n_pass"] == 4
    assert b["shows_paper_result"] is False and "not claimed here" in b["verdict"]
    b = paper_criteria(_power(-3.0))
    assert list(b["criteria"]) == ["power_shape_power_law"] and b["missing"] == list(ARM_CRITERIA["uniform"])
    assert b["shows_paper_result"] is False
    assert "does not show" in b["verdict"] and "power_shape_power_law" in b["verdict"]


def test_a_level_with_no_examples_fails_the_criteria_that_need_it():
    u = _uniform()
    for key in ("final_accuracy", "level_baseline", "tau_by_level"):
        del u["levels"][key]["3"]  # level 3 absent from the levels table and from the fits
    c = arm_criteria(u)
    assert c["uniform_above_baseline"]["pass"] is False and c["uniform_above_baseline"]["levels_failing"] == [3]
    assert c["uniform_above_baseline"]["value"] is None
    assert c["uniform_tau_rising"]["pass"] is False and c["uniform_tau_rising"]["levels_without_tau"] == [3]
    assert c["uniform_l1_accuracy"]["pass"] and c["uniform_shape_linear"]["pass"]
    u = _uniform()
    del u["levels"]["final_accuracy"]["1"]
    assert arm_criteria(u)["uniform_l1_accuracy"] == {"value": None, "threshold": ">= 0.95", "pass": False}


def test_ties_and_gaps_in_tau_medians_fail():
    u = _uniform()
    u["levels"]["tau_by_level"]["3"]["median_tau_step"] = 500.0  # = level 2's: a tie is not a rise
    assert arm_criteria(u)["uniform_tau_rising"]["pass"] is False
    u = _uniform()
    u["levels"]["tau_by_level"]["1"] = {"median_tau_step": None, "n_selected_fits": 0}  # no selected fit at L1
    r = arm_criteria(u)["uniform_tau_rising"]
    assert r["pass"] is False and r["levels_without_tau"] == [1] and r["value"][0] is None


def test_shape_boundary_and_missing_shape_test():
    u = _uniform(shape_test_fit_start={"delta_aic": 0.0})  # shape_test prefers the line at a tie
    assert arm_criteria(u)["uniform_shape_linear"]["pass"] is True
    assert arm_criteria(_power(0.0))["power_shape_power_law"]["pass"] is False
    assert arm_criteria(_power(None))["power_shape_power_law"]["pass"] is False  # NaN ΔAIC -> null in report.json
    assert arm_criteria(_uniform(shape_test_fit_start=None))["uniform_shape_linear"]["pass"] is False


def test_int_keys_as_make_report_builds_them():
    u = _uniform()
    u["levels"] = {k: {int(L): v for L, v in d.items()} for k, d in u["levels"].items()}
    assert all(c["pass"] for c in arm_criteria(u).values())


def test_bad_pairs_are_one_line_errors():
    with pytest.raises(TokenscaleError, match="both uniform arms"):
        paper_criteria(_uniform(), _uniform(run="other"))
    p = _power()
    p["synthetic"]["l_max"] = 3
    with pytest.raises(TokenscaleError, match="l_max=3.*not the same task"):
        paper_criteria(_uniform(), p)
    with pytest.raises(TokenscaleError, match="distribution 'zipf' is not an arm"):
        paper_criteria(_uniform(synthetic={"p": 3, "l_max": 4, "distribution": "zipf"}))


def test_power_partner_pairs_the_same_task():
    from tokenscale.synthetic.criteria import power_partner

    mano = {"p": 3, "l_max": 4, "seq_len": 11, "seed": 0, "train_examples": 100, "valid_examples": 10,
            "level_examples": 5, "distribution": "uniform"}
    ds = {"mu": mano, "mp": {**mano, "distribution": "power", "exponent": 2}}
    runs = {"syn_uniform": "mu", "syn_power": "mp", "t_moe": None}
    assert power_partner("syn_uniform", runs, ds) == "syn_power"
    assert power_partner("syn_power", runs, ds) is None and power_partner("t_moe", runs, ds) is None
    assert power_partner("syn_uniform", {**runs, "syn_power2": "mp"}, ds) is None  # two matches: no single pair
    ds["mp"]["seed"] = 1  # another task
    assert power_partner("syn_uniform", runs, ds) is None
