"""Model construction from config: an MoE family (Qwen3-MoE classes) and a dense family (Llama classes).

Nothing is downloaded: models are built with ``AutoModelForCausalLM.from_config``. Size presets go from tiny
CPU models to the paper's 290M-6B scales, and ``flops`` generates the shape of a target M (below);
:func:`model_stats` reports total and active parameters (counted from the built model) and FLOPs per token
(computed from the architecture alone), and :func:`arch_stats` the same numbers without building (no torch).

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

The M-axis family (``runs[].model.flops``, :func:`shape_for_flops`). A target M (FLOPs/token at the run's
seq_len) picks one shape of a fixed rule, with ``family`` moe (the default) or dense:

* width d: a multiple of 8 from 16 to 248 (the MoE kernels' alignment), then a multiple of 64 up to 16384;
* heads: head_dim hd = 64 and H = d/64 from d = 256 on; below, H = 4 and hd = d/4 (tiny CPU models);
  K = H/4 key/value heads (grouped-query attention in groups of 4; groups of 2, or none, where 4 does not
  divide H);
* FFN tied to d: MoE E = 32 experts, k = 2 active per token, moe_intermediate_size f = d (so the active MLP
  has 6d^2 weights, the total 96d^2); dense SwiGLU f = 8d/3; both rounded to a multiple of 8;
* depth L: any integer with d/L within [24, 96], i.e. a factor 2 around the aspect ratio d/L = 48.

Among the shapes whose M lands within +-5% of the target (FLOPS_TOLERANCE), the rule takes the one that
minimises |ln((d/L)/48)| + 20*|ln(M/target)| (1% off the target costs as much as an aspect ratio 20% off),
then the nearer M, then the larger. Only where no shape with the tied f lands within the tolerance (widths
below ~200, where steps of 8 are coarse) may f move from its tied value, by as few steps of 8 as possible,
within [f/2, 2f]. The pick minimises a fixed score plus a convex function of ln(M) - ln(target), so the M it
returns never decreases as the target grows; the paper's 60 targets from 0.42 to 5.0 GFLOPs/token (4.3%
apart) get 60 distinct shapes. At seq_len 128 every target from 1e5 to beyond 1e7 is reached; at 2048
every target from 1.3e6 to 1.6e13 (d = 16384 ends the reach). A target outside the reach, or in a gap, is
a one-line error naming it.

Explicit keys next to ``flops`` (hidden_size, num_layers, num_heads, head_dim, num_kv_heads, num_experts,
experts_per_token, moe_intermediate_size / intermediate_size) override the generated ones: they are held
fixed and the search runs over the rest (no aspect band once hidden_size or num_layers is fixed), still
within +-5%. Resolution is pure Python: config validation and the workflow never import torch for it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

from tokenscale import TokenscaleError

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


def resolve_arch(spec: dict, seq_len: int | None = None) -> dict:
    """Preset (or FLOPs target) + explicit overrides -> complete architecture dict, its shapes checked.

    Parameters
    ----------
    spec : dict
        A ``runs[].model`` entry. With ``flops``, the shape comes from :func:`shape_for_flops` (the module
        docstring's rule) instead of the preset; the preset then only supplies the family when none is given.
    seq_len : int, optional
        The run's sequence length; needed (and only used) to resolve ``flops``, whose M includes attention.
    """
    spec = dict(spec or {})
    preset = spec.pop("preset", "moe-tiny")
    if preset not in PRESETS:
        raise TokenscaleError(f"model.preset: unknown preset {preset!r} (known: {', '.join(sorted(PRESETS))})")
    _check_whole(spec, _SHAPE_KEYS, required=False)  # before any key divides another
    if spec.get("flops") is not None:
        return _resolve_flops(spec, PRESETS[preset]["family"], seq_len)
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


def _resolve_flops(spec: dict, preset_family: str, seq_len: int | None) -> dict:
    """The architecture of a ``flops`` spec (preset removed): the rule's shape, explicit keys held fixed."""
    flops = spec.pop("flops")
    if seq_len is None:
        raise TokenscaleError(f"model.flops={flops:g} needs the run's seq_len to be resolved (data.seq_len)")
    family = spec.pop("family", preset_family)
    fixed = {k: spec.pop(k) for k in _SHAPE_KEYS if k in spec}
    arch = {**_DEFAULTS, **shape_for_flops(flops, seq_len, family, **fixed), **spec}
    check_arch(arch)
    return {**arch, "preset": None, "flops": flops}


# The experts kernels (torch grouped_mm, the transformers default) need 16-byte aligned strides: widths that
# are multiples of 8 work in bf16 and float32 alike, whichever experts implementation or precision runs.
_EXPERT_ALIGN = 8


def check_arch(arch: dict) -> None:
    """Shapes the model classes and kernels need, checked before anything is built (one line naming the key).

    What transformers enforces for the two families (LlamaConfig / Qwen3MoeConfig and their modules): whole,
    positive sizes (the configs are strict dataclasses: 32.0 is refused); for dense models hidden_size a multiple
    of num_heads (LlamaConfig.validate_architecture, even with head_dim set); num_heads a multiple of
    num_kv_heads (repeat_kv); an even head_dim (rotary embeddings); for MoE top-k within the experts and widths
    the grouped experts kernel can stride; a boolean tie_embeddings."""
    family = arch.get("family")
    if family not in ("moe", "dense"):
        raise TokenscaleError(f"model.family={family!r} must be moe or dense")
    _check_whole(arch, _FAMILY_KEYS[family], required=True)
    if not isinstance(arch.get("tie_embeddings"), bool):
        raise TokenscaleError(f"model.tie_embeddings={arch.get('tie_embeddings')!r} must be true or false")
    if arch["num_heads"] % arch["num_kv_heads"]:
        raise TokenscaleError(
            f"model.num_heads={arch['num_heads']} is not a multiple of num_kv_heads={arch['num_kv_heads']}"
        )
    if family == "dense" and arch["hidden_size"] % arch["num_heads"]:
        raise TokenscaleError(
            f"model.hidden_size={arch['hidden_size']} is not a multiple of num_heads={arch['num_heads']} "
            "(dense models: LlamaConfig requires it, even with head_dim set)"
        )
    if arch["head_dim"] % 2:
        raise TokenscaleError(f"model.head_dim={arch['head_dim']} must be even (rotary embeddings rotate pairs)")
    if family == "moe":
        _check_moe(arch)


def _check_moe(arch: dict) -> None:
    """The MoE family's own constraints (top-k, router loss weight, experts kernel alignment)."""
    if arch["experts_per_token"] > arch["num_experts"]:
        raise TokenscaleError(
            f"model.experts_per_token={arch['experts_per_token']} exceeds num_experts={arch['num_experts']}"
        )
    coef = arch.get("router_aux_loss_coef")
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not 0 <= coef < math.inf:
        raise TokenscaleError(f"model.router_aux_loss_coef={coef!r} must be a finite number >= 0")
    for key in ("hidden_size", "moe_intermediate_size"):
        if arch[key] % _EXPERT_ALIGN:
            raise TokenscaleError(
                f"model.{key}={arch[key]} must be a multiple of {_EXPERT_ALIGN} for MoE models "
                "(the grouped experts kernel needs 16-byte aligned rows)"
            )


def _check_whole(arch: dict, keys, *, required: bool) -> None:
    """Each of ``keys`` a positive int (transformers' strict configs refuse 32.0); None passes unless required."""
    for key in keys:
        v = arch.get(key)
        if v is None and not required:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise TokenscaleError(f"model.{key}={v!r} must be a positive integer")


# --------------------------------------------------------------------------------------------- M-axis family
FLOPS_TOLERANCE = 0.05  # |M / target - 1| <= this
FLOPS_ASPECT = 48  # preferred hidden_size / num_layers
FLOPS_MISS_WEIGHT = 20  # 1% off the target M costs as much as an aspect ratio 20% off
FLOPS_ASPECT_BAND = 2  # hidden_size / num_layers stays within [48/2, 48*2] when both are generated
FLOPS_MOE = dict(num_experts=32, experts_per_token=2)  # experts of the generated MoE shapes
_FLOPS_MAX_WIDTH = 16384
_SHAPE_KEYS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
               "moe_intermediate_size", "num_experts", "experts_per_token")
