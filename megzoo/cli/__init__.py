"""``megzoo`` command line: a thin layer over the library API.

Each subcommand lives in a module of this package that exposes ``register(subparsers)``; the
handler it sets returns the process exit code.
"""
import argparse
import errno
import os
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
    """Run one command; the exit status (docs/cli.md#exit-codes): the command's own (0 ok; 1 a
    failed check: export parity, verify, benchmark), 2 a one-line error, 130 interrupted, 141 the
    reader of the output went away (a closed pipe)."""
    from ..inference.layouts import LayoutUnavailableError
    from ..weights.errors import WeightsError
    from .text import printable

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except (CLIError, ValueError, WeightsError, LayoutUnavailableError) as exc:
        message = str(exc)
    except BrokenPipeError:  # the reader went away (``megzoo list | head``): stop quietly, as cat does
        _silence_stdout()
        return 141
    except OSError as exc:  # a bad path, a read-only or full disk, ... (megzoo's own FileNotFoundErrors too)
        message = describe_os_error(exc)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"megzoo {args.command}: error: {printable(message, keep=chr(10))}", file=sys.stderr)
    return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of a closed pipe says nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (captured, or closed)
        pass


#: the fix printed after an OSError of each errno
_OS_ERROR_FIXES = {
    errno.ENOSPC: "free space on that disk, or write to another one",
    errno.EDQUOT: "free space within your quota, or write elsewhere",
    errno.EROFS: "that file system is read-only: write to another folder",
    errno.EACCES: "no permission: choose a path of your own, or change its permissions",
    errno.EPERM: "not permitted (an immutable file, or another user's): choose another path",
    errno.EISDIR: "that is a folder where a file is needed: give a file name, e.g. one inside it",
    errno.ENOTDIR: "that is a file where a folder is needed: choose another path",
    errno.EEXIST: "choose another path",
    errno.ENAMETOOLONG: "choose a shorter name",
}


def describe_os_error(exc: OSError) -> str:
    """``<reason>: <path> (<fix>)`` for an OSError with an errno; its own message otherwise."""
    if exc.errno is None or not exc.strerror:
        return str(exc)
    path = exc.filename2 if exc.filename2 is not None else exc.filename  # os.replace(tmp, path): path
    where = f": {os.fsdecode(path)}" if path is not None else ""
    fix = _OS_ERROR_FIXES.get(exc.errno)
    return f"{exc.strerror}{where}" + (f" ({fix})" if fix else "")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
