"""``megzoo`` command line: a thin layer over the library API.

Each subcommand lives in a module of this package that exposes ``register(subparsers)``; the
handler it sets returns the process exit code.
"""
import argparse
import sys
from typing import List, Optional

from . import clean as _clean
from . import deploy as _deploy
from . import models as _models
from . import predict as _predict
from . import train as _train
from . import weights as _weights

#: modules contributing subcommands, in ``--help`` order
COMMAND_MODULES = [_models, _weights, _predict, _deploy, _train, _clean]


class CLIError(Exception):
    """An error the CLI reports as one line on stderr with exit code 2 (no traceback)."""


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = argparse.ArgumentParser(prog="megzoo", description="Model zoo for MegEngine.")
    parser.add_argument("--version", action="version", version=f"megzoo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    from ..inference.layouts import LayoutUnavailableError
    from ..weights.errors import WeightsError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (CLIError, ValueError, FileNotFoundError, PermissionError, WeightsError, LayoutUnavailableError) as exc:
        print(f"megzoo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
