"""Series: what the workflow evaluates, fits and analyses downstream of training.

Three small notions, all plain data (this module imports neither torch nor h5py: Snakemake imports it to
build the DAG):

* a **source** is a set of step-numbered checkpoints that exist together: one training run's
  ``checkpoints/step*/`` or one external folder (Pythia layout). ``ready`` lists the files that exist once
  they can be read (a run's ``train.json``).
* a **token set** is an HDF5 of token sequences (docs/formats.md) that checkpoints are evaluated on: the
  shared validation set, or the validation documents tokenized with an external series' own tokenizer.
* a **series** is an ordered list of members ``(source, step)`` on one token set: the trajectories, fits and
  the decomposition are computed per series.

Each (token set, source, checkpoint) is evaluated once, whichever series use it: evaluation files live under
``evals/{token set}/{source}/`` in blocks of ``eval.checkpoints_per_job`` of the source's checkpoints, and a
series reads the files of its members from there.

Each kind of series is one builder in :data:`BUILDERS` (config -> series). ``run`` and ``external`` are built in;
a study registers its kinds with :func:`register_builder` from its ``spec`` module (:mod:`tokenscale.studies` lists
them), and this module imports no study. Today's kinds:

* ``run`` -- a training run's own checkpoints on the T axis, on the shared validation token set (a synthetic run:
  on its dataset's validation examples, whose answers are the tokens);
* ``external`` -- an external folder's checkpoints, on its own token set;
* ``candidates`` -- a reshape experiment's candidate training samples (a token set of their own) at the reference
  run's checkpoints around the target window (:mod:`tokenscale.reshaping.spec`);
* ``continuation`` -- a reshape experiment's continuation arm on the shared validation token set: the reference's
  checkpoints up to the window start, then the arm's own (the arms' learning-time spectra are compared in the
  experiment's report, not analysed one by one);
* ``frontier`` -- a D or M sweep's frontier (:mod:`tokenscale.frontiers.spec`): the best recipe's final checkpoint per
  token budget or model size, on the shared validation token set, fitted on tokens seen (D) or on the models'
  non-embedding FLOPs/token (M). Deferred: the choice needs the runs' validation losses.

A series whose members are only known after training (a D or M frontier picks one checkpoint from each of
many runs by their results) is *deferred*: its builder gives ``members=None``, the sources it may draw on,
the files its choice depends on (``inputs``) and a ``resolver`` (``"package.module:function"``); the workflow
runs a Snakemake ``checkpoint`` (rule ``series_manifest``, ``tokenscale series-manifest``) that calls
``resolver(series, sources, inputs)`` and writes the members to ``series/{name}/manifest.json``; the DAG below
it is built from that file. A resolver returns the members, or a dict with ``members`` plus optionally
``axis`` (``{"name", "values"}``: the series' fit axis, one value per member, written into its trajectory
shards when it is not a checkpoint's own step or tokens) and ``table`` (rows kept in the manifest, e.g. which
run defines each frontier point). A new kind is one builder (and, if deferred, one resolver) plus a config entry.
"""

from __future__ import annotations

import importlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from tokenscale import TokenscaleError
from tokenscale.atomic import write_json
from tokenscale.config import config_hash, registered_sections, run_configs

__all__ = ["Source", "TokenSet", "Series", "Workflow", "BUILDERS", "register_builder", "build_workflow", "discover_checkpoints",
           "step_from_name", "eval_blocks", "block_of", "resolve", "resolve_manifest", "series_spec",
           "parse_series_spec", "read_manifest", "read_manifest_data", "write_manifest", "seed_groups", "SEED_FREE_KEYS"]

