import copy
from pathlib import Path

import yaml
import pytest

from tokenscale import TokenscaleError
from tokenscale.config import RunConfig, checkpoint_steps, load_config, run_configs, run_seq_len, validate_config

from conftest import REPO, run_cli, tiny_config, write_config


def test_defaults_filled_and_typed():
    cfg = validate_config({})
    assert cfg["data"]["vocab_size"] == 4096 and cfg["eval"]["shards"] == 2
    (run,) = run_configs(cfg).values()
    assert isinstance(run, RunConfig) and run.schedule["kind"] == "constant" and run.checkpoints["count"] == 40


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml"])
def test_shipped_configs_validate(name):
    cfg = load_config(REPO / "config" / name)
    for run in run_configs(cfg).values():  # T runs are series of their own: dense checkpoints (not reshape arms)
        assert run.total_steps > 10 and (run.axis != "T" or run.reshape or len(run.checkpoint_steps()) >= 8)


def test_misspelled_key_names_the_key():
    with pytest.raises(TokenscaleError, match=r"^config: unknown key 'data\.vocab_sze' \(allowed: .*vocab_size"):
        validate_config({"data": {"vocab_sze": 100}})


def test_misspelled_run_key_names_the_index():
    with pytest.raises(TokenscaleError, match=r"unknown key 'runs\[0\]\.lrr'"):
        validate_config({"runs": [{"name": "a", "axis": "T", "lrr": 1}]})


def test_wrong_type_names_key_and_value():
    with pytest.raises(TokenscaleError, match=r"^config: data\.seq_len must be of type integer, got 'long' \(str\)$"):
        validate_config({"data": {"seq_len": "long"}})


def test_bad_enum_and_missing_required():
    with pytest.raises(TokenscaleError, match=r"runs\[0\]\.axis must be one of \['T', 'D', 'M'\], got 'Q'"):
        validate_config({"runs": [{"name": "a", "axis": "Q"}]})
    with pytest.raises(TokenscaleError, match=r"runs\[0\] is missing required key: 'axis'"):
        validate_config({"runs": [{"name": "a"}]})


def test_unknown_preset_and_duplicate_runs():
    with pytest.raises(TokenscaleError, match=r"runs\[0\]\.model\.preset: unknown preset 'moe-huge'"):
        validate_config({"runs": [{"name": "a", "axis": "T", "model": {"preset": "moe-huge"}}]})
    with pytest.raises(TokenscaleError, match=r"duplicate name\(s\): a"):
        validate_config({"runs": [{"name": "a", "axis": "T"}, {"name": "a", "axis": "D"}]})


def test_missing_config_file(tmp_path):
    with pytest.raises(TokenscaleError, match=r"config: file not found: .*nope\.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_checkpoint_plan_is_log_spaced_and_ends_at_final_step():
    s = checkpoint_steps(2000, 40)
    assert s[0] == 1 and s[-1] == 2000 and s == sorted(set(s))
    gaps = [b / a for a, b in zip(s[10:], s[11:])]
    assert max(gaps) / min(gaps) < 1.2  # log spacing once rounding no longer merges steps
    assert checkpoint_steps(7, 40) == [1, 2, 3, 4, 5, 6, 7]


def test_tokens_below_one_batch_is_an_error():
    run = RunConfig.from_dict({"name": "a", "axis": "T", "tokens": 10, "batch_size": 4}, seq_len=16)
    with pytest.raises(TokenscaleError, match=r"run a: tokens=10 is less than one batch"):
        run.total_steps


def test_cli_bad_config_prints_one_line(tmp_path):
    cfg = tiny_config()
    cfg["runs"][0]["bacth_size"] = 4
    p = run_cli("check-config", "--config", write_config(tmp_path / "c.yaml", cfg), check=False)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines == ["tokenscale: error: config: unknown key 'runs[0].bacth_size' (allowed: axis, batch_size, branch, "
                     "checkpoints, deepspeed_config, device, engine, grad_clip, in_loop_validation, lr, micro_batch_size, "
                     "model, name, nproc, perf, precision, reshape, schedule, seed, single_pass, snapshots, state_every, sweep, "
                     "synthetic, threads, tokens, weight_decay)"]


def test_cli_help_for_every_command():
    from tokenscale.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in sub.choices:
        p = run_cli(name, "--help")
        assert "usage: tokenscale " + name in p.stdout


def test_cli_bad_model_shape_is_one_line_before_training(tmp_path):
    """Shapes the kernels cannot run are refused by check-config, naming the key (was a 99-line MoE traceback)."""
    cfg = tiny_config(model={"preset": "moe-nano", "hidden_size": 10, "num_heads": 3})
    p = run_cli("check-config", "--config", write_config(tmp_path / "c.yaml", cfg), check=False)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "tokenscale: error: config: runs[0].model.hidden_size=10 must be a multiple of 8"), lines


