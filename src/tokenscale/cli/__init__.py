"""The ``tokenscale`` command line. Every workflow rule calls one of these subcommands.

Each command group registers its commands from its own module (``register(sub)``: every handler next to its
arguments; a handler parses, calls one function of its domain package and prints); :mod:`tokenscale.cli.common`
holds what they share, :mod:`tokenscale.cli.app` builds the parser (``build_parser``) and runs a command
(``main``), both exported here. ``tokenscale --help`` imports no torch: handlers import heavy modules when they
run.

Errors the user can fix (bad config key/type, missing file, corrupt HDF5) print one line to stderr,
``tokenscale: error: ...``, and exit 2.
"""

from __future__ import annotations

from tokenscale._lazy import lazy_exports

_EXPORTS = {"main": "tokenscale.cli.app", "build_parser": "tokenscale.cli.app"}

__getattr__, __dir__ = lazy_exports(globals(), _EXPORTS)  # PEP 562: the parser is built on first use
