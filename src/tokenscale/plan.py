"""Compute plan of a config: training FLOPs and GPU time per run and per axis, next to the paper's totals.

Conventions (``tokenscale plan``; torch is never imported):

    training FLOPs  = model FLOPs/token x tokens trained
    model FLOPs/token = M + 6*d*V            (tokenscale.training.model: non-embedding M plus the LM head, forward and
                                              backward, 2 FLOPs per multiply-add, attention without a causal
                                              discount; the number MFU divides by the peak, see ``throughput``)
    tokens trained  = steps trained x batch_size x seq_len
    steps trained   = total_steps = tokens // (batch_size * seq_len), or total_steps - branch.step for a decay
                      branch (``runs[].branch: {from, step}``: it starts from its trunk's snapshot at ``step``,
                      so those steps are the trunk's and are saved here)
    GPU-hours       = training FLOPs / (peak x MFU) / 3600, GPU-days = GPU-hours / 24

The peak is the dense datasheet peak of ``--gpu`` at ``--precision`` from
:data:`tokenscale.training.throughput.GPU_PEAKS` (A100 bf16: 312 TFLOP/s). The MFU is an assumption (default 0.4).
Not counted: evaluation of the checkpoints, fits, checkpoint and state I/O, restarts, activation
recomputation, and the runs of any search the config does not list.

The paper reports measured A100 GPU-days per axis (§4.1 step axis, §5.1 data axis, §5.2 model axis); the plan
prints them with ``ratio`` = this plan's A100-days at the same MFU / the paper's, and the MFU at which the
paper's days would deliver this plan's FLOPs (``implied MFU`` = MFU x ratio).
"""

from __future__ import annotations

import copy
import fnmatch
import math
from pathlib import Path

import yaml

from tokenscale import TokenscaleError
from tokenscale.config import fill_defaults, load_schema, run_configs
from tokenscale.synthetic.arithmetic import vocab_size
from tokenscale.training.expert_parallel import check as check_expert_parallel
from tokenscale.training.model import model_flops_per_token, resolve_arch
from tokenscale.training.throughput import GPU_PEAKS, table_peak

# Paper text: "The step-axis study consumed 133 A100 GPU days overall" (§4.1, including two extra runs);
# "the data axis training consumed 358 A100 GPU days in total" (§5.1); "model-axis training consumed 422 A100
# GPU days in total" (§5.2). The introduction's 1,178 A100 GPU-days cover all experiments (> 110 runs).
PAPER_A100_DAYS = {"T": 133.0, "D": 358.0, "M": 422.0}
PAPER_TOTAL_A100_DAYS = 1178.0
DEFAULT_GPU = "a100"
DEFAULT_MFU = 0.4
DEFAULT_PRECISION = "bf16"
AXES = ("T", "D", "M")


def gpu_peak(gpu: str, precision: str = DEFAULT_PRECISION) -> tuple[float, str]:
    """Dense peak FLOP/s of ``gpu`` (a name or part of one, e.g. a100, h100) at ``precision``, and its label."""

    peak, source = table_peak(gpu, precision)
    if not math.isfinite(peak):
        known = ", ".join(label.removeprefix("NVIDIA ") for _, label, _ in GPU_PEAKS)
        raise TokenscaleError(f"--gpu {gpu!r} at {precision} is not in tokenscale.training.throughput.GPU_PEAKS "
                              f"(known: {known})")
    return peak, source.removeprefix("table: ")


def run_plan(run, vocab_size: int, peak: float, mfu: float) -> dict:
    """One run's steps and tokens trained, training FLOPs, GPU-hours and branch savings; ``run`` a RunConfig."""

    flops_per_token = model_flops_per_token(resolve_arch(run.model, run.seq_len), run.seq_len, vocab_size)
    total = run.total_steps
    branch = run.spec.get("branch")  # runs[].branch: {from, step} (decay branches)
    start = branch["step"] if branch else 0
    per_step = run.batch_size * run.seq_len * flops_per_token
    return {"run": run.name, "axis": run.axis, "sweep": run.sweep, "reshape": run.reshape is not None,
            "synthetic": run.synthetic is not None,
            "model_flops_per_token": flops_per_token,
            "steps": total - start, "tokens": (total - start) * run.batch_size * run.seq_len,
            "flops": (total - start) * per_step, "gpu_hours": gpu_hours((total - start) * per_step, peak, mfu),
            "branch_from": branch["from"] if branch else None, "saved_flops": start * per_step,
            "saved_gpu_hours": gpu_hours(start * per_step, peak, mfu)}