@pytest.mark.parametrize("command", ["check-config", "models"])
def test_cli_dense_width_not_divisible_by_heads_is_one_line(tmp_path, command):
    """dense-nano with hidden 10 and 3 heads passed check-config and models, then training died in LlamaConfig."""
    cfg = tiny_config(model={"preset": "dense-nano", "hidden_size": 10, "num_heads": 3})
    p = run_cli(command, "--config", write_config(tmp_path / "c.yaml", cfg), check=False)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines == ["tokenscale: error: config: runs[0].model.hidden_size=10 is not a multiple of num_heads=3 "
                     "(dense models: LlamaConfig requires it, even with head_dim set)"], lines


@pytest.mark.parametrize(
    "args, message",
    [
        (["models", "--vocab-size", "-5"], "tokenscale models: error: argument --vocab-size: must be a positive integer, got -5"),
        (["models", "--seq-len", "-100"], "tokenscale models: error: argument --seq-len: must be a positive integer, got -100"),
        (["analyze", "--trajectories", "t.h5", "--fits", "f.h5", "--run", "r", "--summary", "s.json", "--analysis", "a.h5",
          "--options", "{bad json"], "tokenscale analyze: error: argument --options: not valid JSON"),
        (["check-config", "--spec", "[1"], "tokenscale: error: --spec is not valid JSON"),
    ],
)
def test_cli_bad_values_are_one_line(args, message):
    p = run_cli(*args, check=False)
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith(message), p.stderr


def test_library_and_cli_defaults_are_the_schema_defaults():
    """The schema is the one source of workflow defaults; functions that keep keyword defaults agree with it."""
    import inspect

    from tokenscale.cli import build_parser
    from tokenscale.config import schema_default
    from tokenscale.analysis import AnalysisOptions

    params = inspect.signature(AnalysisOptions).parameters
    for key in ("n_bins", "n_boot", "seed", "transient", "selection"):
        assert params[key].default == schema_default(f"analysis.{key}"), key
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for cmd, dest, key in [("evaluate", "batch_size", "eval.batch_size"), ("evaluate", "device", "eval.device"),
                           ("fit", "axis", "fit.axis"), ("fit", "transform", "fit.transform"),
                           ("fit", "device", "fit.device"), ("fit", "engine", "fit.engine")]:
        assert sub[cmd].get_default(dest) == schema_default(key), (cmd, dest)
    with pytest.raises(KeyError, match="no key 'eval.nope'"):
        schema_default("eval.nope")
    assert schema_default("runs.lr") == validate_config({"runs": [{"name": "a", "axis": "T"}]})["runs"][0]["lr"]


def test_run_views_of_a_validated_config_equal_validated_entries():
    cfg = load_config(REPO / "config" / "config.yaml")
    for name, run in run_configs(cfg).items():
        entry = next(r for r in cfg["runs"] if r["name"] == name)
        again = RunConfig.from_dict(entry, run_seq_len(cfg, entry))  # a synthetic run's is its dataset's
        assert run == again and run.hash == again.hash and run.spec == again.spec


def test_every_subcommand_has_a_description_and_every_option_a_help_text():
    from tokenscale.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert p.description and len(p.description) > 20, name
        missing = [a.option_strings[0] for a in p._actions if a.option_strings and not a.help]
        assert not missing, (name, missing)


# ------------------------------------------------------------------------------------------- sweeps
D_SWEEP = {"name": "d", "axis": "D",
           "base": {"model": {"preset": "moe-nano"}, "batch_size": 8, "schedule": {"kind": "wsd", "decay_frac": 0.2}},
           "grid": {"tokens": [250_000, 1_000_000, 1_500_000], "lr": [0.003, 0.006], "model.num_experts": [4]}}


