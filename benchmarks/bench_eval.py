#!/usr/bin/env python
"""Benchmark: per-token evaluator throughput vs. a bare Hugging Face forward pass.

On the same random-init Llama model and the same random tokens, in one process:

* ``bare``      : ``model(input_ids).logits`` under ``torch.inference_mode`` (nothing else),
                  batch by batch (bf16 autocast on CUDA, like the evaluator);
* ``evaluator`` : ``tokenscale.evaluation.evaluate.token_losses`` (forward + CE extraction + copy to numpy)
                  followed by writing the per-checkpoint eval HDF5 (atomic tmp + fsync + rename)
                  exactly as ``evaluate_checkpoint`` does.

Prints tokens/s of both and their ratio (target >= 0.9).  Each measurement is repeated
``--repeats`` times, alternating the two (and their order), and the best (max tokens/s) of each is
reported, with the ratio of medians as a noise check.

    python benchmarks/bench_eval.py                       # CPU defaults: hidden 256, 4 layers, vocab 8192, seq 256
    python benchmarks/bench_eval.py --device cuda --hidden 768 --layers 12 --vocab 50304 --seq-len 2048
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--hidden", type=int, default=256, help="hidden size (default 256)")
    ap.add_argument("--layers", type=int, default=4, help="number of transformer layers (default 4)")
    ap.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    ap.add_argument("--intermediate", type=int, default=None, help="MLP size (default 4*hidden)")
    ap.add_argument("--vocab", type=int, default=8192, help="vocabulary size (default 8192)")
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per sequence T (default 256)")
    ap.add_argument("--n-seqs", type=int, default=64, help="sequences evaluated per measurement (default 64)")
    ap.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda uses bf16 autocast)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating repetitions, best reported (default 5)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import transformers

    from tokenscale import __version__
    from tokenscale import io as tio
    from tokenscale.evaluation.evaluate import token_losses

    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    use_amp = dev.type == "cuda"
    torch.manual_seed(args.seed)
    cfg = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads,
        intermediate_size=args.intermediate or 4 * args.hidden, max_position_embeddings=max(2048, args.seq_len + 1),
    )
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(dev).eval()
    n_params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(args.seed)
    ids_np = rng.integers(0, args.vocab, size=(args.n_seqs, args.seq_len + 1), dtype=np.int64)
    ids = torch.from_numpy(ids_np)
    n_tok = args.n_seqs * args.seq_len

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def bare() -> float:
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            for s0 in range(0, args.n_seqs, args.batch_size):
                x = ids[s0 : s0 + args.batch_size, :-1].to(dev)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                    logits = model(x).logits
                del logits
        sync()
        return time.perf_counter() - t0

    tmpdir = Path(tempfile.mkdtemp(prefix="bench_eval_"))

    def evaluator() -> float:
        sync()
        t0 = time.perf_counter()
        losses = token_losses(model, ids, batch_size=args.batch_size, device=dev)
        tio.write_eval_file(tmpdir / "eval.h5", losses, {"step": 0, "tokens_seen": 0, "package_version": __version__})
        return time.perf_counter() - t0

    # warm-up (allocator, kernels, autotuning)
    with torch.inference_mode():
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
            model(ids[: args.batch_size, :-1].to(dev))
    token_losses(model, ids[: args.batch_size], batch_size=args.batch_size, device=dev)

    t_bare, t_eval = [], []
    for r in range(args.repeats):  # alternate the order so slow phases of a shared machine hit both
        if r % 2 == 0:
            t_bare.append(bare())
            t_eval.append(evaluator())
        else:
            t_eval.append(evaluator())
            t_bare.append(bare())
    bare_tps = n_tok / min(t_bare)
    eval_tps = n_tok / min(t_eval)
    print(f"device={dev} amp_bf16={use_amp} threads={torch.get_num_threads()} torch={torch.__version__} "
          f"transformers={transformers.__version__}")
    print(f"model: llama hidden={args.hidden} layers={args.layers} heads={args.heads} "
          f"intermediate={cfg.intermediate_size} vocab={args.vocab} params={n_params / 1e6:.2f}M")
    print(f"tokens: n_seqs={args.n_seqs} seq_len={args.seq_len} batch_size={args.batch_size} "
          f"-> {n_tok} tokens per measurement, repeats={args.repeats} (best of)")
    print(f"bare HF forward : {bare_tps:12.0f} tokens/s   (times s: {', '.join(f'{t:.3f}' for t in t_bare)})")
    print(f"evaluator       : {eval_tps:12.0f} tokens/s   (times s: {', '.join(f'{t:.3f}' for t in t_eval)})")
    ratio = eval_tps / bare_tps
    med = float(np.median(t_bare) / np.median(t_eval))
    print(f"ratio evaluator/bare = {ratio:.3f} (best-of)  {med:.3f} (median)  "
          f"({'OK' if ratio >= 0.9 else 'BELOW'} target 0.9)")
    for p in tmpdir.iterdir():
        p.unlink()
    tmpdir.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
