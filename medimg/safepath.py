"""Safe output paths from untrusted values (DICOM header fields, input file names).

Every output path built from a PatientID, a Study/SOP Instance UID or a case ID taken from a file
name goes through :func:`safe_name` (one path component) and, where the folder is formed,
:func:`inside` (the result stays under the output root). A header cannot then write outside the
output folder (``..``, absolute paths, separators), and two distinct values never share a name:
a value that had to be changed or shortened gets a short hash of the full original appended.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = ["MAX_VALUE_LENGTH", "UnsafePathError", "inside", "safe_name", "short_hash"]

#: Longest value accepted at all; anything longer is refused rather than hashed.
MAX_VALUE_LENGTH = 4096

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
_HASH_LENGTH = 10


class UnsafePathError(ValueError):
    """A value that cannot become a safe output name, or a path outside the output root.

    Attributes:
        value: the offending value (or path), as given.
    """

    def __init__(self, value: object, reason: str) -> None:
        self.value = value
        shown = repr(str(value)[:200]) + ("..." if len(str(value)) > 200 else "")
        super().__init__(f"unsafe output name {shown}: {reason}")


def short_hash(value: object, length: int = _HASH_LENGTH) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``str(value)`` (UTF-8)."""
    return hashlib.sha256(str(value).encode("utf-8", "surrogatepass")).hexdigest()[:length]


def safe_name(value: object, max_length: int = 128) -> str:
    """One safe path component from any value.

    The result uses only letters, digits and ``. - _ +``, has no leading dot (so it is never
    ``.``, ``..`` or hidden), is never empty and has at most ``max_length`` characters. A value
    that already satisfies this is returned unchanged (plain UIDs keep their names); any other
    gets ``_`` and a 10-hex-digit hash of the full original appended, so distinct values never
    share a name.

    Raises:
        UnsafePathError: the value contains NUL or is longer than :data:`MAX_VALUE_LENGTH`.
        ValueError: ``max_length`` is too small to hold a hash.
    """
    if max_length < _HASH_LENGTH + 2:
        raise ValueError(f"max_length {max_length} is too small (at least {_HASH_LENGTH + 2})")
    text = str(value)
    if "\x00" in text:
        raise UnsafePathError(value, "contains NUL")
    if len(text) > MAX_VALUE_LENGTH:
        raise UnsafePathError(value, f"longer than {MAX_VALUE_LENGTH} characters")
    cleaned = _UNSAFE.sub("_", text).lstrip(".")
    if cleaned == text and 0 < len(text) <= max_length:
        return text
    digest = short_hash(text)
    keep = cleaned[: max_length - _HASH_LENGTH - 1]
    return f"{keep}_{digest}" if keep else digest


def inside(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """``path``, checked to resolve (symbolic links followed) to ``root`` or a path under it.

    Returns:
        ``path`` as a :class:`~pathlib.Path` (unchanged).

    Raises:
        UnsafePathError: ``path`` is outside ``root``.
    """
    base = Path(root).resolve()
    target = Path(path)
    resolved = target.resolve()
    if resolved != base and base not in resolved.parents:
        raise UnsafePathError(path, f"outside the output folder {base}")
    return target