_STEP_DIR = re.compile(r"^(?:step|checkpoint-|global_step)0*(\d+)$")
MANIFEST_FORMAT = "tokenscale-series-manifest-v1"


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
class Source:
    """Checkpoints that exist together: ``checkpoints`` are (step, folder) pairs ordered by step."""

    name: str
    checkpoints: tuple[tuple[int, str], ...]
    ready: tuple[str, ...] = ()

    @property
    def steps(self) -> list[int]:
        return [s for s, _ in self.checkpoints]

    def checkpoint(self, step: int) -> str:
        for s, path in self.checkpoints:
            if s == step:
                return path
        raise TokenscaleError(f"source {self.name}: no checkpoint at step {step}")


@dataclass(frozen=True)
class TokenSet:
    """A token-set HDF5 (``path``) known to the workflow as ``name`` (the ``evals/{name}/`` folder)."""

    name: str
    path: str
    train_data: str = ""  # folder of the training data its targets' unigram counts come from ("" = none known)


@dataclass(frozen=True)
class Series:
    """Members ``(source, step)`` in axis order, all evaluated on ``token_set``.

    ``members`` is None for a deferred series: ``resolver`` picks them from ``sources`` after ``inputs`` exist.
    """

    name: str
    kind: str
    token_set: str  # a TokenSet name
    members: tuple[tuple[str, int], ...] | None
    sources: tuple[str, ...]
    config_hash: str = ""  # provenance written into the trajectory shards
    inputs: tuple[str, ...] = ()  # deferred: files the choice of members reads
    resolver: str = ""  # deferred: "package.module:function" choosing the members
    axis: str = ""  # the fit axis in the trajectory shards ("" = the config's fit.axis)
    options: str = ""  # JSON for the resolver (e.g. a frontier's sweep axis and run groups)

    @property
    def deferred(self) -> bool:
        return self.members is None


@dataclass
class Workflow:
    """Everything downstream of training that a validated config declares."""

    sources: dict[str, Source] = field(default_factory=dict)
    token_sets: dict[str, TokenSet] = field(default_factory=dict)
    series: dict[str, Series] = field(default_factory=dict)

    def add(self, *, sources: Iterable[Source] = (), token_sets: Iterable[TokenSet] = (),
            series: Iterable[Series] = ()) -> None:
        for kind, table, items in (("source", self.sources, sources), ("token set", self.token_sets, token_sets),
                                   ("series", self.series, series)):
            for item in items:
                if item.name in table and table[item.name] != item:
                    raise TokenscaleError(f"config: {kind} name {item.name!r} is declared twice")
                table[item.name] = item


# ------------------------------------------------------------------------------------------------ builders
VALID_TOKENS = "valid"  # the token set of the prepared validation sequences, shared by every training run


def _run_series(cfg: dict, wf: Workflow) -> Iterator[Series]:
    """Each T-axis training run's own checkpoints on the shared validation token set (every run is a source)."""
    wf.add(token_sets=[TokenSet(VALID_TOKENS, f"{cfg['results']}/data/valid_tokens.h5", f"{cfg['results']}/data")])
    wf.add(token_sets=[TokenSet(e["name"], f"{cfg['results']}/synthetic/{e['name']}/valid_tokens.h5",
                                f"{cfg['results']}/synthetic/{e['name']}")
                       for e in cfg.get("synthetic", [])])
    for name, run in run_configs(cfg).items():
        root = f"{cfg['results']}/runs/{name}"
        ckpts = tuple((s, f"{root}/checkpoints/step{s:08d}") for s in run.checkpoint_steps())
        wf.add(sources=[Source(name, ckpts, (f"{root}/train.json",))])
        tokens = run.spec.get("synthetic") or VALID_TOKENS  # a synthetic run: its dataset's validation answers
        if run.axis == "T" and run.reshape is None:  # D/M runs: sources of their frontier; reshape arms: of a report
            yield Series(name, "run", tokens, tuple((name, s) for s, _ in ckpts), (name,), run.hash)


