"""What every command group of the ``tokenscale`` command line shares: the parser classes, argument types, the
``command`` helper that puts a handler next to its arguments, and the config/threads/device arguments."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tokenscale import TokenscaleError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``tokenscale <cmd>: error: <what> (see --help)``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class Help(argparse.HelpFormatter):
    """Shows an option's default in its help, where it has a meaningful one."""

    def _get_help_string(self, action):
        h = action.help or ""
        meaningful = action.default not in (None, False, "", argparse.SUPPRESS)
        if meaningful and "%(default)" not in h and action.option_strings:
            h += " (default: %(default)s)"
        return h


def command(sub, name: str, func, summary: str, description: str = "") -> argparse.ArgumentParser:
    """A subcommand: ``summary`` in the command list, ``summary`` + ``description`` in its --help."""
    p = sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {description}".strip(),
                       formatter_class=Help)
    p.set_defaults(func=func)
    return p


# --------------------------------------------------------------------------------------------- argument types
def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0 < v <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {v:g}")
    return v


def json_object(text: str) -> dict:
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e.msg} at character {e.pos}): {text[:60]!r}") from None
    if not isinstance(v, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {type(v).__name__}")
    return v


# --------------------------------------------------------------------------------------------- shared arguments
def add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="workflow config YAML (validated against the schema)")
    p.add_argument("--spec", help="config as a JSON string (what the workflow passes); overrides --config")


def load_config(args) -> dict:
    """The validated config of ``--spec`` (the workflow's slice of a validated config) or ``--config``."""
    from tokenscale.config import load_config as load, validate_config

    if getattr(args, "spec", None):
        try:  # the workflow's slice of a validated config (one run): checks between runs were done on the whole
            return validate_config(json.loads(args.spec), cross_run=False)
        except json.JSONDecodeError as e:
            raise TokenscaleError(f"--spec is not valid JSON: {e.msg}") from None
    if not getattr(args, "config", None):
        raise TokenscaleError("give --config FILE or --spec JSON")
    return load(args.config)


def default_config(path: str | None) -> str | None:
    """``--config``, else config/config.yaml when it exists here, else None."""
    if path:
        return path
    return "config/config.yaml" if Path("config/config.yaml").is_file() else None


def add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, help="CPU threads for torch (default: torch's own choice)")


def set_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)`` when ``n`` is given (0/None: torch's own choice)."""
    if n:
        import torch

        torch.set_num_threads(n)


def device(name: str) -> str:
    """A torch device name: ``auto`` = cuda when available, else cpu."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