_ATTN_KEYS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim")
_FAMILY_KEYS = {"dense": _ATTN_KEYS + ("intermediate_size",),
                "moe": _ATTN_KEYS + ("moe_intermediate_size", "num_experts", "experts_per_token")}
_RULE_WIDTHS = tuple(range(16, 256, 8)) + tuple(range(256, _FLOPS_MAX_WIDTH + 1, 64))


def _rule_heads(family: str, d: int, num_heads: int | None, head_dim: int | None, num_kv_heads: int | None):
    """(H, K, hd) of width ``d`` by the rule (explicit values win); None when they do not fit ``d`` (check_arch)."""
    if num_heads and head_dim:
        if family == "dense" and d % num_heads:
            return None
        h, hd = num_heads, head_dim
    elif num_heads or head_dim:
        given = num_heads or head_dim
        if d % given:
            return None
        h, hd = (given, d // given) if num_heads else (d // given, given)
    else:
        hd = 64 if d >= 256 else d // 4
        h = d // hd
    k = num_kv_heads or h // next(g for g in (4, 2, 1) if h % g == 0)
    return (h, k, hd) if h % k == 0 and hd % 2 == 0 else None


def _tied_ffn(family: str, d: int) -> int:
    """The FFN width tied to ``d``: d per expert (MoE) or 8d/3 (dense SwiGLU), rounded to a multiple of 8."""
    return 8 * max(1, int((d if family == "moe" else 8 * d / 3) / 8 + 0.5))


def _layer_flops(family: str, d: int, h: int, k: int, hd: int, f: int, experts: tuple[int, int], seq_len: int):
    """M of one layer (the module docstring's 6*N_layer + 12*H*hd*l): M is this times num_layers."""
    arch = dict(family=family, hidden_size=d, num_layers=1, num_heads=h, num_kv_heads=k, head_dim=hd,
                intermediate_size=f, moe_intermediate_size=f, num_experts=experts[0], experts_per_token=experts[1])
    return nonembedding_flops_per_token(arch, seq_len)


def shape_for_flops(target: float, seq_len: int, family: str = "moe", **fixed) -> dict:
    """The shape of the M-axis family (module docstring) whose M is nearest ``target`` FLOPs/token.

    Parameters
    ----------
    target : float
        Non-embedding training FLOPs per token M (``runs[].model.flops``).
    seq_len : int
        Sequence length (the attention term of M).
    family : str
        "moe" or "dense".
    **fixed
        Explicit shape keys (``hidden_size``, ``num_layers``, ``num_experts``, ...): kept as given, the search runs
        over the others, and the result still lands within ``FLOPS_TOLERANCE``.

    Returns
    -------
    dict
        family, hidden_size, num_layers, num_heads, num_kv_heads, head_dim, and intermediate_size (dense) or
        moe_intermediate_size, num_experts, experts_per_token (MoE).
    """
    if family not in ("moe", "dense"):
        raise TokenscaleError(f"model.family={family!r} must be moe or dense")
    if not (isinstance(target, (int, float)) and target > 0):
        raise TokenscaleError(f"model.flops={target!r} must be a positive number of FLOPs/token")
    key = (float(target), int(seq_len), family, tuple(sorted(fixed.items())))
    return dict(_shape_for_flops(*key))


@functools.lru_cache(maxsize=4096)
def _shape_for_flops(target: float, seq_len: int, family: str, fixed: tuple) -> dict:
    """Cached search behind :func:`shape_for_flops` (the caller copies the result)."""
    fixed = dict(fixed)
    ffn_key = "moe_intermediate_size" if family == "moe" else "intermediate_size"
    experts = (fixed.get("num_experts", FLOPS_MOE["num_experts"]),
               fixed.get("experts_per_token", FLOPS_MOE["experts_per_token"]))
    options = _flops_options(family, seq_len, experts, fixed, ffn_key)
    lo, hi = target * (1 - FLOPS_TOLERANCE), target * (1 + FLOPS_TOLERANCE)
    viable = [o for o in options if o["reach"][0] <= hi and o["reach"][1] >= lo]
    for level in range(max((max(-o["steps"][0], o["steps"][1]) for o in viable), default=-1) + 1):
        found = [c for o in viable for c in _flops_matches(o, level, target, family, experts, seq_len)]
        if found:
            *_, d, n_layers, (h, k, hd), f = min(found)
            out = dict(family=family, hidden_size=d, num_layers=n_layers, num_heads=h, num_kv_heads=k, head_dim=hd)
            out[ffn_key] = f
            return {**out, **(dict(zip(("num_experts", "experts_per_token"), experts)) if family == "moe" else {})}
    raise _flops_error(target, seq_len, family, fixed, [m for o in options for m in o["reach"]])


def _flops_options(family: str, seq_len: int, experts: tuple, fixed: dict, ffn_key: str) -> list[dict]:
    """Candidate widths: d, heads (H, K, hd), tied FFN width f0, layers and FFN steps allowed, M reach."""
    widths = (fixed["hidden_size"],) if "hidden_size" in fixed else _RULE_WIDTHS
    band = "hidden_size" not in fixed and "num_layers" not in fixed
    options = []
    for d in widths:
        heads = _rule_heads(family, d, fixed.get("num_heads"), fixed.get("head_dim"), fixed.get("num_kv_heads"))
        if heads is None:
            continue
        f0 = fixed.get(ffn_key) or _tied_ffn(family, d)
        steps = (0, 0) if ffn_key in fixed else (-((f0 - max(8, f0 // 2)) // 8), f0 // 8)
        if "num_layers" in fixed:
            layers = (fixed["num_layers"],) * 2
        elif band:
            layers = (max(1, -(-d // (FLOPS_ASPECT * FLOPS_ASPECT_BAND))), d * FLOPS_ASPECT_BAND // FLOPS_ASPECT)
        else:
            layers = (1, 10**6)
        if layers[0] > layers[1]:
            continue
        reach = tuple(_layer_flops(family, d, *heads, f0 + 8 * j, experts, seq_len) * n
                      for j, n in zip(steps, layers))
        options.append(dict(d=d, heads=heads, f0=f0, layers=layers, steps=steps, reach=reach))
    return options


def _flops_matches(o: dict, level: int, target: float, family: str, experts: tuple, seq_len: int) -> list[tuple]:
    """Shapes of option ``o`` with FFN step +-``level`` within the tolerance: (score, miss, -M, d, L, heads, f)."""
    out = []
    for j in {-level, level}:
        if not o["steps"][0] <= j <= o["steps"][1]:
            continue
        f = o["f0"] + 8 * j
        c = _layer_flops(family, o["d"], *o["heads"], f, experts, seq_len)
        first = max(o["layers"][0], math.ceil(target * (1 - FLOPS_TOLERANCE) / c))
        for n_layers in range(first, min(o["layers"][1], math.floor(target * (1 + FLOPS_TOLERANCE) / c)) + 1):
            miss, aspect = abs(math.log(c * n_layers / target)), abs(math.log(o["d"] / (FLOPS_ASPECT * n_layers)))
            out.append((aspect + FLOPS_MISS_WEIGHT * miss, miss, -c * n_layers, o["d"], n_layers, o["heads"], f))
    return out


def _flops_error(target: float, seq_len: int, family: str, fixed: dict, reach: list) -> TokenscaleError:
    """The one-line error for a target no shape of the rule reaches: too small, too large, or in a gap."""
    where = f"{family} rule's shapes" + (f" with {', '.join(f'{k}={v}' for k, v in fixed.items())}" if fixed else "")
    where += f" at seq_len {seq_len}"
    if not reach:
        return TokenscaleError(f"model.flops={target:.4g}: the {where} are empty (check the explicit model keys)")
    if target * (1 + FLOPS_TOLERANCE) < min(reach):
        return TokenscaleError(f"model.flops={target:.4g} is below the smallest of the {where} (M={min(reach):.4g})")
    if target * (1 - FLOPS_TOLERANCE) > max(reach):
        return TokenscaleError(f"model.flops={target:.4g} is above the largest of the {where} (M={max(reach):.4g})")
    return TokenscaleError(f"model.flops={target:.4g}: none of the {where} lands within ±{FLOPS_TOLERANCE:.0%}")


def hf_config(spec: dict, vocab_size: int, max_positions: int):
    """A transformers config object for the architecture ``spec`` (``max_positions`` = seq_len resolves ``flops``)."""
    arch = resolve_arch(spec, max_positions)
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
            router_aux_loss_coef=float(arch["router_aux_loss_coef"]),  # a strict float field: 0 is refused
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


def param_counts(arch: dict, vocab_size: int) -> dict:
    """Parameters of the model :func:`build_model` builds from ``arch``, counted from the shapes (no torch).

    Returns total, active (MoE experts counted k/E, as :func:`model_stats` counts them) and embedding
    (embedding + untied LM head) parameters; norms are included (Qwen3-MoE also has per-head q/k norms).
    """
    d, n_layers, hd = arch["hidden_size"], arch["num_layers"], arch["head_dim"]
    attn = 2 * d * arch["num_heads"] * hd + 2 * d * arch["num_kv_heads"] * hd
    norms = 2 * d
    if arch["family"] == "moe":
        experts = arch["num_experts"] * 3 * d * arch["moe_intermediate_size"]
        layer_total = attn + 2 * hd + norms + d * arch["num_experts"] + experts
        layer_active = layer_total - experts + experts * arch["experts_per_token"] // arch["num_experts"]
    else:
        layer_total = layer_active = attn + norms + 3 * d * arch["intermediate_size"]
    emb = vocab_size * d * (1 if arch["tie_embeddings"] else 2)
    return dict(total=n_layers * layer_total + d + emb, active=n_layers * layer_active + d + emb, embedding=emb)


def arch_stats(arch: dict, vocab_size: int, seq_len: int) -> ModelStats:
    """:func:`model_stats` of the model ``arch`` builds, computed without building it (tested equal)."""
    n = param_counts(arch, vocab_size)
    flops = nonembedding_flops_per_token(arch, seq_len)
    head = lm_head_flops_per_token(arch, vocab_size)
    return ModelStats(n["total"], n["active"], n["embedding"], n["active"] - n["embedding"], flops, head, flops + head)


def describe_presets(vocab_size: int = 32000, seq_len: int = 2048) -> list[dict]:
    """Sizes of every preset at ``vocab_size`` and ``seq_len`` (:func:`arch_stats`: nothing is built)."""
    return [{"preset": name, **arch_stats(resolve_arch({"preset": name}), vocab_size, seq_len).as_dict()}
            for name in PRESETS]


def describe_runs(runs: dict, vocab: int) -> list[dict]:
    """Every run (``tokenscale.config.run_configs``) with the model it builds at the config's vocabulary
    (data.vocab_size) and its seq_len."""
    rows = []
    for name, run in runs.items():
        arch = resolve_arch(run.model, run.seq_len)
        rows.append({"run": name, "axis": run.axis, "sweep": run.sweep, "shape": shape_label(arch),
                     "vocab_size": vocab, "seq_len": run.seq_len, **arch_stats(arch, vocab, run.seq_len).as_dict()})
    return rows


def shape_label(arch: dict) -> str:
    """A short shape string: ``L12 d768 H12/4x64 E32k4 f256`` (MoE) or ``L24 d1024 H16/16x64 f4096`` (dense)."""
    heads = f"H{arch['num_heads']}/{arch['num_kv_heads']}x{arch['head_dim']}"
    if arch["family"] == "moe":
        ffn = f"E{arch['num_experts']}k{arch['experts_per_token']} f{arch['moe_intermediate_size']}"
    else:
        ffn = f"f{arch['intermediate_size']}"
    return f"L{arch['num_layers']} d{arch['hidden_size']} {heads} {ffn}"
