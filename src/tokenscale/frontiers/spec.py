"""The frontiers study's spec: one deferred ``frontier`` series per D or M sweep.

:func:`register` (called by :mod:`tokenscale.studies`) registers the builder with :mod:`tokenscale.series`, which
imports nothing of this package. Plain data only (Snakemake builds the DAG from it): the frontier itself is
chosen by :func:`tokenscale.frontiers.compute.resolve` once the sweep's runs have trained.
"""

from __future__ import annotations

from typing import Iterator

from tokenscale import TokenscaleError
from tokenscale.config import RunConfig, config_hash, run_configs
from tokenscale.frontiers.compute import AXES, frontier_options
from tokenscale.series import VALID_TOKENS, Series, Workflow, register_builder
from tokenscale.training.model import nonembedding_flops_per_token, resolve_arch  # torch-free at import

__all__ = ["frontier_series", "register"]


def frontier_series(cfg: dict, wf: Workflow) -> Iterator[Series]:
    """One frontier series per D or M sweep, over the sweep's runs (registered as sources by the ``run`` kind)."""
    runs = run_configs(cfg)
    for sweep in cfg["sweeps"]:
        if sweep["axis"] not in AXES:
            continue
        members = sorted(name for name, r in runs.items() if r.sweep == sweep["name"])
        groups = {name: _group_value(runs[name], sweep["axis"]) for name in members}
        if len(set(groups.values())) < 4:
            raise TokenscaleError(f"sweep {sweep['name']}: a frontier needs at least 4 distinct "
                                  f"{AXES[sweep['axis']][1]} values (4 sigmoid parameters per token), got "
                                  f"{len(set(groups.values()))}")
        inputs = tuple(f"{cfg['results']}/runs/{name}/val_loss.csv" for name in members)
        yield Series(sweep["name"], "frontier", VALID_TOKENS, None, tuple(members),
                     config_hash=config_hash([runs[n].hash for n in members]), inputs=inputs,
                     resolver="tokenscale.frontiers.compute:resolve", axis=AXES[sweep["axis"]][0],
                     options=frontier_options(sweep["axis"], groups))


def _group_value(run: RunConfig, axis: str) -> float:
    """A sweep run's frontier group: its token budget (D) or its model's non-embedding FLOPs/token (M)."""
    if axis == "D":
        return float(run.tokens)
    return float(nonembedding_flops_per_token(resolve_arch(run.model, run.seq_len), run.seq_len))


def register() -> None:
    """Series builds the ``frontier`` kind with :func:`frontier_series`."""
    register_builder("frontier", frontier_series)
