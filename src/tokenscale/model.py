"""Model construction from config: an MoE family (Qwen3-MoE classes) and a dense family (Llama classes).

Nothing is downloaded: models are built with ``AutoModelForCausalLM.from_config``. Size presets go from tiny
CPU models to the paper's 290M-6B scales; :func:`model_stats` reports total parameters, active parameters
and non-embedding FLOPs per token (the paper's M axis, DeepSeek-LLM convention):

    M = 6 * N_active_nonembedding + 6 * n_layers * seq_len * d_attn

(6N for forward+backward matmuls of the active non-embedding weights, plus the attention score/value
products, which scale with context length.)
"""

from __future__ import annotations

from dataclasses import dataclass

from . import TokenscaleError

# Named presets. Values are the architecture keys accepted by ``runs[].model`` in the config.
PRESETS: dict[str, dict] = {
    # --- CPU sizes (tests, embedded default) ---
    "moe-nano": dict(family="moe", hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                     moe_intermediate_size=32, num_experts=4, experts_per_token=2),
    "moe-tiny": dict(family="moe", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                     moe_intermediate_size=64, num_experts=4, experts_per_token=2),
    "moe-small": dict(family="moe", hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                      moe_intermediate_size=128, num_experts=8, experts_per_token=2),
    "dense-nano": dict(family="dense", hidden_size=32, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16,
                       intermediate_size=96),
    "dense-tiny": dict(family="dense", hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                       intermediate_size=192),
    "dense-small": dict(family="dense", hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                        intermediate_size=384),
    # --- GPU sizes (approximate the paper's scales; run `tokenscale models` for exact counts) ---
    "moe-290m": dict(family="moe", hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4, head_dim=64,
                     moe_intermediate_size=256, num_experts=32, experts_per_token=4),
    "moe-1.5b": dict(family="moe", hidden_size=1536, num_layers=16, num_heads=16, num_kv_heads=4, head_dim=96,
                     moe_intermediate_size=384, num_experts=48, experts_per_token=6),
    "moe-6b": dict(family="moe", hidden_size=2048, num_layers=24, num_heads=16, num_kv_heads=4, head_dim=128,
                   moe_intermediate_size=576, num_experts=64, experts_per_token=6),
    "dense-410m": dict(family="dense", hidden_size=1024, num_layers=24, num_heads=16, num_kv_heads=16,
                       head_dim=64, intermediate_size=4096),
    "dense-1.4b": dict(family="dense", hidden_size=2048, num_layers=24, num_heads=16, num_kv_heads=16,
                       head_dim=128, intermediate_size=8192),
}

_DEFAULTS = dict(num_kv_heads=None, head_dim=None, intermediate_size=None, moe_intermediate_size=None,
                 num_experts=8, experts_per_token=2, router_aux_loss_coef=0.001, tie_embeddings=True)


@dataclass(frozen=True)
class ModelStats:
    total_params: int
    active_params: int
    embedding_params: int
    nonembedding_active_params: int
    flops_per_token: float  # non-embedding training FLOPs per token (M)

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def resolve_arch(spec: dict) -> dict:
    """Preset + explicit overrides -> complete architecture dict, its shapes checked (:func:`check_arch`)."""
    spec = dict(spec or {})
    preset = spec.pop("preset", "moe-tiny")
    if preset not in PRESETS:
        raise TokenscaleError(f"model.preset: unknown preset {preset!r} (known: {', '.join(sorted(PRESETS))})")
    arch = {**_DEFAULTS, **PRESETS[preset], **spec}
    if arch["head_dim"] is None:
        if arch["hidden_size"] % arch["num_heads"]:
            raise TokenscaleError(
                f"model.hidden_size={arch['hidden_size']} is not a multiple of num_heads={arch['num_heads']} "
                "(set model.head_dim explicitly)"
            )
        arch["head_dim"] = arch["hidden_size"] // arch["num_heads"]
    if arch["num_kv_heads"] is None:
        arch["num_kv_heads"] = arch["num_heads"]
    if arch["family"] == "moe" and arch["moe_intermediate_size"] is None:
        arch["moe_intermediate_size"] = 2 * arch["hidden_size"]
    elif arch["family"] == "dense" and arch["intermediate_size"] is None:
        arch["intermediate_size"] = 4 * arch["hidden_size"]
    check_arch(arch)
    arch["preset"] = preset
    return arch


