# Helper functions: the only place with Python logic in the workflow. Everything heavy is in tokenscale.
# Downstream of training, rules are keyed by {series}, {source} and {tokens} (tokenscale.series). The helpers
# ask a series for its members and token set and never which kind it is. Nothing here imports torch.
import json
import shlex
from pathlib import Path

from snakemake.exceptions import WorkflowError

from tokenscale import TokenscaleError
from tokenscale.analysis.options import analysis_slice
from tokenscale.config import run_configs
from tokenscale.series import (
    VALID_TOKENS,
    build_workflow,
    eval_plan,
    read_manifest,
    read_manifest_data,
    seed_groups,
    series_spec,
)
from tokenscale.plan import check_requests, read_site, site_gpu_model, stage_request
from tokenscale.reproduction.verify import code_version
from tokenscale.workflow import workflow_config_hash

RESULTS = CFG["results"]
DATA = f"{RESULTS}/data"
RUNS = run_configs(CFG)
EXTERNAL = {e["name"]: e for e in CFG["external"]}
try:
    WF = build_workflow(CFG)
    SEED_GROUPS = seed_groups(CFG)  # T runs that differ only by seed: group name -> runs (Fig. 2)
    # evaluation jobs, and where each file is
    EVAL = eval_plan(WF, CFG["eval"]["checkpoints_per_job"], CFG["eval"]["sources_per_job"])
except TokenscaleError as e:
    raise WorkflowError(str(e)) from None
SERIES, SOURCES, TOKEN_SETS = WF.series, WF.sources, WF.token_sets
REPO_DIR = str(Path(workflow.current_basedir).parents[1])  # this file is workflow/rules/common.smk
LOCK_FILE = f"{REPO_DIR}/requirements/cpu.lock"
CONFIG_SHA256 = workflow_config_hash(CFG)
REFERENCE = f"{REPO_DIR}/{CFG['reference']}" if CFG["reference"] else None
TOLERANCES = f"{REPO_DIR}/reference/tolerances.yaml"
CODE_VERSION = code_version(Path(REPO_DIR))


# ---------------------------------------------------------------------------------------------- job requests
# What each job asks a cluster for comes from the config (`resources`, tokenscale.plan), never from the profile;
# the profile gives only the site's facts (`site`: its partition file). Every run's request is checked here, at
# DAG build: a rank count that does not divide the batch, or a request no partition takes, is one line.
try:
    SITE = read_site(CFG["site"]) if CFG["site"] else None
    TRAIN_REQUESTS = check_requests(CFG, SITE)
except TokenscaleError as e:
    raise WorkflowError(str(e)) from None
GPU_MODEL = site_gpu_model(SITE)  # '' = any GPU (the site names none, or several)
STAGE_REQUESTS = {s: stage_request(CFG, s, SITE, CFG["threads"]) for s in ("evaluate", "fit")}


def train_request(key):
    """A train job's resource `key` (nodes, gpus_per_node, cpus_per_gpu, mem_mb, time_min) from its run's request."""
    return lambda wildcards: TRAIN_REQUESTS[wildcards.run][key]


def train_gres(wildcards):
    """GPUs per node as SLURM GRES (gpu[:type]:N, per node; '' for a CPU run)."""
    n = TRAIN_REQUESTS[wildcards.run]["gpus_per_node"]
    return ":".join(["gpu", *([GPU_MODEL] if GPU_MODEL else []), str(n)]) if n else ""


def train_tasks(wildcards):
    """Tasks of a train job: one per node for a CPU job or a multi-node job (srun starts them), else 0 (a one-node
    GPU job gets SLURM's default, one task)."""
    r = TRAIN_REQUESTS[wildcards.run]
    return r["nodes"] if r["nodes"] > 1 or not r["gpus_per_node"] else 0


def train_mpi(wildcards):
    """'srun' for a multi-node train job, else None (no such resource). With it the slurm-jobstep executor runs the
    rule's shell in the batch script, not in an `srun -n1` step, and `tokenscale train` starts one task per node
    itself (tokenscale.training.launch)."""
    return "srun" if TRAIN_REQUESTS[wildcards.run]["nodes"] > 1 else None


def train_tasks_per_gpu(wildcards):
    """0 for a multi-node GPU job (else the plugin reads `tasks` as --ntasks-per-gpu), None otherwise."""
    r = TRAIN_REQUESTS[wildcards.run]
    return 0 if r["nodes"] > 1 and r["gpus_per_node"] else None