def _external_series(cfg: dict, wf: Workflow) -> Iterator[Series]:
    """Folders of step-numbered checkpoints, on the validation documents tokenized with their own tokenizer."""
    for entry in cfg["external"]:
        name = entry["name"]
        ckpts = tuple((s, str(p)) for s, p in discover_checkpoints(entry["path"]))
        wf.add(sources=[Source(name, ckpts)], token_sets=[TokenSet(name, f"{cfg['results']}/tokens/{name}.h5")])
        yield Series(name, "external", name, tuple((name, s) for s, _ in ckpts), (name,), "external")


Builder = Callable[[dict, Workflow], Iterable[Series]]

# kind -> builder: every series of that kind in a validated config (registering its sources and token sets), in
# the order they are built (a builder may use the sources of the kinds before it): the built-in kinds, then the
# studies' (registered by tokenscale.studies)
BUILDERS: dict[str, Builder] = {
    "run": _run_series,
    "external": _external_series,
}


def register_builder(kind: str, build: Builder) -> None:
    """Register the builder of a series kind (built after those registered before it; a kind registered again keeps
    its place)."""
    BUILDERS[kind] = build


def build_workflow(cfg: dict) -> Workflow:
    """Sources, token sets and series of a validated config (series names unique across kinds); refused before the
    studies registered (their series kinds would be missing)."""
    registered_sections()
    wf = Workflow()
    for kind, build in BUILDERS.items():
        for s in build(cfg, wf):
            if s.name in wf.series:
                raise TokenscaleError(f"config: series name {s.name!r} is used by both {wf.series[s.name].kind} and {kind}")
            missing = [src for src in s.sources if src not in wf.sources]
            if missing or s.token_set not in wf.token_sets:
                what = f"source {missing[0]!r}" if missing else f"token set {s.token_set!r}"
                raise TokenscaleError(f"series {s.name}: unknown {what}")
            if s.deferred and ":" not in s.resolver:
                raise TokenscaleError(f"series {s.name}: resolver {s.resolver!r} is not 'module:function'")
            wf.series[s.name] = s
    return wf


# ------------------------------------------------------------------------------------------------ seed groups
# run keys that may differ within a seed group: they name the run or do not change its numbers
SEED_FREE_KEYS = ("name", "seed", "sweep", "snapshots", "single_pass", "state_every")


def seed_groups(cfg: dict) -> dict[str, tuple[str, ...]]:
    """T-axis runs that differ only by ``seed`` (paper Fig. 2, hypothesis A), by group name: the name of the member
    with the lowest seed. Members are ordered by seed, one run per seed (of runs with the same recipe and seed, e.g.
    a rerun under another name, the first by name); groups of one seed are left out."""
    by_recipe: dict[str, dict[int, str]] = {}
    for run in sorted(run_configs(cfg).values(), key=lambda r: r.name):
        if run.axis != "T" or run.reshape is not None:
            continue
        recipe = {k: v for k, v in run.spec.items() if k not in SEED_FREE_KEYS}
        by_recipe.setdefault(config_hash(recipe), {}).setdefault(run.seed, run.name)
    groups = {}
    for by_seed in by_recipe.values():
        if len(by_seed) >= 2:
            names = tuple(by_seed[s] for s in sorted(by_seed))
            groups[names[0]] = names
    return groups


# ------------------------------------------------------------------------------------------------ evaluation
def eval_blocks(source: Source, per_job: int) -> list[list[int]]:
    """The source's checkpoint steps in evaluation jobs of ``per_job`` (0 = all in one job)."""
    steps = source.steps
    size = per_job or len(steps)
    return [steps[i : i + size] for i in range(0, len(steps), size)]


def block_of(source: Source, step: int, per_job: int) -> int:
    for b, steps in enumerate(eval_blocks(source, per_job)):
        if step in steps:
            return b
    raise TokenscaleError(f"source {source.name}: no checkpoint at step {step}")


