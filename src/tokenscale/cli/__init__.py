"""The ``tokenscale`` command line. Every workflow rule calls one of these subcommands.

Errors the user can fix (bad config key/type, missing file, corrupt HDF5) print one line to stderr,
``tokenscale: error: ...``, and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from tokenscale import TokenscaleError, __version__


def _load_cfg(args) -> dict:
    from tokenscale.config import load_config, validate_config

    if getattr(args, "spec", None):
        try:  # the workflow's slice of a validated config (one run): checks between runs were done on the whole
            return validate_config(json.loads(args.spec), cross_run=False)
        except json.JSONDecodeError as e:
            raise TokenscaleError(f"--spec is not valid JSON: {e.msg}") from None
    if not getattr(args, "config", None):
        raise TokenscaleError("give --config FILE or --spec JSON")
    return load_config(args.config)


def _add_cfg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="workflow config YAML (validated against the schema)")
    p.add_argument("--spec", help="config as a JSON string (what the workflow passes); overrides --config")


# --------------------------------------------------------------------------------------------- commands
def cmd_check_config(args) -> int:
    from tokenscale.config import run_configs

    cfg = _load_cfg(args)
    for name, r in run_configs(cfg).items():
        sweep = f" sweep={r.sweep}" if r.sweep else ""
        branch = f" branch={r.branch['from']}@{r.branch['step']} (trains {r.total_steps - r.branch['step']})" if r.branch else ""
        snaps = f" snapshots={len(r.snapshots)}" if r.snapshots else ""
        print(f"{name}: axis={r.axis}{sweep} steps={r.total_steps}{branch} checkpoints={len(r.checkpoint_steps())}"
              f"{snaps} engine={r.engine}")
    return 0


def cmd_models(args) -> int:
    from tokenscale.config import load_config, run_configs
    from tokenscale.training.model import describe_presets, describe_runs

    config = _default_config(args.config) if args.vocab_size is None or args.config else None
    if args.vocab_size is None and config is None:
        raise TokenscaleError("models: no config/config.yaml here; give --config FILE (the models of its runs) "
                              "or --vocab-size N (the presets)")
    if config is not None:
        cfg = load_config(config)
        print(f"{config}: the models its runs build, vocab {cfg['data']['vocab_size']} (data.vocab_size), "
              f"seq_len {cfg['data']['seq_len']} (data.seq_len)")
        _print_model_rows(describe_runs(run_configs(cfg), cfg["data"]["vocab_size"]), "run")
    if args.vocab_size is not None:
        print(f"presets at vocab {args.vocab_size}, seq_len {args.seq_len}")
        _print_model_rows(describe_presets(args.vocab_size, args.seq_len), "preset")
    print("params: total, active (MoE experts counted k/E), non-embedding active; training FLOPs/token: M = "
          "non-embedding (the paper's axis), head = LM head 6*d*V, model = M + head (what MFU counts)")
    return 0


def _default_config(path: str | None) -> str | None:
    """``--config``, else config/config.yaml when it exists here, else None."""
    if path:
        return path
    return "config/config.yaml" if Path("config/config.yaml").is_file() else None


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


def cmd_plan(args) -> int:
    from tokenscale.config import load_config
    from tokenscale.training.plan import format_plan, plan

    config = _default_config(args.config)
    if config is None:
        raise TokenscaleError("plan: no config/config.yaml here; give --config FILE")
    cfg = load_config(config)
    print(f"plan: {config}: {len(cfg['runs'])} runs, vocab {cfg['data']['vocab_size']}, "
          f"seq_len {cfg['data']['seq_len']}")
    print("\n".join(format_plan(plan(cfg, args.gpu, args.mfu, args.precision), runs=not args.totals)))
    return 0


def cmd_prepare_data(args) -> int:
    from tokenscale.data import build_corpus, tokenize_corpus, train_tokenizer

    cfg = _load_cfg(args)["data"]
    out = Path(args.out)
    stages = ["corpus", "tokenizer", "tokens"] if args.stage == "all" else [args.stage]
    for stage in stages:
        print(f"prepare-data: {stage} ...", file=sys.stderr, flush=True)
        if stage == "corpus":
            m = build_corpus(cfg, out / "corpus")
            n = {s: sum(v["docs"] for v in m["splits"][s].values()) for s in m["splits"]}
            print(f"prepare-data: corpus {m['corpus_sha256'][:12]} train={n['train']} docs valid={n['valid']} docs "
                  f"domains={','.join(m['domains'])}", file=sys.stderr)
        elif stage == "tokenizer":
            train_tokenizer(out / "corpus" / "train.jsonl", out / "tokenizer", vocab_size=cfg["vocab_size"], min_frequency=cfg["min_frequency"],
                            max_chars=cfg["tokenizer_max_chars"], seed=cfg["split_seed"])
        else:
            meta = tokenize_corpus(out / "corpus", out / "tokenizer", out, seq_len=cfg["seq_len"], valid_sequences=cfg["valid_sequences"],
                                   valid_seed=cfg["split_seed"])
            print(f"prepare-data: {meta['n_tokens']:,} training tokens, {meta['n_samples']:,} samples of {meta['seq_len']} "
                  f"({meta['single_pass_tokens']:,} tokens in one pass)", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    from tokenscale.config import run_configs

    cfg = _load_cfg(args)
    runs = run_configs(cfg)
    if args.run not in runs:
        raise TokenscaleError(f"--run: no run named {args.run!r} in the config (have: {', '.join(runs)})")
    run = runs[args.run]
    # ranks: --nproc if given, else one per GPU the job was granted (--gpus), at least the run's own nproc
    nproc = args.nproc or max(args.gpus or 0, run.nproc)
    out = Path(args.out) if args.out else Path(cfg["results"]) / "runs" / run.name
    if nproc > 1 and "RANK" not in os.environ:
        from tokenscale.training.runlock import RunLock

        RunLock(out).check()  # a held folder stops here in one line, before torchrun starts any rank
        return _relaunch(nproc, args)
    from tokenscale.training.trainer import Trainer

    data = Path(args.data) if args.data else Path(cfg["results"]) / "data"
    trainer = Trainer(run, data, out, threads=args.threads or run.threads or cfg["threads"], sampler_weights=args.sampler_weights,
                      init_from=args.init_from, progress=not args.quiet)
    s = trainer.train()
    if trainer.dist.main and not trainer.trained_nothing:  # else the trainer said "nothing to train"
        print(f"[{run.name}] done: {s['steps']} steps, {s['tokens_per_s']:,.0f} tokens/s, {s['wall_s']:.1f}s", file=sys.stderr)
    return 0


def _relaunch(nproc: int, args) -> int:
    """Re-run this command under torchrun with ``nproc`` ranks on this node (CPU ranks use gloo)."""
    # The worker argv travels in an environment variable: torchrun's own parser would otherwise claim
    # options such as --run (it prefix-matches --run-path).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "tokenscale.cli"]
    env = dict(os.environ)
    env[_WORKER_ARGV] = json.dumps(sys.argv[1:])
    env.setdefault("OMP_NUM_THREADS", "1")
    print(f"tokenscale: launching {nproc} ranks: {' '.join(cmd)}", file=sys.stderr, flush=True)
    import signal

    procs, got, sent = [], [], []

    def forward():  # once: a second SIGTERM would cut torchrun's wait for the ranks' state saves short
        if procs and got and not sent:
            sent.append(True)
            procs[0].send_signal(signal.SIGTERM)

    def on_sigterm(signum, frame):  # SLURM's or the job guard's SIGTERM: every rank saves state
        got.append(signum)
        forward()

    signal.signal(signal.SIGTERM, on_sigterm)  # before Popen: a SIGTERM in between must not orphan torchrun
    procs.append(subprocess.Popen(cmd, env=env))
    forward()
    rc = procs[0].wait()
    # torchrun itself exits 1 after forwarding SIGTERM; report what a single-process trainer reports
    return 143 if got and rc != 0 else rc


def _threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_evaluate(args) -> int:
    import time
    from pathlib import Path

    from tokenscale.evaluation.evaluate import evaluate_checkpoint

    if (args.out is None) == (args.out_dir is None):
        raise TokenscaleError("evaluate: give exactly one of --out (one checkpoint) or --out-dir")
    if args.out is not None and len(args.checkpoint) != 1:
        raise TokenscaleError(f"evaluate: --out takes one checkpoint, got {len(args.checkpoint)}; use --out-dir")
    _threads(args.threads)
    device = _device(args.device)
    if args.out is not None:
        outs = [Path(args.out)]
    else:
        # a block folder: one step<N>.h5 per checkpoint, then MANIFEST.json last (the consumer requires it)
        from tokenscale import atomic
        from tokenscale.io import EVAL_MANIFEST

        out_dir = Path(args.out_dir)
        outs = [out_dir / f"step{_step_of(Path(c).name):08d}.h5" for c in args.checkpoint]
        seen: dict = {}
        for c, o in zip(args.checkpoint, outs):
            if o.name in seen:
                raise TokenscaleError(f"evaluate: checkpoints {seen[o.name]} and {c} have the same step ({o.name})")
            seen[o.name] = c
        extra = sorted(x.name for x in out_dir.glob("step*.h5") if x.name not in seen)
        if extra:
            raise TokenscaleError(f"{out_dir / extra[0]}: not a checkpoint of this evaluate job; remove it "
                                  f"(or the folder {out_dir}) and rerun")
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic.remove(out_dir / EVAL_MANIFEST)  # the folder is incomplete until the new manifest is written
    for i, (ckpt, out) in enumerate(zip(args.checkpoint, outs), 1):
        t0 = time.time()
        out = evaluate_checkpoint(ckpt, args.tokens, out, batch_size=args.batch_size, device=device)
        print(f"evaluate [{i}/{len(args.checkpoint)}]: {ckpt} -> {out} in {time.time() - t0:.1f}s", file=sys.stderr,
              flush=True)
    if args.out_dir is not None:
        from tokenscale.io import write_eval_manifest

        m = write_eval_manifest(args.out_dir, outs, checkpoints=args.checkpoint)
        print(f"evaluate: {len(outs)} eval files -> {m}", file=sys.stderr, flush=True)
    return 0


def _step_of(name: str) -> int:
    from tokenscale.series import step_from_name

    step = step_from_name(name)
    if step is None:
        raise TokenscaleError(f"evaluate: cannot tell the step of checkpoint folder {name!r} (expected step<N>)")
    return step


def _expand_evals(paths) -> list:
    """Eval files given directly or as block folders, verified against the block folders' MANIFEST.json
    (a block folder without one is an unfinished evaluate job): :func:`tokenscale.io.expand_eval_paths`."""
    from tokenscale.io import expand_eval_paths

    return expand_eval_paths(paths)


def cmd_external_tokens(args) -> int:
    from tokenscale.data import build_token_set, load_tokenizer, read_documents, tokenizer_sha256
    from tokenscale.series import discover_checkpoints

    tok_path = args.tokenizer or str(discover_checkpoints(args.series)[0][1])
    tok = load_tokenizer(tok_path)
    docs = read_documents(args.docs)
    build_token_set(docs, tok, args.out, seq_len=args.seq_len, n_seqs=args.n_seqs, kind="validation",
                    attrs={"tokenizer_sha256": tokenizer_sha256(tok_path), "series": str(args.series)})
    return 0


def cmd_series_manifest(args) -> int:
    from tokenscale.series import parse_series_spec, resolve_manifest, write_manifest

    try:
        series, sources = parse_series_spec(args.spec)
    except (ValueError, KeyError, TypeError) as e:
        raise TokenscaleError(f"--spec is not a series spec: {e}") from None
    members, extra = resolve_manifest(series, sources, args.inputs)
    write_manifest(args.out, series, members, extra)
    print(f"series-manifest: {series.name}: {len(members)} checkpoints -> {args.out}", file=sys.stderr)
    return 0


def cmd_frontier(args) -> int:
    import numpy as np

    from tokenscale.figures import frontier_figures
    from tokenscale.frontiers.compute import check_mean_loss, read_curve, write_frontier_csv
    from tokenscale.io import read_run_trajectories
    from tokenscale.series import read_manifest_data

    opts = json.loads(args.options)
    manifest = read_manifest_data(args.manifest)
    table, axis = manifest.get("table"), manifest.get("axis")
    if not table or not axis:
        raise TokenscaleError(f"{args.manifest}: not a frontier manifest (no table or axis); rerun its series_manifest job")
    curves, trunks = [], []
    for path in args.curves:
        run = Path(path).parent.name
        if run in opts["groups"]:
            curves.append(read_curve(path, run, opts["groups"][run]))
        else:
            trunks.append(read_curve(path, run, float("nan")))
    losses, _, _ = read_run_trajectories(args.trajectories)
    check_mean_loss(table, losses.astype(np.float64).mean(axis=0), args.trajectories[0])
    summary = json.loads(Path(args.summary).read_text())
    write_frontier_csv(args.table, table)
    figs = frontier_figures(curves, trunks, table, axis["values"], summary, opts["axis"], args.figures,
                            title=args.series)
    flat = [r["run"] for r in table if not r["monotone"]]
    print(f"frontier: {args.series}: {len(table)} points from {len(curves)} runs"
          + (f"; not monotone at {', '.join(flat)}" if flat else "; monotone") + f"; {len(figs)} figures", file=sys.stderr)
    return 0


def cmd_val_loss(args) -> int:
    from tokenscale.io import checkpoint_val_loss_rows, val_loss_rows, write_val_loss_csv

    if bool(args.evals) == bool(args.run_dir):
        raise TokenscaleError("val-loss: give either --evals or --run-dir")
    rows = val_loss_rows(args.evals) if args.evals else checkpoint_val_loss_rows(args.run_dir)
    write_val_loss_csv(args.out, rows)
    print(f"val-loss: {len(rows)} checkpoints (steps {rows[0][0]}..{rows[-1][0]}) -> {args.out}", file=sys.stderr)
    return 0


def cmd_assemble(args) -> int:
    from tokenscale.io import shard_ranges, token_set_info, write_trajectory_shard

    n = token_set_info(args.tokens, sha256=False)["n_tokens"]
    if not 0 <= args.shard < args.n_shards:
        raise TokenscaleError(f"--shard {args.shard} is outside [0, {args.n_shards})")
    rng = shard_ranges(n, args.n_shards)[args.shard]
    evals = _expand_evals(args.evals)
    axis = None
    if args.axis_values:
        try:
            axis = json.loads(args.axis_values)
            axis = {"name": str(axis["name"]), "values": [float(v) for v in axis["values"]]}
        except (ValueError, KeyError, TypeError) as e:
            raise TokenscaleError(f"--axis-values is not {{\"name\": ..., \"values\": [...]}} JSON: {e}") from None
    write_trajectory_shard(evals, args.tokens, args.out, token_range=rng, shard_index=args.shard,
                           shard_count=args.n_shards, attrs={"run": args.run, "config_sha256": args.config_hash},
                           axis=axis)
    print(f"assemble: shard {args.shard}/{args.n_shards} tokens {rng[0]}..{rng[1]} x {len(evals)} checkpoints", file=sys.stderr)
    return 0


def cmd_fit(args) -> int:
    import time

    import numpy as np

    from tokenscale.fit import fit_sigmoids, save_fits
    from tokenscale.io import read_trajectories

    _threads(args.threads)
    losses, axis, meta = read_trajectories(args.trajectories)
    t0 = time.time()
    if args.axis not in axis:
        raise TokenscaleError(f"{args.trajectories}: no axis {args.axis!r} in the shard (it has {', '.join(sorted(axis))})")
    a = np.asarray(axis[args.axis], dtype=np.float64)
    k0 = _window_start(args.window, a) if args.window else 0
    res = fit_sigmoids(losses[:, k0:], a[k0:], transform=args.transform, device=_device(args.device),
                       engine=args.engine)
    dt = time.time() - t0
    attrs = {"trajectories": str(args.trajectories), "axis_name": args.axis, "fit_start_index": k0,
             "token_index_first": int(meta["token_index"][0]) if len(meta["token_index"]) else 0}
    save_fits(args.out, res, attrs=attrs, token_index=meta["token_index"])
    conv = float(np.mean(res.status == 0)) if len(res) else float("nan")
    print(f"fit: {len(res):,} trajectories x {losses.shape[1] - k0} points (from checkpoint {k0}) in {dt:.2f}s ({len(res) / max(dt, 1e-9):,.0f}/s, "
          f"{res.attrs['engine']} engine), converged {conv:.3f}", file=sys.stderr)
    return 0


def _window_start(path, axis) -> int:
    """First checkpoint index of the fits from a ``tokenscale fit-window`` file, checked against the shard's axis."""
    import numpy as np

    w = json.loads(Path(path).read_text())
    k0 = int(w["start_index"])
    if not np.array_equal(np.asarray(w["axis"], dtype=np.float64), axis):
        raise TokenscaleError(f"{path}: fit window of another axis ({len(w['axis'])} points, the shard has {axis.size}); "
                              f"rerun its fit_window job")
    return k0


