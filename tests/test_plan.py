"""tokenscale plan (training FLOPs and GPU time per run and axis) and config/paper.yaml (the paper as a config)."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tokenscale import TokenscaleError
from tokenscale.config import load_config, run_configs, validate_config
from tokenscale.training.model import FLOPS_TOLERANCE, arch_stats, nonembedding_flops_per_token, resolve_arch
from tokenscale.plan import PAPER_A100_DAYS, format_plan, gpu_peak, plan, run_plan

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config" / "paper.yaml"

# The dense shape of test_model.test_flops_hand_count_dense: M = 264960 at seq_len 64, head = 6*48*500 = 144000
HAND_MODEL = {"preset": "dense-nano", "hidden_size": 48, "num_layers": 2, "num_heads": 3, "num_kv_heads": 1,
              "head_dim": 10, "intermediate_size": 100}


def _hand_config(**run) -> dict:
    base = {"name": "r", "axis": "D", "model": HAND_MODEL, "tokens": 1_000_000, "batch_size": 16}
    return validate_config({"data": {"seq_len": 64, "vocab_size": 500}, "runs": [{**base, **run}]})


# ----------------------------------------------------------------------------- plan
def test_plan_against_a_hand_computation():
    p = plan(_hand_config(), gpu="a100", mfu=0.5)
    r = p["runs"][0]
    # model FLOPs/token = 264960 + 144000 = 408960; steps = 1e6 // (16*64) = 976; tokens = 976*1024 = 999424
    assert r["model_flops_per_token"] == 408960 and r["steps"] == 976 and r["tokens"] == 999424
    assert r["flops"] == 999424 * 408960 == 408724439040
    # GPU-hours = FLOPs / (312e12 * 0.5) / 3600 = 408724439040 / 1.56e14 / 3600
    assert r["gpu_hours"] == pytest.approx(408724439040 / 1.56e14 / 3600, rel=1e-12)
    d = p["axes"]["D"]
    assert d["runs"] == 1 and d["gpu_days"] == pytest.approx(r["gpu_hours"] / 24)
    assert d["paper_a100_days"] == 358 and d["ratio"] == pytest.approx(r["gpu_hours"] / 24 / 358)
    assert d["implied_mfu"] == pytest.approx(0.5 * d["ratio"])
    assert p["axes"]["T"]["runs"] == 0 and p["total"]["paper_a100_days"] == 133 + 358 + 422


def test_plan_other_gpu_keeps_the_paper_ratio_in_a100_days():
    a100, h100 = (plan(_hand_config(), gpu=g, mfu=0.4) for g in ("a100", "h100"))
    assert gpu_peak("h100") == (989.4e12, "NVIDIA H100 SXM bf16")
    assert h100["runs"][0]["gpu_hours"] == pytest.approx(a100["runs"][0]["gpu_hours"] * 312 / 989.4)
    assert h100["axes"]["D"]["ratio"] == pytest.approx(a100["axes"]["D"]["ratio"])


def test_paper_numbers_are_the_papers():
    text = next((REPO.parent / "shared" / "paper").glob("*.txt"), None) if (REPO.parent / "shared").is_dir() else None
    assert PAPER_A100_DAYS == {"T": 133.0, "D": 358.0, "M": 422.0}
    if text is not None:
        body = text.read_text()
        for days in ("133 A100 GPU days", "358 A100 GPU days", "422 A100 GPU days"):
            assert days in body


def test_branched_run_trains_only_after_its_branch_step():
    """A decay branch (runs[].branch: {from, step}) computes total_steps - step steps; the rest is saved."""
    run = SimpleNamespace(name="b", axis="D", sweep="d", reshape=None, synthetic=None, model=HAND_MODEL, seq_len=64,
                          batch_size=16, total_steps=976,
                          spec={"branch": {"from": "trunk", "step": 700}})
    r = run_plan(run, 500, peak=312e12, mfu=0.5)
    assert r["steps"] == 276 and r["tokens"] == 276 * 1024 and r["flops"] == 276 * 1024 * 408960
    assert r["saved_flops"] == 700 * 1024 * 408960 and r["branch_from"] == "trunk"
    scratch = run_plan(SimpleNamespace(**{**vars(run), "spec": {}}), 500, peak=312e12, mfu=0.5)
    assert r["flops"] + r["saved_flops"] == scratch["flops"] and scratch["saved_flops"] == 0


def test_branch_savings_are_reported():
    p = plan(_hand_config(), mfu=0.5)
    assert format_plan(p)[-1] == "decay branches: none (no run has runs[].branch)"
    p["runs"][0].update(branch_from="trunk", saved_flops=1e15, saved_gpu_hours=2.0)
    p["axes"]["D"].update(branched=1, saved_flops=1e15, saved_gpu_hours=2.0)
    lines = format_plan(p)
    assert any(line.startswith("decay branches (D): 1 runs start from a trunk's snapshot, saving 1e+15 FLOPs = 2 GPU-hours")
               for line in lines)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpu": "v100"}, r"^--gpu 'v100' at bf16 is not in tokenscale\.training\.throughput\.GPU_PEAKS \(known: H100 PCIe, "),
        ({"mfu": 1.5}, r"^--mfu 1\.5 must be in \(0, 1\]$"),
    ],
)
def test_plan_bad_options(kwargs, message):
    with pytest.raises(TokenscaleError, match=message):
        plan(_hand_config(), **kwargs)


def test_plan_cli_is_torch_free_and_prints_axes():
    code = ("import sys\nfrom tokenscale.cli import main\n"
            f"assert main(['plan', '--config', {str(PAPER)!r}, '--totals']) == 0\n"
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=120).stdout
    lines = out.splitlines()
    assert lines[0] == "plan: " + str(PAPER) + ": 123 runs, vocab 65536, seq_len 2048"
    assert "312 TFLOP/s [NVIDIA A100 bf16] x MFU 0.4" in lines[1]
    rows = {line.split()[0]: line.split() for line in lines if line[:1] in "TDM" or line.startswith("all")}
    # T: the paper's 3 runs and the reshaping reference (§6); its 7 continuation runs count in "all" only
    # (and the 2 synthetic runs of App. A.3, on their own 29-token vocabulary)
    assert [rows[a][1] for a in ("T", "D", "M", "all")] == ["4", "50", "60", "123"]
    assert any(line.startswith("reshape (§6): 7 continuation runs") for line in lines)
    assert any(line.startswith("synthetic (App. A.3): 2 runs") for line in lines)
    assert [rows[a][6] for a in ("T", "D", "M", "all")] == ["133", "358", "422", "913"]


def test_plan_cli_bad_mfu_is_one_line():
    p = subprocess.run([sys.executable, "-m", "tokenscale.cli", "plan", "--config", str(PAPER), "--mfu", "0"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.strip().endswith("argument --mfu: must be a number in (0, 1], got 0 "
                                                           "(see tokenscale plan --help)")


# ----------------------------------------------------------------------------- config/paper.yaml
@pytest.fixture(scope="module")
def paper():
    cfg = load_config(PAPER)
    return cfg, run_configs(cfg)


def test_paper_config_has_the_papers_runs(paper):
    cfg, runs = paper
    by_axis = {a: [r for r in runs.values() if r.axis == a and r.name != "rs_ref" and r.reshape is None
                  and r.synthetic is None] for a in "TDM"}
    assert len(runs) >= 113 and {a: len(v) for a, v in by_axis.items()} == {"T": 3, "D": 50, "M": 60}
    assert all(r.precision == "bf16" and r.engine == "deepspeed" and r.device == "cuda" for r in runs.values())
    assert cfg["eval"]["checkpoints_per_job"] == 10 and cfg["data"]["builtin"] is False
    assert cfg["data"]["corpora"][0]["path"] == "/path/to/your/corpus.jsonl"  # the user's corpus (placeholder)
    assert {s["name"]: s["axis"] for s in cfg["sweeps"]} == {"d": "D", "m": "M"}


def test_paper_reshape_experiment(paper):
    """§6: a 290M MoE reference, 1B candidate tokens, steps 2000-3800, 10 buckets; its arms continue the reference."""
    cfg, runs = paper
    (ex,) = cfg["reshape"]
    ref = runs[ex["reference"]]
    assert ref.model["preset"] == "moe-290m" and ex["window"] == [2000, 3800] and ex["buckets"] == 10
    assert ex["candidates"] * cfg["data"]["seq_len"] >= 1_000_000_000 and 2000 in ref.snapshots
    arms = [r for r in runs.values() if r.reshape is not None]
    assert len(arms) == 7 and all(r.branch == {"from": "rs_ref", "step": 2000} and r.total_steps == 3800 for r in arms)


def test_paper_synthetic_pair(paper):
    """App. A.3: p 23, L 1-10, uniform vs L^-2; 8 layers, 8 heads, hidden 512, 400k steps of 128, lr 3e-5, seq 64."""
    cfg, runs = paper
    data = {s["name"]: s for s in cfg["synthetic"]}
    syn = [r for r in runs.values() if r.synthetic is not None]
    assert sorted(data[r.synthetic]["distribution"] for r in syn) == ["power", "uniform"]
    for r in syn:
        entry = data[r.synthetic]
        assert (entry["p"], entry["l_max"], entry["seq_len"], entry["train_examples"]) == (23, 10, 64, 51_200_000)
        arch = resolve_arch(r.model, r.seq_len)
        assert (arch["num_layers"], arch["num_heads"], arch["hidden_size"], arch["family"]) == (8, 8, 512, "dense")
        assert (r.total_steps, r.batch_size, r.lr, r.seq_len) == (400_000, 128, 3e-5, 64)
    assert data["mano_power"]["exponent"] == 2


def test_paper_t_runs(paper):
    cfg, runs = paper
    t = [r for r in runs.values() if r.axis == "T" and r.name.startswith("t_")]
    assert sorted(r.seed for r in t) == [0, 1, 2] and all(r.tokens == 300_000_000_000 for r in t)  # 300B tokens
    assert all(r.schedule["kind"] == "constant" and r.schedule["warmup_frac"] == 0.1 for r in t)  # no decay
    total = arch_stats(resolve_arch(t[0].model, t[0].seq_len), cfg["data"]["vocab_size"], t[0].seq_len).total_params
    assert 1.4e9 < total < 1.7e9 and "moe" == resolve_arch(t[0].model)["family"]  # a 1.5B MoE


def test_paper_d_runs(paper):
    cfg, runs = paper
    d = [r for r in runs.values() if r.axis == "D"]
    assert min(r.tokens for r in d) == 1_000_000_000 and max(r.tokens for r in d) == 35_000_000_000  # 1B to 35B
    assert len({r.tokens for r in d}) >= 4 and len({r.lr for r in d}) > 1  # budgets x a recipe search
    assert all(r.schedule["kind"] == "wsd" for r in d)
    total = arch_stats(resolve_arch(d[0].model), cfg["data"]["vocab_size"], d[0].seq_len).total_params
    assert 0.25e9 < total < 0.33e9 and len({str(r.model) for r in d}) == 1  # one 290M MoE


def test_paper_m_runs(paper):
    _, runs = paper
    m = [r for r in runs.values() if r.axis == "M"]
    assert all(r.tokens == 10_000_000_000 for r in m)  # 10B tokens
    targets = sorted(r.model["flops"] for r in m)
    assert targets[0] == 4.2e8 and targets[-1] == 5.0e9 and len(set(targets)) == 60  # 0.42 to 5.00 GFLOPs/token
    for r in m:
        arch = resolve_arch(r.model, r.seq_len)
        assert arch["family"] == "moe"
        assert abs(nonembedding_flops_per_token(arch, r.seq_len) / r.model["flops"] - 1) <= FLOPS_TOLERANCE


@pytest.mark.slow
def test_paper_dry_run_lists_its_train_jobs(tmp_path):
    """snakemake -n builds the paper's DAG (113 train jobs) in under a minute once its corpus file exists (a stand-in
    here; without it the DAG build stops in one line: tests/test_cluster_plan.py)."""
    import os
    import time

    import yaml

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "a b c"}\n')
    overlay = tmp_path / "corpus.yaml"
    overlay.write_text(yaml.safe_dump({"data": {"corpora": [{"path": str(corpus), "format": "jsonl"}]}}))
    cmd = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--configfile", "config/paper.yaml", str(overlay),
           "--config", f"results={tmp_path / 'results'}"]
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    t0 = time.time()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    assert time.time() - t0 < 60
    counts = dict(line.split()[:2] for line in p.stdout.splitlines() if line.split()[:1] in (["train"], ["total"]))
    assert int(counts["train"]) >= 113


def test_plan_of_a_branch_sweep_counts_only_the_decays():
    """With a sweep's branch_from (runs[].branch filled in by the config), each run trains only its decay."""
    from tokenscale.config import load_schema

    if "branch_from" not in load_schema()["properties"]["sweeps"]["items"]["properties"]:
        pytest.skip("runs[].branch / sweeps[].branch_from not in this schema")
    seq, bs = 32, 16
    cfg = validate_config({
        "data": {"seq_len": seq},
        "runs": [{"name": "trunk", "axis": "D", "model": {"preset": "moe-nano"}, "tokens": seq * bs * 1000,
                  "batch_size": bs, "schedule": {"kind": "constant", "warmup_steps": 10}}],
        "sweeps": [{"name": "d", "axis": "D", "branch_from": "trunk",
                    "base": {"model": {"preset": "moe-nano"}, "batch_size": bs,
                             "schedule": {"kind": "wsd", "warmup_steps": 10, "decay_frac": 0.2}},
                    "grid": {"tokens": [seq * bs * 200, seq * bs * 400, seq * bs * 600, seq * bs * 800]}}]})
    p = plan(cfg)
    rows = {r["run"]: r for r in p["runs"]}
    assert [rows[f"d-tok{k}"]["steps"] for k in ("102.4k", "204.8k", "307.2k", "409.6k")] == [40, 80, 120, 160]
    assert p["axes"]["D"]["branched"] == 4 and p["trunks"] == {"trunk": rows["trunk"]["gpu_hours"]}
    per_step = bs * seq * rows["trunk"]["model_flops_per_token"]
    assert p["axes"]["D"]["saved_flops"] == (160 + 320 + 480 + 640) * per_step
    assert format_plan(p)[-2].startswith("decay branches (D): 4 runs start from a trunk's snapshot")
