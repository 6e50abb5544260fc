"""Reviewers reproduce: compare a results tree's headline numbers with reference numbers committed in the repo.

A **reference** (``reference/<config>.json``, format ``tokenscale-reference/1``) holds the provenance of the run
it was taken from and its headline numbers, ``{file: {key: value}}``, where ``file`` is a path inside the results
tree and ``key`` a dotted path into that file (JSON) or a derived quantity (CSV, see :func:`csv_numbers`).
Which numbers are headline numbers is :data:`HEADLINE`: per summary kind, globs of dotted keys.

A **tolerance file** (``reference/tolerances.yaml``, format ``tokenscale-tolerances/1``) is an ordered list of
rules ``{match, rtol, atol, why}``; the first rule whose ``match`` (an fnmatch glob over ``"file:key"``) fits a
number gives its tolerance. A reproduced value ``x`` passes against reference ``r`` when
``|x − r| <= atol + rtol·|r|`` (NaN passes only against NaN; None only against None). The values of the rules
come from the determinism report (``docs/determinism.md``), which measured how far each kind of number moves
across reruns, thread counts and CPU instruction-set caps.

**Seeds.** Small runs trained on another machine diverge from the reference's weights after a few steps (other
kernels round differently) and land where another training seed would. So a reference also carries, per number,
the values K training seeds gave it (``seeds``: the config run with ``seed_offset`` 0..K−1, scripts/seed-spread.py),
and a reproduced number also passes inside its **seed interval**, the two-sided Student-t prediction interval of
one more seed at level ``q`` (default :data:`SEED_LEVEL`), or within its rule around any seed's value (each seed's
value is as much a reference as seed 0's; this is what bounds a number fewer than 3 seeds gave a finite value: with
2 values, t_1 would make the interval hundreds of times their difference)::

    m ± t_{K−1}((1 + q)/2) · s · √(1 + 1/K)        m, s: mean and sample standard deviation over the K seeds

A number that is chaotic by nature (one arm's final loss, a tiny task's accuracy) has a wide interval and is judged
by it, not by the reference's point; a number every seed gives identically keeps its rule. None (NaN) passes when
a seed gave None (NaN).

**Provenance** (``results/provenance.json``, written by the workflow's ``provenance`` rule) records the config
hash, the code version, the lock file's hash with the Python version, and the corpus manifest's hash. ``verify``
prints both sides and reports each mismatch on its own line. A reference written from another config (its config
hash differs) is refused as stale in one line (:func:`refuse_stale`) unless the caller allows it; the other keys'
mismatches are reported and the numbers compared regardless.

Nothing here imports torch or h5py.
"""

from __future__ import annotations

import csv
import fnmatch
import hashlib
import json
import math
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokenscale import TokenscaleError, __version__
from tokenscale.io.checksum import sha256_file

REFERENCE_FORMAT = "tokenscale-reference/1"
TOLERANCE_FORMAT = "tokenscale-tolerances/1"
PROVENANCE_FORMAT = "tokenscale-provenance/1"
PROVENANCE_KEYS = ("config_sha256", "code_version", "lock_sha256", "corpus_manifest_sha256")
SPREAD_FACTOR = 2.0  # a number's own tolerance: twice the largest difference measured for it
MIN_INTERVAL_SEEDS = 3  # with 2 values t_1 makes the interval hundreds of times their difference: no information
SEED_LEVEL = 0.999  # prediction level of the seed interval: with ~150 numbers that move between seeds, an honest
# reproduction expects ~0.15 false FAILs (0.99 would give ~1.5: a family-wise level, docs/determinism.md)

