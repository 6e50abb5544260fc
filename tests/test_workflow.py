"""End to end: the whole DAG on config/smoke.yaml through Snakemake, its outputs and their cross-checks,
incremental reruns, a killed evaluation job, an external (Pythia-layout) checkpoint series, lint and bad config."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import REPO
from tokenscale.config import schema_default

pytestmark = pytest.mark.slow

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
RUN = "t_smoke"


def smk(*args, results: Path, extra_config: Path | None = None, timeout=900, check=True) -> subprocess.CompletedProcess:
    cfgs = ["config/smoke.yaml"] + ([str(extra_config)] if extra_config else [])
    # targets and options first: what follows --configfile/--config would be read as more config
    cmd = [*SNAKEMAKE, *args, "--cores", "2", "--configfile", *cfgs, "--config", f"results={results}"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-6000:]}")
    return p


# A results path with a space, a quote and a shell command: every path reaches the rules' shell commands quoted,
# so the DAG runs and nothing is executed (this was a shell injection through `results`).
HOSTILE = "res ul'ts;touch pwned;#"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("smoke") / HOSTILE
    t0 = time.time()
    smk(results=results)
    print(f"smoke DAG: {time.time() - t0:.1f}s")
    return results


def test_hostile_results_path_runs_nothing(smoke):
    assert smoke.name == HOSTILE and (smoke / "series" / RUN / "analysis" / "summary.json").is_file()
    assert not (REPO / "pwned").exists() and not list(smoke.parent.glob("pwned*"))


def test_smoke_outputs_and_cross_checks(smoke):
    from tokenscale.fit import load_fits
    from tokenscale.io import read_eval_losses, read_run_trajectories

    run, out = smoke / "runs" / RUN, smoke / "series" / RUN
    train = json.loads((run / "train.json").read_text())
    steps = train["checkpoints"]
    assert steps[-1] == train["steps"] and len(steps) >= 8

    # trajectories: finite (N, K), K = number of checkpoints, axis = checkpoint steps
    shards = sorted((out / "trajectories").glob("shard-*.h5"))
    assert len(shards) == 2
    losses, axis, meta = read_run_trajectories(shards)
    n_valid = 24 * 32
    assert losses.shape == (n_valid, len(steps)) and losses.dtype == np.float32 and np.isfinite(losses).all()
    np.testing.assert_array_equal(axis["step"], steps)

    # the mean of the evaluated token losses equals the validation loss logged by training, per checkpoint
    with open(run / "val_loss.csv") as fh:
        logged = {int(r["step"]): float(r["val_loss"]) for r in csv.DictReader(fh)}
    assert sorted(logged) == steps
    for k, s in enumerate(steps):
        assert abs(float(losses[:, k].mean(dtype=np.float64)) - logged[s]) < 1e-4, s
    ev, attrs = read_eval_losses(next((smoke / "evals" / "valid" / RUN).glob(f"block-*/step{steps[-1]:08d}.h5")))
    np.testing.assert_array_equal(ev, losses[:, -1])

    # fits: one row per token, mostly converged, parameters finite where converged
    fit = load_fits(out / "fits.h5")
    assert len(fit) == n_valid
    ok = fit.status == 0
    assert ok.mean() > 0.8
    assert np.isfinite(fit.tau[ok]).all() and np.isfinite(fit.r2[ok]).all()
    assert set(np.unique(fit.category)) <= {0, 1, 2, 3}

    # analysis: summary numbers and every figure
    summary = json.loads((out / "analysis" / "summary.json").read_text())
    assert summary["run"] == RUN and summary["config_sha256"] == train["config_sha256"]
    figs = sorted(p.name for p in (out / "analysis" / "figures").glob("*.png"))
    assert len(figs) >= 6, figs
    assert all((out / "analysis" / "figures" / f).stat().st_size > 10_000 for f in figs)
    # the figures are drawn from the analysis file alone; it holds the summary's numbers
    from tokenscale.analysis import read_analysis

    res = read_analysis(out / "analysis" / "analysis.h5")
    assert res.summary()["alpha_fit"] == summary["alpha_fit"] and summary["settings"]["selection"] == "quality"
    assert set(summary["selections"]) == {"all", "quality", "delta_weighted"}

    # App. A.2: alignment table and figure; dependency length of the first 4 sequences at the final checkpoint
    from tokenscale.io.dependency import read_dependency

    dep = read_dependency(out / "alignment" / "dependency.h5")
    assert dep["dependency_length"].shape == (4 * 32,) and dep["attrs"]["max_abs_diff_vs_truncation"] <= 1e-4
    assert dep["attrs"]["checkpoint"].endswith(f"step{steps[-1]:08d}")
    table = json.loads((out / "alignment" / "alignment.json").read_text())
    assert table["selection"] == "quality" and table["n_selected_in_window"] > 0
    assert table["domain"]["test"] and table["frequency"]["spearman"] and table["dependency"]["spearman"]
    assert (out / "alignment" / "figures" / "fig07_alignment.png").stat().st_size > 10_000

    # Fig. 2: the seed twin t_smoke_s1 differs from t_smoke only by its seed; their tau agree better than chance
    seeds = json.loads((smoke / "seeds" / RUN / "agreement.json").read_text())
    assert seeds["runs"] == [RUN, "t_smoke_s1"] and seeds["selection"] == "quality"
    (pair,) = seeds["pairs"]
    assert pair["n"] > 50 and pair["spearman"]["ci_low"] > 0 and pair["median_abs_diff"] < pair["tau_iqr"]
    assert (smoke / "seeds" / RUN / "figures" / "fig02_seeds_t_smoke_s1.png").stat().st_size > 10_000


def test_smoke_reshape_experiment(smoke):
    """§6: scores over the 1,700 candidates, the pool arms' weights, 2 arms x 2 seeds continued from t_smoke's state,
    the report's metrics (whatever their sign) and Fig. 6."""
    from tokenscale.reshaping.compute import read_scores

    d = smoke / "reshape" / "rs_smoke"
    sc = read_scores(d / "scores.csv")
    assert sc["bucket"].size == 1700 and np.bincount(sc["bucket"]).tolist() == [425] * 4
    assert np.all(np.diff([sc["score"][sc["bucket"] == b].mean() for b in range(4)]) >= 0)
    w = np.load(d / "weights-reshaped.npy")
    assert (w > 0).sum() == 1700 and set(np.flatnonzero(w)) == set(sc["sample_index"].tolist())
    r = json.loads((d / "report.json").read_text())
    assert r["metrics"]["n_seeds"] == {"reshaped": 2, "uniform": 2} and len(r["arm_steps"]) == 3
    assert r["arm_steps"][-1] == 90 and set(r["repeats"]) == {f"rs_smoke-{a}-s{s}" for a in ("reshaped", "uniform")
                                                               for s in (0, 1)}
    for arm in ("reshaped", "uniform"):
        assert np.isfinite(r["metrics"][f"final_{arm}"]["value"])
    assert (d / "figures" / "fig06_reshape.png").stat().st_size > 20_000
    log = [json.loads(x) for x in (smoke / "runs" / "rs_smoke-uniform-s0" / "log.jsonl").read_text().splitlines()]
    assert log[0]["step"] == 61  # continued from the snapshot at the window start
    shift = r["spectrum_shift"]  # step 6: the arms' continuation series, fitted on the validation tokens
    assert shift["n_tokens"] == 24 * 32 and len(shift["shift"]["uniform"]["per_pair"]) == 2
    assert set(shift["window_fraction"]) == {"reshaped", "uniform", "reshaped_minus_uniform"}


