"""THE quoting function: every piece of text that reaches an nginx file goes through :func:`quote`.

Validation already limits user text to documented character sets; this is the second guard. The
result is always exactly one nginx token whose value (after nginx's own unescaping) is the input:
it can never end a directive (``;``), open or close a block (``{``/``}``), start a comment (``#``)
or split into two arguments. Control characters (newline, NUL, ...) have no inert form in an
nginx file and are refused, as is text longer than any documented field.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Characters that are plain in nginx's lexer; a token made only of these is written bare.
_BARE = re.compile(r"[A-Za-z0-9_./:=?,@%+*$~^!&|()\[\]-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_TOKEN = 4000  # nginx refuses a parameter longer than its 4096-byte parse buffer


class UnsafeTextError(ValueError):
    """User text that cannot be written into an nginx file inertly."""


@lru_cache(maxsize=1 << 16)  # pure; the same names and values recur across thousands of servers
def quote(value: object, *, variables: bool = True) -> str:
    """One nginx token for ``value``: bare when it is plain, else double-quoted and escaped.

    ``variables=False`` is for text that lands in a directive which interpolates ``$name``
    (header values): such text must not contain ``$`` at all.
    """
    text = str(value)
    if _CONTROL.search(text):
        raise UnsafeTextError(f"control character in {text[:40]!r}")
    if not variables and "$" in text:
        raise UnsafeTextError(f"'$' in literal text {text[:40]!r}")
    token = text if _BARE.fullmatch(text) else '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if len(token.encode()) > MAX_TOKEN:
        raise UnsafeTextError(f"text of {len(text)} characters is too long for one nginx parameter")
    return token


def literal(value: object) -> str:
    """:func:`quote` for text that must stay literal where nginx interpolates variables."""
    return quote(value, variables=False)