# Headline numbers per summary kind: file glob (inside results/) -> key globs (dotted, fnmatch).
HEADLINE: dict[str, tuple[str, ...]] = {
    "series/*/analysis/summary.json": (
        "power_law.alpha", "power_law.E", "power_law.r2", "alpha_predicted", "tail.beta", "selections.*.beta",
        "metrics.r2_reconstruction", "metrics.svd_energy1", "metrics.svd_energy2", "metrics.mean_loss_max_rel_err",
        "metrics.r2_powerlaw_deriv", "category_counts.*.valid", "n_axis_points", "n_post_transient_points",
    ),
    "series/*/alignment/alignment.json": (
        "frequency.spearman.rho", "dependency.spearman.rho", "domain.test.statistic", "n_valid",
    ),
    "series/*/synthetic/report.json": (
        "levels.final_accuracy.*", "levels.n_levels_above_half", "svd_energy.svd_energy1", "svd_energy.svd_energy2",
        "metrics.r2_reconstruction", "shape_test.delta_aic", "n_valid_fits",
    ),
    "reshape/*/report.json": (
        "metrics.acceleration_vs_*.value", "metrics.drop_*.value", "metrics.final_*.value",
        "metrics.steps_to_reach_vs_*.value", "bucket_drop_spearman",
    ),
    "seeds/*/agreement.json": ("pairs.*.spearman.rho", "pairs.*.median_abs_diff", "pairs.*.n"),
    "series/*/frontier/frontier.csv": ("n_members", "val_loss@*"),
    "runs/*/val_loss.csv": ("final_val_loss",),
}


# ------------------------------------------------------------------------------------------- reading numbers
def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of every scalar leaf of a JSON value (list items by index)."""
    if isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, list):
        items = ((str(i), v) for i, v in enumerate(obj))
    else:
        return {prefix: obj}
    out: dict[str, Any] = {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def csv_numbers(path: Path) -> dict[str, float]:
    """Derived numbers of a CSV: a frontier's member count and loss per axis value; a run's final val loss."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if path.name == "val_loss.csv":
        return {"final_val_loss": float(rows[-1]["val_loss"])} if rows else {}
    out: dict[str, float] = {"n_members": float(len(rows))}
    out.update({f"val_loss@{float(r['axis_value']):g}": float(r["val_loss"]) for r in rows})
    return out


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def file_numbers(path: Path, keys: tuple[str, ...]) -> dict[str, float | None]:
    """The headline numbers of one file: its flattened keys that match one of ``keys``."""
    try:
        flat = csv_numbers(path) if path.suffix == ".csv" else flatten(json.loads(path.read_text()))
    except (ValueError, KeyError) as e:
        raise TokenscaleError(f"verify: {path} cannot be read as a summary ({e})") from None
    return {k: v for k, v in sorted(flat.items())
            if _is_number(v) and any(fnmatch.fnmatchcase(k, g) for g in keys)}


def headline_numbers(results: Path, names: dict[str, set[str]] | None = None) -> dict[str, dict[str, float | None]]:
    """``{file: {key: value}}`` of every headline number in a results tree.

    ``names``: per top folder (``runs``, ``series``, ``reshape``, ``seeds``) the names the config makes; a file
    under another name (left in the tree by an earlier config) is skipped. ``None`` keeps every file."""
    out = {}
    for pattern, keys in HEADLINE.items():
        for path in sorted(results.glob(pattern)):
            top, name = path.relative_to(results).parts[:2]
            if names is not None and name not in names.get(top, ()):
                continue
            nums = file_numbers(path, keys)
            if nums:
                out[path.relative_to(results).as_posix()] = nums
    return out


# -------------------------------------------------------------------------------------------------- provenance
def lock_hash(lock: Path) -> str:
    """sha256 of the lock file's bytes and the running Python's version (the lock is per Python minor)."""
    if not lock.is_file():
        return "none"
    return hashlib.sha256(lock.read_bytes() + f"\npython {platform.python_version()}".encode()).hexdigest()


def code_version(repo: Path) -> str:
    """The checkout's commit (``-dirty`` when tracked files differ), else the package version."""
    try:
        rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return f"tokenscale {__version__} (no git checkout)"
    return rev + ("-dirty" if dirty else "")


