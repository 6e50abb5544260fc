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

import math

from tokenscale import TokenscaleError
from tokenscale.config import run_configs
from tokenscale.synthetic.arithmetic import vocab_size
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