def cmd_fit_window(args) -> int:
    from tokenscale import atomic
    from tokenscale.fit.window import fit_window, target_counts
    from tokenscale.io import read_run_trajectories

    losses, axis, meta = read_run_trajectories(args.trajectories)
    if args.axis not in axis:
        raise TokenscaleError(f"{args.trajectories[0]}: no axis {args.axis!r} in the shards (they have {', '.join(sorted(axis))})")
    counts = None
    if args.rule == "unigram" and args.train_data:
        from tokenscale.data import TrainTokens

        counts = target_counts(TrainTokens(args.train_data))
    w = fit_window(args.rule, losses, axis[args.axis], counts=counts, target_ids=meta["token_id"] if counts is not None else None)
    atomic.write_json(args.out, w)
    h = "" if w["h_unigram"] is None else f" (unigram cross-entropy {w['h_unigram']:.4f} nats)"
    print(f"fit-window: rule {w['rule']}: the fits start at checkpoint {w['start_index']} ({args.axis} {w['start']:g}) of "
          f"{len(w['axis'])}{h}" + (f"; {w['note']}" if w["note"] else ""), file=sys.stderr)
    return 0


def cmd_fit_table(args) -> int:
    from tokenscale.io.fits import concat_fits, load_fits, save_fits

    parts = [load_fits(p) for p in args.fits]
    save_fits(args.out, concat_fits(parts), attrs={"shards": [str(p) for p in args.fits]})
    return 0