@pytest.mark.parametrize("run, dist", [("syn_smoke_uniform", "uniform"), ("syn_smoke_power", "power")])
def test_smoke_synthetic_pair(smoke, run, dist):
    """App. A.3: each synthetic run's series is its dataset's 96 validation answers (one token per example); the
    report has per-level accuracy for the 3 levels, the shape test and the decomposition's numbers; Fig. 8-10."""
    from tokenscale.synthetic.arithmetic import read_levels

    r = json.loads((smoke / "series" / run / "synthetic" / "report.json").read_text())
    assert r["synthetic"]["distribution"] == dist and r["n_answer_tokens"] == 96
    steps, levels, loss, acc = read_levels(smoke / "runs" / run / "levels.csv")
    assert levels.tolist() == [1, 2, 3] and steps[-1] == 200 and np.all((acc >= 0) & (acc <= 1))
    assert r["levels"]["final_accuracy"] == {str(L): a for L, a in zip(levels.tolist(), acc[:, -1].tolist())}
    sh = r["shape_test"]
    assert sh["preferred"] in ("linear", "power_law") and sh["linear"]["k"] == 2 and sh["power_law"]["k"] == 3
    assert r["svd_energy"]["svd_energy1"] is None or 0 < r["svd_energy"]["svd_energy1"] <= 1
    pc = r["paper_criteria"]  # the uniform arm reads its L^-2 partner's report: the pair's verdict, 5 criteria
    assert (pc["scope"], pc["n_criteria"]) == (("pair", 5) if dist == "uniform" else ("arm", 1))
    for name in ("fig08_levels", "fig09_level_trajectories", "fig10_params_vs_tau"):
        assert (smoke / "series" / run / "synthetic" / "figures" / f"{name}.png").stat().st_size > 10_000


