"""tokenscale verify: headline numbers, tolerances, provenance, and one clear line for bad input."""

from __future__ import annotations

import json
import math

import pytest

from tokenscale import TokenscaleError
from tokenscale.cli import main
from tokenscale.reproduction.verify import (
    REFERENCE_FORMAT,
    Tolerance,
    compare,
    csv_numbers,
    flatten,
    headline_numbers,
    provenance_mismatches,
    read_provenance,
    read_reference,
    read_tolerances,
    table,
    tolerance_of,
)

SUMMARY = {"power_law": {"alpha": 0.83, "E": 3.84, "r2": 0.9998, "alpha_ci": [0.81, 0.85]},
           "metrics": {"r2_reconstruction": 0.896, "svd_energy1": 0.92, "template_resolved": True},
           "category_counts": {"late": {"valid": 27950, "all": 27950}}, "n_axis_points": 36, "run": "t"}
TOLERANCES = """format: tokenscale-tolerances/1
rules:
  - {match: "*:category_counts.*", atol: 10, why: counts}
  - {match: "*", rtol: 0.01, why: everything else}
"""


def make_tree(root, alpha=0.83, prov=None):
    s = root / "series/t/analysis"
    s.mkdir(parents=True)
    (s / "summary.json").write_text(json.dumps({**SUMMARY, "power_law": {**SUMMARY["power_law"], "alpha": alpha}}))
    (root / "runs/t").mkdir(parents=True)
    (root / "runs/t/val_loss.csv").write_text("step,tokens_seen,val_loss\n1,10,8.3\n2,20,7.5\n")
    (root / "provenance.json").write_text(json.dumps(prov or {
        "format": "tokenscale-provenance/1", "config_sha256": "c", "code_version": "v", "lock_sha256": "l",
        "corpus_manifest_sha256": "m"}))
    return root


def test_headline_numbers_pick_the_listed_keys_only(tmp_path):
    nums = headline_numbers(make_tree(tmp_path))
    assert nums["series/t/analysis/summary.json"] == {
        "power_law.alpha": 0.83, "power_law.E": 3.84, "power_law.r2": 0.9998, "metrics.r2_reconstruction": 0.896,
        "metrics.svd_energy1": 0.92, "category_counts.late.valid": 27950, "n_axis_points": 36}
    assert nums["runs/t/val_loss.csv"] == {"final_val_loss": 7.5}


def test_flatten_and_frontier_csv(tmp_path):
    assert flatten({"a": {"b": [1, {"c": 2}]}}) == {"a.b.0": 1, "a.b.1.c": 2}
    f = tmp_path / "frontier.csv"
    f.write_text("axis_value,run,val_loss\n100000.0,a,6.7\n151000.0,b,6.6\n")
    assert csv_numbers(f) == {"n_members": 2.0, "val_loss@100000": 6.7, "val_loss@151000": 6.6}


def test_tolerance_rules_first_match_wins_and_nan_none():
    rules = [Tolerance("*:n_*", 0.0, 0.0), Tolerance("*", 0.01, 0.0)]
    assert tolerance_of("f:n_axis_points", rules).match == "*:n_*"
    assert tolerance_of("f:power_law.alpha", rules).rtol == 0.01
    t = Tolerance("*", 0.01, 0.001)
    assert t.allows(1.0, 1.0109) and not t.allows(1.0, 1.0111)
    assert t.allows(math.nan, math.nan) and not t.allows(math.nan, 1.0) and not t.allows(1.0, math.nan)
    assert t.allows(None, None) and not t.allows(None, 1.0)


def test_compare_reports_exactly_the_numbers_that_moved(tmp_path, capsys):
    ref_tree = make_tree(tmp_path / "a")
    ref_path = tmp_path / "ref.json"
    assert main(["verify", "--results", str(ref_tree), "--reference", str(ref_path), "--write", "--every-file"]) == 0
    tol = tmp_path / "tol.yaml"
    tol.write_text(TOLERANCES)
    same = make_tree(tmp_path / "b", alpha=0.8301)  # within 1%
    assert main(["verify", "--results", str(same), "--reference", str(ref_path), "--tolerances", str(tol)]) == 0
    moved = make_tree(tmp_path / "c", alpha=0.90)
    capsys.readouterr()
    assert main(["verify", "--results", str(moved), "--reference", str(ref_path), "--tolerances", str(tol)]) == 1
    out = capsys.readouterr().out
    failed = [ln for ln in out.splitlines() if ln.rstrip().endswith("FAIL")]
    assert len(failed) == 1 and "series/t/analysis/summary.json:power_law.alpha" in failed[0], out
    assert "verify: 8 numbers: 7 pass, 1 FAIL, 0 missing, 0 new (7 identical to the reference, 0 moved" in out