def _fit_columns(losses, axis: dict, fit, fits_path):
    """The trajectory columns the fits were made on: the checkpoints from the fit window's start on (the fit's axis is
    the end of one of the shards' axes)."""
    import numpy as np

    fa = np.asarray(fit.axis_orig, dtype=np.float64)
    k0 = losses.shape[1] - fa.size
    if k0 < 0 or not any(np.array_equal(np.asarray(a, dtype=np.float64)[k0:], fa) for a in axis.values()):
        raise TokenscaleError(f"{fits_path}: the fits' axis ({fa.size} points) is not the end of the trajectories' axis "
                              f"({losses.shape[1]} points); rerun the fit rules")
    return losses[:, k0:]


def cmd_analyze(args) -> int:
    from tokenscale.analysis import AnalysisOptions, analyze, write_analysis, write_summary
    from tokenscale.config import validate_config
    from tokenscale.io import read_run_trajectories
    from tokenscale.io.fits import load_fits

    opts = AnalysisOptions.from_config(validate_config({"analysis": args.options})["analysis"])
    losses, axis, meta = read_run_trajectories(args.trajectories)
    fit = load_fits(args.fits)
    if len(fit) != losses.shape[0]:
        raise TokenscaleError(f"{args.fits}: {len(fit)} fits but {losses.shape[0]} trajectories; rerun the fit rules")
    losses = _fit_columns(losses, axis, fit, args.fits)
    res = analyze(losses, fit, opts)
    extra = {"run": args.run, "config_sha256": meta["attrs"].get("config_sha256", "")}
    write_analysis(res, args.analysis, extra=extra)
    write_summary(res, args.summary, extra=extra)
    s = res.summary()
    print(f"analyze: {args.run}: alpha {s['alpha_fit']} beta {s['tail']['beta']} (selection {opts.selection}) "
          f"R2 reconstruction {s['metrics']['r2_reconstruction']} -> {args.analysis}", file=sys.stderr)
    for note in res.notes:
        print(f"analyze: {args.run}: warning: {note}", file=sys.stderr)
    return 0


def cmd_dependency(args) -> int:
    from tokenscale.alignment.dependency import compute_dependency

    out = compute_dependency(args.checkpoint, args.tokens, args.out, threshold=args.threshold,
                             batch_size=args.batch_size, device=_device(args.device), max_seqs=args.max_seqs)
    print(f"dependency: {args.checkpoint} -> {out}", file=sys.stderr)
    return 0


def cmd_align(args) -> int:
    import numpy as np

    from tokenscale import atomic
    from tokenscale.alignment.compute import align, instance_frequency, selected_tau, token_frequencies
    from tokenscale.analysis.options import AnalysisOptions
    from tokenscale.config import validate_config
    from tokenscale.data import TrainTokens
    from tokenscale.io.dependency import read_dependency
    from tokenscale.alignment.figures import plot_alignment
    from tokenscale.io import read_token_set
    from tokenscale.io.fits import load_fits

    section = validate_config({"analysis": args.options})["analysis"]
    opts = AnalysisOptions.from_config(section)
    ts = read_token_set(args.tokens, datasets=("token_id", "domain"))
    N = int(ts["n_seqs"]) * int(ts["seq_len"])
    fit = load_fits(args.fits)
    tau, valid = selected_tau(fit, N, opts.main)
    train = TrainTokens(args.train_data)
    freq = instance_frequency(ts["token_id"], token_frequencies(train.tokens, train.vocab_size))
    dep = dep_mask = None
    if args.dependency:  # computed on the first sequences: the panel uses those instances only
        d = read_dependency(args.dependency)["dependency_length"]
        if d.size > N:
            raise TokenscaleError(f"{args.dependency}: {d.size} token instances but the token set has {N}")
        dep, dep_mask = np.ones(N, dtype=np.int64), np.arange(N) < d.size
        dep[: d.size] = d
    table = align(tau, valid, domain=ts["domain"].reshape(-1), domain_names=ts["attrs"]["domain_names"],
                  freq_of_instance=freq, dependency=dep, dependency_mask=dep_mask, n_boot=section["n_boot"],
                  seed=section["seed"], transform=fit.transform)
    table.update(series=args.run, selection=opts.selection, selection_description=opts.main.describe(),
                 n_selected_in_window=int(valid.sum()))
    atomic.write_text(args.out, json.dumps(table, indent=2, sort_keys=True, allow_nan=False) + "\n")
    plot_alignment(table, args.figures, axis_label=args.axis_label)
    print(f"align: {args.run}: {int(valid.sum())} tokens -> {args.out}", file=sys.stderr)
    return 0