def provenance(config_sha256: str, repo: Path, lock: Path, corpus_manifest: Path | None) -> dict:
    """What a results tree was made from (written to results/provenance.json)."""
    manifest = sha256_file(corpus_manifest) if corpus_manifest and corpus_manifest.is_file() else "none"
    return {"format": PROVENANCE_FORMAT, "config_sha256": config_sha256, "code_version": code_version(repo),
            "lock_sha256": lock_hash(lock), "python": platform.python_version(), "corpus_manifest_sha256": manifest}


def read_provenance(results: Path) -> dict:
    path = results / "provenance.json"
    if not path.is_file():
        raise TokenscaleError(f"verify: {path} is missing: the results tree has no provenance "
                              "(run the workflow's default target, which writes it)")
    prov = json.loads(path.read_text())
    if prov.get("format") != PROVENANCE_FORMAT:
        raise TokenscaleError(f"verify: {path} has format {prov.get('format')!r}, expected {PROVENANCE_FORMAT!r}")
    return prov


# -------------------------------------------------------------------------------------------------- references
def write_reference(results: Path, config: str, spreads: list[dict] = (), seed_trees: list[Path] = (),
                    names: dict[str, set[str]] | None = None) -> dict:
    """A reference from a results tree: its provenance, every headline number, and per number the measured spread
    (``SPREAD_FACTOR`` × the largest absolute difference any ``spreads`` comparison saw: a determinism report's
    ``variants.*.numbers``, see tokenscale.reproduction.determinism), which widens that number's tolerance beyond its rule. A
    ``spreads`` entry that is itself a reference contributes the spread it holds (measurements accumulate).

    ``seed_trees``: results trees of the same config under other training seeds (``seed_offset`` 1..K−1); each
    number's values over ``results`` and them go into ``seeds`` (see :class:`SeedInterval`).

    ``names``: the run, series, reshape and seed-group names of ``config`` (:func:`headline_numbers`), so that
    files an earlier config left in the tree do not enter the reference."""
    numbers = headline_numbers(results, names)
    spread: dict[str, dict[str, float]] = {}
    for file, key, width in (m for report in spreads for m in _measured_spread(report)):
        if key in numbers.get(file, {}):
            spread.setdefault(file, {})[key] = max(spread.get(file, {}).get(key, 0.0), width)
    ref = {"format": REFERENCE_FORMAT, "config": config, "provenance": read_provenance(results),
           "numbers": numbers, "spread": spread}
    if seed_trees:
        ref["seeds"] = seed_values(numbers, [headline_numbers(Path(t), names) for t in seed_trees])
    return ref


def seed_values(numbers: dict, others: list[dict]) -> dict:
    """``{"n": K, "values": {file: {key: [value per seed]}}}``: the reference's numbers (seed 0) and each other
    seed tree's value of them, where that tree has the number."""
    for i, other in enumerate(others):
        if not other:
            raise TokenscaleError(f"verify: seed tree {i + 1} has no headline numbers (is it a results tree?)")
    values = {file: {key: [v] + [o[file][key] for o in others if key in o.get(file, {})] for key, v in nums.items()}
              for file, nums in numbers.items()}
    return {"n": 1 + len(others), "values": values}


def _measured_spread(report: dict):
    """(file, key, width) of every number a spread source measured: an earlier reference's stored spread, or
    ``SPREAD_FACTOR`` × each finite non-zero difference of a determinism report's variants."""
    if report.get("format") == REFERENCE_FORMAT:
        for file, keys in report.get("spread", {}).items():
            yield from ((file, key, float(v)) for key, v in keys.items())
        return
    for variant in report.get("variants", {}).values():
        for name, d in variant["numbers"].items():
            if math.isfinite(d["abs"]) and d["abs"] > 0:
                yield (*name.split(":", 1), SPREAD_FACTOR * d["abs"])