# The experts kernels (torch grouped_mm, the transformers default) need 16-byte aligned strides: widths that
# are multiples of 8 work in bf16 and float32 alike, whichever experts implementation or precision runs.
_EXPERT_ALIGN = 8


def check_arch(arch: dict) -> None:
    """Shapes the model classes and kernels need, checked before anything is built (one line naming the key)."""
    if arch["num_heads"] % arch["num_kv_heads"]:
        raise TokenscaleError(
            f"model.num_heads={arch['num_heads']} is not a multiple of num_kv_heads={arch['num_kv_heads']}"
        )
    if arch["head_dim"] % 2:
        raise TokenscaleError(f"model.head_dim={arch['head_dim']} must be even (rotary embeddings rotate pairs)")
    if arch["family"] != "moe":
        return
    if arch["experts_per_token"] > arch["num_experts"]:
        raise TokenscaleError(
            f"model.experts_per_token={arch['experts_per_token']} exceeds num_experts={arch['num_experts']}"
        )
    for key in ("hidden_size", "moe_intermediate_size"):
        if arch[key] % _EXPERT_ALIGN:
            raise TokenscaleError(
                f"model.{key}={arch[key]} must be a multiple of {_EXPERT_ALIGN} for MoE models "
                "(the grouped experts kernel needs 16-byte aligned rows)"
            )


def hf_config(spec: dict, vocab_size: int, max_positions: int):
    """A transformers config object for the architecture ``spec``."""
    arch = resolve_arch(spec)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=arch["hidden_size"],
        num_hidden_layers=arch["num_layers"],
        num_attention_heads=arch["num_heads"],
        num_key_value_heads=arch["num_kv_heads"],
        head_dim=arch["head_dim"],
        max_position_embeddings=max_positions,
        tie_word_embeddings=arch["tie_embeddings"],
        rope_theta=10000.0,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    if arch["family"] == "moe":
        from transformers import Qwen3MoeConfig

        return Qwen3MoeConfig(
            **common,
            intermediate_size=arch["moe_intermediate_size"],  # unused: every layer is sparse
            moe_intermediate_size=arch["moe_intermediate_size"],
            num_experts=arch["num_experts"],
            num_experts_per_tok=arch["experts_per_token"],
            decoder_sparse_step=1,
            mlp_only_layers=[],
            norm_topk_prob=True,
            router_aux_loss_coef=arch["router_aux_loss_coef"],
            output_router_logits=False,
        )
    from transformers import LlamaConfig

    return LlamaConfig(**common, intermediate_size=arch["intermediate_size"])


def build_model(spec: dict, vocab_size: int, max_positions: int, seed: int):
    """Initialise a causal LM deterministically from ``seed``."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config(spec, vocab_size, max_positions)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    return model


def model_stats(model, seq_len: int) -> ModelStats:
    """Parameter counts and non-embedding FLOPs/token of a built model (MoE experts counted top-k/E)."""
    cfg = model.config
    n_exp = getattr(cfg, "num_experts", None)
    top_k = getattr(cfg, "num_experts_per_tok", None)
    total = active = emb = 0
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:  # tied embeddings count once
            continue
        seen.add(id(p))
        n = p.numel()
        total += n
        if "embed_tokens" in name or name.startswith("lm_head"):
            emb += n
            active += n
        elif n_exp and ".experts." in name:
            active += n * top_k // n_exp
        else:
            active += n
    nonemb_active = active - emb
    d_attn = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    flops = 6.0 * nonemb_active + 6.0 * cfg.num_hidden_layers * seq_len * d_attn
    return ModelStats(total, active, emb, nonemb_active, flops)


def describe_presets(vocab_size: int = 32000, seq_len: int = 2048) -> list[dict]:
    """Sizes of every preset (built on the meta device: no memory is allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    rows = []
    for name in PRESETS:
        cfg = hf_config({"preset": name}, vocab_size, seq_len)
        with torch.device("meta"):
            m = AutoModelForCausalLM.from_config(cfg)
        rows.append({"preset": name, **model_stats(m, seq_len).as_dict()})
    return rows
