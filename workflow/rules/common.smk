# Helper functions: the only place with Python logic in the workflow. Everything heavy is in tokenscale.
# Downstream of training, rules are keyed by {series} (tokenscale.series). The helpers below ask a series for
# its checkpoints, token set and readiness and never which kind it is. Nothing here imports torch.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tokenscale import TokenscaleError
from tokenscale.config import run_configs
from tokenscale.series import build_series

RESULTS = CFG["results"]
DATA = f"{RESULTS}/data"
RUNS = run_configs(CFG)
EXTERNAL = {e["name"]: e for e in CFG["external"]}
try:
    SERIES = build_series(CFG)
except TokenscaleError as e:
    raise WorkflowError(str(e)) from None


wildcard_constraints:
    run="[A-Za-z0-9][A-Za-z0-9_.-]*",
    series="[A-Za-z0-9][A-Za-z0-9_.-]*",
    block="[0-9]+",
    shard="[0-9]+",


def data_spec():
    """Config slice the data rules depend on (a change reruns them, nothing else)."""
    return json.dumps({"data": CFG["data"]}, sort_keys=True)


def run_spec(run):
    """Config slice one training run depends on: its entry, the sequence length and the thread count."""
    entry = {k: v for k, v in RUNS[run].spec.items() if k != "seq_len"}
    return json.dumps(
        {"data": {"seq_len": CFG["data"]["seq_len"]}, "runs": [entry], "threads": CFG["threads"]}, sort_keys=True
    )


def series_dir(wildcards):
    return f"{RESULTS}/runs/{wildcards.series}"


def checkpoint_ready(wildcards):
    """Files that exist once the series' checkpoints can be read (a run's train.json; none for a folder)."""
    return list(SERIES[wildcards.series].ready)


def token_set(wildcards):
    return SERIES[wildcards.series].token_set


def eval_blocks(series):
    """Checkpoint steps of a series grouped into evaluation jobs of eval.checkpoints_per_job (0 = one job)."""
    all_steps = SERIES[series].steps
    size = CFG["eval"]["checkpoints_per_job"] or len(all_steps)
    return [all_steps[i : i + size] for i in range(0, len(all_steps), size)]


def block_checkpoints(wildcards):
    """Checkpoint folders evaluated by one job: block {block} of series {series}."""
    blocks = eval_blocks(wildcards.series)
    b = int(wildcards.block)
    if b >= len(blocks):
        raise WorkflowError(f"series {wildcards.series}: evaluation block {b} does not exist ({len(blocks)} blocks)")
    return [SERIES[wildcards.series].checkpoint(s) for s in blocks[b]]


def eval_dirs(wildcards):
    n = len(eval_blocks(wildcards.series))
    return [f"{series_dir(wildcards)}/evals/block-{b:03d}" for b in range(n)]


def shard_ids():
    return list(range(CFG["eval"]["shards"]))


def trajectory_shards(wildcards):
    return [f"{series_dir(wildcards)}/trajectories/shard-{i:03d}.h5" for i in shard_ids()]


def fit_shards(wildcards):
    return [f"{series_dir(wildcards)}/fits/shard-{i:03d}.h5" for i in shard_ids()]


def all_targets():
    out = [f"{DATA}/valid_tokens.h5"]
    out += [f"{RESULTS}/runs/{r}/train.json" for r in RUNS]
    out += [f"{RESULTS}/runs/{s}/fits.h5" for s in SERIES]
    out += [f"{RESULTS}/runs/{s}/analysis/summary.json" for s in SERIES]
    return out