@pytest.mark.parametrize("sweep, axis", [("d_smoke", "tokens"), ("m_smoke", "flops")])
def test_smoke_frontiers(smoke, sweep, axis):
    """The D and M sweeps' frontier series: the best final checkpoint per setting, fitted on its own axis, each
    point's loss the mean of the per-token losses (1e-4) and its run's val_loss.csv; figures A and B."""
    from tokenscale.fit import load_fits
    from tokenscale.frontiers.compute import read_frontier_csv
    from tokenscale.io import read_run_trajectories

    out = smoke / "series" / sweep
    table = read_frontier_csv(out / "frontier" / "frontier.csv")
    assert len(table) == 4
    runs = sorted(p.name for p in (smoke / "runs").iterdir() if p.name.startswith(sweep + "-"))
    losses, ax, _ = read_run_trajectories(sorted((out / "trajectories").glob("shard-*.h5")))
    assert losses.shape[1] == 4 and np.all(np.diff(ax[axis]) > 0)
    for k, row in enumerate(table):
        group = [r for r in runs if _final_loss(smoke, r)[0] and _group(smoke, r, axis) == _group(smoke, row["run"], axis)]
        best = min(group, key=lambda r: _final_loss(smoke, r)[1])
        assert row["run"] == best and int(row["step"]) == _final_loss(smoke, best)[0]
        assert abs(float(losses[:, k].mean(dtype=np.float64)) - float(row["val_loss"])) < 1e-4
    fit = load_fits(out / "fits.h5")
    assert len(fit) == losses.shape[0]
    np.testing.assert_array_equal(fit.axis_orig, ax[axis])  # fitted on the frontier's own axis
    summary = json.loads((out / "analysis" / "summary.json").read_text())
    assert summary["n_axis_points"] == 4
    figs = sorted(p.name for p in (out / "frontier" / "figures").glob("*.png"))
    assert figs == ["fig04a_runs_envelope.png", "fig04b_frontier.png"]


def _final_loss(smoke, run):
    with open(smoke / "runs" / run / "val_loss.csv") as fh:
        last = list(csv.DictReader(fh))[-1]
    return int(last["step"]), float(last["val_loss"])


def _group(smoke, run, axis):
    train = json.loads((smoke / "runs" / run / "train.json").read_text())
    return train["tokens"] if axis == "tokens" else train["model_stats"]["flops_per_token"]


