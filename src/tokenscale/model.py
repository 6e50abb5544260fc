"""Model construction from config: an MoE family (Qwen3-MoE classes) and a dense family (Llama classes).

Nothing is downloaded: models are built with ``AutoModelForCausalLM.from_config``. Size presets go from tiny
CPU models to the paper's 290M-6B scales; :func:`model_stats` reports total and active parameters (counted
from the built model) and FLOPs per token (computed from the architecture alone, no torch needed).

FLOPs per token, one convention everywhere (DeepSeek-LLM's, generalised to GQA and MoE). With d = hidden_size,
L = num_layers, H = num_heads, K = num_kv_heads, hd = head_dim, f = intermediate_size (dense),
E = num_experts, k = experts_per_token, f_e = moe_intermediate_size (MoE), V = vocab size, l = seq_len,
the active non-embedding matmul weights of one layer are

    N_layer = d*H*hd + 2*d*K*hd + H*hd*d        (attention projections q; k, v; o)
            + 3*d*f                             (dense SwiGLU MLP: gate, up, down)
         or + d*E + k*3*d*f_e                   (MoE: router, and only the k active experts)

(norm weights are not matmuls and are excluded), and the training FLOPs per token (forward + backward =
3 x forward, 2 FLOPs per multiply-add) are

    M          = 6*L*N_layer + 12*L*H*hd*l      (the paper's M axis: non-embedding)
    head       = 6*d*V                          (LM head; the embedding lookup is not a matmul: not counted)
    model FLOPs = M + head                      (what MFU divides by the peak, see ``throughput``)

The 12*L*H*hd*l term is the attention scores Q.K^T and the weighted sum A.V: 2*l*H*hd forward FLOPs each per
token and layer, times 3, with no causal discount. For a dense model with K = H, H*hd = d and f = 8d/3 (the
SwiGLU width whose three matrices hold the 8d^2 weights of a classic two-matrix 4d MLP), N_layer = 12d^2 and
M = 72*L*d^2 + 12*L*d*l exactly, DeepSeek-LLM's formula.
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
    head_flops_per_token: float  # LM head training FLOPs per token (6*d*V)
    model_flops_per_token: float  # M + head: the FLOPs per token MFU counts

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


def build_model(spec: dict, vocab_size: int, max_positions: int, seed: int, *, attention: str = "sdpa",
                experts: str | None = None):
    """Initialise a causal LM deterministically from ``seed``.

    ``attention`` and ``experts`` (MoE only) choose the transformers implementations; they change how the
    model computes, not its weights (the same seed gives the same initial weights whichever is chosen)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = hf_config(spec, vocab_size, max_positions)
    kw = {"experts_implementation": experts} if experts and cfg.model_type.endswith("moe") else {}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attention, **kw)
    return model


def matmul_params(arch: dict) -> int:
    """Active non-embedding matmul weights N = L * N_layer of a resolved architecture (module docstring).

    Parameters
    ----------
    arch : dict
        Output of :func:`resolve_arch` (or :func:`arch_from_config`).

    Returns
    -------
    int
        q/k/v/o projections plus the dense MLP, or the router plus the k active experts, summed over layers.
        Norm weights are excluded: they are not matmuls.
    """
    d, hd = arch["hidden_size"], arch["head_dim"]
    attn = d * arch["num_heads"] * hd + 2 * d * arch["num_kv_heads"] * hd + arch["num_heads"] * hd * d
    if arch["family"] == "moe":
        mlp = d * arch["num_experts"] + arch["experts_per_token"] * 3 * d * arch["moe_intermediate_size"]
    else:
        mlp = 3 * d * arch["intermediate_size"]
    return arch["num_layers"] * (attn + mlp)


def nonembedding_flops_per_token(arch: dict, seq_len: int) -> float:
    """M = 6*N + 12*L*H*hd*seq_len: non-embedding training FLOPs per token (the paper's M axis)."""
    return 6.0 * matmul_params(arch) + 12.0 * arch["num_layers"] * arch["num_heads"] * arch["head_dim"] * seq_len


def lm_head_flops_per_token(arch: dict, vocab_size: int) -> float:
    """6*d*V: training FLOPs per token of the LM head (tied or not, it is one d x V matmul)."""
    return 6.0 * arch["hidden_size"] * vocab_size


def model_flops_per_token(arch: dict, seq_len: int, vocab_size: int) -> float:
    """M + 6*d*V: the training FLOPs per token that MFU counts (the embedding lookup is not a matmul)."""
    return nonembedding_flops_per_token(arch, seq_len) + lm_head_flops_per_token(arch, vocab_size)


def arch_from_config(cfg) -> dict:
    """The architecture dict (the keys the FLOPs functions read) of a transformers config from :func:`hf_config`."""
    arch = dict(hidden_size=cfg.hidden_size, num_layers=cfg.num_hidden_layers, num_heads=cfg.num_attention_heads,
                num_kv_heads=cfg.num_key_value_heads,
                head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    if getattr(cfg, "num_experts", None):
        if getattr(cfg, "mlp_only_layers", None) or getattr(cfg, "decoder_sparse_step", 1) != 1:
            raise TokenscaleError("model: FLOPs are defined for configs whose every layer is sparse")
        return dict(arch, family="moe", num_experts=cfg.num_experts, experts_per_token=cfg.num_experts_per_tok,
                    moe_intermediate_size=cfg.moe_intermediate_size)
    return dict(arch, family="dense", intermediate_size=cfg.intermediate_size)


def model_stats(model, seq_len: int) -> ModelStats:
    """Parameter counts of a built model (MoE experts counted top-k/E) and its FLOPs/token (module docstring)."""
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
    arch = arch_from_config(cfg)
    flops = nonembedding_flops_per_token(arch, seq_len)
    head = lm_head_flops_per_token(arch, cfg.vocab_size)
    return ModelStats(total, active, emb, active - emb, flops, head, flops + head)


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
