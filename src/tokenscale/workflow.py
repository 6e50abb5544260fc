"""Small glue used by the Snakefile (kept here so it is importable and tested); an entry point, so it registers the
studies (:mod:`tokenscale.studies`) before any config is validated."""

from __future__ import annotations

from pathlib import Path

import yaml

import tokenscale.studies  # noqa: F401  (registers the studies' config sections and series kinds)
from tokenscale import TokenscaleError
from tokenscale.config import config_hash, validate_config


def check_config(config: dict) -> dict:
    """Validate the workflow config once and return it with defaults filled; a bad key or type stops the
    workflow with one line naming it."""
    try:
        return validate_config(config)
    except TokenscaleError as e:
        from snakemake.exceptions import WorkflowError

        raise WorkflowError(str(e)) from None


NOT_HASHED = ("results", "reference", "site")  # where a tree is written, compared and run, not what it computes


def _without_nulls(obj):
    """``obj`` with every mapping key whose value is null left out (recursively; list entries are kept)."""
    if isinstance(obj, dict):
        return {k: _without_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_without_nulls(v) for v in obj]
    return obj


def workflow_config_hash(cfg: dict) -> str:
    """The config hash a results tree records (provenance.json): the validated config without where it writes
    (``results``), what it is compared with (``reference``) and which cluster runs it (``site``), and without
    null-valued keys.

    Leaving nulls out lets a new key whose null default keeps today's behaviour join the schema without changing
    the hash of every existing config, while any change of an effective value still changes it: a default that
    moves (null to a value, a value to null or to another value) changes the validated config's non-null part."""
    return config_hash(_without_nulls({k: v for k, v in cfg.items() if k not in NOT_HASHED}))


BASE_CONFIG = "config/config.yaml"


def with_base(config: dict, repo: str | Path) -> dict:
    """The command line's config (``--configfile`` files and ``--config``, already merged by Snakemake) put over
    the demo's ``config/config.yaml``, in place, the way Snakemake merges (nested mappings key by key) -- unless
    it says ``standalone: true`` (config/paper.yaml): then it is the whole config and the schema fills the rest."""
    from snakemake.utils import update_config  # heavy: only the Snakefile side needs it

    if config.get("standalone"):
        return config
    merged = yaml.safe_load((Path(repo) / BASE_CONFIG).read_text()) or {}
    update_config(merged, config)
    config.clear()
    config.update(merged)
    return config


def workflow_config(*configfiles: str) -> dict:
    """The validated config the Snakefile sees for ``snakemake --configfile A B ...``: the files merged in order,
    over ``config/config.yaml`` unless they say ``standalone: true`` (:func:`with_base`)."""
    from snakemake.utils import update_config  # heavy: only the Snakefile side needs it

    repo = Path(__file__).resolve().parents[2]
    cfg: dict = {}
    for f in configfiles:
        update_config(cfg, yaml.safe_load((repo / f).read_text()) or {})
    return validate_config(with_base(cfg, repo))