def test_rerun_is_incremental(smoke):
    p = smk("-n", results=smoke)
    assert "Nothing to be done" in p.stdout + p.stderr, p.stdout[-3000:]


# A changed value for every analysis option that leaves training alone: all but analysis.selection (the main
# selection scores the reshape candidates, whose weights the reshape arms train on). `selections` gains one.
ANALYSIS_CHANGES = {"n_bins": 6, "n_boot": 10, "seed": 1, "transient": "none", "dependency_sequences": 2,
                    "forecast_cut": 0.5, "forecast_horizon": 2.0, "svd_groups": 20,
                    "selections": {**schema_default("analysis.selections"), "strict": {"min_delta": 1.0}}}


def planned_rules(dry_run_stdout: str) -> list[str]:
    """The rule of every job a `snakemake -n` plans."""
    return [m.group(2) for m in re.finditer(r"^(rule|checkpoint) (\w+):$", dry_run_stdout, re.M)]


def test_analysis_changes_cover_every_option():
    from tokenscale.config import load_schema

    assert set(ANALYSIS_CHANGES) | {"selection"} == set(load_schema()["properties"]["analysis"]["properties"])


@pytest.mark.parametrize("key", sorted(ANALYSIS_CHANGES))
def test_analysis_option_change_retrains_and_reevaluates_nothing(smoke, tmp_path, key):
    """Changing an analysis option reruns analysis jobs only: each rule gets only the config slice it reads."""
    extra = tmp_path / "analysis.yaml"
    extra.write_text(yaml.safe_dump({"analysis": {key: ANALYSIS_CHANGES[key]}}))
    jobs = planned_rules(smk("-n", results=smoke, extra_config=extra).stdout)
    assert jobs and "reshape_scores" not in jobs, jobs  # the change is seen, and the arms' scores stay
    assert not [j for j in jobs if j.startswith(("train", "evaluate"))], (key, jobs)


def test_main_selection_change_retrains_only_the_reshape_arms(smoke, tmp_path):
    """The main selection scores the reshape candidates: the arms (only they) train again on the new weights."""
    extra = tmp_path / "analysis.yaml"
    extra.write_text(yaml.safe_dump({"analysis": {"selection": "all"}}))
    p = smk("-n", "-p", results=smoke, extra_config=extra)
    trained = re.findall(r"tokenscale train .*? --run (\S+) ", p.stdout)
    assert "reshape_scores" in planned_rules(p.stdout)
    assert trained and all(r.startswith("rs_smoke-") for r in trained), trained


def test_killed_eval_job_is_redone(smoke, tmp_path):
    """SIGKILL snakemake while the evaluation job is writing; the rerun redoes the job, outputs are the same."""
    run = smoke / "series" / RUN
    before = {p.name: np.asarray(read(p)) for p in sorted((run / "trajectories").glob("*.h5"))}
    cmd = [*SNAKEMAKE, "--cores", "2", "--configfile", "config/smoke.yaml", "--config", f"results={smoke}",
           "--forcerun", "evaluate_checkpoint", "--", *[str(p) for p in sorted((run / "trajectories").glob("*.h5"))]]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    block = smoke / "evals" / "valid" / RUN / "block-000"
    n_ckpts = len(list(block.glob("step*.h5")))
    t0 = time.time()
    deadline = t0 + 300
    while time.time() < deadline and proc.poll() is None:
        # the old, complete block folder is removed when the job starts: wait for a partly rewritten one
        new = [p for p in _files(block) if _mtime(p) > t0]
        if 2 <= len(new) < n_ckpts:
            break
        time.sleep(0.1)
    assert proc.poll() is None, "evaluation finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # a half-done block is never read: the downstream rule wants it redone
    dry = smk("-n", results=smoke)
    assert "evaluate_checkpoint" in dry.stdout, dry.stdout[-3000:]
    smk("--unlock", results=smoke)  # a SIGKILLed snakemake leaves its lock behind (Snakemake's documented step)
    smk(results=smoke)
    after = {p.name: np.asarray(read(p)) for p in sorted((run / "trajectories").glob("*.h5"))}
    assert before.keys() == after.keys()
    for k in before:
        np.testing.assert_array_equal(before[k], after[k])


