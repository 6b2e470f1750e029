"""Text from files shown on a terminal: class names from a ``best.json``, file and folder names.

Such text may hold terminal control sequences (``\\x1b[2J`` clears the screen, ``\\x1b]0;...``
retitles the window) or bidirectional overrides that make a name read differently. The commands
print it through :func:`printable`, which writes every control and format character as a Python
escape (``\\x1b``, ``\\u202e``), so what is shown is what the file holds. ``--json`` output needs
nothing more: JSON escapes these characters itself.
"""
import unicodedata

__all__ = ["printable"]

#: Unicode categories shown escaped: controls, format characters (bidi overrides, zero-width
#: characters), line and paragraph separators, surrogates, private use and unassigned code points
_ESCAPED = frozenset(("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"))


def printable(text, keep: str = "") -> str:
    """``text`` (made a str) with the characters of :data:`_ESCAPED` categories written as
    ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``, except those in ``keep`` (e.g. ``"\\n"``); other
    text, non-ASCII letters included, is unchanged."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c in keep or unicodedata.category(c) not in _ESCAPED else _escape(c) for c in text)


def _escape(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