def gpu_hours(flops: float, peak: float, mfu: float) -> float:
    """FLOPs / (peak x MFU) in hours."""
    return flops / (peak * mfu) / 3600.0


def plan(cfg: dict, gpu: str = DEFAULT_GPU, mfu: float = DEFAULT_MFU, precision: str = DEFAULT_PRECISION) -> dict:
    """Per-run rows and per-axis totals of a validated config, with the paper's A100-days per axis."""

    if not 0 < mfu <= 1:
        raise TokenscaleError(f"--mfu {mfu} must be in (0, 1]")
    peak, label = gpu_peak(gpu, precision)
    a100, _ = gpu_peak("a100", precision)
    vocab = {e["name"]: vocab_size(e["p"]) for e in cfg.get("synthetic", [])}  # a synthetic run's is its dataset's
    rows = [run_plan(r, vocab.get(r.synthetic, cfg["data"]["vocab_size"]), peak, mfu)
            for r in run_configs(cfg).values()]
    # a reshape experiment's continuation runs (§6) and the synthetic runs (App. A.3) are studies of their own,
    # not part of the T axis
    axes = {axis: axis_total([r for r in rows if r["axis"] == axis and not (r["reshape"] or r["synthetic"])], axis,
                             a100, mfu) for axis in AXES}
    arms = [r for r in rows if r["reshape"]]
    synthetic = [r for r in rows if r["synthetic"]]
    trunks = {r["branch_from"] for r in rows if r["branch_from"] and not r["reshape"]}  # of decay branches
    return {"gpu": label, "peak": peak, "mfu": mfu, "precision": precision, "runs": rows, "axes": axes,
            "total": axis_total(rows, None, a100, mfu),
            "reshape": {"runs": len(arms), "gpu_hours": sum(r["gpu_hours"] for r in arms)},
            "synthetic": {"runs": len(synthetic), "gpu_hours": sum(r["gpu_hours"] for r in synthetic)},
            "trunks": {r["run"]: r["gpu_hours"] for r in rows if r["run"] in trunks}}


def axis_total(rows: list[dict], axis: str | None, a100_peak: float, mfu: float) -> dict:
    """Sums over ``rows``, the paper's A100-days for ``axis`` (None = all three) and their ratio."""
    flops = sum(r["flops"] for r in rows)
    hours = sum(r["gpu_hours"] for r in rows)
    paper = PAPER_A100_DAYS[axis] if axis else sum(PAPER_A100_DAYS.values())
    ratio = gpu_hours(flops, a100_peak, mfu) / 24.0 / paper
    return {"runs": len(rows), "tokens": sum(r["tokens"] for r in rows), "flops": flops, "gpu_hours": hours,
            "gpu_days": hours / 24.0, "paper_a100_days": paper, "ratio": ratio, "implied_mfu": mfu * ratio,
            "branched": sum(r["branch_from"] is not None for r in rows),
            "saved_flops": sum(r["saved_flops"] for r in rows),
            "saved_gpu_hours": sum(r["saved_gpu_hours"] for r in rows)}


def format_plan(p: dict, runs: bool = True) -> list[str]:
    """The plan as text lines: the conventions, one line per run (``runs``), the per-axis totals, the branches."""
    lines = [f"training FLOPs = model FLOPs/token (M + 6dV, forward + backward) x tokens trained; "
             f"GPU-hours = FLOPs / ({p['peak'] / 1e12:g} TFLOP/s [{p['gpu']}] x MFU {p['mfu']:g}) / 3600"]
    if runs:
        lines += _run_lines(p["runs"])
    lines += _axis_lines(p)
    return lines + _branch_lines(p)


def _run_lines(rows: list[dict]) -> list[str]:
    """One line per run: model FLOPs/token, steps and tokens trained, FLOPs, GPU-hours (and a branch's saving)."""
    width = max(len("run"), *(len(r["run"]) for r in rows))
    lines = [f"{'run':<{width}} {'axis':<4} {'model FLOPs/tok':>15} {'steps':>9} {'tokens':>10} {'FLOPs':>9} "
             f"{'GPU-hours':>10}"]
    for r in rows:
        note = f"  (branch of {r['branch_from']}: saves {_hours(r['saved_gpu_hours'])})" if r["branch_from"] else ""
        lines.append(f"{r['run']:<{width}} {r['axis']:<4} {r['model_flops_per_token']:>15.3g} {r['steps']:>9,} "
                     f"{r['tokens']:>10.3g} {r['flops']:>9.3g} {_hours(r['gpu_hours']):>10}{note}")
    return lines


