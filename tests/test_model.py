import pytest
import torch

from tokenscale import TokenscaleError
from tokenscale.training.model import (
    PRESETS,
    build_model,
    describe_presets,
    lm_head_flops_per_token,
    matmul_params,
    model_flops_per_token,
    model_stats,
    nonembedding_flops_per_token,
    resolve_arch,
)


def test_moe_stats_count_topk_experts():
    m = build_model({"preset": "moe-nano"}, vocab_size=300, max_positions=32, seed=0)
    s = model_stats(m, seq_len=32)
    assert type(m).__name__ == "Qwen3MoeForCausalLM"
    expert = sum(p.numel() for n, p in m.named_parameters() if ".experts." in n)
    cfg = m.config
    assert s.total_params == sum(p.numel() for p in m.parameters())
    assert s.active_params == s.total_params - expert + expert * cfg.num_experts_per_tok // cfg.num_experts
    assert s.embedding_params == 300 * cfg.hidden_size  # tied embeddings counted once
    arch = resolve_arch({"preset": "moe-nano"})
    assert s.flops_per_token == nonembedding_flops_per_token(arch, 32)  # the FLOPs come from the architecture
    assert s.head_flops_per_token == lm_head_flops_per_token(arch, 300) == 6 * 32 * 300
    assert s.model_flops_per_token == model_flops_per_token(arch, 32, 300) == s.flops_per_token + 6 * 32 * 300
    assert set(s.as_dict()) >= {"flops_per_token", "head_flops_per_token", "model_flops_per_token"}


def test_dense_family_active_equals_total():
    m = build_model({"preset": "dense-nano"}, vocab_size=300, max_positions=32, seed=0)
    s = model_stats(m, 32)
    assert type(m).__name__ == "LlamaForCausalLM" and s.active_params == s.total_params


