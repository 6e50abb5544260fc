"""Series: what the workflow evaluates, fits and analyses downstream of training.

A series is an ordered list of checkpoints (each with its axis value, the step) evaluated on one token set.
Each kind of series is one small builder that turns a config entry into a :class:`Series`:

* ``run`` -- a training run's own checkpoints on the T axis, evaluated on the shared validation token set;
  ready once the run's ``train.json`` exists.
* ``external`` -- a folder of step-numbered checkpoints (Pythia layout), evaluated on the validation
  documents tokenized with the series' own tokenizer.

A new kind (a D or M frontier, candidate training tokens, synthetic answers) is one more builder in
:data:`BUILDERS` and a config section it reads. The workflow (``workflow/rules/common.smk``) only ever asks a
:class:`Series` for its steps, checkpoint folders, token set and readiness, never which kind it is.

This module imports neither torch nor h5py: Snakemake imports it to build the DAG.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from . import TokenscaleError

__all__ = ["Series", "BUILDERS", "build_series", "discover_checkpoints", "step_from_name"]

_STEP_DIR = re.compile(r"^(?:step|checkpoint-|global_step)0*(\d+)$")


def step_from_name(name: str) -> int | None:
    """The step of a checkpoint folder named ``step<N>``, ``checkpoint-<N>`` or ``global_step<N>``, else None."""
    m = _STEP_DIR.match(name)
    return int(m.group(1)) if m else None


def discover_checkpoints(series_dir: str | Path, *, complete_only: bool = False) -> list[tuple[int, Path]]:
    """Step-numbered checkpoint subfolders of ``series_dir``, sorted by step.

    Matches ``step<N>`` (any zero padding: ``step1000``, ``step00001000``), ``checkpoint-<N>``
    (HF Trainer) and ``global_step<N>``; other entries are ignored.  ``complete_only`` skips
    folders without a ``COMPLETE`` marker.  Errors if the directory is missing, two folders name
    the same step, or nothing matches.
    """
    d = Path(series_dir)
    if not d.is_dir():
        raise TokenscaleError(f"checkpoint series directory not found: {d}")
    found: dict[int, Path] = {}
    for entry in d.iterdir():
        step = step_from_name(entry.name)
        if step is None or not entry.is_dir():
            continue
        if complete_only and not (entry / "COMPLETE").exists():
            continue
        if step in found:
            raise TokenscaleError(f"{d}: two checkpoint folders for step {step}: {found[step].name}, {entry.name}")
        found[step] = entry
    if not found:
        raise TokenscaleError(f"no step-numbered checkpoint folders (step<N>/, checkpoint-<N>/) in {d}")
    return sorted(found.items())


@dataclass(frozen=True)
class Series:
    """One series: ``checkpoints`` are (step, folder) pairs ordered by step, all evaluated on ``token_set``."""

    name: str
    kind: str
    token_set: str  # token-set HDF5 path (an output of some rule, or an existing file)
    checkpoints: tuple[tuple[int, str], ...]
    ready: tuple[str, ...] = ()  # files that exist once every checkpoint can be read (e.g. a run's train.json)
    config_hash: str = ""  # provenance written into the trajectory shards

    @property
    def steps(self) -> list[int]:
        return [s for s, _ in self.checkpoints]

    def checkpoint(self, step: int) -> str:
        for s, path in self.checkpoints:
            if s == step:
                return path
        raise TokenscaleError(f"series {self.name}: no checkpoint at step {step}")


def run_series(cfg: dict) -> Iterator[Series]:
    """Each training run's own checkpoints (T axis) on the shared validation token set."""
    from .config import run_configs

    for name, run in run_configs(cfg).items():
        root = f"{cfg['results']}/runs/{name}"
        ckpts = tuple((s, f"{root}/checkpoints/step{s:08d}") for s in run.checkpoint_steps())
        yield Series(name, "run", f"{cfg['results']}/data/valid_tokens.h5", ckpts, (f"{root}/train.json",), run.hash)


def external_series(cfg: dict) -> Iterator[Series]:
    """Folders of step-numbered checkpoints, on the validation documents tokenized with their own tokenizer."""
    for entry in cfg["external"]:
        name = entry["name"]
        ckpts = tuple((s, str(p)) for s, p in discover_checkpoints(entry["path"]))
        yield Series(name, "external", f"{cfg['results']}/runs/{name}/valid_tokens.h5", ckpts, (), "external")


# kind -> builder: every series of that kind in a validated config
BUILDERS: dict[str, Callable[[dict], Iterable[Series]]] = {"run": run_series, "external": external_series}


def build_series(cfg: dict) -> dict[str, Series]:
    """Every series a validated config declares, by name (names are unique across kinds)."""
    out: dict[str, Series] = {}
    for kind, build in BUILDERS.items():
        for series in build(cfg):
            if series.name in out:
                raise TokenscaleError(
                    f"config: series name {series.name!r} is used by both {out[series.name].kind} and {kind}")
            out[series.name] = series
    return out
