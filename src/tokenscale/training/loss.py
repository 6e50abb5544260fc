"""The language-model loss: LM head + cross-entropy, either plain or chunked and fused.

For final hidden states ``h`` (N, d), the LM-head weight ``W`` (V, d) and targets ``y`` (N,), of which the
rows with ``y = -100`` (``IGNORE``) are not counted (n = the number of counted rows)::

    z_i   = W h_i                                   logits, (V,)
    l_i   = logsumexp(z_i) - z_{i, y_i}             per-token loss
    L     = (1/n) sum_i l_i
    dL/dz_i = (softmax(z_i) - onehot(y_i)) / n      (0 for ignored rows)
    dL/dh_i = W^T dL/dz_i        dL/dW = sum_i dL/dz_i h_i^T

``plain`` materialises all N x V logits, their log-softmax and its gradient: three or more passes over N*V
floats (32 MB each for the demo's 2,048 tokens x 4,096 vocabulary), which on a CPU costs more than the rest
of the model together. ``chunked`` computes L *and both gradients* in the forward pass, ``c`` rows at a
time, so a c x V block stays in cache and the logits are never stored; backward only scales the stored
gradients. The FLOPs are the same (three N*d*V matmuls); the memory is O(c*V + V*d) instead of O(N*V).
This is the scheme of Liger Kernel's fused linear cross-entropy; it is written here in PyTorch ops because
that library needs Triton (GPU only) and the embedded default trains on a CPU.

Precision: the matmuls run in the autocast dtype when autocast is on (bf16 on a GPU), softmax and the loss in
float32, and ``dL/dW`` is accumulated in float32 over the chunks.
"""

from __future__ import annotations

import torch

IGNORE = -100
LOSS_IMPLS = ("plain", "chunked")

# Elements of one c x V logits block: ~2 MB of float32 fits a CPU core's L2/L3 share; on a GPU a larger
# block amortises the per-chunk launches (128 MB at most).
_BLOCK_ELEMS = {"cpu": 1 << 19, "cuda": 1 << 25}


def chunk_rows(n_rows: int, vocab: int, device_type: str) -> int:
    """Rows per chunk: the block budget of the device type divided by the vocabulary size."""
    budget = _BLOCK_ELEMS.get(device_type, _BLOCK_ELEMS["cuda"])
    return max(1, min(n_rows, budget // max(1, vocab)))


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    kind = h.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return h.dtype


class _ChunkedLinearCE(torch.autograd.Function):
    """Mean cross-entropy of ``h @ W.T`` against ``y``; gradients computed in forward, chunk by chunk."""

    @staticmethod
    def forward(ctx, h, w, y, rows: int, dtype: torch.dtype, need_grad: bool):
        n = max(1, int((y != IGNORE).sum()))
        acc = torch.promote_types(dtype, torch.float32)  # softmax, loss and dL/dW: float32 (float64 stays)
        hd, wd = h.to(dtype), w.to(dtype)  # (N, d), (V, d) in the matmul dtype
        gh = torch.empty_like(h) if need_grad else None  # (N, d)
        gw = torch.zeros(w.shape, dtype=acc, device=w.device) if need_grad else None  # (V, d)
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for s in range(0, h.shape[0], rows):
            hc, yc = hd[s:s + rows], y[s:s + rows]  # (c, d), (c,)
            z = (hc @ wd.t()).to(acc)  # (c, V) logits
            keep = (yc != IGNORE).to(acc)  # (c,) 1 = counted
            yk = yc.clamp(min=0)
            picked = z.gather(1, yk[:, None]).squeeze(1)  # (c,)
            zmax = z.amax(dim=1, keepdim=True)  # (c, 1)
            p = z.sub_(zmax).exp_()  # (c, V) unnormalised softmax, in place of z
            norm = p.sum(dim=1, keepdim=True)  # (c, 1)
            loss = (zmax.squeeze(1) + norm.log().squeeze(1) - picked) * keep
            total += loss.sum(dtype=torch.float64)
            if not need_grad:
                continue
            p.mul_(keep[:, None] / (norm * n))  # (c, V) softmax / n, 0 on ignored rows
            p[torch.arange(p.shape[0], device=p.device), yk] -= keep / n  # dL/dz
            gz = p.to(dtype)
            gh[s:s + rows] = (gz @ wd).to(h.dtype)  # (c, d)
            if dtype == acc:
                gw.addmm_(gz.t(), hc)  # (V, d)
            else:
                gw += (gz.t() @ hc).to(acc)
        if need_grad:
            ctx.save_for_backward(gh, gw.to(w.dtype))
        return (total / n).to(acc)

    @staticmethod
    def backward(ctx, g):
        gh, gw = ctx.saved_tensors
        return gh * g, gw * g, None, None, None, None


def linear_cross_entropy(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor, impl: str = "chunked",
                         rows: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of the logits ``h @ w.T`` (h: (N, d), w: (V, d), y: (N,); y = -100 is not counted).

    ``impl`` is ``"chunked"`` (fused, logits never stored) or ``"plain"``; ``rows`` is the chunk height
    (default :func:`chunk_rows`). Both return the same value to float32 rounding, and the same gradients."""
    if impl == "plain":
        logits = h @ w.t()  # (N, V)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        return torch.nn.functional.cross_entropy(logits, y, ignore_index=IGNORE)
    if impl != "chunked":
        raise ValueError(f"loss implementation {impl!r} is not one of {', '.join(LOSS_IMPLS)}")
    if h.ndim != 2 or w.ndim != 2 or y.shape != h.shape[:1] or h.shape[1] != w.shape[1]:
        raise ValueError(f"shapes h {tuple(h.shape)}, w {tuple(w.shape)}, y {tuple(y.shape)} do not fit (N, d), (V, d), (N,)")
    rows = rows or chunk_rows(h.shape[0], w.shape[0], h.device.type)
    need_grad = torch.is_grad_enabled() and (h.requires_grad or w.requires_grad)
    return _ChunkedLinearCE.apply(h, w, y, rows, _compute_dtype(h), need_grad)