# ------------------------------------------------------------------------------------------------ manifests
def load_resolver(spec: str) -> Callable[[Series, dict, Sequence[str]], Sequence[tuple[str, int]]]:
    """The function named by ``"package.module:function"``."""
    module, _, func = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as e:
        raise TokenscaleError(f"resolver {spec!r} cannot be imported: {e}") from None


def resolve(series: Series, sources: dict[str, Source], inputs: Sequence[str]) -> list[tuple[str, int]]:
    """Members of a deferred series from its resolver, checked: its own sources, existing steps, no duplicates."""
    return resolve_manifest(series, sources, inputs)[0]


def resolve_manifest(series: Series, sources: dict[str, Source], inputs: Sequence[str]) -> tuple[list, dict]:
    """(members, extra): :func:`resolve` plus what the resolver adds to the manifest (``axis``, ``table``)."""
    chosen = load_resolver(series.resolver)(series, sources, inputs)
    extra = {}
    if isinstance(chosen, dict):
        extra = {k: chosen[k] for k in ("axis", "table") if k in chosen}
        chosen = chosen["members"]
    members = [(str(src), int(step)) for src, step in chosen]
    axis = extra.get("axis")
    if axis is not None and len(axis["values"]) != len(members):
        raise TokenscaleError(f"series {series.name}: {len(axis['values'])} axis values for {len(members)} members")
    if not members:
        raise TokenscaleError(f"series {series.name}: its resolver chose no checkpoint")
    for src, step in members:
        if src not in series.sources:
            raise TokenscaleError(f"series {series.name}: member source {src!r} is not one of its sources")
        sources[src].checkpoint(step)
    if len(set(members)) != len(members):
        raise TokenscaleError(f"series {series.name}: a checkpoint is chosen twice")
    return members, extra


def series_spec(wf: Workflow, name: str) -> str:
    """JSON of a series and the sources it draws on (what ``tokenscale series-manifest`` resolves)."""
    s = wf.series[name]
    return json.dumps({"series": asdict(s), "sources": {n: asdict(wf.sources[n]) for n in s.sources}}, sort_keys=True)


def parse_series_spec(text: str) -> tuple[Series, dict[str, Source]]:
    d = json.loads(text)

    def tup(x):
        return tuple(tup(v) for v in x) if isinstance(x, list) else x

    series = Series(**{k: tup(v) for k, v in d["series"].items()})
    sources = {n: Source(**{k: tup(v) for k, v in src.items()}) for n, src in d["sources"].items()}
    return series, sources


def write_manifest(path: str | Path, series: Series, members: Sequence[tuple[str, int]],
                   extra: dict | None = None) -> Path:
    return write_json(path, {"format": MANIFEST_FORMAT, "series": series.name, "kind": series.kind,
                             "token_set": series.token_set, "members": [list(m) for m in members], **(extra or {})})


def resolve_series_manifest(spec: str, inputs: Sequence[str], out: str | Path) -> tuple[Series, list]:
    """The ``series-manifest`` stage: resolve the deferred series of ``spec`` (:func:`series_spec`) from its
    ``inputs`` and write its manifest to ``out``; returns (series, members)."""
    try:
        series, sources = parse_series_spec(spec)
    except (ValueError, KeyError, TypeError) as e:
        raise TokenscaleError(f"--spec is not a series spec: {e}") from None
    members, extra = resolve_manifest(series, sources, inputs)
    write_manifest(out, series, members, extra)
    return series, members


def read_manifest(path: str | Path) -> list[tuple[str, int]]:
    """The members ``(source, step)`` of a series manifest."""
    return [(str(src), int(step)) for src, step in read_manifest_data(path)["members"]]


def read_manifest_data(path: str | Path) -> dict:
    """A series manifest as written (members, and ``axis`` / ``table`` where its resolver gave them)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TokenscaleError(f"{p}: cannot read series manifest ({e}); rerun its series_manifest job") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise TokenscaleError(f"{p}: not a series manifest ({MANIFEST_FORMAT})")
    return data