def cmd_seeds(args) -> int:
    import numpy as np

    from tokenscale import atomic
    from tokenscale.alignment.compute import seed_agreement, selected_tau
    from tokenscale.analysis.options import AnalysisOptions
    from tokenscale.config import validate_config
    from tokenscale.alignment.figures import plot_seed_agreement
    from tokenscale.io import read_token_set
    from tokenscale.io.fits import load_fits

    if len(args.fits) != len(args.runs) or len(args.runs) < 2:
        raise TokenscaleError(f"seeds: need one --fits per --runs name and at least 2 runs, got "
                              f"{len(args.fits)} fit tables for {len(args.runs)} runs")
    section = validate_config({"analysis": args.options})["analysis"]
    opts = AnalysisOptions.from_config(section)
    ts = read_token_set(args.tokens, datasets=())
    N = int(ts["n_seqs"]) * int(ts["seq_len"])
    taus, fits = [], []
    for path in args.fits:
        fits.append(load_fits(path))
        taus.append(selected_tau(fits[-1], N, opts.main))  # (tau (N,), valid (N,)) per run
    transforms = {f.transform for f in fits}
    if len(transforms) > 1:
        raise TokenscaleError(f"seeds: the fit tables use different axis transforms {sorted(transforms)}")
    pairs = []
    for i in range(len(args.runs)):
        for j in range(i + 1, len(args.runs)):
            (ta, va), (tb, vb) = taus[i], taus[j]
            stats = seed_agreement(ta, tb, va, vb, n_boot=section["n_boot"], seed=section["seed"])
            both = va & vb
            q25, q75 = np.quantile(np.concatenate([ta[both], tb[both]]), [0.25, 0.75])
            stats.update(run_a=args.runs[i], run_b=args.runs[j], tau_iqr=float(q75 - q25))
            pairs.append(stats)
            if i == 0:  # the first run against each other: one figure per pair
                plot_seed_agreement(ta, tb, stats, Path(args.figures) / f"fig02_seeds_{args.runs[j]}",
                                    valid=both, labels=(args.runs[i], args.runs[j]), axis_label=args.axis_label)
    table = {"group": args.group, "runs": list(args.runs), "transform": fits[0].transform,
             "selection": opts.selection, "selection_description": opts.main.describe(), "pairs": pairs}
    atomic.write_text(args.out, json.dumps(table, indent=2, sort_keys=True, allow_nan=False) + "\n")
    for p in pairs:
        rho = p["spearman"]
        print(f"seeds: {p['run_a']} vs {p['run_b']}: n={p['n']} spearman={rho['rho']} "
              f"median|dtau|={p['median_abs_diff']:.4g} (tau IQR {p['tau_iqr']:.4g})", file=sys.stderr)
    return 0


def cmd_reshape_candidates(args) -> int:
    from tokenscale.reshaping.compute import build_candidate_set

    out = build_candidate_set(args.data, args.out, n=args.n, seed=args.seed)
    print(f"reshape-candidates: {args.n} training samples -> {out}", file=sys.stderr)
    return 0


def cmd_reshape_scores(args) -> int:
    from tokenscale.config import reshape_entry, validate_config
    from tokenscale.reshaping.compute import compute_scores

    analysis = validate_config({"analysis": args.options})["analysis"]
    s = compute_scores(reshape_entry(args.experiment), fits=args.fits, tokens=args.tokens, train_data=args.train_data,
                       analysis=analysis, out_dir=args.out_dir)
    print(f"reshape-scores: {s['n_candidates']} samples, {s['n_in_window']} of {s['n_selected']} selected tokens "
          f"learned in the window {s['window']} -> {args.out_dir}", file=sys.stderr)
    return 0


def cmd_reshape_report(args) -> int:
    from tokenscale.config import reshape_entry, validate_config
    from tokenscale.reshaping.compute import make_report

    analysis = validate_config({"analysis": args.options})["analysis"]
    arms = args.arms.get("arms")
    if not isinstance(arms, list) or not arms:
        raise TokenscaleError("reshape-report: --arms needs {\"arms\": [{run, arm, data_seed, val_loss, log[, weights]}]}")
    r = make_report(reshape_entry(args.experiment), batch_size=args.batch_size, scores_dir=args.scores, fits=args.fits,
                    tokens=args.tokens, trajectories=args.trajectories, reference_val_loss=args.reference_val_loss,
                    arms=arms, analysis=analysis, out=args.out, figures=args.figures, valid_tokens=args.valid_tokens)
    acc = r["metrics"]["acceleration_vs_uniform"]
    print(f"reshape-report: {r['experiment']}: acceleration vs uniform {acc['value']} "
          f"[{acc['ci_low']}, {acc['ci_high']}] -> {args.out}", file=sys.stderr)
    return 0


def cmd_prepare_synthetic(args) -> int:
    from tokenscale.config import validate_config
    from tokenscale.synthetic.arithmetic import prepare

    entry = validate_config({"synthetic": [args.entry]})["synthetic"][0]
    meta = prepare(entry, args.out)
    print(f"prepare-synthetic: {entry['name']}: {meta['n_samples']:,} training examples (levels "
          f"{meta['level_counts']}), vocab {meta['vocab_size']} -> {args.out}", file=sys.stderr)
    return 0


def cmd_synthetic_levels(args) -> int:
    import torch

    from tokenscale.evaluation.evaluate import scored_predictions
    from tokenscale.series import step_from_name
    from tokenscale.synthetic.arithmetic import _level_table, level_rows, write_levels

    if args.threads:
        torch.set_num_threads(args.threads)
    level, rows = _level_table(args.tokens), []
    for i, ckpt in enumerate(args.checkpoints, 1):
        step = step_from_name(Path(ckpt).name)
        if step is None:
            raise TokenscaleError(f"synthetic-levels: cannot tell the step of checkpoint {ckpt} (not step<N>)")
        loss, correct = scored_predictions(ckpt, args.tokens, device=args.device)
        rows += level_rows(step, level, loss, correct)
        print(f"synthetic-levels: {i}/{len(args.checkpoints)} step {step}: accuracy {correct.mean():.3f}", file=sys.stderr)
    write_levels(args.out, rows)
    return 0