def stage_gpu(stage):
    """GPUs of an evaluation or fit job: 1 (eval.device / fit.device cuda, or auto on a site with GPUs) or 0."""
    return STAGE_REQUESTS[stage]["gpus_per_node"]


def stage_gpu_model(stage):
    return GPU_MODEL if stage_gpu(stage) else ""


# Corpus files are declared inputs of prepare_corpus (a changed corpus reruns the data rules); a missing one, e.g.
# config/paper.yaml's placeholder, stops the DAG build in one line.
CORPORA = [c["path"] for c in CFG["data"]["corpora"]]
for _i, _path in enumerate(CORPORA):
    if not Path(_path).exists():
        raise WorkflowError(
            f"data.corpora[{_i}].path: {_path} does not exist (config/paper.yaml names a placeholder: point it at "
            "your corpus)"
        )


wildcard_constraints:
    run="[A-Za-z0-9][A-Za-z0-9_.-]*",
    series="[A-Za-z0-9][A-Za-z0-9_.-]*",
    source="[A-Za-z0-9][A-Za-z0-9_.+-]*",
    tokens="[A-Za-z0-9][A-Za-z0-9_.-]*",
    block="[0-9]+",
    shard="[0-9]+",
    group="[A-Za-z0-9][A-Za-z0-9_.-]*",
    exp="[A-Za-z0-9][A-Za-z0-9_.-]*",
    syn="[A-Za-z0-9][A-Za-z0-9_.-]*",


def data_spec():
    """Config slice the data rules depend on (a change reruns them, nothing else)."""
    return json.dumps({"data": CFG["data"]}, sort_keys=True)


def run_threads(run):
    """CPU threads of a run's jobs: its own `threads`, else the top-level one."""
    return RUNS[run].threads or CFG["threads"]


def source_threads(wildcards):
    """CPU threads of an evaluation job: the most of the runs' whose checkpoints it reads (the top-level count for
    an external folder)."""
    return max(run_threads(src) if src in RUNS else CFG["threads"] for src, _ in eval_job(wildcards).parts)


def run_spec(run):
    """Config slice one training run depends on: its entry, the sequence length and the thread count."""
    entry = {k: v for k, v in RUNS[run].spec.items() if k not in ("seq_len", "threads")}
    return json.dumps(
        {"data": {"seq_len": RUNS[run].seq_len}, "runs": [entry], "threads": run_threads(run)}, sort_keys=True
    )


# ---------------------------------------------------------------------------------------------- synthetic data
SYNTHETIC = {e["name"]: e for e in CFG["synthetic"]}
SYNTHETIC_SERIES = [s for s, v in SERIES.items() if v.kind == "run" and RUNS[s].synthetic]  # App. A.3 reports


def synthetic_dir(name):
    return f"{RESULTS}/synthetic/{name}"


def train_data(wildcards):
    """The prepared data a run trains on: its synthetic dataset's folder, else the tokenized corpus."""
    syn = RUNS[wildcards.run].synthetic
    d = synthetic_dir(syn) if syn else DATA
    return {
        "tokens": f"{d}/train_tokens.bin",
        "meta": f"{d}/train_tokens.json",
        "valid": f"{d}/valid_tokens.h5",
        "tokenizer": f"{d}/tokenizer/tokenizer.json",
    }


def synthetic_report_inputs(wildcards):
    run = RUNS[wildcards.series]
    d = synthetic_dir(run.synthetic)
    return {
        "levels": f"{RESULTS}/runs/{wildcards.series}/levels.csv",
        "val_loss": f"{RESULTS}/runs/{wildcards.series}/val_loss.csv",
        "fits": f"{series_dir(wildcards)}/fits.h5",
        "trajectories": trajectory_shards(wildcards),
        "summary": f"{series_dir(wildcards)}/analysis/summary.json",
        "overlap": f"{d}/overlap.json",
    }


def run_checkpoint_dirs(wildcards):
    return " ".join(shlex.quote(p) for _, p in SOURCES[wildcards.run].checkpoints)


# ---------------------------------------------------------------------------------------------- reshaping
RESHAPE = {ex["name"]: ex for ex in CFG["reshape"]}


def reshape_arms(exp):
    """The continuation runs of reshape experiment ``exp`` (runs with ``reshape.experiment == exp``)."""
    return [r for r, c in RUNS.items() if c.reshape is not None and c.reshape["experiment"] == exp]


def reshape_dir(exp):
    return f"{RESULTS}/reshape/{exp}"