def test_a_sweep_expands_into_named_runs_in_grid_order():
    cfg = validate_config({"runs": [{"name": "t", "axis": "T"}], "sweeps": [D_SWEEP]})
    names = [r["name"] for r in cfg["runs"]]
    assert names == ["t", "d-tok250k-lr3e-3-num_experts4", "d-tok250k-lr6e-3-num_experts4",
                     "d-tok1M-lr3e-3-num_experts4", "d-tok1M-lr6e-3-num_experts4",
                     "d-tok1.5M-lr3e-3-num_experts4", "d-tok1.5M-lr6e-3-num_experts4"]
    runs = run_configs(cfg)
    r = runs["d-tok1.5M-lr6e-3-num_experts4"]
    assert (r.axis, r.sweep, r.tokens, r.lr, r.batch_size) == ("D", "d", 1_500_000, 0.006, 8)
    assert r.model == {"preset": "moe-nano", "num_experts": 4} and r.schedule["kind"] == "wsd"
    assert r.schedule["warmup_frac"] == 0.1 and r.seed == 0  # defaults filled like any run
    assert runs["t"].sweep is None
    assert D_SWEEP["base"] == {"model": {"preset": "moe-nano"}, "batch_size": 8,
                               "schedule": {"kind": "wsd", "decay_frac": 0.2}}  # the input is not modified


@pytest.mark.parametrize("value, text", [(1_000_000, "1M"), (1_234_567, "1234.567k"), (999, "999"), (4096, "4.096k"),
                                         (0.003, "3e-3"), (0.1, "0.1"), (0.0030001, "3.0001e-3"), ("moe-tiny", "moe-tiny"),
                                         (True, "on")])
def test_grid_values_in_run_names_are_exact(value, text):
    from tokenscale.config import _value_str

    assert _value_str(value) == text


def test_model_preset_grid_names_runs_by_the_preset():
    sweep = {"name": "m", "axis": "M", "grid": {"model.preset": ["moe-nano", "moe-tiny"], "seed": [0, 1]}}
    names = [r["name"] for r in validate_config({"sweeps": [sweep]})["runs"]][1:]
    assert names == ["m-moe-nano-s0", "m-moe-nano-s1", "m-moe-tiny-s0", "m-moe-tiny-s1"]


@pytest.mark.parametrize("sweep, match", [
    ({**D_SWEEP, "grid": {"lr": []}}, r"^config: sweeps\[0\]\.grid\.lr: \[\] should be non-empty$"),
    ({**D_SWEEP, "grid": {}}, r"^config: sweeps\[0\]\.grid: \{\} should be non-empty$"),
    ({**D_SWEEP, "grid": {"lr": [-1.0]}}, r"^config: sweeps\[0\] run d-lr-1: lr: -1\.0 is less than or equal to the minimum of 0$"),
    ({**D_SWEEP, "grid": {"lrr": [1]}}, r"^config: sweeps\[0\] run d-lrr1: unknown key 'lrr'"),
    ({**D_SWEEP, "grid": {"name": ["x"]}}, r"grid key 'name' cannot be swept"),
    ({**D_SWEEP, "base": {"axis": "T"}}, r"^config: sweeps\[0\]\.base\.axis is set by the sweep itself$"),
    ({**D_SWEEP, "grid": {"model.preset": ["moe-huge"]}}, r"^config: runs\[1\]\.model\.preset: unknown preset 'moe-huge'"),
])
def test_bad_sweeps_are_one_line(sweep, match):
    with pytest.raises(TokenscaleError, match=match):
        validate_config({"sweeps": [sweep]})


def test_sweep_run_names_must_not_collide():
    with pytest.raises(TokenscaleError, match=r"runs has duplicate name\(s\): d-tok1M"):
        validate_config({"runs": [{"name": "d-tok1M", "axis": "T"}], "sweeps": [{**D_SWEEP, "grid": {"tokens": [10**6]}}]})


def test_check_config_lists_sweep_runs(tmp_path):
    cfg = tiny_config()
    cfg["sweeps"] = [{"name": "d", "axis": "D", "base": {"model": {"preset": "moe-nano"}, "batch_size": 8},
                      "grid": {"tokens": [2560, 5120], "lr": [0.003, 0.006]}}]
    out = run_cli("check-config", "--config", write_config(tmp_path / "c.yaml", cfg)).stdout.splitlines()
    # write_config sorts the YAML keys, so the grid reads lr first
    assert [ln.split(":")[0] for ln in out] == ["tiny", "d-lr3e-3-tok2.56k", "d-lr3e-3-tok5.12k", "d-lr6e-3-tok2.56k",
                                                "d-lr6e-3-tok5.12k"]
    assert "axis=D sweep=d steps=20" in out[1]