def _axis_lines(p: dict) -> list[str]:
    """Per-axis and overall totals next to the paper's A100-days."""
    lines = [f"{'axis':<5} {'runs':>5} {'tokens':>9} {'FLOPs':>9} {'GPU-hours':>11} {'GPU-days':>9} "
             f"{'paper A100-days':>16} {'ratio':>7} {'implied MFU':>12}"]
    for axis, t in [*p["axes"].items(), ("all", p["total"])]:
        lines.append(f"{axis:<5} {t['runs']:>5} {t['tokens']:>9.3g} {t['flops']:>9.3g} {_hours(t['gpu_hours']):>11} "
                     f"{_hours(t['gpu_days']):>9} {t['paper_a100_days']:>16,.0f} {t['ratio']:>7.3g} "
                     f"{t['implied_mfu']:>12.3g}")
    if p["reshape"]["runs"]:
        lines.append(f"reshape (§6): {p['reshape']['runs']} continuation runs, {_hours(p['reshape']['gpu_hours'])} "
                     "GPU-hours, in 'all' only (the paper gives no GPU-days for them)")
    if p["synthetic"]["runs"]:
        lines.append(f"synthetic (App. A.3): {p['synthetic']['runs']} runs, {_hours(p['synthetic']['gpu_hours'])} "
                     "GPU-hours, in 'all' only (the paper gives no GPU-days for them)")
    lines.append(f"ratio = this plan's A100-days at MFU {p['mfu']:g} / the paper's (§4.1, §5.1, §5.2; its "
                 f"{PAPER_TOTAL_A100_DAYS:,.0f} A100-days in all include its other experiments)")
    return lines


def _branch_lines(p: dict) -> list[str]:
    """What decay branches (runs[].branch) save per axis, against training the same runs from scratch."""
    lines, branched = [], [(a, t) for a, t in p["axes"].items() if t["branched"]]
    for axis, t in branched + ([("all", p["total"])] if len(branched) > 1 else []):
        if t["branched"]:
            scratch = t["gpu_hours"] + t["saved_gpu_hours"]
            lines.append(f"decay branches ({axis}): {t['branched']} runs start from a trunk's snapshot, saving "
                         f"{t['saved_flops']:.3g} FLOPs = {_hours(t['saved_gpu_hours'])} GPU-hours "
                         f"({t['saved_gpu_hours'] / scratch:.0%} of {_hours(scratch)} from scratch)")
    if p["trunks"]:
        trunk_hours = sum(p["trunks"].values())
        lines.append(f"their trunks ({', '.join(sorted(p['trunks']))}) train for {_hours(trunk_hours)} GPU-hours "
                     f"(counted above); trained only for the branches, they leave a net saving of "
                     f"{_hours(p['total']['saved_gpu_hours'] - trunk_hours)} GPU-hours")
    return lines or ["decay branches: none (no run has runs[].branch)"]


def _hours(x: float) -> str:
    """GPU-hours or -days for a table: 1,234.5 from 10 up, else 3 significant digits (0.00123)."""
    return f"{x:,.1f}" if x >= 10 else f"{x:.3g}"


# ------------------------------------------------------------------------------------------------ cluster requests
# What each job asks a cluster for (config key `resources`, schema defaults = a laptop's), checked against the
# site's facts (config key `site`: a partition file of snakemake-executor-plugin-slurm). The workflow's resource
# callables (workflow/rules/common.smk) and `tokenscale plan --profile` read the same functions.

def resources_section(cfg: dict) -> dict:
    """The config's ``resources`` with every default filled from the schema (null = all defaults)."""
    schema = load_schema()["properties"]["resources"]
    section = copy.deepcopy(cfg.get("resources") or {})
    fill_defaults(section, {**schema, "type": "object"})
    return section