def train_weights(wildcards):
    """A pool arm's sampler weights (written by rule reshape_scores); nothing for any other run."""
    rs = RUNS[wildcards.run].reshape
    if rs is None or rs["arm"] == "original":
        return []
    return [f"{reshape_dir(rs['experiment'])}/weights-{rs['arm']}.npy"]


def train_sampler(wildcards, input):
    return f"--sampler-weights {shlex.quote(str(input.weights))}" if input.weights else ""


def reshape_report_inputs(wildcards):
    ex, d = RESHAPE[wildcards.exp], reshape_dir(wildcards.exp)
    arms = reshape_arms(wildcards.exp)
    return {
        "scores": f"{d}/scores.csv",
        "fits": f"{RESULTS}/series/{wildcards.exp}-candidates/fits.h5",
        "tokens": f"{d}/candidates.h5",
        "trajectories": [
            f"{RESULTS}/series/{wildcards.exp}-candidates/trajectories/shard-{i:03d}.h5"
            for i in range(CFG["eval"]["shards"])
        ],
        "reference": f"{RESULTS}/runs/{ex['reference']}/val_loss.csv",
        "val_loss": [f"{RESULTS}/runs/{r}/val_loss.csv" for r in arms],
        "trained": [f"{RESULTS}/runs/{r}/train.json" for r in arms],
        "continuations": [f"{RESULTS}/series/{r}/fits.h5" for r in arms],  # each arm's continuation series
        "valid": TOKEN_SETS[VALID_TOKENS].path,
    }


def reshape_arms_json(wildcards):
    """--arms of `tokenscale reshape-report`: each continuation run's arm, seed and files."""
    out = []
    for r in reshape_arms(wildcards.exp):
        rs = RUNS[r].reshape
        arm = {
            "run": r,
            "arm": rs["arm"],
            "data_seed": rs["data_seed"],
            "val_loss": f"{RESULTS}/runs/{r}/val_loss.csv",
            "log": f"{RESULTS}/runs/{r}/log.jsonl",
            "fits": f"{RESULTS}/series/{r}/fits.h5",
        }
        if rs["arm"] != "original":
            arm["weights"] = f"{reshape_dir(wildcards.exp)}/weights-{rs['arm']}.npy"
        out.append(arm)
    return json.dumps({"arms": out}, sort_keys=True)


# The longest chains of the DAG start at runs that others continue from: a sweep's trunk (its decays branch from its
# snapshots) and a reshape experiment's reference (its candidates are scored on its checkpoints, its arms continue
# from its state). Their jobs, the candidates' evaluation and fits and the arms go first (README: "Demo timing"), and
# so do the synthetic runs' chains: the greedy scheduler otherwise ranks jobs by input size, which leaves a chain
# with no large input (synthetic data, its run, levels, report) to the end, on one core.
HEAD_RUNS = {RUNS[r].spec["branch"]["from"] for r in RUNS if RUNS[r].spec.get("branch")}
HEAD_RUNS |= {ex["reference"] for ex in CFG["reshape"]} | {r for r in RUNS if RUNS[r].reshape is not None}
HEAD_RUNS |= {r for r in RUNS if RUNS[r].synthetic}
CHAIN_SERIES = {f"{ex['name']}-candidates" for ex in CFG["reshape"]} | HEAD_RUNS  # a run's series has its name
HEAD_READY = {f"{RESULTS}/runs/{r}/train.json" for r in HEAD_RUNS}
CHAIN_PRIORITY = 10


def chain_priority(wildcards):
    """Scheduler priority of a job: CHAIN_PRIORITY on a chain that starts at a HEAD_RUNS run (its training, the
    evaluation of a source made of its checkpoints, e.g. the candidates' `t_moe.from230`), else 0."""
    w = dict(wildcards.items())
    on_chain = (
        w.get("run") in HEAD_RUNS
        or w.get("series") in CHAIN_SERIES
        or "syn" in w
        or ("block" in w and not HEAD_READY.isdisjoint(source_ready(wildcards)))
    )
    return CHAIN_PRIORITY if on_chain else 0


def train_trunk(wildcards):
    """A decay branch starts from its trunk's snapshot: the trunk's train.json (written once it has finished)."""
    branch = RUNS[wildcards.run].spec.get("branch")
    return [f"{RESULTS}/runs/{branch['from']}/train.json"] if branch else []


def val_loss_tokens(run):
    return RUNS[run].synthetic or VALID_TOKENS  # a synthetic run: its answers' mean loss


