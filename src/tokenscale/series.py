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
series reads the files of its members from there. With ``eval.sources_per_job`` > 1, the one-block sources that
only one series uses are evaluated a few to a job (:func:`bundle_sources`): ``evals/{token set}/<group>+<k>/``
then holds each source's block folder (:class:`EvalPlan` says where every file is).

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
           "step_from_name", "eval_blocks", "block_of", "EvalJob", "EvalPlan", "eval_plan", "bundle_sources", "resolve", "resolve_manifest", "series_spec",
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
    bundle: str = ""  # the group whose one-block sources share evaluation jobs ("" = this series alone)

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


@dataclass(frozen=True)
class EvalJob:
    """One evaluation job (one process) on token set ``tokens``: ``parts`` are the (source, steps) it evaluates in
    turn. ``name`` is its folder under ``evals/{tokens}/``: the source's name, or ``<group>+<k>`` for a bundle of
    sources (``+`` is in no source name). A bundle writes each source's block folder inside its own."""

    tokens: str
    name: str
    block: int
    parts: tuple[tuple[str, tuple[int, ...]], ...]

    @property
    def bundled(self) -> bool:
        return len(self.parts) > 1 or self.parts[0][0] != self.name


def _split_even(items: list, size: int) -> list[list]:
    """``items`` in ceil(n / size) consecutive groups whose sizes differ by at most one."""
    k = -(-len(items) // size)
    cuts = [round(i * len(items) / k) for i in range(k + 1)]
    return [items[cuts[i] : cuts[i + 1]] for i in range(k)]


def bundle_sources(wf: Workflow, per_job: int, sources_per_job: int) -> dict[tuple[str, str], str]:
    """Which (token set, source) pairs share an evaluation job: the bundle name of each bundled pair.

    A source is bundled only when one job evaluates all its checkpoints (one block) and exactly one series uses it
    on that token set. The series of one bundle group (``Series.bundle``, by default each series alone; a reshape
    experiment's arms form one) pool such sources, in series order, into ceil(n / ``sources_per_job``) bundles of
    near-equal size, ``<group>+<k>`` (a group with one such source bundles nothing). Each source's job then
    becomes ready with the last of its bundle's sources: bundling saves the ~5 s of Python, torch and transformers
    start-up per job (README: "Demo timing") and costs that wait."""
    if sources_per_job < 1:
        raise TokenscaleError(f"eval.sources_per_job: {sources_per_job} is not >= 1")
    users: dict[tuple[str, str], list[str]] = {}
    for s in wf.series.values():
        for src in dict.fromkeys(s.sources):
            users.setdefault((s.token_set, src), []).append(s.name)
    out: dict[tuple[str, str], str] = {}
    if sources_per_job == 1:
        return out
    for group, (token_set, alone) in _bundle_groups(wf, per_job, users).items():
        if len(alone) < 2:
            continue
        for k, part in enumerate(_split_even(alone, sources_per_job)):
            for src in part:
                out[(token_set, src)] = f"{group}+{k}"
    return out


def _bundle_groups(wf: Workflow, per_job: int, users: dict) -> dict[str, tuple[str, list[str]]]:
    """Each bundle group's token set and its bundleable sources (used by one series, one block), in series order."""
    groups: dict[str, tuple[str, list[str]]] = {}
    for s in wf.series.values():
        group = s.bundle or s.name
        if s.bundle in wf.series and wf.series[s.bundle].bundle != s.bundle:
            raise TokenscaleError(f"series {s.name}: bundle group {s.bundle!r} is also a series outside the group")
        token_set, alone = groups.setdefault(group, (s.token_set, []))
        if token_set != s.token_set:
            raise TokenscaleError(f"series {s.name}: bundle group {group!r} spans token sets {token_set!r} and "
                                  f"{s.token_set!r}")
        alone += [src for src in dict.fromkeys(s.sources)
                  if users[(s.token_set, src)] == [s.name] and len(eval_blocks(wf.sources[src], per_job)) == 1]
    return groups


@dataclass
class EvalPlan:
    """Every evaluation job of a workflow, and where each (token set, source, step) is evaluated: the job's folder
    ``{tokens}/{name}/block-{block:03d}`` under ``evals/``, and the block folder inside it that holds the source's
    ``step<N>.h5`` files and manifest (the job's folder itself, or its ``{source}`` subfolder in a bundle)."""

    per_job: int
    sources: dict[str, Source]
    bundles: dict[tuple[str, str], str]
    jobs: dict[tuple[str, str, int], EvalJob] = field(default_factory=dict)

    def job_of(self, tokens: str, source: str, step: int) -> EvalJob:
        block = block_of(self.sources[source], step, self.per_job)
        name = self.bundles.get((tokens, source), source)
        return self.job(tokens, name, block if name == source else 0)

    def job(self, tokens: str, name: str, block: int) -> EvalJob:
        if (tokens, name, block) in self.jobs:
            return self.jobs[(tokens, name, block)]
        if name in self.sources and (tokens, name) not in self.bundles:
            steps = eval_blocks(self.sources[name], self.per_job)
            if 0 <= block < len(steps):
                return self.jobs.setdefault((tokens, name, block), EvalJob(tokens, name, block, ((name, tuple(steps[block])),)))
            raise TokenscaleError(f"source {name}: evaluation block {block} does not exist ({len(steps)} blocks)")
        parts = tuple((src, tuple(self.sources[src].steps)) for (t, src), b in self.bundles.items()
                      if t == tokens and b == name)
        if not parts or block != 0:
            raise TokenscaleError(f"evaluation job {tokens}/{name}/block-{block:03d} does not exist")
        return self.jobs.setdefault((tokens, name, 0), EvalJob(tokens, name, 0, parts))

    def job_dir(self, job: EvalJob) -> str:
        return f"{job.tokens}/{job.name}/block-{job.block:03d}"

    def block_dir(self, tokens: str, source: str, step: int) -> str:
        """The block folder (relative to ``evals/``) holding ``step<step>.h5`` of ``source`` on ``tokens``."""
        job = self.job_of(tokens, source, step)
        return f"{self.job_dir(job)}/{source}" if job.bundled else self.job_dir(job)

    def source_jobs(self, tokens: str, source: str) -> list[EvalJob]:
        """The jobs that evaluate every checkpoint of ``source`` on ``tokens`` (one per block; a bundle once)."""
        jobs = [self.job_of(tokens, source, steps[0]) for steps in eval_blocks(self.sources[source], self.per_job)]
        return list(dict.fromkeys(jobs))

    def source_blocks(self, tokens: str, source: str) -> list[str]:
        """Every block folder of ``source`` on ``tokens`` (relative to ``evals/``), in step order."""
        return [self.block_dir(tokens, source, steps[0]) for steps in eval_blocks(self.sources[source], self.per_job)]


def eval_plan(wf: Workflow, per_job: int, sources_per_job: int = 1) -> EvalPlan:
    """The evaluation jobs of ``wf`` with ``eval.checkpoints_per_job`` and ``eval.sources_per_job``."""
    return EvalPlan(per_job, wf.sources, bundle_sources(wf, per_job, sources_per_job))


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
