"""Commands that read a config without running anything: ``check-config``, ``models``, ``plan`` (torch is not
imported)."""

from __future__ import annotations

from tokenscale import TokenscaleError
from tokenscale.cli.common import add_config, command, default_config, fraction, load_config, positive_int
from tokenscale.plan import DEFAULT_GPU, DEFAULT_MFU, DEFAULT_PRECISION


def register(sub) -> None:
    _check_config(sub)
    _models(sub)
    _plan(sub)


def _check_config(sub) -> None:
    def run(args) -> int:
        from tokenscale.config import run_configs

        for name, r in run_configs(load_config(args)).items():
            sweep = f" sweep={r.sweep}" if r.sweep else ""
            branch = (f" branch={r.branch['from']}@{r.branch['step']} (trains {r.total_steps - r.branch['step']})"
                      if r.branch else "")
            snaps = f" snapshots={len(r.snapshots)}" if r.snapshots else ""
            print(f"{name}: axis={r.axis}{sweep} steps={r.total_steps}{branch} checkpoints={len(r.checkpoint_steps())}"
                  f"{snaps} engine={r.engine}")
        return 0

    p = command(sub, "check-config", run, "validate a config and print the runs it declares",
                "Fills defaults from the schema and stops at the first bad key with one line naming it.")
    add_config(p)


def _models(sub) -> None:
    def run(args) -> int:
        from tokenscale.config import load_config as load, run_configs
        from tokenscale.training.model import describe_presets, describe_runs

        config = default_config(args.config) if args.vocab_size is None or args.config else None
        if args.vocab_size is None and config is None:
            raise TokenscaleError("models: no config/config.yaml here; give --config FILE (the models of its runs) "
                                  "or --vocab-size N (the presets)")
        if config is not None:
            cfg = load(config)
            print(f"{config}: the models its runs build, vocab {cfg['data']['vocab_size']} (data.vocab_size), "
                  f"seq_len {cfg['data']['seq_len']} (data.seq_len)")
            _print_model_rows(describe_runs(run_configs(cfg), cfg["data"]["vocab_size"]), "run")
        if args.vocab_size is not None:
            print(f"presets at vocab {args.vocab_size}, seq_len {args.seq_len}")
            _print_model_rows(describe_presets(args.vocab_size, args.seq_len), "preset")
        print("params: total, active (MoE experts counted k/E), non-embedding active; training FLOPs/token: M = "
              "non-embedding (the paper's axis), head = LM head 6*d*V, model = M + head (what MFU counts)")
        return 0

    p = command(sub, "models", run,
                "list the models of a config's runs (or the presets) with parameters and FLOPs/token",
                "Counted from the architecture (equal to the built model's counts, tested), with the config's "
                "vocabulary and seq_len; nothing is built and torch is not imported.")
    p.add_argument("--config", help="config YAML whose runs are listed (default: config/config.yaml when it exists)")
    p.add_argument("--vocab-size", type=positive_int,
                   help="list the size presets at this vocabulary size instead (with --config: as well)")
    p.add_argument("--seq-len", type=positive_int, default=2048,
                   help="context length of the preset table (enters the attention FLOPs)")


def _print_model_rows(rows: list[dict], key: str) -> None:
    """The ``models`` table: one row per run or preset (``key``), shapes for runs."""
    width = max(len(key), *(len(r[key]) for r in rows))
    extra = f" {'axis':<4} {'sweep':<10} {'shape':<30}" if key == "run" else ""
    print(f"{key:<{width}}{extra} {'total':>9} {'active':>9} {'non-emb':>9} {'M':>9} {'head':>9} {'model':>9}")
    for r in rows:
        extra = f" {r['axis']:<4} {r['sweep'] or '-':<10} {r['shape']:<30}" if key == "run" else ""
        print(f"{r[key]:<{width}}{extra} {_count(r['total_params']):>9} {_count(r['active_params']):>9} "
              f"{_count(r['nonembedding_active_params']):>9} {r['flops_per_token']:>9.3g} "
              f"{r['head_flops_per_token']:>9.3g} {r['model_flops_per_token']:>9.3g}")


def _count(n: int) -> str:
    """A parameter count: 0.39M, 290.47M, 1.52B."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _plan(sub) -> None:
    def run(args) -> int:
        from tokenscale.config import load_config as load
        from tokenscale.plan import format_plan, plan

        config = default_config(args.config)
        if config is None:
            raise TokenscaleError("plan: no config/config.yaml here; give --config FILE")
        cfg = load(config)
        print(f"plan: {config}: {len(cfg['runs'])} runs, vocab {cfg['data']['vocab_size']}, "
              f"seq_len {cfg['data']['seq_len']}")
        p = plan(cfg, args.gpu, args.mfu, args.precision)
        print("\n".join(format_plan(p, runs=not args.totals)))
        if args.profile:
            from tokenscale.plan import cluster_plan, format_cluster_plan, read_profile

            prof = read_profile(args.profile)
            rows = cluster_plan(cfg, prof, p)
            print("\n".join(format_cluster_plan(rows, prof, p)))
            if any(r["fit"] for r in rows):
                return 1
        return 0

    p = command(sub, "plan", run,
                "training FLOPs and GPU time of a config per run and axis, next to the paper's",
                "training FLOPs = model FLOPs/token (M + 6dV) x tokens trained (a decay branch trains only the "
                "steps after its branch step); GPU-hours = FLOPs / (datasheet peak x MFU). With --profile, the jobs "
                "the workflow submits (config `resources`) against the site's partitions. torch is not imported.")
    p.add_argument("--config", help="config YAML (default: config/config.yaml when it exists)")
    p.add_argument("--gpu", default=DEFAULT_GPU, help="GPU whose dense peak is used (a name in "
                   "tokenscale.training.throughput.GPU_PEAKS, e.g. a100, h100, h200, l40s)")
    p.add_argument("--mfu", type=fraction, default=DEFAULT_MFU, help="assumed model FLOPs utilisation, in (0, 1]")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=DEFAULT_PRECISION,
                   help="precision of the peak (fp32 = no tensor cores)")
    p.add_argument("--totals", action="store_true", help="print only the per-axis totals, not one line per run")
    p.add_argument("--profile", help="Snakemake profile folder (e.g. profiles/slurm): also print each job class's "
                   "request, segments and submissions against its site's limits (exit 1 if one does not fit)")