def val_loss_inputs(wildcards):
    """What a run's val_loss.csv is computed from: its checkpoints (in-loop validation), or the evaluation jobs
    of its checkpoints on the validation token set."""
    run = wildcards.run
    if RUNS[run].in_loop_validation:
        return {"summary": f"{RESULTS}/runs/{run}/train.json"}
    return {"evals": sorted(eval_job_dir(job) for job in EVAL.source_jobs(val_loss_tokens(run), run))}


def val_loss_source(wildcards, input):
    """The `tokenscale val-loss` source option (quoted): the run's block folders (inside a bundle's folder when
    its evaluation is bundled), or its run folder."""
    if "evals" in input.keys():
        folders = EVAL.source_blocks(val_loss_tokens(wildcards.run), wildcards.run)
        return "--evals " + " ".join(shlex.quote(f"{RESULTS}/evals/{f}") for f in folders)
    return f"--run-dir {shlex.quote(str(Path(input.summary).parent))}"


# ---------------------------------------------------------------------------------------------- evaluation
def eval_job(wildcards):
    """The evaluation job {tokens}/{source}/block-{block}: {source} is a source, or a bundle of sources."""
    try:
        return EVAL.job(wildcards.tokens, wildcards.source, int(wildcards.block))
    except TokenscaleError as e:
        raise WorkflowError(str(e)) from None


def source_ready(wildcards):
    """Files that exist once the job's checkpoints can be read (its runs' train.json; none for a folder)."""
    return sorted({f for src, _ in eval_job(wildcards).parts for f in SOURCES[src].ready})


def token_set_file(wildcards):
    return TOKEN_SETS[wildcards.tokens].path


def eval_blocks_json(wildcards, output):
    """--blocks of `tokenscale evaluate`: each source's checkpoints, its block folder (the job's folder, or its
    subfolder in a bundle) and its watch cache (evals/{tokens}/{source}/watch-cache, written by tokenscale watch)."""
    job = eval_job(wildcards)
    return json.dumps(
        [
            {
                "checkpoints": [SOURCES[src].checkpoint(s) for s in steps],
                "out_dir": f"{output.evals}/{src}" if job.bundled else output.evals,
                "watch_cache": f"{RESULTS}/evals/{job.tokens}/{src}/watch-cache",
            }
            for src, steps in job.parts
        ]
    )


def eval_job_dir(job):
    return f"{RESULTS}/evals/{EVAL.job_dir(job)}"


# ---------------------------------------------------------------------------------------------- series
def series_dir(wildcards):
    return f"{RESULTS}/series/{wildcards.series}"


def members(series):
    """(source, step) pairs of a series; a deferred series' come from its manifest (a Snakemake checkpoint)."""
    s = SERIES[series]
    if not s.deferred:
        return list(s.members)
    return read_manifest(checkpoints.series_manifest.get(series=series).output.manifest)


def series_axis(wildcards):
    """The axis a series is fitted on: its own (a frontier's tokens or flops), else the config's fit.axis."""
    return SERIES[wildcards.series].axis or CFG["fit"]["axis"]


AXIS_LABELS = {"step": "training step", "tokens": "tokens seen", "flops": "non-embedding FLOPs per token"}


def series_axis_label(wildcards):
    return AXIS_LABELS.get(series_axis(wildcards), series_axis(wildcards))


def series_axis_values(wildcards):
    """JSON of a deferred series' own axis values from its manifest ('' = order the checkpoints by step)."""
    s = SERIES[wildcards.series]
    if not s.deferred:
        return ""
    data = read_manifest_data(checkpoints.series_manifest.get(series=wildcards.series).output.manifest)
    return json.dumps(data["axis"]) if "axis" in data else ""


def frontier_curves(wildcards):
    """val_loss.csv of a frontier's runs, and of the trunks its decay branches start from (drawn dashed)."""
    runs = list(SERIES[wildcards.series].sources)
    trunks = sorted({RUNS[r].spec["branch"]["from"] for r in runs if (RUNS[r].spec.get("branch") or {}).get("from")})
    return [f"{RESULTS}/runs/{r}/val_loss.csv" for r in runs + trunks]


def series_token_set(wildcards):
    return TOKEN_SETS[SERIES[wildcards.series].token_set].path


def series_evals(wildcards):
    """The eval files of a series' members, in member order (each inside its evaluation block folder)."""
    tokens = SERIES[wildcards.series].token_set
    return [
        f"{RESULTS}/evals/{EVAL.block_dir(tokens, src, step)}/step{step:08d}.h5"
        for src, step in members(wildcards.series)
    ]


