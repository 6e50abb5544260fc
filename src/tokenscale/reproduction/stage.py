"""The reproduction stages: ``provenance`` (what a results tree was made from) and ``verify`` (a results tree's
headline numbers against a committed reference, or a reference written from a results tree);
:mod:`tokenscale.reproduction.verify` holds the comparison itself."""

from __future__ import annotations

import json
from pathlib import Path

from tokenscale import atomic
from tokenscale.reproduction import verify
from tokenscale.reproduction.determinism import differences as number_differences


def write_provenance(*, config_sha256: str, repo, lock, manifest, out) -> dict:
    """Write provenance.json (``out``) of a results tree and return it."""
    prov = verify.provenance(config_sha256, Path(repo), Path(lock), Path(manifest) if manifest else None)
    atomic.write_json(out, prov)
    return prov


def config_names(cfg: dict) -> dict[str, set[str]]:
    """Per results folder, the names a validated config makes: ``runs``, ``series``, ``reshape`` experiments and
    ``seeds`` groups (what the workflow's default target writes there)."""
    from tokenscale.config import run_configs
    from tokenscale.series import build_workflow, seed_groups

    return {"runs": set(run_configs(cfg)), "series": set(build_workflow(cfg).series),
            "reshape": {ex["name"] for ex in cfg["reshape"]}, "seeds": set(seed_groups(cfg))}


def write_reference(*, results, config, spread: list, seeds: list, reference, every_file: bool = False) -> dict:
    """Write a reference (``reference``) from a results tree of the config file ``config`` (as the Snakefile reads
    it: over config/config.yaml unless standalone); ``spread``: determinism reports or earlier references (JSON
    files), ``seeds``: results trees of the same config under other training seeds. Only the numbers of the
    config's own runs, series, reshape experiments and seed groups are written (a tree may hold files an earlier
    config left) unless ``every_file``. Returns it."""
    from tokenscale.workflow import workflow_config

    names = None if every_file else config_names(workflow_config(config))
    spreads = [json.loads(Path(f).read_text()) for f in spread]
    ref = verify.write_reference(Path(results), config, spreads, [Path(t) for t in seeds], names)
    atomic.write_json(reference, ref)
    return ref


def run_verify(*, results, reference, tolerances, allow_config_change=False, exit_zero=False, seed_level=None,
               failed_only=False, markdown=None, html=None, differences=None, variant="verify", emit=print) -> list:
    """Compare a results tree (or another reference JSON: its numbers and provenance) with ``reference``; ``emit``
    gets the provenance lines (mismatches on their own lines) before the comparison, then the table (only the failed
    or missing numbers with ``failed_only``) and the summary. Writes the optional Markdown, HTML and differences
    reports and returns the rows (:func:`tokenscale.reproduction.verify.compare`)."""
    results = Path(results)
    ref = verify.read_reference(Path(reference))
    rules = verify.read_tolerances(Path(tolerances))
    if results.is_file():  # another reference (a reproduction written on another machine): its numbers
        other = verify.read_reference(results)
        prov, results = other.get("provenance", {}), other["numbers"]
    else:
        prov = verify.read_provenance(results)
    prov_lines = [f"provenance {k}: reference {ref['provenance'].get(k)}, results {prov.get(k)}"
                  for k in verify.PROVENANCE_KEYS]
    mismatches = verify.provenance_mismatches(ref, prov)
    if not (allow_config_change or exit_zero):
        verify.refuse_stale(ref, prov, reference)
    emit("\n".join(prov_lines + mismatches))
    rows = verify.compare(ref, results, rules, missing_files="rows" if exit_zero else "raise",
                          seed_level=verify.SEED_LEVEL if seed_level is None else seed_level)
    emit(verify.table(rows, only_failed=failed_only))
    emit(verify.summary(rows))
    if markdown:
        atomic.write_text(markdown, verify.markdown(rows, mismatches))
    if html:
        atomic.write_text(html, verify.html(rows, mismatches, prov_lines))
    if differences:  # a determinism-style report: feed it to --write --spread to widen the reference
        numbers = results if isinstance(results, dict) else verify.headline_numbers(results)
        diffs = number_differences(ref["numbers"], numbers)
        atomic.write_json(differences, {"variants": {variant: {"numbers": diffs}}})
    return rows