def _files(d: Path) -> list:
    return list(d.glob("step*.h5")) if d.is_dir() else []


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except FileNotFoundError:  # removed between glob and stat
        return 0.0


def read(path, full=False):
    from tokenscale.io import read_trajectories

    return read_trajectories(path) if full else read_trajectories(path)[0]


def test_external_pythia_layout_series(smoke, tmp_path):
    """Checkpoints this project wrote, renamed to the Pythia layout (step<N>/, no tokenscale metadata), are
    evaluated, fitted and analysed by the same rules; their losses equal the run's own."""
    run = smoke / "runs" / RUN
    series = tmp_path / "pythia-like"
    series.mkdir()
    steps = json.loads((run / "train.json").read_text())["checkpoints"]
    for s in steps:
        dst = series / f"step{s}"
        shutil.copytree(run / "checkpoints" / f"step{s:08d}", dst)
        (dst / "tokenscale.json").unlink()
        (dst / "COMPLETE").unlink()
    extra = tmp_path / "external.yaml"
    # no `tokenizer`: the documented default is the first checkpoint's folder
    extra.write_text(yaml.safe_dump({"external": [{"name": "pythia_like", "path": str(series)}]}))
    smk(str(smoke / "series" / "pythia_like" / "analysis" / "summary.json"), results=smoke, extra_config=extra)

    from tokenscale.io import read_run_trajectories

    ext = sorted((smoke / "series" / "pythia_like" / "trajectories").glob("*.h5"))
    own = sorted((smoke / "series" / RUN / "trajectories").glob("*.h5"))
    le, axis, _ = read_run_trajectories(ext)
    lo, _, _ = read_run_trajectories(own)
    np.testing.assert_array_equal(axis["step"], steps)
    # same documents, same tokenizer, same sequence length -> the same token set, the same losses
    np.testing.assert_allclose(le, lo, atol=1e-5, rtol=0)
    assert (smoke / "series" / "pythia_like" / "fits.h5").is_file()


def test_deferred_series_reuses_the_runs_evaluations(smoke):
    """A series chosen after training (tests/data/toy_series: the run's three checkpoints with the lowest logged
    validation loss) goes through the series_manifest checkpoint; its checkpoints were already evaluated for the
    run's own series, so no evaluation job runs, and its trajectories are those columns of the run's."""
    target = smoke / "series" / "best3" / "trajectories" / "shard-000.h5"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
               PYTHONPATH=str(REPO / "tests" / "data" / "toy_series"))
    cmd = [*SNAKEMAKE, "-s", "tests/data/toy_series/Snakefile", "-d", str(REPO), "--cores", "2",
           "--configfile", "config/smoke.yaml", "--config", f"results={smoke}", "--", str(target)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    assert "evaluate_checkpoint" not in p.stderr + p.stdout and "series_manifest" in p.stderr + p.stdout
    manifest = json.loads((smoke / "series" / "best3" / "manifest.json").read_text())
    with open(smoke / "runs" / RUN / "val_loss.csv") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: float(r["val_loss"]))[:3]
    chosen = sorted(int(r["step"]) for r in rows)
    assert manifest["members"] == [[RUN, s] for s in chosen]
    losses, axis, _ = read(target, full=True)
    own, own_axis, _ = read(smoke / "series" / RUN / "trajectories" / "shard-000.h5", full=True)
    cols = [list(own_axis["step"]).index(s) for s in chosen]
    np.testing.assert_array_equal(axis["step"], chosen)
    np.testing.assert_array_equal(losses, own[:, cols])


