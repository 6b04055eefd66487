"""Text that comes from file headers and names is data: make it safe to print and to export.

DICOM and NIfTI headers, file names and folder names are written by whoever made the files.
Two places would otherwise interpret them:

- the terminal, through rich markup (``[/x]`` crashes a table, ``[link=...]`` forges a link)
  and through control characters (``ESC[...`` recolours, clears or retitles the terminal):
  :func:`terminal_text`;
- spreadsheets opening our CSVs, which run a cell starting with ``=``, ``+``, ``-`` or ``@``
  as a formula (OWASP "CSV injection"): :func:`spreadsheet_text`.

Matplotlib figure labels are a third (``$...$`` is mathtext): :func:`plot_text`.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["plain_text", "plot_text", "spreadsheet_text", "terminal_text"]

# ESC-introduced sequences: CSI (ESC [ ... final), OSC (ESC ] ... BEL or ESC \), DCS/SOS/PM/APC
# (ESC P/X/^/_ ... ESC \), and the two-byte ones (ESC + one character). The 8-bit C1 forms too.
_ESCAPES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]?"  # CSI
    r"|(?:\x1b[\]PX^_]|[\x9d\x90\x98\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, ...
    r"|\x1b[ -~]?"  # two-byte sequences, or a lone ESC
)
_WHITESPACE_CONTROLS = re.compile(r"[\t\n\r\v\f]")
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:inf|infinity|nan)", re.IGNORECASE)


def plain_text(value: Any) -> str:
    """``value`` as one line of plain text (a log line, a plain terminal): escape sequences (CSI,
    OSC, ...) removed whole, tabs and line breaks made spaces, other C0/C1 controls and DEL dropped."""
    text = _ESCAPES.sub("", str(value))
    text = _WHITESPACE_CONTROLS.sub(" ", text)
    return _CONTROLS.sub("", text)


def terminal_text(value: Any) -> str:
    """``value`` as text that prints literally on a rich console: :func:`plain_text` with rich
    markup escaped (``[/x]`` prints as ``[/x]``)."""
    from rich.markup import escape

    return escape(plain_text(value))


def spreadsheet_text(value: Any) -> Any:
    """``value`` for a CSV cell: a text that a spreadsheet would run as a formula gets a leading ``'``.

    A text starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is prefixed
    (OWASP). Numbers are never touched: ints, floats and texts that are a plain number
    (``"-0.5"``, ``"1e-3"``, ``"-inf"``) are returned as they are, as is anything not a ``str``.
    """
    if not isinstance(value, str) or not value.startswith(_FORMULA_START):
        return value
    if _PLAIN_NUMBER.fullmatch(value):
        return value
    return "'" + value


def plot_text(value: Any) -> str:
    """``value`` as a matplotlib label that prints literally: ``$`` no longer starts mathtext."""
    return str(value).replace("$", r"\$")