def test_provenance_mismatch_is_one_line_each_and_numbers_still_compared(tmp_path):
    ref = {"format": REFERENCE_FORMAT, "provenance": {"config_sha256": "c", "code_version": "v", "lock_sha256": "l",
                                                       "corpus_manifest_sha256": "m"}, "numbers": {}}
    prov = read_provenance(make_tree(tmp_path, prov={"format": "tokenscale-provenance/1", "config_sha256": "X",
                                                     "code_version": "v", "lock_sha256": "l",
                                                     "corpus_manifest_sha256": "m"}))
    assert provenance_mismatches(ref, prov) == ["provenance: config_sha256 differs: reference 'c', results 'X'"]


def test_missing_number_fails_and_new_number_is_listed(tmp_path):
    tree = make_tree(tmp_path)
    ref = {"format": REFERENCE_FORMAT, "numbers": {"series/t/analysis/summary.json": {"power_law.alpha": 0.83,
                                                                                     "tail.beta": 1.8}}}
    rows = {r.name.split(":")[1]: r for r in compare(ref, tree, [Tolerance("*", 0.01, 0.0)])}
    assert rows["tail.beta"].status == "missing" and rows["tail.beta"].failed
    assert rows["power_law.E"].status == "new" and not rows["power_law.E"].failed
    assert "tail.beta" in table(list(rows.values()), only_failed=True)
    assert "power_law.E" not in table(list(rows.values()), only_failed=True)


def test_bad_input_is_one_line(tmp_path):
    tree = make_tree(tmp_path / "t")
    with pytest.raises(TokenscaleError, match=r"provenance.json is missing: the results tree has no provenance"):
        read_provenance(tmp_path)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"format": "tokenscale-reference/0", "numbers": {}}))
    with pytest.raises(TokenscaleError, match=r"has format 'tokenscale-reference/0'; this tokenscale reads"):
        read_reference(old)
    gone = {"format": REFERENCE_FORMAT, "numbers": {"series/x/analysis/summary.json": {"power_law.alpha": 1.0}}}
    with pytest.raises(TokenscaleError, match=r"series/x/analysis/summary.json is missing \(the reference has 1"):
        compare(gone, tree, [])
    bad = tmp_path / "tol.yaml"
    bad.write_text("format: tokenscale-tolerances/1\nrules:\n  - {rtol: 0.1}\n")
    with pytest.raises(TokenscaleError, match=r"rule 0 needs match"):
        read_tolerances(bad)


