"""One block of rows -> chunks -> the engine, on one or more CPU threads.

:func:`fit_block` splits a block of rows (already a tensor on the compute device) into chunks of
``opts["chunk"]`` rows and hands each to the engine resolved by :mod:`tokenscale.fit.api`:

* ``native``: :func:`tokenscale.fit.engines.native.fit_chunk` (centring, grid start and LM in C);
* ``triton``: the torch grid start, then one fused kernel per chunk (:mod:`tokenscale.fit.engines.triton_lm`);
* ``torch``: the torch grid start and :func:`tokenscale.fit.engines.torch_lm.lm` for at most
  ``DEFER_AFTER`` iterations; unfinished rows are pooled with later chunks' and resumed together.

Every row keeps its own state, so a row's result does not depend on the chunking.  On CPU, ``workers``
threads each take whole chunks (single-threaded torch ops, or the C kernel, which releases the GIL).
"""

from __future__ import annotations

import torch

from tokenscale.fit.engines import native
from tokenscale.fit.engines.torch_lm import (
    TorchProblem,
    Workspace,
    cat_rows,
    lm,
    new_out,
    start_rows,
)

__all__ = ["fit_block"]


def _run_chunks(Y: torch.Tensor, starts, next_start, P: TorchProblem, opts: dict, out: dict,
                ws: Workspace | None) -> Workspace | None:
    """Fit the chunks handed out by ``next_start()`` (row offsets; None when exhausted) with one
    workspace; unfinished rows of each chunk are pooled and resumed together (see
    :func:`~tokenscale.fit.engines.torch_lm.lm`)."""
    n, k = Y.shape
    chunk, max_iter, tol, defer_after = opts["chunk"], opts["max_iter"], opts["tol"], opts["defer_after"]
    pool: list[dict] = []
    pool_n = 0
    while True:
        lo = next_start()
        if lo is None:
            break
        hi = min(n, lo + chunk)
        if opts["engine"] == "native":  # per-row C kernel: every row iterates to its own end, no pool
            ws = native.fit_chunk(Y, lo, hi, P, opts, out, ws)
            continue
        rows = start_rows(Y, lo, hi, P, out, opts["refine"])
        if rows is None:
            continue
        if opts["engine"] == "triton":  # one fused kernel per chunk: rows iterate in registers, no pool
            from tokenscale.fit.engines import triton_lm

            triton_lm.lm(rows["Yc"], rows["X"], rows["idx"], P, opts, out)
            continue
        ws = Workspace.ensure(ws, rows["idx"].shape[0], k, Y.device, Y.dtype)
        rest = lm(rows, P, ws, out, max_iter, tol, defer_after)
        if rest is not None:
            pool.append(rest)
            pool_n += rest["idx"].shape[0]
        if pool_n >= chunk:
            rows = cat_rows(pool)
            ws = Workspace.ensure(ws, pool_n, k, Y.device, Y.dtype)
            rest = lm(rows, P, ws, out, max_iter, tol, defer_after)
            pool = [] if rest is None else [rest]
            pool_n = 0 if rest is None else rest["idx"].shape[0]
    if pool:
        rows = cat_rows(pool)
        ws = Workspace.ensure(ws, pool_n, k, Y.device, Y.dtype)
        lm(rows, P, ws, out, max_iter, tol, None)
    return ws


def fit_block(Y: torch.Tensor, P: TorchProblem, opts: dict, wss: list):
    """Fit all rows of the (n, K) tensor ``Y`` (on P.device/P.dtype); returns a dict of (n,) tensors.

    Rows are processed in chunks of ``opts['chunk']`` (cache-sized working set); each chunk runs at most
    ``opts['defer_after']`` LM iterations and hands its unfinished rows to a pool, which is solved when it
    holds a chunk's worth of rows and drained at the end.  On CPU with ``opts['workers'] > 1`` the chunks
    are shared out to that many threads, each running single-threaded torch ops on its own chunks and
    scratch buffers (torch releases the GIL inside its kernels); unlike intra-op parallelism this has no
    barrier per operation, so it keeps scaling when the cores are shared with other processes.
    ``wss`` is the list of per-worker workspaces (reused across blocks).
    """
    n = Y.shape[0]
    out = new_out(n, Y.device, Y.dtype)
    starts = list(range(0, n, opts["chunk"]))
    workers = min(opts["workers"], len(starts))
    while len(wss) < max(workers, 1):
        wss.append(None)
    if workers <= 1:
        it = iter(starts)
        wss[0] = _run_chunks(Y, starts, lambda: next(it, None), P, opts, out, wss[0])
        return out
    import threading
    from concurrent.futures import ThreadPoolExecutor

    lock = threading.Lock()
    it = iter(starts)

    def next_start():
        with lock:
            return next(it, None)

    def work(w):
        wss[w] = _run_chunks(Y, starts, next_start, P, opts, out, wss[w])

    prev = torch.get_num_threads()
    torch.set_num_threads(1)  # worker threads read the global setting when they first run a parallel op
    try:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tokenscale-fit") as ex:
            for f in [ex.submit(work, w) for w in range(workers)]:
                f.result()
    finally:
        torch.set_num_threads(prev)
    return out
