"""Typed configuration, validated up front against one JSON Schema.

The schema (``config.schema.yaml`` in this package; the workflow validates against the same file) gives
every key a type, a description and a default, and rejects unknown keys. :func:`load_config` and
:func:`validate_config` fill defaults and turn the first schema violation into one readable line that names
the key, e.g. ``config: unknown key 'runs[0].lrr' (allowed: axis, batch_size, ...)``.

A study's own config section (``synthetic``, ``reshape``, ...) is checked by the study: it registers hooks with
:func:`register_section` (its ``spec`` module; :mod:`tokenscale.studies` lists them), and this module imports no
study. The hooks run at fixed points of :func:`validate_config`, in registration order. The entry points (the
``tokenscale`` command, :mod:`tokenscale.workflow`) import :mod:`tokenscale.studies`; validating before any
study registered is refused in one line, never a config silently checked without its studies.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jsonschema
import numpy as np
import yaml

from tokenscale import TokenscaleError
from tokenscale.training.model import resolve_arch  # torch-free at import (it imports torch lazily)

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    with open(SCHEMA_PATH) as f:
        return yaml.safe_load(f)


def load_schema() -> dict:
    """The config schema (a fresh copy: callers may modify it)."""
    return copy.deepcopy(_schema())


def schema_default(key: str) -> Any:
    """The schema's default for a dotted workflow key, e.g. ``"eval.batch_size"`` or ``"runs.lr"``.

    The schema is the one source of workflow defaults: the CLI's option defaults and the library functions'
    keyword defaults are read from here or tested against it."""
    node = _schema()
    for part in key.split("."):
        node = node.get("items", node)
        if part not in node.get("properties", {}):
            raise KeyError(f"config schema has no key {key!r}")
        node = node["properties"][part]
    if "default" not in node:
        raise KeyError(f"config schema key {key!r} has no default")
    return copy.deepcopy(node["default"])


def _types(schema: dict) -> list:
    t = schema.get("type", [])
    return t if isinstance(t, list) else [t]


def fill_defaults(instance: Any, schema: dict) -> None:
    """Insert schema defaults into ``instance`` in place (recursively, objects and arrays)."""
    if isinstance(instance, dict) and "object" in _types(schema):  # also a nullable object given as a mapping
        for key, sub in schema.get("properties", {}).items():
            if key not in instance and "default" in sub:
                instance[key] = copy.deepcopy(sub["default"])
            if key in instance:
                fill_defaults(instance[key], sub)
    elif isinstance(instance, list) and "items" in schema:
        for item in instance:
            fill_defaults(item, schema["items"])


def _path_str(path) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _one_line(err: jsonschema.ValidationError) -> str:
    where = _path_str(err.absolute_path)
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        bad = ", ".join(f"{(where + '.') if err.absolute_path else ''}{k}" for k in extra)
        return f"config: unknown key '{bad}' (allowed: {', '.join(allowed)})"
    if err.validator == "type":
        want = err.validator_value if isinstance(err.validator_value, str) else " or ".join(err.validator_value)
        return f"config: {where} must be of type {want}, got {err.instance!r} ({type(err.instance).__name__})"
    if err.validator == "required":
        return f"config: {where} is missing required key: {err.message.split(' ')[0]}"
    if err.validator == "enum":
        return f"config: {where} must be one of {err.validator_value}, got {err.instance!r}"
    if err.validator in ("oneOf", "anyOf"):
        # the alternative whose type fits the value failed deeper: report that error, else the description
        deeper = [e for e in err.context if not (e.validator == "type" and len(e.absolute_path) == len(err.absolute_path))]
        if deeper:
            return _one_line(max(deeper, key=lambda e: len(e.absolute_path)))
        if "description" in err.schema:
            return f"config: {where}: {err.instance!r} is not {err.schema['description']}"
    return f"config: {where}: {err.message}"


def validate_config(cfg: dict | None, *, cross_run: bool = True) -> dict:
    """Validate ``cfg`` against the schema and return a defaults-filled deep copy.

    ``cross_run=False`` skips the checks between runs (a branch's trunk is in the config, compatible, with the
    snapshot): for one run taken out of a validated config (the workflow's ``--spec`` of a train job; the trainer
    checks the trunk's snapshot itself). Raises :class:`TokenscaleError` with one line naming the first bad key.
    """
    cfg = copy.deepcopy(cfg) if cfg is not None else {}
    if not isinstance(cfg, dict):
        raise TokenscaleError(f"config: top level must be a mapping, got {type(cfg).__name__}")
    schema = load_schema()
    fill_defaults(cfg, schema)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
    if errors:
        raise TokenscaleError(_one_line(errors[0]))
    an = cfg["analysis"]
    if an["selection"] not in an["selections"]:
        raise TokenscaleError(f"config: analysis.selection {an['selection']!r} is not one of analysis.selections "
                              f"({', '.join(sorted(an['selections']))})")
    cfg["runs"] += expand_sweeps(cfg["sweeps"], schema["properties"]["runs"]["items"])
    for r in cfg["runs"]:
        r["seed"] += cfg["seed_offset"]
    dup = duplicate_names(cfg["runs"])
    if dup:
        raise TokenscaleError(f"config: runs has duplicate name(s): {', '.join(dup)}")
    sections = registered_sections()
    if cross_run:
        for section in sections:
            if section.check is not None:
                section.check(cfg)
    for i, r in enumerate(cfg["runs"]):
        try:
            resolve_arch(r["model"], run_seq_len(cfg, r) if cross_run else cfg["data"]["seq_len"])
        except TokenscaleError as e:
            raise TokenscaleError(f"config: runs[{i}].{e}") from None
    _branch_sweeps(cfg)
    for section in sections:
        if section.expand_runs is not None:
            cfg["runs"] += section.expand_runs(cfg, schema["properties"]["runs"]["items"])
    if cross_run:
        _check_branches(cfg)
    return cfg


# --------------------------------------------------------------------------------------------- study sections
@dataclass(frozen=True)
class Section:
    """A study's hooks on its config section (see :func:`register_section`)."""

    name: str
    check: Callable[[dict], None] | None = None
    expand_runs: Callable[[dict, dict], list[dict]] | None = None


_SECTIONS: dict[str, Section] = {}
NO_STUDIES = "no study has registered its config section yet: import tokenscale.studies first (the tokenscale " \
             "command and tokenscale.workflow do)"


def register_section(name: str, *, check: Callable[[dict], None] | None = None,
                     expand_runs: Callable[[dict, dict], list[dict]] | None = None) -> None:
    """Register a study's hooks on its config section ``name`` (a key of the schema).

    ``check(cfg)`` runs on a whole config (not for one run taken out of one: ``cross_run=False``) after sweeps are
    expanded and before models are resolved, and raises :class:`TokenscaleError` naming a bad value;
    ``expand_runs(cfg, run_schema)`` runs after branch sweeps and returns the runs the section adds (defaults
    filled), which may also edit the runs they continue (e.g. add a snapshot). Registering a name again
    replaces its hooks and keeps its place."""
    if name not in _schema()["properties"]:
        raise TokenscaleError(f"config: no schema section {name!r} to register")
    _SECTIONS[name] = Section(name, check, expand_runs)


def registered_sections() -> tuple[Section, ...]:
    """The registered study sections in registration order; refused before any study registered (a config
    validated without its studies would lose their checks and runs, and hash differently)."""
    if not _SECTIONS:
        raise TokenscaleError(f"config: {NO_STUDIES}")
    return tuple(_SECTIONS.values())


def section_entry(section: str, entry: dict) -> dict:
    """One entry of an array section (e.g. a job's ``--experiment``) on its own: defaults filled, checked against
    the section's item schema."""
    item = load_schema()["properties"][section]["items"]
    entry = copy.deepcopy(entry)
    fill_defaults(entry, item)
    errors = sorted(jsonschema.Draft202012Validator(item).iter_errors(entry), key=lambda e: len(e.absolute_path))
    if errors:
        raise TokenscaleError(f"config: {section} entry: " + _one_line(errors[0]).removeprefix("config: "))
    return entry


def reshape_entry(ex: dict) -> dict:
    """One ``reshape`` entry on its own (kept for callers; :func:`tokenscale.reshaping.spec.reshape_entry`)."""
    return section_entry("reshape", ex)


# --------------------------------------------------------------------------------------------- sweeps
_NAME_KEYS = {"tokens": "tok", "batch_size": "bs", "micro_batch_size": "mbs", "seed": "s", "model.preset": ""}


def _value_str(v: Any) -> str:
    """A grid value as it appears in a run name: 1000000 -> 1M, 250000 -> 250k, 0.003 -> 3e-3, 'moe-tiny' as is."""
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, int):
        for div, unit in ((10**9, "G"), (10**6, "M"), (10**3, "k")):
            if abs(v) >= div and v % (div // 1000) == 0:  # at most 3 decimals: exact
                return f"{v / div:.3f}".rstrip("0").rstrip(".") + unit
        return str(v)
    if isinstance(v, float) and v and not 0.01 <= abs(v) < 1e4:  # lrs 3e-3, 3.0001e-3; FLOPs targets 4.2e8
        mantissa, exp = f"{v:.12e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
    if isinstance(v, float):
        short = f"{v:g}"
        return short if float(short) == v else repr(v)
    return str(v)


def _set_dotted(run: dict, key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = run
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise TokenscaleError(f"config: sweep key {key!r}: {p!r} is not a mapping")
    node[last] = copy.deepcopy(value)


def grid_values(key: str, spec: list | dict) -> list:
    """The values of one grid key: a list as written, or ``{geomspace: [lo, hi, n]}`` expanded.

    ``geomspace`` gives n log-spaced values from lo to hi (both included), rounded to 3 significant digits so run
    names stay short: integers when lo and hi are integers (token budgets), else floats (learning rates, FLOPs). Rounding that merges two values is an error rather than a silently shorter grid.
    """
    if isinstance(spec, list):
        return spec
    lo, hi, n = spec["geomspace"]
    if lo > hi:
        raise TokenscaleError(f"config: sweep grid {key}: geomspace lo={lo} is above hi={hi}")
    raw = np.geomspace(lo, hi, n) if n > 1 else np.array([lo])
    if isinstance(lo, int) and isinstance(hi, int):
        vals = [int(float(f"{v:.3g}")) for v in raw]
    else:
        vals = [float(f"{v:.3g}") for v in raw]
    if len(set(vals)) != len(vals):
        raise TokenscaleError(f"config: sweep grid {key}: geomspace {[lo, hi, n]} repeats values after rounding ({vals})")
    return vals


def sweep_runs(sweep: dict) -> list[dict]:
    """The runs of one ``sweeps`` entry: base + one point of the grid's Cartesian product each, named by it.

    ``grid`` may be a list of grids: the union of their products (e.g. a second learning rate on part of the
    budgets), in order; a point that two grids share is an error (two runs of the same name).
    """
    runs = []
    for grid in sweep["grid"] if isinstance(sweep["grid"], list) else [sweep["grid"]]:
        runs += _grid_runs(sweep, grid)
    return runs


def _grid_keys(sweep: dict) -> list[str]:
    """Every run key a sweep's grid (or list of grids) sets."""
    grids = sweep["grid"] if isinstance(sweep["grid"], list) else [sweep["grid"]]
    return [k for g in grids for k in g]


def _grid_runs(sweep: dict, grid: dict) -> list[dict]:
    keys = list(grid)
    for key in keys:
        if key.split(".")[0] in ("name", "axis", "sweep"):
            raise TokenscaleError(f"config: sweep {sweep['name']!r}: grid key {key!r} cannot be swept")
    runs = []
    for point in itertools.product(*(grid_values(k, grid[k]) for k in keys)):
        run = copy.deepcopy(sweep.get("base") or {})
        parts = [sweep["name"]]
        for key, value in zip(keys, point):
            _set_dotted(run, key, value)
            parts.append(_NAME_KEYS.get(key, key.split(".")[-1]) + _value_str(value))
        runs.append({**run, "name": "-".join(parts), "axis": sweep["axis"], "sweep": sweep["name"]})
    return runs


def duplicate_names(runs: list[dict]) -> list[str]:
    """Run names used more than once, sorted."""
    names = [r["name"] for r in runs]
    return sorted({n for n in names if names.count(n) > 1})


def expand_sweeps(sweeps: list[dict], run_schema: dict) -> list[dict]:
    """Every sweep's runs, each validated against the ``runs`` item schema (defaults filled)."""
    validator = jsonschema.Draft202012Validator(run_schema)
    out = []
    for i, sweep in enumerate(sweeps):
        for key in ("name", "axis", "sweep") + (("branch",) if sweep.get("branch_from") is not None else ()):
            if key in (sweep.get("base") or {}):
                raise TokenscaleError(f"config: sweeps[{i}].base.{key} is set by the sweep itself")
        if sweep.get("branch_from") is not None and any(k.split(".")[0] == "branch" for k in _grid_keys(sweep)):
            raise TokenscaleError(f"config: sweeps[{i}].grid: branch is set by branch_from")
        for run in sweep_runs(sweep):
            fill_defaults(run, run_schema)
            errors = sorted(validator.iter_errors(run), key=lambda e: (len(e.absolute_path), str(e.absolute_path)))
            if errors:
                raise TokenscaleError(f"config: sweeps[{i}] run {run['name']}: " + _one_line(errors[0]).removeprefix("config: "))
            out.append(run)
    return out


# --------------------------------------------------------------------------------------------- decay branches
def _total_steps(run: dict, seq_len: int) -> int:
    return RunConfig._of_valid(run, seq_len).total_steps


def run_seq_len(cfg: dict, run: dict) -> int:
    """A run's sequence length: its synthetic dataset's ``seq_len``, else the prepared corpus' (``data.seq_len``)."""
    for e in cfg.get("synthetic", []) if run.get("synthetic") else []:
        if e["name"] == run["synthetic"]:
            return e["seq_len"]
    return cfg["data"]["seq_len"]  # (a train job's one-run spec carries the run's own seq_len as data.seq_len)


def _branch_sweeps(cfg: dict) -> None:
    """Each sweep with ``branch_from``: its runs branch from the trunk at their decay start, which the trunk snapshots."""
    runs = {r["name"]: r for r in cfg["runs"]}
    for sweep in cfg["sweeps"]:
        trunk_name = sweep.get("branch_from")
        if trunk_name is None:
            continue
        where = f"config: sweep {sweep['name']}: branch_from"
        if trunk_name not in runs:
            raise TokenscaleError(f"{where} {trunk_name!r} is not a run of this config")
        trunk = runs[trunk_name]
        trunk_total = _total_steps(trunk, run_seq_len(cfg, trunk))
        steps = set(trunk["snapshots"])
        for run in (r for r in cfg["runs"] if r["sweep"] == sweep["name"]):
            if run["schedule"]["kind"] != "wsd":
                raise TokenscaleError(f"{where}: run {run['name']} has schedule.kind {run['schedule']['kind']!r}, needs 'wsd'")
            start = decay_start(run["schedule"], _total_steps(run, run_seq_len(cfg, run)))
            if not 1 <= start < trunk_total:
                raise TokenscaleError(f"{where}: run {run['name']} decays from step {start}, "
                                      f"not within trunk {trunk_name}'s steps 1..{trunk_total - 1}")
            run["branch"] = {"from": trunk_name, "step": start}
            steps.add(start)
        trunk["snapshots"] = sorted(steps)


def _check_branches(cfg: dict) -> None:
    """Every ``branch``: a run of this config, a step below both runs' ends and among the trunk's snapshots,
    a compatible trunk and the same lr schedule before the step (one line naming the run otherwise)."""
    runs = {r["name"]: r for r in cfg["runs"]}
    for r in cfg["runs"]:
        if r["snapshots"] and max(r["snapshots"]) > _total_steps(r, run_seq_len(cfg, r)):
            raise TokenscaleError(f"config: run {r['name']}: snapshot step {max(r['snapshots'])} is beyond its "
                                  f"{_total_steps(r, run_seq_len(cfg, r))} steps")
        if r["branch"] is None:
            continue
        name, src, step = r["name"], r["branch"]["from"], r["branch"]["step"]
        if r["snapshots"] and min(r["snapshots"]) < step:
            raise TokenscaleError(f"config: run {name}: snapshot step {min(r['snapshots'])} is before its branch step {step}")
        if src not in runs or src == name:
            raise TokenscaleError(f"config: run {name}: branch.from {src!r} is not another run of this config")
        trunk = runs[src]
        total, trunk_total = _total_steps(r, run_seq_len(cfg, r)), _total_steps(trunk, run_seq_len(cfg, trunk))
        if step >= min(total, trunk_total):
            raise TokenscaleError(f"config: run {name}: branch step {step} is not below its steps ({total}) "
                                  f"and trunk {src}'s ({trunk_total})")
        if step not in trunk["snapshots"]:
            raise TokenscaleError(f"config: run {name}: branch step {step} is not in run {src}'s snapshots "
                                  f"({trunk['snapshots']}); add it there")
        a, b = RunConfig._of_valid(trunk, run_seq_len(cfg, trunk)).branch_key(), RunConfig._of_valid(r, run_seq_len(cfg, r)).branch_key()
        for key in a:
            if a[key] != b[key]:
                raise TokenscaleError(f"config: run {name}: trunk {src} differs in {key} ({a[key]!r} vs {b[key]!r}); "
                                      "a branch must continue the same training")
        bad = schedule_mismatch(trunk["schedule"], trunk_total, r["schedule"], total, step)
        if bad is not None:
            raise TokenscaleError(f"config: run {name}: lr schedule differs from trunk {src}'s before branch step {step} "
                                  f"(step {bad[0]}: lr x{bad[1]:.6g} in {src}, x{bad[2]:.6g} here)")


def load_config(path: str | Path) -> dict:
    """Read a YAML config file and :func:`validate_config` it."""
    path = Path(path)
    if not path.is_file():
        raise TokenscaleError(f"config: file not found: {path}")
    try:
        with open(path) as f:
            cfg = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise TokenscaleError(f"config: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return validate_config(cfg)


def config_hash(obj: Any) -> str:
    """sha256 of the canonical JSON form of a config slice (key order independent)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- lr schedule
def warmup_steps(schedule: dict, total_steps: int) -> int:
    """Linear warmup steps: ``warmup_steps`` when set, else ``round(warmup_frac * total_steps)``."""
    if schedule.get("warmup_steps") is not None:
        return int(schedule["warmup_steps"])
    return int(round(schedule["warmup_frac"] * total_steps))


def decay_start(schedule: dict, total_steps: int) -> int:
    """First step (0-based) of a wsd schedule's final decay, ``total_steps - round(decay_frac * total_steps)``;
    ``total_steps`` for a schedule without decay."""
    if schedule["kind"] != "wsd":
        return total_steps
    return total_steps - int(round(schedule.get("decay_frac", 0.0) * total_steps))


def lr_lambda(schedule: dict, total_steps: int):
    """Multiplier of the peak lr at optimizer step ``s`` (0-based, applied to the update of step s+1)."""
    warm, start = warmup_steps(schedule, total_steps), decay_start(schedule, total_steps)
    decay, final = total_steps - start, schedule.get("final_lr_frac", 0.0)

    def f(s: int) -> float:
        if warm and s < warm:
            return (s + 1) / warm
        if decay and s >= start:
            return 1.0 - (1.0 - final) * ((s - start + 1) / decay)
        return 1.0

    return f


def lr_multipliers(schedule: dict, total_steps: int, n: int) -> np.ndarray:
    """:func:`lr_lambda` at steps 0..n-1 as one float64 array (the same IEEE operations, so the same values)."""
    warm, start = warmup_steps(schedule, total_steps), decay_start(schedule, total_steps)
    decay, final = total_steps - start, schedule.get("final_lr_frac", 0.0)
    s = np.arange(n, dtype=np.int64)
    out = np.ones(n)
    if decay:
        m = s >= start
        out[m] = 1.0 - (1.0 - final) * ((s[m] - start + 1).astype(np.float64) / decay)
    if warm:
        m = s < warm
        out[m] = (s[m] + 1).astype(np.float64) / warm
    return out


def schedule_mismatch(a: dict, a_total: int, b: dict, b_total: int, before: int) -> tuple[int, float, float] | None:
    """The first step below ``before`` where two schedules' lr multipliers differ, with both values; None if none."""
    x, y = lr_multipliers(a, a_total, before), lr_multipliers(b, b_total, before)
    diff = np.flatnonzero(x != y)
    return None if diff.size == 0 else (int(diff[0]), float(x[diff[0]]), float(y[diff[0]]))


# --------------------------------------------------------------------------------------------- typed views
@dataclass(frozen=True)
class RunConfig:
    """One training run, fully resolved (defaults filled). ``spec`` is the validated dict it came from."""

    name: str
    axis: str
    sweep: str | None
    model: dict
    tokens: int
    batch_size: int
    micro_batch_size: int | None
    lr: float
    weight_decay: float
    grad_clip: float | None
    schedule: dict
    seed: int
    checkpoints: dict
    in_loop_validation: bool
    state_every: int
    snapshots: list
    branch: dict | None
    reshape: dict | None
    synthetic: str | None
    single_pass: bool
    engine: str
    deepspeed_config: str
    nproc: int
    threads: int | None
    precision: str
    device: str
    perf: dict
    seq_len: int
    spec: dict = field(repr=False, compare=False)

    @classmethod
    def from_dict(cls, run: dict, seq_len: int) -> "RunConfig":
        """A run entry as written in a config (validated here, defaults filled)."""
        cfg = validate_config({"runs": [run], "data": {"seq_len": seq_len}}, cross_run=False)
        return cls._of_valid(cfg["runs"][0], seq_len)

    @classmethod
    def _of_valid(cls, run: dict, seq_len: int) -> "RunConfig":
        r = copy.deepcopy(run)
        return cls(**{k: r[k] for k in r}, seq_len=seq_len, spec={**r, "seq_len": seq_len})

    @property
    def total_steps(self) -> int:
        steps = self.tokens // (self.batch_size * self.seq_len)
        if steps < 1:
            raise TokenscaleError(
                f"run {self.name}: tokens={self.tokens} is less than one batch "
                f"({self.batch_size} x {self.seq_len} tokens)"
            )
        return steps

    @property
    def hash(self) -> str:
        """sha256 of what determines the run's numbers: the spec without ``snapshots``, ``single_pass`` and ``threads`` (and
        without ``branch`` / ``schedule.warmup_steps`` while null, so runs written before those keys keep their hash)."""
        spec = {k: v for k, v in self.spec.items() if k not in ("snapshots", "single_pass", "threads")}
        if spec.get("branch") is None:
            spec.pop("branch", None)
        if spec["schedule"].get("warmup_steps", 0) is None:
            spec["schedule"] = {k: v for k, v in spec["schedule"].items() if k != "warmup_steps"}
        return config_hash(spec)

    def checkpoint_steps(self) -> list[int]:
        """The planned checkpoint steps: log-spaced from ``first_step``; for a branched run, whose earlier steps are
        its trunk's, log-spaced from the step after the branch (at least ``first_step``) to the final one."""
        first = self.checkpoints["first_step"]
        if self.branch:
            first = max(first, self.branch["step"] + 1)
        return checkpoint_steps(self.total_steps, self.checkpoints["count"], first)

    def branch_key(self) -> dict:
        """What a trunk and its branch must share for the branch to continue the same training."""
        arch = {k: v for k, v in resolve_arch(self.model, self.seq_len).items() if k != "preset"}
        perf = {k: v for k, v in self.perf.items() if k not in ("peak_tflops", "prefetch")}  # no effect on numbers
        return {"arch": arch, "seed": self.seed, "batch_size": self.batch_size, "seq_len": self.seq_len, "lr": self.lr,
                "weight_decay": self.weight_decay, "grad_clip": self.grad_clip, "precision": self.precision,
                "engine": self.engine, "perf": perf}


def checkpoint_steps(total_steps: int, count: int, first_step: int = 1) -> list[int]:
    """Log-spaced checkpoint steps from ``first_step`` to ``total_steps`` (always included), deduplicated."""
    first = min(max(1, first_step), total_steps)
    steps = np.unique(np.round(np.geomspace(first, total_steps, count)).astype(np.int64))
    steps = sorted(set(int(s) for s in steps) | {int(total_steps)})
    return steps


def run_config(cfg: dict, run: dict) -> RunConfig:
    """The typed view of one run entry of a validated config (or of one being validated), not validated again."""
    return RunConfig._of_valid(run, run_seq_len(cfg, run))


def run_configs(cfg: dict) -> dict[str, RunConfig]:
    """Typed views of every run in a validated config (:func:`validate_config`; not validated again), by name."""
    return {r["name"]: RunConfig._of_valid(r, run_seq_len(cfg, r)) for r in cfg["runs"]}