def test_same_seed_same_init():
    a = build_model({"preset": "moe-nano"}, 300, 32, seed=3).state_dict()
    b = build_model({"preset": "moe-nano"}, 300, 32, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_override_and_bad_arch():
    arch = resolve_arch({"preset": "moe-nano", "num_experts": 8})
    assert arch["num_experts"] == 8 and arch["hidden_size"] == PRESETS["moe-nano"]["hidden_size"]
    with pytest.raises(TokenscaleError, match="experts_per_token=9 exceeds num_experts=4"):
        resolve_arch({"preset": "moe-nano", "experts_per_token": 9})
    with pytest.raises(TokenscaleError, match="num_heads=3 is not a multiple of num_kv_heads=2"):
        resolve_arch({"preset": "dense-nano", "num_heads": 3, "num_kv_heads": 2})


def test_paper_scale_presets_span_the_m_axis():
    rows = {r["preset"]: r for r in describe_presets(vocab_size=32000, seq_len=2048)}
    m = [rows[p]["flops_per_token"] / 1e9 for p in ("moe-290m", "moe-1.5b", "moe-6b")]
    assert m == sorted(m) and 0.2 < m[0] < 1.0 and m[-1] > 4.0  # paper: 0.42 to 5.00 GFLOPs/token
    assert 250e6 < rows["moe-290m"]["total_params"] < 350e6


@pytest.mark.parametrize(
    "override, message",
    [
        ({"hidden_size": 10, "num_heads": 3}, r"model\.hidden_size=10 must be a multiple of 8"),
        ({"moe_intermediate_size": 30}, r"model\.moe_intermediate_size=30 must be a multiple of 8"),
        ({"head_dim": 15}, r"model\.head_dim=15 must be even"),
    ],
)
def test_bad_shapes_fail_before_building(override, message):
    with pytest.raises(TokenscaleError, match=message):
        resolve_arch({"preset": "moe-nano", **override})


@pytest.mark.parametrize(
    "spec, message",
    [  # each a shape transformers refuses at construction or in the first forward (issue 34)
        ({"preset": "dense-nano", "hidden_size": 10, "num_heads": 3},
         r"^model\.hidden_size=10 is not a multiple of num_heads=3 \(dense models: LlamaConfig"),
        ({"preset": "dense-nano", "hidden_size": 32, "num_heads": 3, "num_kv_heads": 1, "head_dim": 16},
         r"^model\.hidden_size=32 is not a multiple of num_heads=3 "),
        ({"preset": "dense-nano", "hidden_size": 32.0}, r"^model\.hidden_size=32\.0 must be a positive integer$"),
        ({"preset": "dense-nano", "num_layers": 0}, r"^model\.num_layers=0 must be a positive integer$"),
        ({"preset": "dense-nano", "num_layers": True}, r"^model\.num_layers=True must be a positive integer$"),
        ({"preset": "dense-nano", "num_heads": 0}, r"^model\.num_heads=0 must be a positive integer$"),
        ({"preset": "dense-nano", "num_kv_heads": 0}, r"^model\.num_kv_heads=0 must be a positive integer$"),
        ({"preset": "dense-nano", "head_dim": -16}, r"^model\.head_dim=-16 must be a positive integer$"),
        ({"preset": "dense-nano", "intermediate_size": 0}, r"^model\.intermediate_size=0 must be a positive integer$"),
        ({"preset": "moe-nano", "moe_intermediate_size": 0},
         r"^model\.moe_intermediate_size=0 must be a positive integer$"),
        ({"preset": "moe-nano", "num_experts": 0}, r"^model\.num_experts=0 must be a positive integer$"),
        ({"preset": "moe-nano", "experts_per_token": 0}, r"^model\.experts_per_token=0 must be a positive integer$"),
        ({"preset": "moe-nano", "num_experts": 4.0}, r"^model\.num_experts=4\.0 must be a positive integer$"),
        ({"preset": "moe-nano", "router_aux_loss_coef": -0.1},
         r"^model\.router_aux_loss_coef=-0\.1 must be a finite number >= 0$"),
        ({"preset": "moe-nano", "router_aux_loss_coef": float("nan")}, r"^model\.router_aux_loss_coef=nan must be"),
        ({"preset": "moe-nano", "tie_embeddings": 1}, r"^model\.tie_embeddings=1 must be true or false$"),
        ({"preset": "moe-nano", "family": "sparse"}, r"^model\.family='sparse' must be moe or dense$"),
        ({"preset": "dense-nano", "num_heads": 2, "num_kv_heads": 4}, r"^model\.num_heads=2 is not a multiple of num_"),
        ({"preset": "dense-nano", "flops": 2e6, "hidden_size": 64.0},
         r"^model\.hidden_size=64\.0 must be a positive integer$"),
    ],
)
def test_every_transformers_shape_constraint_is_one_line(spec, message):
    with pytest.raises(TokenscaleError, match=message):
        resolve_arch(spec, 128)


def test_dense_flops_rule_keeps_width_a_multiple_of_fixed_heads():
    """With num_heads and head_dim fixed, the M-axis rule only generates dense widths LlamaConfig accepts."""
    arch = resolve_arch({"preset": "dense-nano", "flops": 2e6, "num_heads": 3, "head_dim": 16}, 128)
    assert arch["hidden_size"] % 3 == 0 and arch["num_heads"] == 3
    build_model({"preset": "dense-nano", "flops": 2e6, "num_heads": 3, "head_dim": 16}, 50, 128, seed=0)


def test_integer_router_loss_weight_builds():
    """router_aux_loss_coef: 0 (an int in YAML) reaches Qwen3MoeConfig's strict float field as 0.0."""
    model = build_model({"preset": "moe-nano", "router_aux_loss_coef": 0}, 50, 16, seed=0)
    assert model.config.router_aux_loss_coef == 0.0


def test_derived_head_dim_needs_divisible_width():
    with pytest.raises(TokenscaleError, match=r"model\.hidden_size=36 is not a multiple of num_heads=5"):
        resolve_arch({"preset": "dense-nano", "hidden_size": 36, "num_heads": 5, "num_kv_heads": 5,
                      "head_dim": None})


@pytest.mark.parametrize("family", ["moe-nano", "dense-nano"])
@pytest.mark.parametrize("hidden, heads, head_dim",
                         [(24, 3, 8), (40, 5, 8), (32, 2, 6), (30, 3, 10), (36, 6, 4), (32, 3, 8), (24, 5, 6)])
def test_accepted_shapes_train(family, hidden, heads, head_dim):
    """The check is not looser than the kernels: every shape it accepts runs forward and backward."""
    spec = {"preset": family, "hidden_size": hidden, "num_heads": heads, "num_kv_heads": 1, "head_dim": head_dim,
            "moe_intermediate_size": 8 * (hidden // 8 + 1), "intermediate_size": hidden + 2}
    try:
        resolve_arch(spec)
    except TokenscaleError:  # only the experts alignment (MoE) or hidden % heads (dense) may reject these
        assert (hidden % 8 if family == "moe-nano" else hidden % heads), spec
        return
    model = build_model(spec, 50, 16, seed=0)
    out = model(input_ids=torch.randint(0, 50, (2, 16)))
    out.logits.float().sum().backward()


# ----------------------------------------------------------------------------- FLOPs per token
def test_flops_hand_count_moe():
    arch = resolve_arch({"preset": "moe-nano", "hidden_size": 64, "num_layers": 3, "num_heads": 4, "num_kv_heads": 2,
                         "head_dim": 8, "num_experts": 8, "experts_per_token": 2, "moe_intermediate_size": 48})
    # per layer: q 64*4*8 = 2048, k+v 2*64*2*8 = 2048, o 4*8*64 = 2048           -> attention 6144
    #            router 64*8 = 512, active experts 2*3*64*48 = 18432                -> MLP 18944
    # N = 3 * (6144 + 18944) = 3 * 25088 = 75264
    assert matmul_params(arch) == 75264
    # M = 6*75264 + 12*L*H*hd*l = 451584 + 12*3*4*8*128 = 451584 + 147456 = 599040
    assert nonembedding_flops_per_token(arch, 128) == 599040
    # head = 6*d*V = 6*64*1000 = 384000; model = 599040 + 384000 = 983040
    assert lm_head_flops_per_token(arch, 1000) == 384000
    assert model_flops_per_token(arch, 128, 1000) == 983040


def test_flops_hand_count_dense():
    arch = resolve_arch({"preset": "dense-nano", "hidden_size": 48, "num_layers": 2, "num_heads": 3,
                         "num_kv_heads": 1, "head_dim": 10, "intermediate_size": 100})
    # per layer: q 48*3*10 = 1440, k+v 2*48*1*10 = 960, o 3*10*48 = 1440 -> 3840; MLP 3*48*100 = 14400
    # N = 2 * (3840 + 14400) = 2 * 18240 = 36480
    assert matmul_params(arch) == 36480
    # M = 6*36480 + 12*2*3*10*64 = 218880 + 46080 = 264960; head = 6*48*500 = 144000
    assert nonembedding_flops_per_token(arch, 64) == 264960
    assert model_flops_per_token(arch, 64, 500) == 264960 + 144000


@pytest.mark.parametrize("d, heads, layers, seq_len", [(48, 4, 2, 64), (96, 8, 3, 2048), (1536, 12, 24, 4096)])
def test_dense_flops_match_deepseek_llm(d, heads, layers, seq_len):
    """K = H, H*hd = d, f = 8d/3 (SwiGLU with the weights of a 4d two-matrix MLP): M = 72*L*d^2 + 12*L*d*l."""
    arch = resolve_arch({"preset": "dense-nano", "hidden_size": d, "num_layers": layers, "num_heads": heads,
                         "num_kv_heads": heads, "head_dim": d // heads, "intermediate_size": 8 * d // 3})
    assert nonembedding_flops_per_token(arch, seq_len) == 72 * layers * d**2 + 12 * layers * d * seq_len


_MATMUL = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight", "mlp.gate.weight",
           "gate_proj.weight", "up_proj.weight", "down_proj.weight", "experts.gate_up_proj", "experts.down_proj")


@pytest.mark.parametrize("preset", ["moe-nano", "dense-nano"])
def test_matmul_params_match_built_model(preset):
    """The analytic N is the built model's matmul weights (experts scaled by k/E); norms and embeddings are not."""
    model = build_model({"preset": preset}, vocab_size=300, max_positions=32, seed=0)
    cfg, n = model.config, 0
    for name, p in model.named_parameters():
        if "norm" in name or "embed_tokens" in name or name.startswith("lm_head"):
            continue
        assert name.endswith(_MATMUL), name  # nothing else carries weights
        n += p.numel() * cfg.num_experts_per_tok // cfg.num_experts if ".experts." in name else p.numel()
    assert matmul_params(resolve_arch({"preset": preset})) == n


# ----------------------------------------------------------------------------- M-axis family (model.flops)
import math  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from tokenscale.training.model import FLOPS_TOLERANCE, arch_stats, describe_runs, shape_for_flops  # noqa: E402

REPO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
SCALES = {"cpu": (128, 1e5, 1e7, 40), "paper": (2048, 4.2e8, 5.0e9, 60)}


def _rule_m(target: float, seq_len: int, family: str = "moe", **extra) -> float:
    return nonembedding_flops_per_token(resolve_arch({"family": family, "flops": target, **extra}, seq_len), seq_len)


@pytest.mark.parametrize("family", ["moe", "dense"])
@pytest.mark.parametrize("scale", SCALES)
def test_flops_rule_hits_targets_monotonically(family, scale):
    """Every target of a geomspace lands within the tolerance, and M never decreases as the target grows."""
    seq_len, lo, hi, n = SCALES[scale]
    targets = np.geomspace(lo, hi, n)
    m = [_rule_m(float(t), seq_len, family) for t in targets]
    assert max(abs(mi / t - 1) for mi, t in zip(m, targets)) <= FLOPS_TOLERANCE
    assert m == sorted(m)


@pytest.mark.parametrize("seq_len, lo, hi", [(128, 1e5, 1e7), (2048, 1.3e6, 1e11)])
def test_flops_rule_monotone_on_a_fine_grid(seq_len, lo, hi):
    """Targets 0.5% apart (windows overlapping): still never a smaller M for a larger target."""
    m = [_rule_m(float(t), seq_len) for t in np.geomspace(lo, hi, int(math.log(hi / lo) / math.log(1.005)))]
    assert all(b >= a for a, b in zip(m, m[1:]))


def test_flops_rule_shapes():
    """Aspect ratio near 48, head_dim 64 at GPU sizes, d/4 below, K = H/4, MoE 32 experts top-2 of width d."""
    a = resolve_arch({"family": "moe", "flops": 2e9}, 2048)
    assert a["head_dim"] == 64 and a["num_heads"] * 64 == a["hidden_size"] and 24 <= a["hidden_size"] / a["num_layers"] <= 96
    assert (a["num_experts"], a["experts_per_token"], a["moe_intermediate_size"]) == (32, 2, a["hidden_size"])
    assert a["preset"] is None and a["flops"] == 2e9
    tiny = resolve_arch({"family": "moe", "flops": 1e6}, 128)
    assert tiny["num_heads"] == 4 and tiny["num_kv_heads"] == 1 and tiny["head_dim"] == tiny["hidden_size"] // 4
    dense = resolve_arch({"family": "dense", "flops": 3e9}, 2048)
    assert abs(dense["intermediate_size"] - 8 * dense["hidden_size"] / 3) <= 4 and dense["num_heads"] % dense["num_kv_heads"] == 0


def test_paper_m_grid_gets_distinct_shapes():
    """The paper's 60 targets (4.3% apart, rounded to 3 digits as the sweep writes them) are 60 different models."""
    from tokenscale.config import grid_values

    targets = grid_values("model.flops", {"geomspace": [4.2e8, 5.0e9, 60]})
    shapes = {tuple(sorted(resolve_arch({"family": "moe", "flops": t}, 2048).items())) for t in targets}
    assert len(shapes) == 60


def test_laptop_sweep_has_8_distinct_sizes():
    shapes = [shape_for_flops(float(t), 128) for t in np.geomspace(1e5, 1e7, 8)]
    assert len({tuple(sorted(s.items())) for s in shapes}) == 8


def test_flops_explicit_keys_override_and_still_hit():
    a = resolve_arch({"family": "moe", "flops": 1e9, "num_layers": 12, "num_experts": 64, "tie_embeddings": False}, 2048)
    assert a["num_layers"] == 12 and a["num_experts"] == 64 and a["tie_embeddings"] is False
    assert abs(nonembedding_flops_per_token(a, 2048) / 1e9 - 1) <= FLOPS_TOLERANCE
    b = resolve_arch({"preset": "dense-tiny", "flops": 1e6, "hidden_size": 64}, 128)  # family from the preset
    assert b["family"] == "dense" and b["hidden_size"] == 64 and abs(nonembedding_flops_per_token(b, 128) / 1e6 - 1) <= 0.05


@pytest.mark.parametrize(
    "spec, seq_len, message",
    [
        ({"flops": 1e3}, 128, r"^model\.flops=1000 is below the smallest of the moe rule's shapes at seq_len 128 \(M="),
        ({"flops": 1e20}, 2048, r"^model\.flops=1e\+20 is above the largest of the moe rule's shapes at seq_len 2048"),
        ({"flops": 1e6, "num_layers": 2, "hidden_size": 64}, 128,
         r"^model\.flops=1e\+06 is above the largest of the moe rule's shapes with hidden_size=64, num_layers=2"),
        ({"flops": 1e6}, None, r"^model\.flops=1e\+06 needs the run's seq_len"),
        ({"flops": 1e6, "family": "sparse"}, 128, r"^model\.family='sparse' must be moe or dense"),
    ],
)
def test_flops_errors_name_the_value(spec, seq_len, message):
    with pytest.raises(TokenscaleError, match=message):
        resolve_arch(spec, seq_len)


def test_flops_error_in_config_names_the_run():
    from tokenscale.config import validate_config

    with pytest.raises(TokenscaleError, match=r"^config: runs\[0\]\.model\.flops=10 is below the smallest"):
        validate_config({"runs": [{"name": "a", "axis": "M", "model": {"flops": 10}}]})


@pytest.mark.parametrize("spec", [{"family": "moe", "flops": 3e5}, {"family": "dense", "flops": 3e5}])
def test_flops_model_builds_with_the_planned_size(spec):
    """The generated shape builds, trains a step, and its counted size equals the analytic one."""
    model = build_model(spec, vocab_size=300, max_positions=128, seed=0)
    stats = model_stats(model, seq_len=128)
    assert stats == arch_stats(resolve_arch(spec, 128), 300, 128)
    assert abs(stats.flops_per_token / 3e5 - 1) <= FLOPS_TOLERANCE
    model(input_ids=torch.randint(0, 300, (2, 16))).logits.float().sum().backward()


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("vocab, tie", [(4096, True), (1000, False)])
def test_arch_stats_equal_built_model(preset, vocab, tie):
    """Counted without building = counted on the model built on the meta device (every preset, tied or not)."""
    from transformers import AutoModelForCausalLM

    from tokenscale.training.model import hf_config

    spec = {"preset": preset, "tie_embeddings": tie}
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config(spec, vocab, 128))
    assert arch_stats(resolve_arch(spec), vocab, 128) == model_stats(model, 128)


def test_models_config_counts_the_model_the_run_builds(tmp_path, capsys):
    """moe-tiny with the default config's vocabulary (4096) has 0.39M parameters, not the 2.17M of vocab 32000."""
    from tokenscale.cli import main
    from tokenscale.config import load_config, run_configs

    cfg_path = REPO_CONFIG
    cfg = load_config(cfg_path)
    row = {r["run"]: r for r in describe_runs(run_configs(cfg), cfg["data"]["vocab_size"])}["t_moe"]
    assert row["shape"] == "L2 d64 H4/2x16 E4k2 f64" and (row["vocab_size"], row["seq_len"]) == (4096, 128)
    model = build_model({"preset": "moe-tiny"}, vocab_size=4096, max_positions=128, seed=0)
    built = model_stats(model, 128)
    assert {k: row[k] for k in built.as_dict()} == built.as_dict() and 0.38e6 < built.total_params < 0.40e6
    assert main(["models", "--config", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert "vocab 4096 (data.vocab_size), seq_len 128" in out
    assert "t_moe" in out and "0.39M" in out and "2.17M" not in out
    assert main(["models", "--vocab-size", "32000"]) == 0
    assert "moe-tiny" in capsys.readouterr().out


def test_models_without_config_or_vocab_is_one_line(tmp_path, monkeypatch, capsys):
    from tokenscale.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["models"]) == 2
    assert capsys.readouterr().err.strip() == ("tokenscale: error: models: no config/config.yaml here; give --config "
                                               "FILE (the models of its runs) or --vocab-size N (the presets)")


def test_flops_resolution_never_imports_torch():
    """Validation of an M sweep, its shapes and sizes, and the DAG's frontier values are torch-free."""
    code = (
        "import sys\n"
        "import tokenscale.studies\n"
        "from tokenscale.config import run_configs, validate_config\n"
        "from tokenscale.training.model import describe_runs\n"
        "cfg = validate_config({'data': {'seq_len': 2048}, 'sweeps': [{'name': 'm', 'axis': 'M', "
        "'base': {'model': {'family': 'moe'}}, 'grid': {'model.flops': {'geomspace': [4.2e8, 5.0e9, 60]}}}]})\n"
        "rows = describe_runs(run_configs(cfg), cfg['data']['vocab_size'])\n"
        "assert len(rows) == 61, len(rows)\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
