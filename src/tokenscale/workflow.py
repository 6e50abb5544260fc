"""Small glue used by the Snakefile (kept here so it is importable and tested)."""

from __future__ import annotations

from . import TokenscaleError
from .config import validate_config


def check_config(config: dict) -> dict:
    """Validate the workflow config once and return it with defaults filled; a bad key or type stops the
    workflow with one line naming it."""
    try:
        return validate_config(config)
    except TokenscaleError as e:
        from snakemake.exceptions import WorkflowError

        raise WorkflowError(str(e)) from None
