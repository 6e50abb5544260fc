import pytest
import torch

from tokenscale import TokenscaleError
from tokenscale.model import (
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


def test_derived_head_dim_needs_divisible_width():
    with pytest.raises(TokenscaleError, match=r"model\.hidden_size=36 is not a multiple of num_heads=5"):
        resolve_arch({"preset": "dense-nano", "hidden_size": 36, "num_heads": 5, "num_kv_heads": 5,
                      "head_dim": None})


@pytest.mark.parametrize("family", ["moe-nano", "dense-nano"])
@pytest.mark.parametrize("hidden, heads, head_dim", [(24, 3, 8), (40, 5, 8), (32, 2, 6), (30, 3, 10), (36, 6, 4)])
def test_accepted_shapes_train(family, hidden, heads, head_dim):
    """The check is not looser than the kernels: every shape it accepts runs forward and backward."""
    spec = {"preset": family, "hidden_size": hidden, "num_heads": heads, "num_kv_heads": 1, "head_dim": head_dim,
            "moe_intermediate_size": 8 * (hidden // 8 + 1), "intermediate_size": hidden + 2}
    try:
        resolve_arch(spec)
    except TokenscaleError:
        assert family == "moe-nano" and hidden % 8, spec  # only the experts alignment may reject these
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
