"""PEP 562 lazy exports for a package ``__init__``: a name is imported from its defining module on first use, so
importing the package pulls in none of its heavy modules (torch, h5py, scipy)."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(namespace: dict, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for a package whose ``namespace`` (its ``globals()``) maps each name of
    ``exports`` (name -> defining module) on first access; the value is cached in the namespace."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
