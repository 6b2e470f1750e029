"""Argument types the commands share: argparse ``type=`` callables that refuse a bad value with
argparse's usage line and one message (sizes within megzoo.weights.limits' bounds)."""
import argparse

__all__ = ["positive", "non_negative", "num_classes", "input_size", "tolerance"]


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _bounded(name: str, text: str) -> int:
    """A positive int within megzoo.weights.limits' bound of ``name`` (docs/cli.md#size-limits)."""
    from ..weights.limits import check_size

    try:
        return check_size(name, positive(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def num_classes(text: str) -> int:
    """``--num-classes``: 1 ... megzoo.weights.limits.MAX_NUM_CLASSES."""
    return _bounded("num_classes", text)


def input_size(text: str) -> int:
    """``--input-size``: pixels, 1 ... megzoo.weights.limits.MAX_INPUT_SIZE."""
    return _bounded("input_size", text)


def non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def tolerance(text: str) -> float:
    """``--tolerance`` of a parity check (export, convert): a finite number >= 0."""
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r} (--no-check skips the check)")
    return value