def cmd_synthetic_report(args) -> int:
    from tokenscale.config import validate_config
    from tokenscale.synthetic.arithmetic import make_report

    entry = validate_config({"synthetic": [args.entry]})["synthetic"][0]
    analysis = validate_config({"analysis": args.options})["analysis"]
    r = make_report(entry, run=args.run, levels_csv=args.levels, val_loss=args.val_loss, fits=args.fits,
                    trajectories=args.trajectories, summary=args.summary, overlap_json=args.overlap,
                    analysis=analysis, out=args.out, figures=args.figures)
    sh = r["shape_test"]
    print(f"synthetic-report: {args.run}: {r['levels']['n_levels_above_half']} levels above 50% accuracy; shape test "
          f"delta AIC (linear - power) {sh['delta_aic']} -> {args.out}", file=sys.stderr)
    return 0


def cmd_figures(args) -> int:
    from tokenscale.analysis import read_analysis
    from tokenscale.figures import make_figures

    figs = make_figures(read_analysis(args.analysis), args.figures, axis_label=args.axis_label, run_name=args.run)
    print(f"figures: {args.run}: {len(figs)} figures -> {args.figures}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``tokenscale <cmd>: error: <what> (see --help)``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Help(argparse.HelpFormatter):
    """Shows an option's default in its help, where it has a meaningful one."""

    def _get_help_string(self, action):
        h = action.help or ""
        if action.default not in (None, False, "", argparse.SUPPRESS) and "%(default)" not in h and action.option_strings:
            h += " (default: %(default)s)"
        return h


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {v:g}")
    return v


def _json_object(text: str) -> dict:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos}): {text[:60]!r}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {type(v).__name__}")
    return v


def cmd_provenance(args) -> int:
    from tokenscale import atomic
    from tokenscale.reproduction.verify import provenance

    prov = provenance(args.config_sha256, Path(args.repo), Path(args.lock), Path(args.manifest) if args.manifest else None)
    atomic.write_json(args.out, prov)
    print(json.dumps(prov, indent=2, sort_keys=True))
    return 0


def cmd_verify(args) -> int:
    from tokenscale import atomic
    from tokenscale.reproduction import verify

    results = Path(args.results)
    if args.write:
        spreads = [json.loads(Path(f).read_text()) for f in args.spread]
        ref = verify.write_reference(results, args.config, spreads, [Path(t) for t in args.seeds])
        atomic.write_json(args.reference, ref)
        n = sum(len(v) for v in ref["numbers"].values())
        print(f"verify: wrote {n} numbers from {len(ref['numbers'])} files of {results} to {args.reference}")
        return 0
    reference = verify.read_reference(Path(args.reference))
    rules = verify.read_tolerances(Path(args.tolerances))
    if results.is_file():  # another reference (a reproduction written on another machine): its numbers
        other = verify.read_reference(results)
        prov, results = other.get("provenance", {}), other["numbers"]
    else:
        prov = verify.read_provenance(results)
    prov_lines = [f"provenance {k}: reference {reference['provenance'].get(k)}, results {prov.get(k)}"
                  for k in verify.PROVENANCE_KEYS]
    mismatches = verify.provenance_mismatches(reference, prov)
    if not (args.allow_config_change or args.exit_zero):
        verify.refuse_stale(reference, prov, args.reference)
    print("\n".join(prov_lines + mismatches))
    rows = verify.compare(reference, results, rules, missing_files="rows" if args.exit_zero else "raise",
                          seed_level=verify.SEED_LEVEL if args.seed_level is None else args.seed_level)
    print(verify.table(rows, only_failed=args.failed_only))
    print(verify.summary(rows))
    if args.markdown:
        atomic.write_text(args.markdown, verify.markdown(rows, mismatches))
    if args.html:
        atomic.write_text(args.html, verify.html(rows, mismatches, prov_lines))
    if args.differences:  # a determinism-style report: feed it to --write --spread to widen the reference
        from tokenscale.reproduction.determinism import differences

        diffs = differences(reference["numbers"], results if isinstance(results, dict) else verify.headline_numbers(results))
        atomic.write_json(args.differences, {"variants": {args.variant: {"numbers": diffs}}})
    return 0 if args.exit_zero or not any(r.failed for r in rows) else 1


def _command(sub, name: str, func, summary: str, description: str = "") -> argparse.ArgumentParser:
    """A subcommand: ``summary`` in the command list, ``summary`` + ``description`` in its --help."""
    p = sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {description}".strip(),
                       formatter_class=_Help)
    p.set_defaults(func=func)
    return p


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, help="CPU threads for torch (default: torch's own choice)")


