"""Synthetic study commands (paper App. A.3, Fig. 8-10): ``prepare-synthetic`` (a modular-arithmetic dataset),
``synthetic-levels`` (per-level loss and accuracy of a run's checkpoints) and ``synthetic-report``."""

from __future__ import annotations

import sys

from tokenscale.cli.common import command, json_object, set_threads


def register(sub) -> None:
    _prepare_synthetic(sub)
    _synthetic_levels(sub)
    _synthetic_report(sub)


def _prepare_synthetic(sub) -> None:
    def run(args) -> int:
        from tokenscale.config import validate_config
        from tokenscale.synthetic.arithmetic import prepare

        entry = validate_config({"synthetic": [args.entry]})["synthetic"][0]
        meta = prepare(entry, args.out)
        print(f"prepare-synthetic: {entry['name']}: {meta['n_samples']:,} training examples (levels "
              f"{meta['level_counts']}), vocab {meta['vocab_size']} -> {args.out}", file=sys.stderr)
        return 0

    p = command(sub, "prepare-synthetic", run,
                "generate a synthetic modular-arithmetic dataset (paper App. A.3) as a data folder",
                "Writes tokenizer/, train_tokens.bin/.json (answer-only supervision), valid_tokens.h5 (the entry's own "
                "level distribution), levels_tokens.h5 (balanced levels) and overlap.json.")
    p.add_argument("--entry", type=json_object, required=True, help="JSON of one config `synthetic` entry")
    p.add_argument("--out", required=True, help="output data folder")


def _synthetic_levels(sub) -> None:
    def run(args) -> int:
        from tokenscale.synthetic.levels import score_levels

        set_threads(args.threads)
        score_levels(checkpoints=args.checkpoints, tokens=args.tokens, out=args.out, device=args.device)
        return 0

    p = command(sub, "synthetic-levels", run,
                "per-level answer loss and accuracy of a synthetic run's checkpoints (paper Fig. 8)",
                "Evaluates every checkpoint on the balanced validation set; writes levels.csv (step, level, n, loss, "
                "accuracy, and n_unseen, accuracy_unseen over the expressions not in the training rows).")
    p.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint folders step<N>/, any order")
    p.add_argument("--tokens", required=True, help="the dataset's levels_tokens.h5")
    p.add_argument("--device", default=None, help="torch device (default: CUDA when available, else CPU)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--out", required=True, help="output levels.csv")


def _synthetic_report(sub) -> None:
    def run(args) -> int:
        from tokenscale.config import validate_config
        from tokenscale.synthetic.arithmetic import make_report

        entry = validate_config({"synthetic": [args.entry]})["synthetic"][0]
        analysis = validate_config({"analysis": args.options})["analysis"]
        r = make_report(entry, run=args.run, levels_csv=args.levels, val_loss=args.val_loss, fits=args.fits,
                        trajectories=args.trajectories, summary=args.summary, overlap_json=args.overlap,
                        analysis=analysis, out=args.out, figures=args.figures, partner=args.partner)
        sh = r["shape_test"]
        print(f"synthetic-report: {args.run}: {r['levels']['n_levels_above_half']} levels above 50% accuracy; shape "
              f"test delta AIC (linear - power) {sh['delta_aic']} -> {args.out}", file=sys.stderr)
        return 0

    p = command(sub, "synthetic-report", run,
                "a synthetic series' report: per-level accuracy, the shape test, SVD energies, R²; Fig. 8-10",
                "The shape test fits a line and a power law to the aggregate validation loss on the step axis after "
                "the analysis' transient rule and compares their AIC.")
    p.add_argument("--entry", type=json_object, required=True, help="JSON of the run's config `synthetic` entry")
    p.add_argument("--run", required=True, help="the run (= series) name")
    p.add_argument("--levels", required=True, help="levels.csv of the run (tokenscale synthetic-levels)")
    p.add_argument("--val-loss", required=True, help="val_loss.csv of the run (its answers' mean loss)")
    p.add_argument("--fits", required=True, help="fit table of the series")
    p.add_argument("--trajectories", nargs="+", required=True, help="trajectory shards of the series")
    p.add_argument("--summary", required=True, help="the series' analysis summary.json")
    p.add_argument("--overlap", required=True, help="the dataset's overlap.json")
    p.add_argument("--options", type=json_object, default={}, help="JSON of the config's analysis section")
    p.add_argument("--partner", default=None,
                   help="the L^-2 arm's report.json: this uniform arm's report then holds the pair's verdict")
    p.add_argument("--out", required=True, help="output report.json")
    p.add_argument("--figures", required=True, help="output folder for Fig. 8-10")
