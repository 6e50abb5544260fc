"""The studies whose config sections and series kinds the workflow knows, in the order they register.

Each study's ``spec`` module registers its hooks with :mod:`tokenscale.config` (:func:`~tokenscale.config.
register_section`: a section's checks and the runs it adds) and its series kinds with :mod:`tokenscale.series`
(:func:`~tokenscale.series.register_builder`). Neither imports a study: importing this module registers them all,
and the entry points (the ``tokenscale`` command, :mod:`tokenscale.workflow`, the tests' conftest) import it before
the first config is validated or workflow built, so every caller sees the same checks, runs and series (a config
validated before any study registered is refused). The order is part of the result: checks run, runs are added
and series are built in it (it fixes the config hash and the DAG). A new study is one ``spec`` module with a
``register()`` and one line here.
"""

from __future__ import annotations

from tokenscale.frontiers import spec as frontiers
from tokenscale.reshaping import spec as reshaping
from tokenscale.synthetic import spec as synthetic

# sections: synthetic (checked), reshape (expanded into runs); series kinds: frontier, candidates, continuation
STUDIES = (synthetic, frontiers, reshaping)

for _study in STUDIES:
    _study.register()