def build_parser() -> argparse.ArgumentParser:
    from tokenscale.config import schema_default  # the one source of workflow defaults

    ap = _Parser(prog="tokenscale", description="Token-level decomposition of LM scaling laws. Every workflow rule "
                 "calls one of these commands; each works on its own too.")
    ap.add_argument("--version", action="version", version=f"tokenscale {__version__}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _command(sub, "check-config", cmd_check_config, "validate a config and print the runs it declares",
                 "Fills defaults from the schema and stops at the first bad key with one line naming it.")
    _add_cfg(p)

    p = _command(sub, "models", cmd_models,
                 "list the models of a config's runs (or the presets) with parameters and FLOPs/token",
                 "Counted from the architecture (equal to the built model's counts, tested), with the config's "
                 "vocabulary and seq_len; nothing is built and torch is not imported.")
    p.add_argument("--config", help="config YAML whose runs are listed (default: config/config.yaml when it exists)")
    p.add_argument("--vocab-size", type=_positive_int,
                   help="list the size presets at this vocabulary size instead (with --config: as well)")
    p.add_argument("--seq-len", type=_positive_int, default=2048,
                   help="context length of the preset table (enters the attention FLOPs)")

    from tokenscale.training.plan import DEFAULT_GPU, DEFAULT_MFU, DEFAULT_PRECISION

    p = _command(sub, "plan", cmd_plan,
                 "training FLOPs and GPU time of a config per run and axis, next to the paper's",
                 "training FLOPs = model FLOPs/token (M + 6dV) x tokens trained (a decay branch trains only the "
                 "steps after its branch step); GPU-hours = FLOPs / (datasheet peak x MFU). torch is not imported.")
    p.add_argument("--config", help="config YAML (default: config/config.yaml when it exists)")
    p.add_argument("--gpu", default=DEFAULT_GPU, help="GPU whose dense peak is used (a name in "
                   "tokenscale.training.throughput.GPU_PEAKS, e.g. a100, h100, h200, l40s)")
    p.add_argument("--mfu", type=_fraction, default=DEFAULT_MFU, help="assumed model FLOPs utilisation, in (0, 1]")
    p.add_argument("--precision", choices=["bf16", "fp32"], default=DEFAULT_PRECISION,
                   help="precision of the peak (fp32 = no tensor cores)")
    p.add_argument("--totals", action="store_true", help="print only the per-axis totals, not one line per run")

    p = _command(sub, "prepare-data", cmd_prepare_data, "build corpus + split, train the BPE tokenizer, write token files",
                 "Each stage reads the previous one's output from --out; the workflow runs them as three rules.")
    _add_cfg(p)
    p.add_argument("--out", required=True, help="data folder (corpus/, tokenizer/, train_tokens.bin, valid_tokens.h5)")
    p.add_argument("--stage", choices=["corpus", "tokenizer", "tokens", "all"], default="all",
                   help="which stage to run (all = the three in order)")

    p = _command(sub, "train", cmd_train, "train one run with dense checkpoints (resumes from its own folder)",
                 "SIGTERM saves state at the end of the current step and exits 143; rerunning resumes.")
    _add_cfg(p)
    p.add_argument("--run", required=True, help="run name from the config's runs list")
    p.add_argument("--data", help="prepared data folder (default: <results>/data)")
    p.add_argument("--out", help="run folder (default: <results>/runs/<run>)")
    p.add_argument("--threads", type=_positive_int, help="CPU threads in total (split over ranks)")
    p.add_argument("--nproc", type=_positive_int, help="ranks on this node (default: max(--gpus, the run's nproc))")
    p.add_argument("--gpus", type=int, default=0, help="GPUs granted to this job (the workflow passes resources.gpu)")
    p.add_argument("--sampler-weights", help=".npy of per-training-sample weights (reweighted sampling)")
    p.add_argument("--init-from", help="start from these weights (a checkpoint folder) instead of random init")
    p.add_argument("--quiet", action="store_true", help="no per-checkpoint progress lines on stderr")

    p = _command(sub, "evaluate", cmd_evaluate, "per-token loss of a token set under checkpoints -> eval HDF5 files",
                 "One eval file per checkpoint, each written atomically (docs/trajectories.md).")
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="HF checkpoint folder(s) (own runs need the COMPLETE marker)")
    p.add_argument("--tokens", required=True, help="token set HDF5 (docs/formats.md)")
    p.add_argument("--out", help="output eval HDF5 for a single checkpoint (written atomically)")
    p.add_argument("--out-dir", help="folder for one step<N>.h5 per checkpoint (each written atomically)")
    p.add_argument("--batch-size", type=_positive_int, default=schema_default("eval.batch_size"),
                   help="sequences per forward pass")
    p.add_argument("--device", default=schema_default("eval.device"), choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available")
    _add_threads(p)

    p = _command(sub, "external-tokens", cmd_external_tokens,
                 "token set for an external checkpoint series, with its own tokenizer",
                 "The validation documents are tokenized with the series' tokenizer and cut into sequences.")
    p.add_argument("--series", required=True, help="folder of step-numbered checkpoints")
    p.add_argument("--tokenizer", default="", help="tokenizer folder or tokenizer.json (default: first checkpoint)")
    p.add_argument("--docs", required=True, help="validation documents (corpus/valid.jsonl)")
    p.add_argument("--seq-len", type=_positive_int, required=True, help="tokens per sequence")
    p.add_argument("--n-seqs", type=_positive_int, required=True, help="number of sequences in the token set")
    p.add_argument("--out", required=True, help="output token set HDF5")

    p = _command(sub, "series-manifest", cmd_series_manifest, "choose the checkpoints of a deferred series",
                 "A series whose members depend on training results (e.g. a frontier) is resolved by its resolver "
                 "function once those results exist; the members are written to a manifest (docs/architecture.md).")
    p.add_argument("--spec", required=True, help="JSON of the series and its sources (what the workflow passes)")
    p.add_argument("--inputs", nargs="*", default=[], help="the files the resolver reads (training results)")
    p.add_argument("--out", required=True, help="output manifest JSON")

    p = _command(sub, "val-loss", cmd_val_loss, "a run's val_loss.csv (step, tokens_seen, val_loss per checkpoint)",
                 "From the per-token evaluation of its checkpoints (--evals: each row is one eval file's mean loss, "
                 "the value the trainer's in-loop validation gives on the same tokens), or from the in-loop "
                 "validation recorded in its checkpoints (--run-dir).")
    p.add_argument("--evals", nargs="+", help="eval HDF5 files of the run's checkpoints, or their block folders")
    p.add_argument("--run-dir", help="run folder whose checkpoints hold in-loop validation losses")
    p.add_argument("--out", required=True, help="output CSV (step,tokens_seen,val_loss)")

    p = _command(sub, "frontier", cmd_frontier, "a D or M sweep's frontier: table and figures (paper Fig. 4/5 A-B)",
                 "Writes which (run, checkpoint) defines each frontier point, checks that each point's loss equals "
                 "the mean of the series' per-token losses (1e-4), and draws every run's curve with the envelope "
                 "(A) and the frontier with the series' power law (B). Panel C is the series' analysis.")
    p.add_argument("--series", required=True, help="frontier series name (figure titles)")
    p.add_argument("--options", required=True, help="the series' resolver options JSON (sweep axis, run groups)")
    p.add_argument("--manifest", required=True, help="the series' manifest.json (members, axis, table)")
    p.add_argument("--curves", nargs="+", required=True,
                   help="val_loss.csv of every sweep run (and of a shared trunk, drawn dashed)")
    p.add_argument("--trajectories", nargs="+", required=True, help="the series' trajectory shards")
    p.add_argument("--summary", required=True, help="the series' analysis summary.json (power law)")
    p.add_argument("--table", required=True, help="output frontier.csv")
    p.add_argument("--figures", required=True, help="output folder of the figures")

    p = _command(sub, "assemble", cmd_assemble, "per-checkpoint evals -> one trajectory shard (tokens x checkpoints)",
                 "Shard i of n holds a contiguous, even range of the token set's tokens.")
    p.add_argument("--evals", nargs="+", required=True, help="eval HDF5 files, one per checkpoint, or folders of them (any order)")
    p.add_argument("--tokens", required=True, help="the token set they were evaluated on")
    p.add_argument("--shard", type=int, required=True, help="shard index")
    p.add_argument("--n-shards", type=_positive_int, required=True, help="number of shards the token set is split into")
    p.add_argument("--run", required=True, help="series name recorded in the shard")
    p.add_argument("--config-hash", default="", help="config sha256 recorded in the shard (provenance)")
    p.add_argument("--axis-values", default="",
                   help='JSON {"name": ..., "values": [...]}: the series axis, one value per eval file in the given '
                        "order (kept), strictly increasing; written as axis/<name> unless it is step or tokens "
                        "(a frontier series; default: the files ordered by step)")
    p.add_argument("--out", required=True, help="output trajectory shard HDF5")

    p = _command(sub, "fit", cmd_fit, "sigmoid fit of every token trajectory in a shard -> fits HDF5",
                 "Model: loss = post + delta * (1 - sigmoid(lambda * (x - tau))), x = transformed axis (docs/fit.md).")
    p.add_argument("--trajectories", required=True, help="trajectory shard HDF5")
    p.add_argument("--out", required=True, help="output fits HDF5")
    p.add_argument("--axis", default=schema_default("fit.axis"),
                   help="axis the trajectories are fitted on: step, tokens, or another axis/<name> of the shard "
                        "(flops for an M frontier)")
    p.add_argument("--transform", choices=["log10", "linear"], default=schema_default("fit.transform"),
                   help="x = transform(axis)")
    p.add_argument("--device", default=schema_default("fit.device"), choices=["auto", "cpu", "cuda"],
                   help="auto = cuda when available")
    from tokenscale.fit.engines import ENGINES  # the one registry of fit engines

    p.add_argument("--engine", default=schema_default("fit.engine"), choices=list(ENGINES),
                   help="fit implementation: " + "; ".join(f"{name} = {what}" for name, what in ENGINES.items()))
    p.add_argument("--window", default="",
                   help="fit window JSON from `tokenscale fit-window`: fit the checkpoints from its start_index on "
                        "(default: every checkpoint)")
    _add_threads(p)

    p = _command(sub, "fit-window", cmd_fit_window, "where a series' token fits start -> fit window JSON",
                 "Rule unigram: the first checkpoint at which the series' mean loss is at or below the unigram "
                 "cross-entropy of its targets under the training target counts (the model beats every "
                 "context-free predictor); rule first: every checkpoint (docs/fit.md).")
    p.add_argument("--trajectories", nargs="+", required=True, help="every trajectory shard of the series")
    p.add_argument("--axis", default=schema_default("fit.axis"), help="the series' fit axis (axis/<name> in the shards)")
    from tokenscale.fit.window import RULES  # the one list of fit window rules (schema enum tested against it)

    p.add_argument("--rule", choices=list(RULES), default=schema_default("fit.start"), help="fit window rule")
    p.add_argument("--train-data", default="",
                   help="training data folder (train_tokens.bin/.json) whose targets give the unigram distribution; "
                        "empty: none (an external model), the rule falls back to every checkpoint")
    p.add_argument("--out", required=True, help="output fit window JSON")

    p = _command(sub, "fit-table", cmd_fit_table, "concatenate per-shard fits into one table per series",
                 "Rows keep the shards' token order.")
    p.add_argument("--fits", nargs="+", required=True, help="per-shard fits HDF5 files, in shard order")
    p.add_argument("--out", required=True, help="output fits table HDF5")

    p = _command(sub, "analyze", cmd_analyze,
                 "spectrum, shared pulse, reconstruction, power law -> analysis file + summary.json",
                 "Options are the config's analysis section (schema defaults fill what is missing). The analysis "
                 "file holds every curve and number the figures draw (tokenscale.analysis.result).")
    p.add_argument("--trajectories", nargs="+", required=True, help="trajectory shards of one run")
    p.add_argument("--fits", required=True, help="the run's fit table (fit-table output)")
    p.add_argument("--run", required=True, help="series name (stored in the summary)")
    p.add_argument("--options", type=_json_object, default={}, help="JSON of the config's analysis section")
    p.add_argument("--analysis", required=True, help="output analysis file (HDF5)")
    p.add_argument("--summary", required=True, help="output summary.json")

    p = _command(sub, "dependency", cmd_dependency,
                 "per-token dependency length at one checkpoint (paper App. A.2.3) -> HDF5",
                 "The smallest context c in 1, 2, 4, ..., seq_len at which the probability of the correct next token "
                 "reaches --threshold of its full-context value; exact (sliding windows), checked against explicit "
                 "truncation on a sample (tokenscale.alignment.dependency).")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--tokens", required=True, help="token set HDF5 (docs/formats.md)")
    p.add_argument("--out", required=True, help="output dependency HDF5")
    p.add_argument("--threshold", type=_fraction, default=0.9, help="fraction of the full-context probability")
    p.add_argument("--max-seqs", type=_positive_int, default=None,
                   help="only the first N sequences (the cost grows as seq_len^2 / 3 tokens per sequence)")
    p.add_argument("--batch-size", type=_positive_int, default=16, help="windows per forward pass")
    p.add_argument("--device", default=schema_default("eval.device"), choices=["auto", "cpu", "cuda"],
                   help="where the model runs (auto = cuda when available)")

    p = _command(sub, "align", cmd_align,
                 "what learning time aligns with (paper App. A.2, Fig. 7): mean tau by domain, token frequency, "
                 "dependency length",
                 "Tokens: the spectrum's selection (analysis.selection) with tau inside the window. Frequencies are "
                 "counted on the training tokens.")
    p.add_argument("--fits", required=True, help="the series' fit table")
    p.add_argument("--tokens", required=True, help="the validation token set the series was evaluated on")
    p.add_argument("--train-data", required=True, help="data folder with train_tokens.bin / train_tokens.json")
    p.add_argument("--dependency", default="", help="dependency HDF5 of the series' final checkpoint (optional)")
    p.add_argument("--options", type=_json_object, default={}, help="JSON of the config's analysis section")
    p.add_argument("--run", required=True, help="series name")
    p.add_argument("--axis-label", default="training step", help="axis label of the figure")
    p.add_argument("--out", required=True, help="output alignment.json")
    p.add_argument("--figures", required=True, help="output folder for the figure")

    p = _command(sub, "seeds", cmd_seeds,
                 "per-token learning-time agreement between runs that differ only by seed (paper Fig. 2, hypothesis A)",
                 "Tokens: the spectrum's selection (analysis.selection) with tau inside each run's window; every pair of "
                 "runs gets the Spearman rank correlation of tau (bootstrap CI) and the median |tau_a - tau_b| on the "
                 "fit axis, next to the interquartile range of tau across tokens.")
    p.add_argument("--fits", nargs="+", required=True, help="fit tables of the runs, in --runs order")
    p.add_argument("--runs", nargs="+", required=True, help="run (series) names, the first is the reference")
    p.add_argument("--tokens", required=True, help="the validation token set the runs were evaluated on")
    p.add_argument("--options", type=_json_object, default={}, help="JSON of the config's analysis section")
    p.add_argument("--group", required=True, help="seed group name (the output's label)")
    p.add_argument("--axis-label", default="training step", help="axis label of the figures")
    p.add_argument("--out", required=True, help="output agreement.json")
    p.add_argument("--figures", required=True, help="output folder for the figures")

    p = _command(sub, "prepare-synthetic", cmd_prepare_synthetic,
                 "generate a synthetic modular-arithmetic dataset (paper App. A.3) as a data folder",
                 "Writes tokenizer/, train_tokens.bin/.json (answer-only supervision), valid_tokens.h5 (the entry's own "
                 "level distribution), levels_tokens.h5 (balanced levels) and overlap.json.")
    p.add_argument("--entry", type=_json_object, required=True, help="JSON of one config `synthetic` entry")
    p.add_argument("--out", required=True, help="output data folder")

    p = _command(sub, "synthetic-levels", cmd_synthetic_levels,
                 "per-level answer loss and accuracy of a synthetic run's checkpoints (paper Fig. 8)",
                 "Evaluates every checkpoint on the balanced validation set; writes levels.csv (step, level, n, loss, "
                 "accuracy).")
    p.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint folders step<N>/, any order")
    p.add_argument("--tokens", required=True, help="the dataset's levels_tokens.h5")
    p.add_argument("--device", default=None, help="torch device (default: CUDA when available, else CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", required=True, help="output levels.csv")

    p = _command(sub, "synthetic-report", cmd_synthetic_report,
                 "a synthetic series' report: per-level accuracy, the shape test, SVD energies, R²; Fig. 8-10",
                 "The shape test fits a line and a power law to the aggregate validation loss on the step axis after "
                 "the analysis' transient rule and compares their AIC.")
    p.add_argument("--entry", type=_json_object, required=True, help="JSON of the run's config `synthetic` entry")
    p.add_argument("--run", required=True, help="the run (= series) name")
    p.add_argument("--levels", required=True, help="levels.csv of the run (tokenscale synthetic-levels)")
    p.add_argument("--val-loss", required=True, help="val_loss.csv of the run (its answers' mean loss)")
    p.add_argument("--fits", required=True, help="fit table of the series")
    p.add_argument("--trajectories", nargs="+", required=True, help="trajectory shards of the series")
    p.add_argument("--summary", required=True, help="the series' analysis summary.json")
    p.add_argument("--overlap", required=True, help="the dataset's overlap.json")
    p.add_argument("--options", type=_json_object, default={}, help="JSON of the config's analysis section")
    p.add_argument("--out", required=True, help="output report.json")
    p.add_argument("--figures", required=True, help="output folder for Fig. 8-10")

    p = _command(sub, "reshape-candidates", cmd_reshape_candidates,
                 "a reshape experiment's candidate token set: training samples drawn without replacement",
                 "Writes a token set (docs/formats.md, kind train-sample) with each row's training-sample index.")
    p.add_argument("--data", required=True, help="data folder with train_tokens.bin / .json and train_docs.npz")
    p.add_argument("--n", type=int, required=True, help="number of candidate training samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw")
    p.add_argument("--out", required=True, help="output token set (HDF5)")

    p = _command(sub, "reshape-scores", cmd_reshape_scores,
                 "score candidate samples by the fraction of their tokens learned inside the target window (paper §6)",
                 "Tokens: the spectrum's selection (analysis.selection). Writes scores.csv, scores.json and the "
                 "sampler weights of the reshaped and uniform arms (weights-*.npy, one per training sample).")
    p.add_argument("--experiment", type=_json_object, required=True, help="JSON of one config `reshape` entry")
    p.add_argument("--fits", required=True, help="fit table of the candidate series")
    p.add_argument("--tokens", required=True, help="the candidate token set")
    p.add_argument("--train-data", required=True, help="data folder with the training tokens")
    p.add_argument("--options", type=_json_object, default={}, help="JSON of the config's analysis section")
    p.add_argument("--out-dir", required=True, help="output folder")

    p = _command(sub, "reshape-report", cmd_reshape_report,
                 "measure a reshape experiment: acceleration, steps-to-reach and floors with seed CIs; Fig. 6 A-E",
                 "Compares the arms' validation loss over the window (bootstrap over data-order seeds).")
    p.add_argument("--experiment", type=_json_object, required=True, help="JSON of one config `reshape` entry")
    p.add_argument("--batch-size", type=int, required=True, help="the reference's batch size (sequences per step)")
    p.add_argument("--scores", required=True, help="the experiment's folder with scores.csv / scores.json")
    p.add_argument("--fits", required=True, help="fit table of the candidate series")
    p.add_argument("--tokens", required=True, help="the candidate token set")
    p.add_argument("--trajectories", nargs="+", required=True, help="trajectory shards of the candidate series")
    p.add_argument("--reference-val-loss", required=True, help="val_loss.csv of the reference run")
    p.add_argument("--arms", type=_json_object, required=True,
                   help='JSON {"arms": [{run, arm, data_seed, val_loss, log, weights, fits}]} of the continuation runs '
                        '(fits: the fit table of the arm\'s continuation series, read with --valid-tokens)')
    p.add_argument("--valid-tokens", default=None,
                   help="the validation token set: compare the arms' learning-time spectra (every arm needs 'fits')")
    p.add_argument("--options", type=_json_object, default={}, help="JSON of the config's analysis section")
    p.add_argument("--out", required=True, help="output report.json")
    p.add_argument("--figures", required=True, help="output folder for the figure")

    p = _command(sub, "figures", cmd_figures, "paper-style decomposition figures from an analysis file",
                 "Reads the analysis file that `tokenscale analyze` wrote; writes PNG + SVG per figure.")
    p.add_argument("--analysis", required=True, help="analysis file (HDF5) of one series")
    p.add_argument("--run", required=True, help="series name (figure titles)")
    p.add_argument("--axis-label", default="training step", help="x-axis label of the figures")
    p.add_argument("--figures", required=True, help="output folder for PNG + SVG figures")

    p = _command(sub, "provenance", cmd_provenance, "record what a results tree was made from",
                 "Writes the config hash, the code version (git commit, -dirty when tracked files differ), the lock "
                 "file's hash with the Python version and the corpus manifest's hash; `verify` compares them.")
    p.add_argument("--config-sha256", required=True, help="sha256 of the validated config (without `results`)")
    p.add_argument("--repo", default=".", help="the workflow's checkout (its git commit is the code version)")
    p.add_argument("--lock", default="requirements/cpu.lock", help="the lock file the environment was installed from")
    p.add_argument("--manifest", default=None, help="the corpus manifest.json (omit for none)")
    p.add_argument("--out", required=True, help="output provenance.json")

    p = _command(sub, "verify", cmd_verify, "compare a results tree's headline numbers with committed references",
                 "Prints provenance (mismatches on their own lines) and a table: number, reference, reproduced, "
                 "tolerance, result. Exit status 1 when a number is out of tolerance or missing. --write makes a "
                 "reference from a results tree instead.")
    p.add_argument("--results", default="results",
                   help="results tree to check, or a reference JSON written from a reproduction elsewhere (its "
                        "numbers and provenance are checked)")
    p.add_argument("--reference", default="reference/default.json", help="reference numbers (JSON)")
    p.add_argument("--tolerances", default="reference/tolerances.yaml",
                   help="tolerance rules (YAML; first matching glob wins; docs/determinism.md says where they come from)")
    p.add_argument("--write", action="store_true", help="write --reference from --results instead of comparing")
    p.add_argument("--config", default="config/config.yaml", help="with --write: the config the results came from")
    p.add_argument("--spread", nargs="*", default=[],
                   help="with --write: determinism reports (scripts/determinism.py's JSON) whose measured differences "
                        "widen each number's tolerance to twice the largest difference seen, or earlier references "
                        "whose measured spread is kept")
    p.add_argument("--seeds", nargs="*", default=[],
                   help="with --write: results trees of the same config under other training seeds (seed_offset "
                        "1..K-1, scripts/seed-spread.py); each number's values over the seeds go into the reference")
    p.add_argument("--seed-level", type=float, default=None,
                   help="prediction level of a number's seed interval, in (0, 1) (a number inside it passes; "
                        "default tokenscale.reproduction.verify.SEED_LEVEL, 0.999)")
    p.add_argument("--allow-config-change", action="store_true",
                   help="compare even when the reference was written from another config (its config hash differs "
                        "from the results tree's); without it such a reference is refused as stale")
    p.add_argument("--failed-only", action="store_true", help="list only the numbers that failed or are missing")
    p.add_argument("--markdown", default=None, help="also write the table as Markdown to this file")
    p.add_argument("--html", default=None, help="also write the table as a self-contained HTML page to this file "
                                                "(the workflow's verify rule puts it in the Snakemake report)")
    p.add_argument("--differences", default=None,
                   help="also write each number's difference from the reference as a determinism report (JSON), "
                        "which --write --spread takes to widen a reference by what this machine measured")
    p.add_argument("--variant", default="verify", help="with --differences: the variant's name in that report")
    p.add_argument("--exit-zero", action="store_true",
                   help="exit 0 even when numbers fail, and list a reference summary the results tree lacks as "
                        "missing rows instead of stopping (the workflow's verify rule: its table reports them)")
    return ap


_WORKER_ARGV = "TOKENSCALE_WORKER_ARGV"


def main(argv: list[str] | None = None) -> int:
    if argv is None and _WORKER_ARGV in os.environ and "RANK" in os.environ:
        argv = json.loads(os.environ[_WORKER_ARGV])
    ap = build_parser()
    args = ap.parse_args(argv)
    from tokenscale.training.runlock import install_job_guard

    install_job_guard()  # a local Snakemake that dies takes this job with it (SIGTERM); see tokenscale.training.runlock
    try:
        return int(args.func(args) or 0)
    except TokenscaleError as e:
        print(f"tokenscale: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk that a writer did not name itself
        from tokenscale.atomic import disk_full_error, is_full_disk

        full = disk_full_error(e, e.filename) if e.filename and is_full_disk(e) else None
        if full is None:
            raise
        print(f"tokenscale: error: {full}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
