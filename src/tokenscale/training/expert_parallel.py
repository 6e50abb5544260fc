"""MoE expert parallelism (engine deepspeed): DeepSpeed AutoEP on the transformers Qwen3-MoE blocks.

With expert parallelism e (``resources.train[].expert_parallel``) the W ranks form W/e expert-parallel groups of e
consecutive ranks (DeepSpeed's groups ``ep_size_{e}``, :mod:`deepspeed.utils.groups`). Rank r of a group holds experts
[r*E/e, (r+1)*E/e) of every MoE layer; each token travels to the ranks of its k experts and back with
``all_to_all_single`` (variable splits). Everything else stays data parallel over all W ranks (ZeRO 1-2 as
without EP); the experts are data parallel over the W/e ranks that hold the same slice (the expert-data-parallel
group): their optimizer param groups are split off with
:func:`deepspeed.moe.utils.split_params_into_different_moe_groups_for_optimizer`, so ZeRO reduces and partitions
them there.

Why AutoEP (DeepSpeed's ``expert_parallel`` config section, preset ``qwen3_moe``) and not
``deepspeed.moe.layer.MoE``: MoE's TopKGate routes with capacity factors (tokens over capacity are dropped) and
adds its own auxiliary loss, so it cannot reproduce Qwen3-MoE's routing. AutoEP replaces each
``Qwen3MoeSparseMoeBlock`` by a layer whose router is Qwen3-MoE's, dropless, with the block's own weights
(the router's W_g; the fused ``gate_up_proj`` [E, 2f, d] split into gate w1 and up w3, ``down_proj`` = w2)::

    p = softmax(x W_g^T)  (float32),   (w, i) = top-k(p),   w <- w / (sum(w) + 1e-20)   (norm_topk_prob)
    y = sum_j w_j * w2[i_j] (silu(w1[i_j] x) * w3[i_j] x)

It differs from the HF block only by the 1e-20 and by the order in which the k terms are summed, so the loss with
EP equals the loss without it to float reduction order (tests/test_expert_parallel.py). AutoEP retargets
transformers' router-logits recorder to its router, so the trainer's load-balancing loss is computed as before.
The HF experts implementation (``perf.experts``) does not apply to AutoEP layers: they run DeepSpeed's
grouped GEMM on CUDA and its per-expert loop on CPU.

Checkpoints stay dense HF folders: :func:`dense_model` gathers every layer's expert slices over its EP group
(``all_gather``; every rank takes part), maps the AutoEP names back (``mlp.router.gate.weight`` ->
``mlp.gate.weight``, cat(w1, w3) -> ``mlp.experts.gate_up_proj``, w2 -> ``mlp.experts.down_proj``) and, on rank 0,
loads them into the dense model built on the meta device, which ``save_pretrained`` writes as it writes any
checkpoint. Resume state is DeepSpeed's own checkpoint, written per rank (``engine.save_checkpoint`` knows AutoEP:
dense model and optimizer partitions per data-parallel rank, expert weights per expert); it resumes only with the
same world size and EP (the trainer records both).

DeepSpeed 0.19.8's AutoEP and transformers 5.x disagree on the router-recorder registry's ``get``;
:func:`recorder_registry_compat` bridges them for the duration of ``deepspeed.initialize``.
"""

from __future__ import annotations

import contextlib

from tokenscale import TokenscaleError

PRESET = "qwen3_moe"  # DeepSpeed AutoEP's preset for transformers' Qwen3-MoE (and Qwen2-MoE) blocks


def check(ep: int, *, world: int, num_experts: int | None, engine: str, where: str) -> None:
    """One line when expert parallelism ``ep`` cannot run: engine deepspeed, an MoE model, ep | world, ep | E."""
    if ep == 1:
        return
    if engine != "deepspeed":
        raise TokenscaleError(f"{where}: expert_parallel={ep} needs engine: deepspeed (the run's engine is {engine!r})")
    if not num_experts:
        raise TokenscaleError(f"{where}: expert_parallel={ep} needs an MoE model (the run's model is dense)")
    if world % ep:
        raise TokenscaleError(f"{where}: expert_parallel={ep} does not divide the {world} ranks of the run")
    if num_experts % ep:
        raise TokenscaleError(f"{where}: expert_parallel={ep} does not divide the model's num_experts={num_experts}")


def ds_section(ep: int, device_type: str) -> dict:
    """The DeepSpeed config's ``expert_parallel`` section: AutoEP with ``ep`` ranks per expert-parallel group."""
    return {"enabled": True, "autoep_size": ep, "preset_model": PRESET, "use_grouped_mm": device_type == "cuda"}


