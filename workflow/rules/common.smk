# Helper functions: the only place with Python logic in the workflow. Everything heavy is in tokenscale.
import json
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tokenscale.config import run_configs, validate_config
from tokenscale.evaluate import discover_checkpoints

CFG = validate_config(config)  # typed, defaults filled (already checked in the Snakefile)

RESULTS = CFG["results"]
DATA = f"{RESULTS}/data"
RUNS = run_configs(CFG)
EXTERNAL = {e["name"]: e for e in CFG["external"]}
_clash = sorted(set(RUNS) & set(EXTERNAL))
if _clash:
    raise WorkflowError(f"config: external series name(s) {', '.join(_clash)} clash with run names")


wildcard_constraints:
    run="[A-Za-z0-9][A-Za-z0-9_.-]*",
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


def _external_steps(name):
    return [s for s, _ in discover_checkpoints(EXTERNAL[name]["path"])]


def steps(run):
    return RUNS[run].checkpoint_steps() if run in RUNS else _external_steps(run)


def checkpoint_dir(run, step):
    if run in RUNS:
        return f"{RESULTS}/runs/{run}/checkpoints/step{step:08d}"
    return str(dict(discover_checkpoints(EXTERNAL[run]["path"]))[step])


def checkpoint_ready(wildcards):
    """The file that exists once a checkpoint can be read (training finished, or the external folder)."""
    if wildcards.run in RUNS:
        return f"{RESULTS}/runs/{wildcards.run}/train.json"
    return []


def token_set(wildcards):
    if wildcards.run in RUNS:
        return f"{DATA}/valid_tokens.h5"
    return f"{RESULTS}/runs/{wildcards.run}/valid_tokens.h5"


def eval_blocks(run):
    """Checkpoint steps of a run grouped into evaluation jobs of eval.checkpoints_per_job (0 = one job)."""
    all_steps = steps(run)
    size = CFG["eval"]["checkpoints_per_job"] or len(all_steps)
    return [all_steps[i : i + size] for i in range(0, len(all_steps), size)]


def block_checkpoints(wildcards):
    """Checkpoint folders evaluated by one job: block {block} of run {run}."""
    blocks = eval_blocks(wildcards.run)
    b = int(wildcards.block)
    if b >= len(blocks):
        raise WorkflowError(f"run {wildcards.run}: evaluation block {b} does not exist ({len(blocks)} blocks)")
    return [checkpoint_dir(wildcards.run, s) for s in blocks[b]]


def eval_dirs(wildcards):
    n = len(eval_blocks(wildcards.run))
    return [f"{RESULTS}/runs/{wildcards.run}/evals/block-{b:03d}" for b in range(n)]


def shard_ids():
    return list(range(CFG["eval"]["shards"]))


def trajectory_shards(wildcards):
    return [f"{RESULTS}/runs/{wildcards.run}/trajectories/shard-{i:03d}.h5" for i in shard_ids()]


def fit_shards(wildcards):
    return [f"{RESULTS}/runs/{wildcards.run}/fits/shard-{i:03d}.h5" for i in shard_ids()]


def analysed():
    return list(RUNS) + list(EXTERNAL)


def all_targets():
    out = [f"{DATA}/valid_tokens.h5"]
    out += [f"{RESULTS}/runs/{r}/train.json" for r in RUNS]
    out += [f"{RESULTS}/runs/{r}/fits.h5" for r in analysed()]
    out += [f"{RESULTS}/runs/{r}/analysis/summary.json" for r in analysed()]
    return out
