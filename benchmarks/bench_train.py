"""Training throughput through the whole trainer: baseline settings vs the chosen fast path, in one run.

Each arm is a real ``tokenscale train`` process (model build, data order, checkpoints with in-loop validation,
state saves, logging) on the same data, model, batch and steps; the arms alternate for ``--rounds`` rounds so
that machine noise hits both alike. Printed per arm (median over rounds): end-to-end tokens/s (the trainer's
wall time after set-up), model-step tokens/s, MFU (:mod:`tokenscale.training.throughput`), where the time went, and
the last training loss; then the speed-up of each arm over the first, with its range over rounds.

    python benchmarks/bench_train.py                          # the demo model on this CPU (prepares data)
    python benchmarks/bench_train.py --data results/data      # reuse the demo's prepared data
    python benchmarks/bench_train.py --data results/data --demo --rounds 1   # the demo's whole run (~8 min)
    python benchmarks/bench_train.py --device cuda --precision bf16 --model moe-290m --vocab 8192 \\
        --seq-len 512 --batch-size 32 --steps 40 --arm compiled='{"compile": true}'

The baseline is the trainer as it was before the fast paths (HF logits then cross-entropy, transformers'
default grouped_mm experts, foreach AdamW, no prefetch, in-loop validation); ``auto`` is what the run gets by
default (with ``--demo``: the embedded default's run as configured, i.e. without in-loop validation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

# the trainer before the fast paths: HF logits then cross-entropy, transformers' default experts kernel, foreach
# AdamW, no prefetch, validation inside the training loop
BASELINE = {"loss": "plain", "experts": "grouped_mm", "fused_adamw": "off", "prefetch": False, "in_loop_validation": True}
RUN_KEYS = ("in_loop_validation", "micro_batch_size", "precision")  # arm keys that are run keys, not perf keys


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="moe-tiny", help="model preset (tokenscale models lists them)")
    p.add_argument("--data", default=None, help="prepared data folder (default: prepare the builtin corpus in --work)")
    p.add_argument("--vocab", type=int, default=4096, help="vocabulary size when preparing data")
    p.add_argument("--seq-len", type=int, default=128, help="sequence length when preparing data")
    p.add_argument("--corpus-chars", type=int, default=2_000_000, help="builtin characters per domain when preparing data")
    p.add_argument("--batch-size", type=int, default=16, help="global batch (sequences)")
    p.add_argument("--micro-batch-size", type=int, default=None, help="sequences per forward pass (default: the batch)")
    p.add_argument("--steps", type=int, default=150, help="optimizer steps per arm and round")
    p.add_argument("--checkpoints", type=int, default=4,
                   help="log-spaced checkpoints per arm, each with in-loop validation and a state save (1 = the last step only)")
    p.add_argument("--rounds", type=int, default=3, help="rounds; the arms alternate within each round")
    p.add_argument("--lr", type=float, default=0.003, help="peak learning rate")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="training device")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="training precision")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads per trainer")
    p.add_argument("--arm", action="append", default=[], metavar='NAME=JSON',
                   help='an extra arm: its perf settings (and in_loop_validation, micro_batch_size, precision) over the '
                        'defaults, e.g. compiled=\'{"compile": true}\'')
    p.add_argument("--demo", action="store_true",
                   help="the embedded default's run exactly (config/config.yaml: model, tokens, batch, lr, checkpoint plan, "
                        "state saves); needs --data with its prepared data (results/data)")
    p.add_argument("--no-baseline", action="store_true", help="skip the baseline arm (the first arm is then 'auto')")
    p.add_argument("--work", default=None, help="folder for data and runs (default: a temporary folder)")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--keep-runs", action="store_true", help="keep each arm's run folder (default: deleted once read)")
    return p.parse_args(argv)


def arms(args) -> dict[str, dict]:
    out = {} if args.no_baseline else {"baseline": dict(BASELINE)}
    out["auto"] = {}
    for a in args.arm:
        name, _, js = a.partition("=")
        try:
            out[name] = json.loads(js)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--arm {a!r}: not NAME=JSON ({e})")
    return out


def demo_run() -> tuple[dict, dict]:
    """The embedded default's first run and data section (config/config.yaml), defaults filled."""
    import tokenscale.studies  # noqa: F401  (registers the studies before a config is validated)
    from tokenscale.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "config" / "config.yaml")
    run = {k: v for k, v in cfg["runs"][0].items() if k not in ("name", "perf")}
    return run, cfg["data"]