def series_eval_dirs(wildcards):
    """The evaluation jobs' folders that hold a series' eval files."""
    tokens = SERIES[wildcards.series].token_set
    return sorted({eval_job_dir(EVAL.job_of(tokens, src, step)) for src, step in members(wildcards.series)})


# App. A.2 alignment: series on the validation token set (frequencies are counted with its tokenizer), with the
# dependency length at the series' last member: a run's final checkpoint; a frontier's largest budget or model
# (its members come from its manifest). Continuation series (reshape arms) are compared in their experiment's
# report instead.
# A reshape experiment's candidates series is scored (reshape_scores) from its fits, not analyzed as a series of
# its own: its p(tau), pulse and power law describe training samples between two reference checkpoints.
ANALYZED = [s for s, v in SERIES.items() if v.kind not in ("continuation", "candidates")]
ALIGNED = [s for s in ANALYZED if SERIES[s].token_set == VALID_TOKENS]


def dependency_member(wildcards):
    """(source, step) whose model measures the series' dependency lengths: its last member."""
    return members(wildcards.series)[-1]


def dependency_ready(wildcards):
    return list(SOURCES[dependency_member(wildcards)[0]].ready)


def dependency_checkpoint(wildcards):
    src, step = dependency_member(wildcards)
    return SOURCES[src].checkpoint(step)


def alignment_inputs(wildcards):
    out = {
        "fits": f"{series_dir(wildcards)}/fits.h5",
        "tokens": TOKEN_SETS[VALID_TOKENS].path,
        "train": f"{DATA}/train_tokens.bin",
        "train_meta": f"{DATA}/train_tokens.json",
    }
    return out | {"dependency": f"{series_dir(wildcards)}/alignment/dependency.h5"}


def seed_group_fits(wildcards):
    """The fit tables of a seed group's runs (each run is a series of its own), in seed order."""
    return [f"{RESULTS}/series/{r}/fits.h5" for r in SEED_GROUPS[wildcards.group]]


def seed_group_runs(wildcards):
    return " ".join(shlex.quote(r) for r in SEED_GROUPS[wildcards.group])


def series_train_data(wildcards):
    """The training data folder whose targets' unigram counts set the series' fit window ('' = none known)."""
    return TOKEN_SETS[SERIES[wildcards.series].token_set].train_data


def fit_window_train_data(wildcards):
    """--train-data of `tokenscale fit-window` ('' for a token set without training data: the rule falls back)."""
    td = series_train_data(wildcards)
    return f"--train-data {shlex.quote(td)}" if td else ""


def fit_window_inputs(wildcards):
    out = {"trajectories": trajectory_shards(wildcards)}
    if CFG["fit"]["start"] == "unigram" and series_train_data(wildcards):
        out["train"] = f"{series_train_data(wildcards)}/train_tokens.json"
    return out


def trajectory_shards(wildcards):
    return [f"{series_dir(wildcards)}/trajectories/shard-{i:03d}.h5" for i in range(CFG["eval"]["shards"])]


def fit_shards(wildcards):
    return [f"{series_dir(wildcards)}/fits/shard-{i:03d}.h5" for i in range(CFG["eval"]["shards"])]


def all_targets():
    out = [f"{DATA}/valid_tokens.h5"]
    out += [f"{RESULTS}/runs/{r}/{f}" for r in RUNS for f in ("train.json", "val_loss.csv")]
    out += [f"{RESULTS}/series/{s}/fits.h5" for s in SERIES]
    out += [f"{RESULTS}/series/{s}/analysis/{f}" for s in ANALYZED for f in ("summary.json", "figures")]
    out += [f"{RESULTS}/series/{s}/forecast/forecast.json" for s in ANALYZED]
    out += [f"{RESULTS}/series/{s}/frontier/frontier.csv" for s, v in SERIES.items() if v.kind == "frontier"]
    out += [f"{RESULTS}/series/{s}/alignment/alignment.json" for s in ALIGNED]
    out += [f"{RESULTS}/seeds/{g}/agreement.json" for g in SEED_GROUPS]
    out += [f"{reshape_dir(e)}/report.json" for e in RESHAPE]
    out += [f"{RESULTS}/series/{s}/synthetic/report.json" for s in SYNTHETIC_SERIES]
    return out + [f"{RESULTS}/provenance.json"]


def final_targets():
    """Everything, and the verify table when the config names reference numbers (it reads every summary)."""
    return all_targets() + ([f"{RESULTS}/verify/verify.html"] if REFERENCE else [])