def test_cli_bad_reference_exits_2_with_one_line(tmp_path, capsys):
    tree = make_tree(tmp_path / "t")
    assert main(["verify", "--results", str(tree), "--reference", str(tmp_path / "none.json")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert err == [f"tokenscale: error: verify: reference file {tmp_path / 'none.json'} does not exist"]


def test_measured_spread_widens_only_its_own_number(tmp_path):
    tree = make_tree(tmp_path / "t")
    report = {"variants": {"threads": {"numbers": {
        "series/t/analysis/summary.json:power_law.alpha": {"abs": 0.05, "rel": 0.06},
        "series/t/analysis/summary.json:power_law.E": {"abs": 0.0, "rel": 0.0}}}}}
    from tokenscale.reproduction.verify import write_reference

    ref = write_reference(tree, "c.yaml", [report])
    assert ref["spread"] == {"series/t/analysis/summary.json": {"power_law.alpha": 0.1}}
    rules = [Tolerance("*", 0.01, 0.0)]
    moved = make_tree(tmp_path / "m", alpha=0.83 + 0.09)  # 11 %: outside the rule, inside its own spread 0.1
    rows = {r.name.split(":")[1]: r for r in compare(ref, moved, rules)}
    assert rows["power_law.alpha"].status == "pass" and "measured" in str(rows["power_law.alpha"].tolerance)
    assert not Tolerance("*", 0.01, 0.0).allows(0.83, 0.92)
    # an earlier reference's spread is kept and the larger of two measurements wins
    later = {"variants": {"isa": {"numbers": {"series/t/analysis/summary.json:power_law.alpha": {"abs": 0.02},
                                              "series/t/analysis/summary.json:power_law.E": {"abs": 0.3}}}}}
    merged = write_reference(tree, "c.yaml", [ref, later])
    assert merged["spread"] == {"series/t/analysis/summary.json": {"power_law.alpha": 0.1, "power_law.E": 0.6}}


def test_exit_zero_html_lists_failures_first_and_missing_summaries_as_rows(tmp_path, capsys):
    """The workflow's verify rule: exit 0 whatever moved; the HTML page puts FAIL and missing rows first, marks
    a provenance mismatch, and a summary the tree lacks becomes missing rows rather than an error."""
    ref_path = tmp_path / "ref.json"
    assert main(["verify", "--results", str(make_tree(tmp_path / "a")), "--reference", str(ref_path), "--write", "--every-file"]) == 0
    ref = json.loads(ref_path.read_text())
    ref["numbers"]["series/gone/analysis/summary.json"] = {"power_law.alpha": 1.0}
    ref_path.write_text(json.dumps(ref))
    tol = tmp_path / "tol.yaml"
    tol.write_text(TOLERANCES)
    moved = make_tree(tmp_path / "c", alpha=0.90, prov={"format": "tokenscale-provenance/1", "config_sha256": "X",
                                                        "code_version": "v", "lock_sha256": "l",
                                                        "corpus_manifest_sha256": "m"})
    args = ["verify", "--results", str(moved), "--reference", str(ref_path), "--tolerances", str(tol)]
    assert main(args) == 2  # without --exit-zero a reference from another config is refused as stale
    assert "is stale: written from config c, the results from config X" in capsys.readouterr().err
    assert main([*args, "--allow-config-change"]) == 2  # ... and the missing summary is one line
    assert "series/gone/analysis/summary.json is missing" in capsys.readouterr().err
    page = tmp_path / "v.html"
    assert main([*args, "--exit-zero", "--html", str(page)]) == 0
    out = capsys.readouterr().out
    assert "verify: 9 numbers: 7 pass, 1 FAIL, 1 missing, 0 new" in out
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<b>provenance: config_sha256 differs" in text
    rows = [ln for ln in text.split("<tr class=")[1:]]
    assert rows[0].startswith('"FAIL"') and "power_law.alpha" in rows[0]
    assert rows[1].startswith('"missing"') and "series/gone" in rows[1]
    assert all(r.startswith('"pass"') for r in rows[2:]) and len(rows) == 9


def test_compare_rejects_an_unknown_missing_files_mode(tmp_path):
    with pytest.raises(ValueError, match=r"missing_files must be 'raise' or 'rows', got 'skip'"):
        compare({"numbers": {}}, tmp_path, [], missing_files="skip")


def test_differences_report_widens_a_rewritten_reference(tmp_path):
    """verify --differences on another machine's tree writes what moved; --write --spread takes it, so the same
    tree then passes a rule it failed."""
    ref_path, diff = tmp_path / "ref.json", tmp_path / "diff.json"
    assert main(["verify", "--results", str(make_tree(tmp_path / "a")), "--reference", str(ref_path), "--write", "--every-file"]) == 0
    tol = tmp_path / "tol.yaml"
    tol.write_text(TOLERANCES)
    moved = make_tree(tmp_path / "isa", alpha=0.90)
    args = ["verify", "--results", str(moved), "--tolerances", str(tol)]
    assert main([*args, "--reference", str(ref_path), "--differences", str(diff), "--variant", "isa"]) == 1
    d = json.loads(diff.read_text())["variants"]["isa"]["numbers"]
    assert d["series/t/analysis/summary.json:power_law.alpha"]["abs"] == pytest.approx(0.07)
    assert d["series/t/analysis/summary.json:power_law.E"]["abs"] == 0.0
    wide = tmp_path / "wide.json"
    assert main(["verify", "--results", str(tmp_path / "a"), "--reference", str(wide), "--write", "--every-file", "--spread",
                 str(ref_path), str(diff)]) == 0
    assert json.loads(wide.read_text())["spread"] == {"series/t/analysis/summary.json": {"power_law.alpha":
                                                                                          pytest.approx(0.14)}}
    assert main([*args, "--reference", str(wide)]) == 0


# ------------------------------------------------------------------------------------ boundaries and seeds
def test_tolerance_boundary_is_inclusive():
    """|x − r| <= tol: an exact rule passes identical values, and a difference of exactly atol (or rtol·|r|, or the
    measured spread) passes; the next representable float beyond it fails. (Kills a `<=` -> `<` mutant.)"""
    exact = Tolerance("*", 0.0, 0.0)
    assert exact.allows(0.83, 0.83) and exact.allows(0.0, 0.0) and exact.allows(-2.5, -2.5)
    assert not exact.allows(0.83, math.nextafter(0.83, 1.0))
    assert Tolerance("*", 0.0, 0.25).allows(1.0, 1.25) and Tolerance("*", 0.0, 0.25).allows(1.0, 0.75)
    assert not Tolerance("*", 0.0, 0.25).allows(1.0, math.nextafter(1.25, 2.0))
    assert Tolerance("*", 0.5, 0.0).allows(2.0, 3.0) and not Tolerance("*", 0.5, 0.0).allows(2.0, 3.0000001)
    assert Tolerance("*", 0.0, 0.0, spread=0.5).allows(1.0, 1.5)
    assert not Tolerance("*", 0.0, 0.0, spread=0.5).allows(1.0, math.nextafter(1.5, 2.0))
    both = Tolerance("*", 0.5, 0.25)  # atol + rtol·|r| = 0.25 + 0.5·|−2| = 1.25, exact in binary
    assert both.allows(-2.0, -0.75) and both.allows(-2.0, -3.25)
    assert not both.allows(-2.0, -0.75 + 1e-12) and not both.allows(-2.0, math.nextafter(-3.25, -4.0))


def test_seed_interval_known_answer():
    """Five seeds 1..5: mean 3, s = √2.5; the 99 % prediction interval of a sixth is 3 ± t_4(0.995)·s·√(6/5)
    = 3 ± 4.604095·1.581139·1.095445 (hand-computed t from tables: 4.6041)."""
    from tokenscale.reproduction.verify import SeedInterval

    iv = SeedInterval((1.0, 2.0, 3.0, 4.0, 5.0), 0.99)
    lo, hi = iv.bounds()
    half = 4.604095 * math.sqrt(2.5) * math.sqrt(1.2)
    assert lo == pytest.approx(3 - half, abs=1e-5) and hi == pytest.approx(3 + half, abs=1e-5)
    assert iv.admits(lo) and iv.admits(hi)  # inclusive at both ends
    assert not iv.admits(math.nextafter(hi, math.inf)) and not iv.admits(math.nextafter(lo, -math.inf))
    assert SeedInterval((1.0, 2.0, 3.0, 4.0, 5.0), 0.5).bounds()[1] < hi  # a lower level is narrower
    same = SeedInterval((0.7, 0.7, 0.7))  # every seed the same: the interval is that point
    assert same.admits(0.7) and not same.admits(0.7000001)
    assert SeedInterval((0.7, 0.8, None)).bounds() is None  # 2 values: t_1 would say nothing, no interval
    one = SeedInterval((0.7, None, None))  # < 3 finite values: only a value a seed gave
    assert one.bounds() is None and one.admits(0.7) and one.admits(None) and not one.admits(0.71)
    assert not one.admits(math.nan) and SeedInterval((math.nan, 1.0, 2.0)).admits(math.nan)
    assert "seeds(5) [" in str(iv) and str(one) == "seeds(3) {0.7, —, —}"


def test_seed_values_in_the_reference_admit_a_chaotic_number(tmp_path):
    """A number the seeds spread widely (alpha 0.70..0.96) passes far outside its rule but inside its seed
    interval; a number every seed gave identically (E) still fails a 1 % move; the seeds are written by
    --write --seeds and read back by verify."""
    trees = [make_tree(tmp_path / f"s{k}", alpha=a) for k, a in enumerate((0.83, 0.70, 0.96, 0.78, 0.88))]
    ref_path = tmp_path / "ref.json"
    assert main(["verify", "--write", "--every-file", "--results", str(trees[0]), "--reference", str(ref_path),
                 "--seeds", *map(str, trees[1:])]) == 0
    ref = json.loads(ref_path.read_text())
    assert ref["seeds"]["n"] == 5
    assert ref["seeds"]["values"]["series/t/analysis/summary.json"]["power_law.alpha"] == [0.83, 0.70, 0.96, 0.78, 0.88]
    assert ref["seeds"]["values"]["runs/t/val_loss.csv"]["final_val_loss"] == [7.5] * 5
    rules = [Tolerance("*", 0.01, 0.0)]
    far = make_tree(tmp_path / "far", alpha=1.0)  # 20 % from the reference, inside the seeds' interval
    rows = {r.name.split(":")[1]: r for r in compare(ref, far, rules)}
    assert rows["power_law.alpha"].status == "pass" and "seeds(5) [" in rows["power_law.alpha"].allowed
    assert {r.name.split(":")[1]: r.status for r in compare(ref, far, rules, seed_level=0.5)}["power_law.alpha"] == "FAIL"
    beyond = make_tree(tmp_path / "beyond", alpha=2.0)
    assert {r.name.split(":")[1]: r.status for r in compare(ref, beyond, rules)}["power_law.alpha"] == "FAIL"
    with pytest.raises(TokenscaleError, match=r"seed level 1.5 is not in \(0, 1\)"):
        compare(ref, far, rules, seed_level=1.5)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "provenance.json").write_text((trees[0] / "provenance.json").read_text())
    assert main(["verify", "--write", "--every-file", "--results", str(trees[0]), "--reference", str(ref_path),
                 "--seeds", str(empty)]) == 2


@pytest.mark.parametrize("text, match", [
    ('{"format": "tokenscale-reference/1", "numb', "is not valid JSON"),
    ("[1, 2]", "is not a reference object with 'numbers'"),
    ('{"format": "tokenscale-reference/1"}', "is not a reference object with 'numbers'"),
])
def test_cli_truncated_or_non_object_reference_is_one_line(tmp_path, capsys, text, match):
    tree = make_tree(tmp_path / "t")
    bad = tmp_path / "ref.json"
    bad.write_text(text)
    assert main(["verify", "--results", str(tree), "--reference", str(bad)]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and match in err[0], err


@pytest.mark.parametrize("text, match", [
    ("format: [tokenscale-tolerances/1\n", "is not valid YAML"),
    ("- a\n- b\n", "is not a mapping with format and rules"),
])
def test_malformed_tolerances_are_one_line(tmp_path, text, match):
    bad = tmp_path / "tol.yaml"
    bad.write_text(text)
    with pytest.raises(TokenscaleError, match=match):
        read_tolerances(bad)


@pytest.mark.parametrize("config, reference", [("config/smoke.yaml", "reference/smoke.json"),
                                               (None, "reference/default.json")])
def test_committed_references_match_their_configs(config, reference):
    """A committed reference was written from the config it is named for: its config hash is the hash the workflow
    records for that config today (a config or schema change must come with a rewritten reference)."""
    from pathlib import Path

    from tokenscale.workflow import workflow_config, workflow_config_hash

    repo = Path(__file__).resolve().parents[1]
    ref = read_reference(repo / reference)
    got = workflow_config_hash(workflow_config(*([config] if config else [])))
    assert ref["provenance"]["config_sha256"] == got, f"{reference} is stale: rewrite it (README: Reproduce)"


def test_config_hash_leaves_out_null_keys_but_sees_every_effective_value():
    """A new key whose null default keeps today's behaviour leaves the hash of existing configs alone; a value
    that moves (null to a value, a value to null, one value to another) changes it, also inside runs."""
    from tokenscale.workflow import workflow_config_hash

    base = {"data": {"seq_len": 64, "extra": None}, "runs": [{"name": "a", "lr": 0.01, "branch": None}],
            "results": "r1", "reference": "x.json"}
    h = workflow_config_hash(base)
    assert workflow_config_hash({**base, "results": "r2", "reference": None, "site": {"partitions": {}}}) == h
    assert workflow_config_hash({"data": {"seq_len": 64}, "runs": [{"name": "a", "lr": 0.01}]}) == h
    assert workflow_config_hash({**base, "data": {"seq_len": 64, "extra": 0}}) != h
    assert workflow_config_hash({**base, "runs": [{"name": "a", "lr": 0.01, "branch": {"from": "t"}}]}) != h
    assert workflow_config_hash({**base, "runs": [{"name": "a", "lr": None}]}) != h
    assert workflow_config_hash({**base, "runs": [{"name": "a", "lr": 0.02}]}) != h


def test_a_number_most_seeds_did_not_give_is_judged_by_the_rule_around_the_seed_that_did(tmp_path):
    """The reference (seed 0) has None, one of five seeds a value: a reproduced value within the rule of that seed's
    value passes (each seed is as much a reference as seed 0), one beyond it fails, and None still passes."""
    tree = make_tree(tmp_path / "t")
    f = "series/t/analysis/summary.json"
    ref = {"format": REFERENCE_FORMAT, "numbers": {f: {"metrics.svd_energy1": None}},
           "seeds": {"n": 5, "values": {f: {"metrics.svd_energy1": [None, None, None, None, 0.9]}}}}
    rules = [Tolerance("*", 0.0, 0.04)]
    status = lambda v: compare(ref, make_summary(tree, v), rules)[0].status  # noqa: E731
    assert status(0.92) == "pass" and status(0.94) == "pass" and status(0.95) == "FAIL" and status(None) == "pass"


def make_summary(tree, svd_energy1):
    """``tree`` with its summary's svd_energy1 set (None: null) and nothing else headline in it."""
    s = tree / "series/t/analysis/summary.json"
    s.write_text(json.dumps({"metrics": {"svd_energy1": svd_energy1}}))
    (tree / "runs/t/val_loss.csv").unlink(missing_ok=True)
    return tree


def test_a_reference_from_another_machine_is_checked_as_results(tmp_path, capsys):
    """--results may be a reference JSON (a reproduction written elsewhere): its numbers are compared, its provenance
    shown; one that moved beyond every allowance fails like a tree would."""
    ref_path, other = tmp_path / "ref.json", tmp_path / "other.json"
    assert main(["verify", "--write", "--every-file", "--results", str(make_tree(tmp_path / "a")), "--reference", str(ref_path)]) == 0
    tol = tmp_path / "tol.yaml"
    tol.write_text(TOLERANCES)
    assert main(["verify", "--write", "--every-file", "--results", str(make_tree(tmp_path / "b", alpha=0.8301)), "--reference",
                 str(other)]) == 0
    args = ["verify", "--reference", str(ref_path), "--tolerances", str(tol), "--results", str(other)]
    assert main(args) == 0 and "verify: 8 numbers: 8 pass" in capsys.readouterr().out
    assert main(["verify", "--write", "--every-file", "--results", str(make_tree(tmp_path / "c", alpha=0.9)), "--reference",
                 str(other)]) == 0
    assert main(args) == 1 and "7 pass, 1 FAIL" in capsys.readouterr().out


def test_write_reference_keeps_only_the_configs_own_runs_and_series(tmp_path):
    """A tree holds files an earlier config left (a D budget since dropped): `verify --write --config` writes only
    the runs, series, reshape experiments and seed groups the config makes, so a fresh tree of it can pass."""
    from tokenscale.reproduction.stage import config_names
    from tokenscale.workflow import workflow_config

    names = config_names(workflow_config("config/smoke.yaml"))
    assert {"t_smoke"} <= names["runs"] and {"t_smoke"} <= names["series"] and names["reshape"]
    tree = make_tree(tmp_path / "a")
    for run in ("t_smoke", "d_old-budget"):
        (tree / f"runs/{run}").mkdir(parents=True)
        (tree / f"runs/{run}/val_loss.csv").write_text("step,tokens_seen,val_loss\n1,10,8.3\n")
    (tree / "series/t_smoke/analysis").mkdir(parents=True)
    (tree / "series/t_smoke/analysis/summary.json").write_text(json.dumps(SUMMARY))
    ref_path = tmp_path / "ref.json"
    assert main(["verify", "--write", "--results", str(tree), "--reference", str(ref_path),
                 "--config", "config/smoke.yaml"]) == 0
    files = set(json.loads(ref_path.read_text())["numbers"])
    assert files == {"runs/t_smoke/val_loss.csv", "series/t_smoke/analysis/summary.json"}
    assert main(["verify", "--write", "--every-file", "--results", str(tree), "--reference", str(ref_path),
                 "--config", "config/smoke.yaml"]) == 0
    assert {"runs/d_old-budget/val_loss.csv", "runs/t/val_loss.csv"} <= set(json.loads(ref_path.read_text())["numbers"])
