"""The synthetic study's config section: ``synthetic`` datasets, and the runs that train on them.

Registered with :mod:`tokenscale.config` by :func:`register` (called by :mod:`tokenscale.studies`): config checks
the section through it and imports nothing of this package.
"""

from __future__ import annotations

from tokenscale import TokenscaleError
from tokenscale.config import duplicate_names, register_section
from tokenscale.synthetic.arithmetic import spec_of

__all__ = ["check_synthetic", "register"]


def check_synthetic(cfg: dict) -> None:
    """Every ``synthetic`` entry generates (one line naming the bad value otherwise); every run's ``synthetic``
    names one, and such runs take their validation loss from the per-token evaluation."""
    for i, e in enumerate(cfg["synthetic"]):
        try:
            spec_of(e)
        except TokenscaleError as err:
            raise TokenscaleError(f"config: synthetic[{i}] ({e['name']}): {err}") from None
    dup = duplicate_names(cfg["synthetic"])
    if dup:
        raise TokenscaleError(f"config: synthetic has duplicate name(s): {', '.join(dup)}")
    names = {e["name"] for e in cfg["synthetic"]}
    for r in cfg["runs"]:
        if r["synthetic"] is None:
            continue
        if r["synthetic"] not in names:
            raise TokenscaleError(f"config: run {r['name']}: synthetic {r['synthetic']!r} is not a synthetic dataset of "
                                  f"this config ({', '.join(sorted(names)) or 'none'})")
        if r["in_loop_validation"]:
            raise TokenscaleError(f"config: run {r['name']}: a synthetic run needs in_loop_validation: false (only the "
                                  "answer token is scored, by the per-token evaluation)")


def register() -> None:
    """Config checks the ``synthetic`` section with :func:`check_synthetic`."""
    register_section("synthetic", check=check_synthetic)