def optimizer_factories(opt, make_scheduler):
    """(model_parameters, optimizer callable, scheduler callable) for ``deepspeed.initialize`` under AutoEP.

    AutoEP replaces the expert parameters inside ``deepspeed.initialize``: DeepSpeed re-points the parameter groups
    (lists of the old tensors) at their replacements, then the callable builds ``type(opt)`` over them with the
    experts in their own MoE groups (every hyperparameter comes from ``opt``'s groups), and ``make_scheduler(opt)``
    its scheduler."""
    from deepspeed.moe.utils import split_params_into_different_moe_groups_for_optimizer

    groups = [dict(g, params=list(g["params"]), name=f"group{i}") for i, g in enumerate(opt.param_groups)]
    cls = type(opt)

    def make_optimizer(params):
        return cls(split_params_into_different_moe_groups_for_optimizer(list(params)))

    return groups, make_optimizer, make_scheduler


def _autoep_layers(model) -> list:
    from deepspeed.module_inject.auto_ep_layer import AutoEPMoELayer

    return [(name, m) for name, m in model.named_modules() if isinstance(m, AutoEPMoELayer)]


def _gather(t, group, ep: int):
    """The e slices ``t`` [E/e, ...] of an EP group, concatenated in group-rank order: [E, ...] (all ranks)."""
    import torch
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(ep)]
    dist.all_gather(parts, t.detach().contiguous(), group=group)
    return torch.cat(parts, dim=0)


def dense_state_dict(model, main: bool) -> dict | None:
    """The HF (dense) state dict of an AutoEP model: every rank must call it; the dict is returned on ``main``."""
    import torch
    from deepspeed.utils import groups

    out = {}
    replaced = set()
    for name, layer in _autoep_layers(model):
        group = groups._get_expert_parallel_group(layer.ep_group_name)
        w1, w2, w3 = (_gather(getattr(layer.experts, w), group, layer.ep_size) for w in ("w1", "w2", "w3"))
        out[f"{name}.gate.weight"] = layer.router.gate.weight.detach()
        out[f"{name}.experts.gate_up_proj"] = torch.cat([w1, w3], dim=1)  # [E, 2f, d]: gate, then up
        out[f"{name}.experts.down_proj"] = w2  # [E, d, f]
        replaced.add(name + ".")
    if not main:
        return None
    for key, value in model.state_dict().items():
        if not any(key.startswith(p) for p in replaced):
            out[key] = value.detach()
    return out


def dense_model(model, main: bool):
    """The dense HF model with ``model``'s weights (every rank must call it; None except on ``main``).

    The dense model is built on the meta device and takes the gathered tensors as its parameters (no copy)."""
    import torch

    state = dense_state_dict(model, main)
    if state is None:
        return None
    with torch.device("meta"):
        dense = type(model)(model.config)
    missing, unexpected = dense.load_state_dict(state, strict=False, assign=True)
    bad = [k for k in missing if k != "lm_head.weight"] + list(unexpected)
    if bad:
        raise TokenscaleError(f"expert parallelism: the gathered state does not match the dense model (e.g. {bad[0]})")
    if model.config.tie_word_embeddings:
        dense.lm_head.weight = dense.model.embed_tokens.weight
    elif "lm_head.weight" in missing:
        raise TokenscaleError("expert parallelism: the gathered state has no lm_head.weight")
    return dense.eval()


@contextlib.contextmanager
def recorder_registry_compat():
    """Let AutoEP retarget transformers' router-logits recorder (inside ``deepspeed.initialize``).

    DeepSpeed 0.19's AutoEP reads transformers' ``_CAN_RECORD_REGISTRY`` as a plain dict keyed by class name
    (``registry.get(key, default)``), while transformers 5.x overrides ``get`` to take a model. For the duration of
    the call the registry answers both (a string key as a dict, anything else by its class name, as transformers
    does)."""
    try:
        from transformers.utils import output_capturing
    except ImportError:  # pragma: no cover
        yield
        return
    registry = getattr(output_capturing, "_CAN_RECORD_REGISTRY", None)
    if registry is None or "get" in getattr(registry, "__dict__", {"get": 0}):
        yield
        return
    missing = object()

    def get(key, default=missing):
        if isinstance(key, str):
            return dict.get(registry, key) if default is missing else dict.get(registry, key, default)
        return dict.get(registry, str(key.__class__)) or ({} if default is missing else default)

    registry.get = get
    try:
        yield
    finally:
        del registry.get