def read_reference(path: Path) -> dict:
    if not path.is_file():
        raise TokenscaleError(f"verify: reference file {path} does not exist")
    try:
        ref = json.loads(path.read_text())
    except ValueError as e:
        raise TokenscaleError(f"verify: reference {path} is not valid JSON ({e})") from None
    if not isinstance(ref, dict) or not isinstance(ref.get("numbers"), dict):
        raise TokenscaleError(f"verify: reference {path} is not a reference object with 'numbers' "
                              "(rewrite it with `tokenscale verify --write`)")
    if ref.get("format") != REFERENCE_FORMAT:
        raise TokenscaleError(f"verify: reference {path} has format {ref.get('format')!r}; this tokenscale reads "
                              f"{REFERENCE_FORMAT!r} (rewrite it with `tokenscale verify --write`)")
    return ref


@dataclass(frozen=True)
class Tolerance:
    """``|x − r| <= max(atol + rtol·|r|, spread)``: a rule's atol/rtol, widened by the number's measured spread."""

    match: str
    rtol: float
    atol: float
    spread: float = 0.0

    def allows(self, ref: float | None, got: float | None) -> bool:
        if ref is None or got is None:
            return ref is got
        if math.isnan(ref) or math.isnan(got):
            return math.isnan(ref) and math.isnan(got)
        return abs(got - ref) <= max(self.atol + self.rtol * abs(ref), self.spread)

    def widened(self, spread: float) -> "Tolerance":
        return Tolerance(self.match, self.rtol, self.atol, max(self.spread, spread))

    def __str__(self) -> str:
        parts = ([f"±{self.atol:g}"] if self.atol else []) + ([f"±{self.rtol:.3g}×"] if self.rtol else [])
        rule = " + ".join(parts) or "exact"
        return f"max({rule}, ±{self.spread:.3g} measured)" if self.spread else rule


@dataclass(frozen=True)
class SeedInterval:
    """The values K training seeds gave one number; :meth:`admits` a reproduced value inside the Student-t
    prediction interval of one more seed at ``level`` (module docstring)."""

    values: tuple
    level: float = SEED_LEVEL

    def _finite(self) -> list[float]:
        return [float(v) for v in self.values if v is not None and not math.isnan(v)]

    def bounds(self) -> tuple[float, float] | None:
        """(low, high), or None with fewer than :data:`MIN_INTERVAL_SEEDS` finite seed values."""
        from statistics import fmean, stdev

        from scipy.stats import t

        f = self._finite()
        if len(f) < MIN_INTERVAL_SEEDS:
            return None
        m, k = fmean(f), len(f)
        half = float(t.ppf((1 + self.level) / 2, k - 1)) * stdev(f) * math.sqrt(1 + 1 / k)
        return m - half, m + half

    def admits(self, got: float | None) -> bool:
        if got is None:
            return any(v is None for v in self.values)
        if math.isnan(got):
            return any(v is not None and math.isnan(v) for v in self.values)
        b = self.bounds()  # a value some seed gave is admitted whatever the interval's rounding
        return got in self._finite() or (b is not None and b[0] <= got <= b[1])

    def __str__(self) -> str:
        b = self.bounds()
        where = f"[{b[0]:.4g}, {b[1]:.4g}]" if b else "{" + ", ".join(_fmt(v) for v in self.values) + "}"
        return f"seeds({len(self.values)}) {where}"


