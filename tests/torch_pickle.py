"""Protocol-2 pickle opcodes for hand-assembled torch archives: the records torch.save writes, built
without torch, for records torch itself never writes (bad storages, lying sizes, zip bombs)."""
import struct


def text(value: str) -> bytes:
    """A BINUNICODE string."""
    raw = value.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def integer(value: int) -> bytes:
    """A BININT."""
    return b"J" + struct.pack("<i", value)


def tuple_of(items) -> bytes:
    """A MARK ... TUPLE of the pickled ``items``."""
    return b"(" + b"".join(items) + b"t"
