"""Small pieces of one-line messages: an error's first line, escaped line breaks, a list cut to its first items."""

from __future__ import annotations

from collections.abc import Sequence


def first_line(error: BaseException, default: str | None = None) -> str:
    """The first non-blank line of ``str(error)``, stripped; ``default`` when there is none (None: the error's type name).

    Library errors often carry pages of advice after their first line; a
    ``tlcore: error: ...`` message keeps only that line.
    """
    for line in str(error).splitlines():
        if line.strip():
            return line.strip()
    return type(error).__name__ if default is None else default


def one_line(text: str) -> str:
    """``text`` with every line break and other unprintable character written as its escape (``\\n``, ``\\x1e``).

    A message that quotes what a user typed or a file held (a path with a newline, a record separator) stays one
    line on any terminal and for any reader that splits lines, ``str.splitlines`` included.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def short_repr(value: object, limit: int = 40) -> str:
    """A value as an error message shows it: the repr of a scalar, the type name of anything else, cut to ``limit``.

    Values read from damaged files may be megabytes long or deeply nested; a one-line error never prints them whole.
    """
    text = repr(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shorten(items: Sequence[str], limit: int, separator: str = ", ") -> str:
    """The first ``limit`` items joined by ``separator``, then `` …`` when there were more."""
    return separator.join(items[:limit]) + (" …" if len(items) > limit else "")