def read_tolerances(path: Path) -> list[Tolerance]:
    import yaml

    if not path.is_file():
        raise TokenscaleError(f"verify: tolerance file {path} does not exist")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise TokenscaleError(f"verify: tolerance file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(doc, dict):
        raise TokenscaleError(f"verify: tolerance file {path} is not a mapping with format and rules")
    if doc.get("format") != TOLERANCE_FORMAT:
        raise TokenscaleError(f"verify: tolerance file {path} has format {doc.get('format')!r}, "
                              f"expected {TOLERANCE_FORMAT!r}")
    rules = []
    for i, r in enumerate(doc.get("rules") or []):
        try:
            rules.append(Tolerance(str(r["match"]), float(r.get("rtol", 0.0)), float(r.get("atol", 0.0))))
        except (KeyError, TypeError, ValueError):
            raise TokenscaleError(f"verify: {path}: rule {i} needs match and numeric rtol/atol, got {r!r}") from None
    return rules


def tolerance_of(name: str, rules: list[Tolerance]) -> Tolerance:
    for r in rules:
        if fnmatch.fnmatchcase(name, r.match):
            return r
    return Tolerance("(no rule)", 0.0, 0.0)


# ------------------------------------------------------------------------------------------------- comparison
@dataclass(frozen=True)
class Row:
    name: str  # "file:key"
    reference: float | None
    reproduced: float | None
    tolerance: Tolerance
    status: str  # pass | FAIL | missing | new
    seeds: SeedInterval | None = None

    @property
    def allowed(self) -> str:
        """What the number may be: its rule (widened by the measured spread), or its seed interval."""
        return f"{self.tolerance} or {self.seeds}" if self.seeds else str(self.tolerance)

    @property
    def failed(self) -> bool:
        return self.status in ("FAIL", "missing")


def compare(reference: dict, results: Path | dict, rules: list[Tolerance], missing_files: str = "raise",
            seed_level: float = SEED_LEVEL) -> list[Row]:
    """One row per reference number (and per headline number the reference lacks, status ``new``). ``results``: a
    results tree, or headline numbers ``{file: {key: value}}`` (another reference's, made on another machine). A summary the
    reference has numbers from but the results tree lacks stops with one line (``missing_files="raise"``) or gives
    each of its numbers a ``missing`` row (``"rows"``: the workflow's report, whose config may have dropped a run).
    A number passes within its rule around the reference value or, where the reference carries seeds, inside its
    seed interval at ``seed_level``."""
    if not 0 < seed_level < 1:
        raise TokenscaleError(f"verify: seed level {seed_level!r} is not in (0, 1)")
    if missing_files not in ("raise", "rows"):
        raise ValueError(f"missing_files must be 'raise' or 'rows', got {missing_files!r}")
    rows = []
    for file, ref_nums in reference["numbers"].items():
        got = _numbers_of(results, file)
        if got is None:
            if missing_files == "rows":
                rows += [Row(f"{file}:{k}", v, None, tolerance_of(f"{file}:{k}", rules), "missing")
                         for k, v in sorted(ref_nums.items())]
                continue
            where = file if isinstance(results, dict) else results / file
            raise TokenscaleError(f"verify: {where} is missing (the reference has {len(ref_nums)} numbers from it)")
        spread = reference.get("spread", {}).get(file, {})
        seeds = reference.get("seeds", {}).get("values", {}).get(file, {})
        for key in sorted(set(ref_nums) | set(got)):
            name = f"{file}:{key}"
            tol = tolerance_of(name, rules).widened(spread.get(key, 0.0))
            interval = SeedInterval(tuple(seeds[key]), seed_level) if key in seeds else None
            if key not in got:
                rows.append(Row(name, ref_nums[key], None, tol, "missing", interval))
            elif key not in ref_nums:
                rows.append(Row(name, None, got[key], tol, "new", interval))
            else:
                ok = tol.allows(ref_nums[key], got[key]) or (interval is not None and (
                    interval.admits(got[key]) or any(tol.allows(v, got[key]) for v in interval.values)))
                rows.append(Row(name, ref_nums[key], got[key], tol, "pass" if ok else "FAIL", interval))
    return rows


def _numbers_of(results: Path | dict, file: str) -> dict | None:
    """The headline numbers of ``file`` in a results tree or a ``{file: numbers}`` dict; None when it has no such file."""
    if isinstance(results, dict):
        return results.get(file)
    path = results / file
    if not path.is_file():
        return None
    pattern = next((p for p in HEADLINE if fnmatch.fnmatchcase(file, p)), None)
    return file_numbers(path, HEADLINE[pattern]) if pattern else {}


def provenance_mismatches(reference: dict, prov: dict) -> list[str]:
    """One line per provenance key that differs between the reference and the results tree."""
    ref = reference.get("provenance", {})
    return [f"provenance: {k} differs: reference {ref.get(k)!r}, results {prov.get(k)!r}"
            for k in PROVENANCE_KEYS if ref.get(k) != prov.get(k)]


def refuse_stale(reference: dict, prov: dict, where: str) -> None:
    """Stop with one line when the reference was written from another config than the results tree: its numbers
    would be compared with a different experiment's."""
    ref_hash, got = reference.get("provenance", {}).get("config_sha256"), prov.get("config_sha256")
    if ref_hash != got:
        raise TokenscaleError(f"verify: reference {where} is stale: written from config {str(ref_hash)[:12]}, the "
                              f"results from config {str(got)[:12]} (rewrite it with `tokenscale verify --write`, or "
                              "compare anyway with --allow-config-change)")


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.6g}"