def write_config(args, work: Path) -> Path:
    base = {"axis": "T", "model": {"preset": args.model}, "batch_size": args.batch_size, "lr": args.lr,
            "micro_batch_size": args.micro_batch_size, "tokens": args.steps * args.batch_size * args.seq_len,
            "checkpoints": {"count": max(2, args.checkpoints),
                            "first_step": args.steps if args.checkpoints <= 1 else max(1, args.steps // 16)},
            "state_every": 10**6, "device": args.device, "precision": args.precision,
            "single_pass": False}  # a speed benchmark: --steps may exceed one pass over a small corpus
    data = {"builtin": True, "builtin_max_chars": args.corpus_chars, "vocab_size": args.vocab,
            "seq_len": args.seq_len, "valid_sequences": 64}
    if args.demo:
        base, data = demo_run()
    runs = []
    for name, arm in arms(args).items():
        perf = {k: v for k, v in arm.items() if k not in RUN_KEYS}
        runs.append({**base, **{k: arm[k] for k in RUN_KEYS if k in arm}, "name": name, "perf": perf})
    cfg = {"threads": args.threads, "runs": runs, "data": data}
    path = work / "bench_train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def tokenscale(*argv) -> None:
    cmd = [sys.executable, "-m", "tokenscale.cli", *map(str, argv)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stderr[-3000:]}")


def prepare(args, cfg: Path, work: Path) -> Path:
    if args.data:
        return Path(args.data)
    t = time.time()
    tokenscale("prepare-data", "--config", cfg, "--out", work / "data")
    print(f"prepared data in {time.time() - t:.0f} s", file=sys.stderr)
    return work / "data"


def train_once(cfg: Path, name: str, data: Path, out: Path, threads: int) -> dict:
    tokenscale("train", "--config", cfg, "--run", name, "--data", data, "--out", out, "--threads", threads, "--quiet")
    summary = json.loads((out / "train.json").read_text())
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    summary["last_loss"] = log[-1]["loss"]
    return summary


def common_peak(results: dict[str, list[dict]]) -> float | None:
    """One peak for every arm: the median of the peaks the runs used. A CPU's peak is measured by each trainer
    process (a GEMM), and on a shared machine that measurement varies by tens of percent between processes;
    comparing arms' MFU against their own peaks would mix that noise into the comparison."""
    peaks = [s["peak_flops_per_s"] for runs in results.values() for s in runs if s["peak_flops_per_s"]]
    return statistics.median(peaks) if peaks else None


def median_row(name: str, runs: list[dict], peak: float | None) -> dict:
    med = lambda key, d=lambda s: s: statistics.median(d(s)[key] for s in runs)  # noqa: E731
    secs = {k: statistics.median(s["seconds"][k] for s in runs) for k in runs[0]["seconds"]}
    tps, step_tps = med("tokens_per_s"), med("tokens_per_s", lambda s: s["steps_only"])
    mfu = (lambda t: t * runs[0]["model_flops_per_token"] / peak) if peak else (lambda t: float("nan"))
    return {"arm": name, "tokens_per_s": tps, "mfu": mfu(tps), "step_tokens_per_s": step_tps,
            "step_mfu": mfu(step_tps), "seconds": secs, "last_loss": runs[-1]["last_loss"],
            "perf": runs[0]["perf"], "in_loop_validation": runs[0]["in_loop_validation"],
            "rounds": [s["tokens_per_s"] for s in runs]}


def report(rows: list[dict], first: dict, peak: float | None) -> None:
    print(f"device: {first['device_name']} ({first['device']}, {first['precision']}); "
          f"model FLOPs/token {first['model_flops_per_token']:.4g}; MFU against {peak or float('nan'):.4g} FLOP/s "
          f"(median over the runs of: {first['peak_source']})")
    print(f"{'arm':<12}{'tok/s':>10}{'MFU':>8}{'step tok/s':>12}{'step MFU':>10}  "
          f"{'steps / validation / checkpoints / state / other (s)':<52}{'last loss':>10}")
    for r in rows:
        s = r["seconds"]
        split = " / ".join(f"{s[k]:.1f}" for k in ("steps", "validation", "checkpoints", "state", "other"))
        print(f"{r['arm']:<12}{r['tokens_per_s']:>10,.0f}{r['mfu']:>8.3f}{r['step_tokens_per_s']:>12,.0f}"
              f"{r['step_mfu']:>10.3f}  {split:<52}{r['last_loss']:>10.4f}")
    base = rows[0]
    for r in rows[1:]:
        per_round = [a / b for a, b in zip(r["rounds"], base["rounds"])]
        print(f"speed-up {r['arm']} / {base['arm']}: end-to-end {r['tokens_per_s'] / base['tokens_per_s']:.2f}x "
              f"(rounds {min(per_round):.2f}-{max(per_round):.2f}), model step "
              f"{r['step_tokens_per_s'] / base['step_tokens_per_s']:.2f}x")
    for r in rows:
        print(f"{r['arm']}: perf {r['perf']}, in-loop validation {r['in_loop_validation']}")


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.demo and not args.data:
        raise SystemExit("--demo: give --data results/data (the default DAG's prepared data)")
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        cfg = write_config(args, work)
        data = prepare(args, cfg, work)
        results: dict[str, list[dict]] = {name: [] for name in arms(args)}
        for rnd in range(args.rounds):
            for name in results:
                out = work / "runs" / f"{name}-{rnd}"
                s = train_once(cfg, name, data, out, args.threads)
                if not args.keep_runs:
                    shutil.rmtree(out)
                results[name].append(s)
                print(f"round {rnd + 1}/{args.rounds} {name}: {s['tokens_per_s']:,.0f} tok/s end-to-end, "
                      f"{s['steps_only']['tokens_per_s']:,.0f} in model steps", file=sys.stderr, flush=True)
        peak = common_peak(results)
        rows = [median_row(name, runs, peak) for name, runs in results.items()]
        report(rows, next(iter(results.values()))[0], peak)
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