def test_sweep_geomspace_grid_expands_log_spaced_values():
    """{geomspace: [lo, hi, n]}: integers for integer ends (budgets), 3 significant digits otherwise."""
    from tokenscale.config import grid_values

    assert grid_values("tokens", {"geomspace": [1000, 100000, 3]}) == [1000, 10000, 100000]
    assert grid_values("model.flops", {"geomspace": [4.2e8, 5.0e9, 4]}) == [4.2e8, 9.59e8, 2.19e9, 5.0e9]
    cfg = validate_config({"sweeps": [{"name": "m", "axis": "M", "base": {"model": {"preset": "moe-nano"}},
                                       "grid": {"lr": {"geomspace": [1e-3, 4e-3, 3]}}}]})
    assert [r["name"] for r in cfg["runs"] if r["sweep"] == "m"] == ["m-lr1e-3", "m-lr2e-3", "m-lr4e-3"]
    assert all("+" not in r["name"] for r in validate_config({"sweeps": [
        {"name": "f", "axis": "M", "grid": {"tokens": [1000], "lr": [3e5]}}]})["runs"])


def test_sweep_geomspace_bad_input():
    from tokenscale.config import grid_values

    with pytest.raises(TokenscaleError, match="lo=10 is above hi=5"):
        grid_values("tokens", {"geomspace": [10, 5, 3]})
    with pytest.raises(TokenscaleError, match="repeats values after rounding"):
        grid_values("tokens", {"geomspace": [10, 12, 5]})
    with pytest.raises(TokenscaleError, match=r"^config: sweeps\[0\]\.grid\.lr\.geomspace: \[0\.001, 0\.004\] is too short$"):
        validate_config({"sweeps": [{"name": "m", "axis": "M", "grid": {"lr": {"geomspace": [1e-3, 4e-3]}}}]})


def test_sweep_grid_list_is_the_union_of_products():
    """A second recipe on part of the grid: grid = [full grid, partial grid]; names stay unique."""
    sweep = {"name": "d", "axis": "D", "base": {"model": {"preset": "moe-nano"}},
             "grid": [{"tokens": [1000000, 2000000], "lr": [0.003]}, {"tokens": [1000000], "lr": [0.001]}]}
    names = [r["name"] for r in validate_config({"sweeps": [sweep]})["runs"] if r["sweep"] == "d"]
    assert names == ["d-tok1M-lr3e-3", "d-tok2M-lr3e-3", "d-tok1M-lr1e-3"]
    with pytest.raises(TokenscaleError, match="d-tok1M-lr3e-3"):
        validate_config({"sweeps": [{**sweep, "grid": [sweep["grid"][0], sweep["grid"][0]]}]})


def test_run_threads_are_outside_the_hash_and_reach_reshape_arms():
    base = {"name": "a", "axis": "T", "tokens": 4096, "batch_size": 4}
    assert RunConfig.from_dict({**base, "threads": 1}, seq_len=16).hash == RunConfig.from_dict(base, seq_len=16).hash
    with pytest.raises(TokenscaleError, match=r"runs\[0\]\.threads"):
        RunConfig.from_dict({**base, "threads": 0}, seq_len=16)
    cfg = yaml.safe_load((REPO / "config/smoke.yaml").read_text())
    ref = next(r for r in cfg["runs"] if r["name"] == cfg["reshape"][0]["reference"])
    ref["threads"] = 2
    arms = [r for r in run_configs(validate_config(copy.deepcopy(cfg))).values() if r.reshape]
    assert arms and {r.threads for r in arms} == {2}
    cfg["reshape"][0]["threads"] = 1
    arms = [r for r in run_configs(validate_config(cfg)).values() if r.reshape]
    assert {r.threads for r in arms} == {1}


# ------------------------------------------------------------------------ analysis slices the workflow passes
ANALYSIS = {"n_bins": 7, "n_boot": 11, "seed": 3, "transient": 0.2, "selection": "strict", "dependency_sequences": 5,
            "selections": {"all": {}, "strict": {"min_delta": 0.5, "min_r2": 0.4, "weight": "delta"}}}


@pytest.mark.parametrize("command", ["analyze", "align", "seeds", "synthetic-report", "reshape-scores",
                                     "reshape-report"])
