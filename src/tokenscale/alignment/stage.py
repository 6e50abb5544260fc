"""The align stage (paper App. A.2, Fig. 7): what a series' learning times align with, from its fit table, the
validation token set, the training tokens (token frequencies) and optionally a dependency file -> alignment.json
and its figure."""

from __future__ import annotations

import json

import numpy as np

from tokenscale import TokenscaleError, atomic
from tokenscale.alignment.compute import align, instance_frequency
from tokenscale.analysis.instances import selected_tau
from tokenscale.data.tokensets import token_frequencies
from tokenscale.alignment.figures import plot_alignment
from tokenscale.analysis.options import AnalysisOptions
from tokenscale.config import validate_config
from tokenscale.data import TrainTokens
from tokenscale.io import read_token_set
from tokenscale.io.dependency import read_dependency
from tokenscale.io.fits import load_fits


def dependency_instances(path, n_instances: int) -> tuple[np.ndarray, np.ndarray]:
    """(dependency length (N,), mask (N,)) of a dependency file computed on the token set's first sequences: the
    instances past its end get length 1 and are masked out of the panel."""
    d = read_dependency(path)["dependency_length"]
    if d.size > n_instances:
        raise TokenscaleError(f"{path}: {d.size} token instances but the token set has {n_instances}")
    dep, mask = np.ones(n_instances, dtype=np.int64), np.arange(n_instances) < d.size
    dep[: d.size] = d
    return dep, mask


def run_alignment(*, fits, tokens, train_data, options: dict, run: str, out, figures, dependency="",
                  axis_label: str = "training step") -> dict:
    """Write alignment.json (``out``) and its figure (``figures``) of one series; returns the table.

    Token frequencies are counted on the training tokens (``train_data``), not on the validation token set whose
    instances they are looked up for."""
    section = validate_config({"analysis": options})["analysis"]
    opts = AnalysisOptions.from_config(section)
    ts = read_token_set(tokens, datasets=("token_id", "domain"))
    N = int(ts["n_seqs"]) * int(ts["seq_len"])
    fit = load_fits(fits)
    tau, valid = selected_tau(fit, N, opts.main)
    train = TrainTokens(train_data)
    freq = instance_frequency(ts["token_id"], token_frequencies(train.tokens, train.vocab_size))
    dep, dep_mask = dependency_instances(dependency, N) if dependency else (None, None)
    table = align(tau, valid, domain=ts["domain"].reshape(-1), domain_names=ts["attrs"]["domain_names"],
                  freq_of_instance=freq, dependency=dep, dependency_mask=dep_mask, n_boot=section["n_boot"],
                  seed=section["seed"], transform=fit.transform)
    table.update(series=run, selection=opts.selection, selection_description=opts.main.describe(),
                 n_selected_in_window=int(valid.sum()))
    atomic.write_text(out, json.dumps(table, indent=2, sort_keys=True, allow_nan=False) + "\n")
    plot_alignment(table, figures, axis_label=axis_label)
    return table