def test_lint_is_clean():
    p = subprocess.run([*SNAKEMAKE, "--lint"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Congratulations, your workflow is in a good condition" in p.stdout + p.stderr


def test_snakefmt_is_clean():
    """Every Snakefile and .smk in the checkout is formatted as snakefmt (line length from pyproject.toml) leaves it."""
    files = subprocess.run(["git", "ls-files", "Snakefile", "*.smk", "*/Snakefile"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    assert "Snakefile" in files and any(f.endswith("common.smk") for f in files), files
    p = subprocess.run([sys.executable, "-m", "snakefmt", "--check", *files], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"data": {"vocab_sze": 100}}, r"config: unknown key 'data.vocab_sze'"),
        ({"data": {"seq_len": "long"}}, r"config: data.seq_len must be of type integer, got 'long' \(str\)"),
        ({"eval": {"shards": 0}}, r"config: eval.shards"),
    ],
)
def test_bad_config_stops_dry_run_with_one_line(tmp_path, bad, message):
    import re

    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    p = smk("-n", results=tmp_path / "r", extra_config=cfg, check=False, timeout=300)
    assert p.returncode != 0
    lines = [ln for ln in (p.stdout + p.stderr).splitlines() if re.search(message, ln)]
    assert lines, p.stderr[-2000:]


def test_run_threads_reach_its_train_and_eval_jobs(tmp_path):
    """A run's own `threads` sets its training and evaluation jobs' threads (and its reshape arms'); other runs keep
    the top-level count."""
    cfg = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    cfg["threads"] = 2
    cfg["runs"][0]["threads"] = 1
    name = cfg["runs"][0]["name"]
    extra = tmp_path / "threads.yaml"
    extra.write_text(yaml.safe_dump({"threads": 2, "runs": cfg["runs"]}))
    p = smk("-n", "-p", "--forceall", results=tmp_path / "r", extra_config=extra, timeout=300)
    shell = [ln.split("Shell command:", 1)[-1].strip() for ln in p.stdout.splitlines()]
    shell = [ln for ln in shell if ln.startswith("tokenscale ")]
    own = [ln for ln in shell if ln.startswith("tokenscale train") and f"--run {name} " in ln
           or ln.startswith("tokenscale evaluate") and f"/evals/valid/{name}/" in ln]
    others = [ln for ln in shell if ln.startswith("tokenscale train") and f"--run {name} " not in ln
              and f'"from": "{name}"' not in ln]  # its reshape arms inherit its threads
    assert len(own) == 2 and all("--threads 1 " in ln for ln in own), own
    assert others and all("--threads 2 " in ln for ln in others), others


def test_second_run_is_bit_identical(smoke, tmp_path):
    """Two runs on one machine give bit-identical weights, trajectories and fits (docs/determinism.md)."""
    from tokenscale.reproduction.determinism import compare_arrays, compare_weights

    again = tmp_path / "again"
    smk(str(again / f"series/{RUN}/fits.h5"), results=again)
    weights, arrays = compare_weights(smoke, again), compare_arrays(smoke, again)
    assert weights and all(weights.values()), [k for k, v in weights.items() if not v]
    assert any("/trajectories/" in k for k in arrays) and any(k.endswith("fits.h5/tau") for k in arrays)
    assert all(arrays.values()), [k for k, v in arrays.items() if not v]


def test_report_carries_every_figure_and_the_verify_table(smoke, tmp_path):
    """`snakemake --report` (what `make demo` writes for the default config) holds every figure of every series,
    experiment and seed group, and the verify rule's table, with no reStructuredText error in a caption."""
    import re
    import zipfile
    from collections import Counter

    out = tmp_path / "report.zip"
    p = smk("--report", str(out), results=smoke)
    assert "ERROR/" not in p.stderr, [ln for ln in p.stderr.splitlines() if "ERROR/" in ln]
    names = zipfile.ZipFile(out).namelist()
    figures = Counter(f.name for f in smoke.rglob("figures/*.png"))
    assert len(figures) >= 10 and Counter(Path(n).name for n in names if n.endswith(".png")) == figures
    page = next(n for n in names if n.endswith("/verify.html"))
    text = zipfile.ZipFile(out).read(page).decode()
    assert re.search(r"verify: \d+ numbers: \d+ pass, 0 FAIL, 0 missing", text), text[:2000]


def test_verify_smoke_against_committed_reference(smoke):
    """`tokenscale verify` on the smoke results against reference/smoke.json (what `make verify` does for the demo)."""
    p = subprocess.run([sys.executable, "-m", "tokenscale.cli", "verify", "--results", str(smoke), "--reference",
                        "reference/smoke.json", "--failed-only"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-2000:]
    assert " 0 FAIL, 0 missing" in p.stdout


def test_chain_heads_and_their_jobs_go_first(tmp_path):
    """The scheduler starts the longest chains first: the trunk / reshape reference's training, the evaluation of
    the sources made of its checkpoints (the candidates'), the candidates' fits and scores and the reshape arms
    get priority 10 (workflow/rules/common.smk: chain_priority); an M run, a seed twin and its evaluation keep 0."""
    p = smk("-n", "--forceall", results=tmp_path / "r", timeout=300)
    jobs, cur = {}, None
    for ln in p.stdout.splitlines():
        if re.match(r"(local)?(rule|checkpoint) \w+:", ln):
            cur = {"rule": ln.split()[-1].rstrip(":"), "priority": 0, "wc": ""}
            jobs[len(jobs)] = cur
        elif cur is not None and ln.strip().startswith("wildcards:"):
            cur["wc"] = ln.split("wildcards:", 1)[1].strip()
        elif cur is not None and ln.strip().startswith("priority:"):
            cur["priority"] = int(ln.split(":", 1)[1])
    prio = {(j["rule"], j["wc"]): j["priority"] for j in jobs.values()}
    first = [("train", "run=t_smoke"), ("reshape_scores", "exp=rs_smoke"), ("fit_table", "series=rs_smoke-candidates")]
    assert all(prio[k] == 10 for k in first), {k: prio.get(k) for k in first}
    cand = [k for k in prio if k[0] == "evaluate_checkpoint" and "tokens=rs_smoke," in k[1]]
    arms = [k for k in prio if k[0] == "train" and "run=rs_smoke-" in k[1]]
    assert cand and arms and all(prio[k] == 10 for k in cand + arms), {k: prio[k] for k in cand + arms}
    later = [k for k in prio if k[0] == "train" and ("run=m_smoke" in k[1] or k[1] == "run=t_smoke_s1")]
    later += [k for k in prio if k[0] == "evaluate_checkpoint" and "source=t_smoke_s1," in k[1]]
    assert len(later) >= 3 and all(prio[k] == 0 for k in later), {k: prio[k] for k in later}


def test_sweep_runs_are_evaluated_a_few_to_a_job(tmp_path):
    """eval.sources_per_job: 5 bundles the D and M sweeps' runs (one block each, used by their frontier alone) into
    one evaluation job per 5; each run's val_loss and the frontier read its block folder inside the bundle's."""
    p = smk("-n", "--forceall", "-p", results=tmp_path / "r", timeout=300)
    ev = re.findall(r"wildcards: tokens=(\w+), source=([\w.+-]+), block=(\d+)", p.stdout)
    names = {s for _, s, _ in ev}
    assert {"d_smoke+0", "m_smoke+0"} <= names, names
    assert not any(s.startswith(("d_smoke-", "m_smoke-")) for s in names), names
    assert "t_smoke" in names and "t_smoke_s1" in names  # runs with series of their own are evaluated alone
    val_loss = dict(re.findall(r"tokenscale val-loss --evals (\S+) --out \S+/runs/(d_smoke-[\w.-]+)/val_loss.csv",
                               p.stdout))
    assert len(val_loss) >= 2, p.stdout[-3000:]
    assert all(f.endswith(f"/evals/valid/d_smoke+0/block-000/{run}") for f, run in val_loss.items()), val_loss