def test_analysis_slice_keeps_what_the_command_reads(command):
    """Each rule's --options slice, validated as the command validates it, gives the command the same values and
    the same main selection as the whole section, and carries nothing else."""
    import json

    from tokenscale.analysis.options import ANALYSIS_USES, AnalysisOptions, analysis_slice

    full = validate_config({"analysis": ANALYSIS})["analysis"]
    given = json.loads(analysis_slice(full, command))
    got = validate_config({"analysis": given})["analysis"]
    assert {k: got[k] for k in ANALYSIS_USES[command]} == {k: full[k] for k in ANALYSIS_USES[command]}
    assert AnalysisOptions.from_config(got).main == AnalysisOptions.from_config(full).main
    assert set(given) <= set(ANALYSIS_USES[command]) | {"selections"}
    if "selections" not in ANALYSIS_USES[command]:
        assert given["selections"] == {"strict": ANALYSIS["selections"]["strict"]}


def test_every_analysis_option_reaches_a_rule():
    """A new analysis option must be given to the rules that read it (ANALYSIS_USES), else it changes nothing."""
    from tokenscale.analysis.options import ANALYSIS_USES
    from tokenscale.config import load_schema

    used = {k for keys in ANALYSIS_USES.values() for k in keys} | {"dependency_sequences"}  # rule dependency's
    assert used == set(load_schema()["properties"]["analysis"]["properties"])


# ----------------------------------------------------------------------------- study sections (issue #32)
STUDY_PACKAGES = ("alignment", "frontiers", "reshaping", "synthetic", "seeds", "training", "evaluation", "reproduction")


def _tokenscale_imports(module: str) -> set[str]:
    """Every tokenscale module a source file imports, at any level."""
    import ast

    import tokenscale

    path = Path(tokenscale.__file__).parent / (module.replace(".", "/") + ".py")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tokenscale"):
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("tokenscale")}
    return out


@pytest.mark.parametrize("module", ["config", "series"])
def test_config_and_series_import_no_study(module):
    """Dependencies point down: studies register with config and series, which import none of them
    (``training.model``, a leaf that resolves model shapes, is not a study)."""
    studies = {m for m in _tokenscale_imports(module) if m.split(".")[1:2] and m.split(".")[1] in STUDY_PACKAGES}
    assert not studies - {"tokenscale.training.model", "tokenscale.training.model.resolve_arch"}


def test_studies_register_their_sections_and_series_kinds_in_a_fixed_order():
    """The order is part of the result (the config hash, the DAG): synthetic is checked, reshape adds runs; the
    study series kinds come after the built-in ones."""
    from tokenscale import config, series
    from tokenscale.reshaping.spec import reshape_runs
    from tokenscale.synthetic.spec import check_synthetic

    sections = config.registered_sections()
    assert [(s.name, s.check, s.expand_runs) for s in sections] == [("synthetic", check_synthetic, None),
                                                                    ("reshape", None, reshape_runs)]
    kinds = [k for k in series.BUILDERS if k in ("run", "external", "frontier", "candidates", "continuation")]
    assert kinds == ["run", "external", "frontier", "candidates", "continuation"]


def test_register_section_refuses_a_key_the_schema_lacks():
    from tokenscale.config import register_section

    with pytest.raises(TokenscaleError, match="no schema section 'nope'"):
        register_section("nope", check=lambda cfg: None)


def test_reshape_entry_is_the_same_from_config_and_from_the_study():
    from tokenscale.config import reshape_entry
    from tokenscale.reshaping import spec

    ex = {"name": "rx", "reference": "tiny", "window": [5, 20]}
    assert reshape_entry(ex) == spec.reshape_entry(ex)
    with pytest.raises(TokenscaleError, match=r"config: reshape entry: .*buckets"):
        spec.reshape_entry({**ex, "buckets": "many"})


def test_a_nullable_section_given_as_a_mapping_gets_its_defaults():
    """data.shards is null by default (today's in-memory corpus, no key in the config hash); given as a mapping it
    is filled from the schema like any section."""
    from tokenscale.config import schema_default

    assert validate_config({})["data"]["shards"] is None
    shards = validate_config({"data": {"shards": {"path": "/corpus"}}})["data"]["shards"]
    assert shards["path"] == "/corpus" and shards["batch_docs"] == schema_default("data.shards.batch_docs")
    assert shards["format"] == "auto"
