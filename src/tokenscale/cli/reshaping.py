"""Reshaping study commands (paper §6, Fig. 6): ``reshape-candidates`` (the candidate training samples),
``reshape-scores`` (their scores and the arms' sampler weights) and ``reshape-report`` (the arms compared)."""

from __future__ import annotations

import sys

from tokenscale import TokenscaleError
from tokenscale.cli.common import command, json_object


def register(sub) -> None:
    _reshape_candidates(sub)
    _reshape_scores(sub)
    _reshape_report(sub)


def _reshape_candidates(sub) -> None:
    def run(args) -> int:
        from tokenscale.reshaping.compute import build_candidate_set

        out = build_candidate_set(args.data, args.out, n=args.n, seed=args.seed)
        print(f"reshape-candidates: {args.n} training samples -> {out}", file=sys.stderr)
        return 0

    p = command(sub, "reshape-candidates", run,
                "a reshape experiment's candidate token set: training samples drawn without replacement",
                "Writes a token set (docs/formats.md, kind train-sample) with each row's training-sample index.")
    p.add_argument("--data", required=True, help="data folder with train_tokens.bin / .json and train_docs.npz")
    p.add_argument("--n", type=int, required=True, help="number of candidate training samples")
    p.add_argument("--seed", type=int, default=0, help="seed of the draw")
    p.add_argument("--out", required=True, help="output token set (HDF5)")


def _reshape_scores(sub) -> None:
    def run(args) -> int:
        from tokenscale.config import reshape_entry, validate_config
        from tokenscale.reshaping.compute import compute_scores

        analysis = validate_config({"analysis": args.options})["analysis"]
        s = compute_scores(reshape_entry(args.experiment), fits=args.fits, tokens=args.tokens,
                           train_data=args.train_data, analysis=analysis, out_dir=args.out_dir)
        print(f"reshape-scores: {s['n_candidates']} samples, {s['n_in_window']} of {s['n_selected']} selected tokens "
              f"learned in the window {s['window']} -> {args.out_dir}", file=sys.stderr)
        return 0

    p = command(sub, "reshape-scores", run,
                "score candidate samples by the fraction of their tokens learned inside the target window (paper §6)",
                "Tokens: the spectrum's selection (analysis.selection). Writes scores.csv, scores.json and the "
                "sampler weights of the reshaped and uniform arms (weights-*.npy, one per training sample).")
    p.add_argument("--experiment", type=json_object, required=True, help="JSON of one config `reshape` entry")
    p.add_argument("--fits", required=True, help="fit table of the candidate series")
    p.add_argument("--tokens", required=True, help="the candidate token set")
    p.add_argument("--train-data", required=True, help="data folder with the training tokens")
    p.add_argument("--options", type=json_object, default={}, help="JSON of the config's analysis section")
    p.add_argument("--out-dir", required=True, help="output folder")


def _reshape_report(sub) -> None:
    def run(args) -> int:
        from tokenscale.config import reshape_entry, validate_config
        from tokenscale.reshaping.compute import make_report

        analysis = validate_config({"analysis": args.options})["analysis"]
        arms = args.arms.get("arms")
        if not isinstance(arms, list) or not arms:
            raise TokenscaleError("reshape-report: --arms needs {\"arms\": [{run, arm, data_seed, val_loss, log"
                                  "[, weights]}]}")
        r = make_report(reshape_entry(args.experiment), batch_size=args.batch_size, scores_dir=args.scores,
                        fits=args.fits, tokens=args.tokens, trajectories=args.trajectories,
                        reference_val_loss=args.reference_val_loss, arms=arms, analysis=analysis, out=args.out,
                        figures=args.figures, valid_tokens=args.valid_tokens)
        acc = r["metrics"]["acceleration_vs_uniform"]
        print(f"reshape-report: {r['experiment']}: acceleration vs uniform {acc['value']} "
              f"[{acc['ci_low']}, {acc['ci_high']}] -> {args.out}", file=sys.stderr)
        return 0

    p = command(sub, "reshape-report", run,
                "measure a reshape experiment: acceleration, steps-to-reach and floors with seed CIs; Fig. 6 A-E",
                "Compares the arms' validation loss over the window (bootstrap over data-order seeds).")
    p.add_argument("--experiment", type=json_object, required=True, help="JSON of one config `reshape` entry")
    p.add_argument("--batch-size", type=int, required=True, help="the reference's batch size (sequences per step)")
    p.add_argument("--scores", required=True, help="the experiment's folder with scores.csv / scores.json")
    p.add_argument("--fits", required=True, help="fit table of the candidate series")
    p.add_argument("--tokens", required=True, help="the candidate token set")
    p.add_argument("--trajectories", nargs="+", required=True, help="trajectory shards of the candidate series")
    p.add_argument("--reference-val-loss", required=True, help="val_loss.csv of the reference run")
    p.add_argument("--arms", type=json_object, required=True,
                   help='JSON {"arms": [{run, arm, data_seed, val_loss, log, weights, fits}]} of the continuation runs '
                        '(fits: the fit table of the arm\'s continuation series, read with --valid-tokens)')
    p.add_argument("--valid-tokens", default=None,
                   help="the validation token set: compare the arms' learning-time spectra (every arm needs 'fits')")
    p.add_argument("--options", type=json_object, default={}, help="JSON of the config's analysis section")
    p.add_argument("--out", required=True, help="output report.json")
    p.add_argument("--figures", required=True, help="output folder for the figure")
