"""tokenscale verify: headline numbers, tolerances, provenance, and one clear line for bad input."""

from __future__ import annotations

import json
import math

import pytest

from tokenscale import TokenscaleError
from tokenscale.cli import main
from tokenscale.verify import (
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
    assert main(["verify", "--results", str(ref_tree), "--reference", str(ref_path), "--write"]) == 0
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
    from tokenscale.verify import write_reference

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
    assert main(["verify", "--results", str(make_tree(tmp_path / "a")), "--reference", str(ref_path), "--write"]) == 0
    ref = json.loads(ref_path.read_text())
    ref["numbers"]["series/gone/analysis/summary.json"] = {"power_law.alpha": 1.0}
    ref_path.write_text(json.dumps(ref))
    tol = tmp_path / "tol.yaml"
    tol.write_text(TOLERANCES)
    moved = make_tree(tmp_path / "c", alpha=0.90, prov={"format": "tokenscale-provenance/1", "config_sha256": "X",
                                                        "code_version": "v", "lock_sha256": "l",
                                                        "corpus_manifest_sha256": "m"})
    args = ["verify", "--results", str(moved), "--reference", str(ref_path), "--tolerances", str(tol)]
    assert main(args) == 2  # without --exit-zero the missing summary is one line
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
    assert main(["verify", "--results", str(make_tree(tmp_path / "a")), "--reference", str(ref_path), "--write"]) == 0
    tol = tmp_path / "tol.yaml"
    tol.write_text(TOLERANCES)
    moved = make_tree(tmp_path / "isa", alpha=0.90)
    args = ["verify", "--results", str(moved), "--tolerances", str(tol)]
    assert main([*args, "--reference", str(ref_path), "--differences", str(diff), "--variant", "isa"]) == 1
    d = json.loads(diff.read_text())["variants"]["isa"]["numbers"]
    assert d["series/t/analysis/summary.json:power_law.alpha"]["abs"] == pytest.approx(0.07)
    assert d["series/t/analysis/summary.json:power_law.E"]["abs"] == 0.0
    wide = tmp_path / "wide.json"
    assert main(["verify", "--results", str(tmp_path / "a"), "--reference", str(wide), "--write", "--spread",
                 str(ref_path), str(diff)]) == 0
    assert json.loads(wide.read_text())["spread"] == {"series/t/analysis/summary.json": {"power_law.alpha":
                                                                                          pytest.approx(0.14)}}
    assert main([*args, "--reference", str(wide)]) == 0