def read_site(path: str | Path) -> dict:
    """The site facts of a partition file (``partitions: {name: {max_gpu, max_nodes, max_runtime, max_mem_mb,
    available_gpu_models}}``); limits missing from a partition are unlimited (max_gpu: 0)."""
    path = Path(path)
    if not path.is_file():
        raise TokenscaleError(f"site: partition file not found: {path}")
    parts = (yaml.safe_load(path.read_text()) or {}).get("partitions")
    if not isinstance(parts, dict) or not parts:
        raise TokenscaleError(f"site: {path} has no `partitions:` mapping (the slurm plugin's partition file)")
    out = []
    for name, p in parts.items():
        p = p or {}
        out.append({"name": str(name), "max_gpu": int(p.get("max_gpu", 0)),
                    "max_nodes": float(p.get("max_nodes", math.inf)),
                    "max_runtime": _minutes(p.get("max_runtime", math.inf), path, name),
                    "max_mem_mb": float(p.get("max_mem_mb", math.inf)),
                    "gpu_models": list(p.get("available_gpu_models") or [])})
    return {"path": str(path), "partitions": out}


def _minutes(value, path, name) -> float:
    """A partition's max_runtime in minutes: a number, or a SLURM time (``2-00:00:00``, ``48:00:00``)."""
    if isinstance(value, (int, float)):
        return float(value)
    try:
        days, _, clock = str(value).rpartition("-")
        hms = [int(x) for x in clock.split(":")]
        h, m, s = ([0] * (3 - len(hms)) + hms) if len(hms) > 1 else (0, hms[0], 0)
        return int(days or 0) * 1440 + h * 60 + m + s / 60
    except ValueError:
        raise TokenscaleError(f"site: {path}: partition {name}: max_runtime {value!r} is not minutes or "
                              "D-HH:MM:SS") from None


def site_gpu_model(site: dict | None) -> str:
    """The GPU type of the site's GPU partitions when they name exactly one ('' = any GPU)."""
    models = {m for p in (site or {}).get("partitions", []) if p["max_gpu"] > 0 for m in p["gpu_models"]}
    return models.pop() if len(models) == 1 else ""


def site_has_gpus(site: dict | None) -> bool:
    return any(p["max_gpu"] > 0 for p in (site or {}).get("partitions", []))