def table(rows: list[Row], only_failed: bool = False) -> str:
    """The comparison as a fixed-width table: number, reference, reproduced, tolerance, result."""
    shown = [r for r in rows if r.failed or not only_failed]
    head = ("number", "reference", "reproduced", "tolerance", "result")
    body = [(r.name, _fmt(r.reference), _fmt(r.reproduced), r.allowed, r.status) for r in shown]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body]]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def summary(rows: list[Row]) -> str:
    """One line: how many numbers pass, fail, are missing or new, and how many passed unchanged."""
    counts = {s: sum(r.status == s for r in rows) for s in ("pass", "FAIL", "missing", "new")}
    same = sum(r.status == "pass" and r.reference == r.reproduced for r in rows)
    return (f"verify: {len(rows)} numbers: " + ", ".join(f"{v} {k}" for k, v in counts.items())
            + f" ({same} identical to the reference, {counts['pass'] - same} moved within tolerance)")


_HTML_STYLE = ("body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}td.num{text-align:right;font-family:monospace}"
               "tr.FAIL,tr.missing{background:#fdd}tr.new{background:#ffd}tr.moved{background:#eef6ff}")


def html(rows: list[Row], mismatches: list[str], provenance_lines: list[str]) -> str:
    """The comparison as a self-contained HTML page (the workflow report embeds it): the summary line, provenance of
    both sides with mismatches, then the table with failed, missing and new numbers first."""
    from html import escape

    order = {"FAIL": 0, "missing": 1, "new": 2, "pass": 3}
    body = []
    for r in sorted(rows, key=lambda r: (order[r.status], r.name)):
        cls = "moved" if r.status == "pass" and r.reference != r.reproduced else r.status
        body.append(f'<tr class="{cls}"><td><code>{escape(r.name)}</code></td><td class="num">{_fmt(r.reference)}'
                    f'</td><td class="num">{_fmt(r.reproduced)}</td><td>{escape(r.allowed)}</td>'
                    f"<td>{r.status}</td></tr>")
    items = "".join(f"<li>{escape(x)}</li>" for x in provenance_lines)
    bad = "".join(f"<li><b>{escape(m)}</b></li>" for m in mismatches) or "<li>provenance: every key matches</li>"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>tokenscale verify</title>"
            f"<style>{_HTML_STYLE}</style></head><body><h3>{escape(summary(rows))}</h3><ul>{items}</ul><ul>{bad}</ul>"
            "<table><tr><th>number</th><th>reference</th><th>reproduced</th><th>tolerance</th><th>result</th></tr>"
            + "\n".join(body) + "</table></body></html>\n")


def markdown(rows: list[Row], mismatches: list[str]) -> str:
    """The table in Markdown (Snakemake's report shows it next to the figures)."""
    out = [f"- {m}" for m in mismatches] + ([""] if mismatches else [])
    out += ["| number | reference | reproduced | tolerance | result |", "| --- | --- | --- | --- | --- |"]
    out += [f"| `{r.name}` | {_fmt(r.reference)} | {_fmt(r.reproduced)} | {r.allowed} | {r.status} |" for r in rows]
    return "\n".join(out) + "\n"