def train_request(run, section: dict, threads: int) -> dict:
    """One training job's request for ``run`` (a RunConfig): the first ``resources.train`` entry matching its name
    (else the defaults), checked against the run (its rank count divides its batch)."""
    entry = next((e for e in section["train"] if fnmatch.fnmatchcase(run.name, e["runs"])), None)
    if entry is None:
        entry = resources_section({"resources": {"train": [{"runs": "*"}]}})["train"][0]
    nodes, gpus = entry["nodes"], entry["gpus_per_node"]
    where = f"run {run.name} (resources.train {entry['runs']!r})"
    if gpus and run.nproc > gpus:
        raise TokenscaleError(f"{where}: runs[].nproc {run.nproc} ranks per node but {gpus} GPUs per node; set "
                              f"nproc <= gpus_per_node (ranks = GPUs)")
    ranks = gpus or run.nproc
    world = nodes * ranks
    if run.batch_size % world:
        raise TokenscaleError(f"{where}: {nodes} nodes x {ranks} ranks = {world} ranks do not divide batch_size "
                              f"{run.batch_size}")
    if run.micro_batch_size and (run.batch_size // world) % run.micro_batch_size:
        raise TokenscaleError(f"{where}: micro_batch_size {run.micro_batch_size} does not divide the per-rank "
                              f"batch {run.batch_size // world} ({world} ranks)")
    ep = entry.get("expert_parallel") or 1
    arch = resolve_arch(run.model, run.seq_len)
    check_expert_parallel(ep, world=world, num_experts=arch.get("num_experts") if arch["family"] == "moe" else None,
                          engine=run.engine, where=where)
    return {"match": entry["runs"], "nodes": nodes, "gpus_per_node": gpus, "ranks_per_node": ranks, "world": world,
            "cpus_per_node": gpus * entry["cpus_per_gpu"] if gpus else threads, "cpus_per_gpu": entry["cpus_per_gpu"],
            "mem_mb": entry["mem_mb"], "time_min": entry["time_min"]}


def expert_parallel_of(cfg: dict, run_name: str) -> int:
    """``resources.train[].expert_parallel`` of the first entry matching ``run_name`` (1 when none or null)."""
    entry = next((e for e in resources_section(cfg)["train"] if fnmatch.fnmatchcase(run_name, e["runs"])), None)
    return (entry or {}).get("expert_parallel") or 1


def stage_request(cfg: dict, stage: str, site: dict | None, threads: int) -> dict:
    """An evaluation (``evaluate``) or fit (``fit``) job's request: one GPU when the stage's device is cuda (or auto
    on a site with GPUs), none otherwise."""
    device = cfg["eval" if stage == "evaluate" else "fit"]["device"]
    own = resources_section(cfg)[stage]
    gpu = int(device == "cuda" or (device == "auto" and site_has_gpus(site)))
    return {"nodes": 1, "gpus_per_node": gpu, "cpus_per_node": threads, "mem_mb": own["mem_mb"],
            "time_min": own["time_min"]}


def site_fit(req: dict, site: dict | None) -> str | None:
    """None when some partition of ``site`` takes the request, else one line saying which limit it exceeds."""
    if not site:
        return None
    limits = [("gpus_per_node", "max_gpu", "GPUs per node"), ("nodes", "max_nodes", "nodes"),
              ("time_min", "max_runtime", "minutes"), ("mem_mb", "max_mem_mb", "MB of memory per node")]
    parts = [p for p in site["partitions"] if (p["max_gpu"] > 0) == (req["gpus_per_node"] > 0)] or site["partitions"]
    for key, limit, what in limits:
        top = max(p[limit] for p in parts)
        if req[key] > top:
            return f"asks for {req[key]:g} {what}; the site ({site['path']}) has at most {top:g}"
    if not any(all(req[k] <= p[lim] for k, lim, _ in limits) for p in parts):
        return f"fits no single partition of {site['path']}"
    return None


def check_requests(cfg: dict, site: dict | None) -> dict:
    """Every training run's request (by run name), checked against its run and the site; the first problem is one
    line."""
    section = resources_section(cfg)
    out = {}
    for name, run in run_configs(cfg).items():
        req = train_request(run, section, run.threads or cfg["threads"])
        bad = site_fit(req, site)
        if bad:
            raise TokenscaleError(f"run {name} (resources.train {req['match']!r}) {bad}")
        out[name] = req
    for stage in ("evaluate", "fit"):
        bad = site_fit(stage_request(cfg, stage, site, cfg["threads"]), site)
        if bad:
            raise TokenscaleError(f"resources.{stage}: a job {bad}")
    return out


# The one GPU throughput measured in this repository (docs/training-speed.md): moe-290m, bf16, seq 512, batch 32,
# vocab 8192 on one H100, ~75k tokens/s before the fast paths = MFU ~0.029. The plan's MFU stays an assumption.
MEASURED_MFU_NOTE = ("measured: moe-290m ~75k tokens/s on one H100 (bf16, seq 512, batch 32; docs/training-speed.md) "
                     "= MFU ~0.03; no A100 or multi-GPU measurement")


def read_profile(profile: str | Path) -> dict:
    """The facts `tokenscale plan` needs from a Snakemake profile folder: its site file (`config: site:`, else its
    `slurm-partition-config`) and the evaluation blocks per group job (`group-components` of evaluate-{source})."""
    path = Path(profile) / "config.yaml"
    if not path.is_file():
        raise TokenscaleError(f"plan: --profile {profile}: no config.yaml in it")
    prof = yaml.safe_load(path.read_text()) or {}
    site = (prof.get("config") or {}).get("site") or prof.get("slurm-partition-config")
    per_group = 1
    for item in prof.get("group-components") or []:
        name, _, n = str(item).partition("=")
        if name.startswith("evaluate"):
            per_group = int(n)
    return {"path": str(path), "site": read_site(site) if site else None, "eval_per_group": per_group}


def eval_jobs(cfg: dict) -> dict[str, int]:
    """Evaluation jobs (blocks of eval.checkpoints_per_job checkpoints) per source, or per bundle of sources
    (eval.sources_per_job), as the workflow builds them: the blocks its series' members fall in, and every block of
    a run whose val_loss.csv comes from evaluations. Members of deferred series (frontiers) are known only after
    training and are the runs' final checkpoints, evaluated for the runs' val_loss.csv already."""
    from tokenscale.series import VALID_TOKENS, build_workflow, eval_plan

    wf, per_job = build_workflow(cfg), cfg["eval"]["checkpoints_per_job"]
    ev = eval_plan(wf, per_job, cfg["eval"]["sources_per_job"])
    jobs = set()
    for s in wf.series.values():
        for src, step in s.members or ():
            jobs.add(ev.job_of(s.token_set, src, step))
    for name, run in run_configs(cfg).items():
        if not run.in_loop_validation:
            tokens = run.synthetic or VALID_TOKENS
            jobs |= set(ev.source_jobs(tokens, name))
    out: dict[str, int] = {}
    for job in jobs:
        out[job.name] = out.get(job.name, 0) + 1
    return out


def cluster_plan(cfg: dict, prof: dict, p: dict) -> list[dict]:
    """One row per job class (training runs per `resources.train` entry, evaluation, fit): its request, the
    segments and submissions, and what does not fit the site. ``p`` is :func:`plan` of the same config."""
    site, section = prof["site"], resources_section(cfg)
    runs, hours = run_configs(cfg), {r["run"]: r["gpu_hours"] for r in p["runs"]}
    classes: dict[str, list] = {}
    for name, run in runs.items():
        req = train_request(run, section, run.threads or cfg["threads"])
        classes.setdefault(req["match"], []).append((name, req))
    rows = []
    for match, members in classes.items():
        req = members[0][1]
        gpus = req["nodes"] * req["gpus_per_node"]
        wall = [hours[n] / gpus if gpus else math.nan for n, _ in members]  # hours per run at the plan's MFU
        segs = [math.ceil(w * 60 / req["time_min"]) if gpus else 1 for w in wall]
        rows.append({"job": f"train {match}", "jobs": len(members), **req, "segments": max(segs),
                     "submissions": sum(segs), "gpu_days": sum(hours[n] for n, _ in members) / 24,
                     "longest_h": max(wall), "fit": site_fit(req, site)})
    per_source = eval_jobs(cfg)
    n = prof["eval_per_group"]
    ev = stage_request(cfg, "evaluate", site, cfg["threads"])
    ev_group = {**ev, "time_min": ev["time_min"] * n}
    rows.append({"job": f"evaluate ({n} blocks of {cfg['eval']['checkpoints_per_job'] or 'all'} checkpoints per job)",
                 "jobs": sum(per_source.values()), **ev_group, "segments": 1,
                 "submissions": sum(math.ceil(b / n) for b in per_source.values()), "gpu_days": math.nan,
                 "longest_h": math.nan, "fit": site_fit(ev_group, site)})
    from tokenscale.series import build_workflow

    fits = len(build_workflow(cfg).series) * cfg["eval"]["shards"]
    fit = stage_request(cfg, "fit", site, cfg["threads"])
    rows.append({"job": "fit_shard", "jobs": fits, **fit, "segments": 1, "submissions": fits,
                 "gpu_days": math.nan, "longest_h": math.nan, "fit": site_fit(fit, site)})
    return rows


def format_cluster_plan(rows: list[dict], prof: dict, p: dict) -> list[str]:
    """The job-class table, then what does not fit, then the MFU note."""
    site = prof["site"]
    where = site["path"] if site else "no site file (nothing checked)"
    lines = [f"job requests ({prof['path']}; site: {where}); time per job = one segment of a run, "
             f"segments at MFU {p['mfu']:g}",
             f"{'job class':<44} {'jobs':>5} {'nodes':>5} {'GPUs/node':>9} {'mem GB/node':>11} {'h/job':>6} "
             f"{'segments':>8} {'submits':>7} {'GPU-days':>9}  fits"]
    for r in rows:
        days = "-" if math.isnan(r["gpu_days"]) else _hours(r["gpu_days"])
        lines.append(f"{r['job']:<44} {r['jobs']:>5} {r['nodes']:>5} {r['gpus_per_node']:>9} "
                     f"{r['mem_mb'] / 1000:>11g} {r['time_min'] / 60:>6.3g} {r['segments']:>8} "
                     f"{r['submissions']:>7} {days:>9}  {'NO: ' + r['fit'] if r['fit'] else 'yes'}")
    lines.append(f"submissions: {sum(r['submissions'] for r in rows)} (training segments, evaluation groups, fits; "
                 "CPU-only and local rules not counted)")
    lines.append(f"MFU: {p['mfu']:g} assumed for every model (--mfu); {MEASURED_MFU_NOTE}")
    return lines
