"""How the scan index stores header-read results: the headers of one read batch as one compact chunk.

A chunk is JSON text holding the :class:`InstanceHeader` fields (less the path) of the files read
in one batch. The files of a batch are consecutive in path order, so they mostly share a study
and a series; what they share is stored once::

    {"pairs":  [[keyword, value], ...],      # distinct (keyword, value) pairs of the batch
     "shared": [value, ...],                 # distinct transfer syntaxes, orientations, spacings
     "files":  [[pair indices, transfer syntax, frame positions, orientation, pixel spacing,
                 slice spacing hint], ...]}  # one per header; the middle three index "shared"

A header's attributes are its pairs in their original order, so a header comes back equal to
what the reader made, key order included. A chunk's id is the SHA-256 of its text: a chunk never
changes, and an id names one content (the scan index keys its stored series checks on it).

Chunks are read back from a file that may have been edited: :func:`decode_chunk` checks the id
against the text and every field's type, and raises :class:`ValueError` naming what is wrong.
Only JSON values that come back unchanged are stored: a header holding anything else (a
non-finite number, a value of another type) is left out of its chunk and read again next time.

A series' geometry checks are stored the same way, as JSON text checked by one rule when written
and when read back (:func:`encode_series_check`, :func:`apply_series_check`).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from medimg.dicom.header import INDEXED_KEYWORDS
from medimg.dicom.index import InstanceHeader, Series

__all__ = [
    "Chunk",
    "apply_series_check",
    "check_structure",
    "chunk_id",
    "decode_chunk",
    "encode_chunk",
    "encode_series_check",
    "storable",
    "valid_pair",
]

_SCALARS = frozenset({str, int, float, bool, type(None)})
_NUMBERS = frozenset({int, float})
_FLOAT = {float}
_INDEXED = frozenset(INDEXED_KEYWORDS)
_UIDS = frozenset({"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"})  # always text
_SIZES = frozenset({"Rows", "Columns"})  # US: an integer 1-65535 in every stored header
_REQUIRED = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns")
_BAD = object()  # a "shared" value that is not of the type its use needs
_ORIENTATIONS = (None, "axial", "coronal", "sagittal")  # what orientation_label gives


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))


def chunk_id(data: str) -> str:
    """The id of a chunk's text: the first 32 hex digits of its SHA-256."""
    return hashlib.sha256(data.encode()).hexdigest()[:32]


# ------------------------------------------------------------------------------------------
# writing


def encode_chunk(headers: Sequence[InstanceHeader]) -> tuple[str, str, list[int | None]]:
    """Store ``headers`` as one chunk.

    Args:
        headers: the headers of one read batch.

    Returns:
        ``(id, text, entries)``: the chunk's id and JSON text, and per header its entry in the
        chunk, or None for a header that cannot be stored (see the module docstring).
    """
    pairs: dict[tuple[Any, ...], int] = {}
    pair_values: list[list[Any]] = []
    shared: dict[tuple[Any, ...], int] = {}
    shared_values: list[Any] = []
    files: list[list[Any]] = []
    entries: list[int | None] = []
    for header in headers:
        if not storable(header):
            entries.append(None)
            continue
        idx = []
        for keyword, value in header.attributes.items():
            # text (most values) keys itself; a tuple key never equals a text one
            key = (keyword, value) if type(value) is str else (keyword, _value_key(value))
            found = pairs.get(key)
            if found is None:
                found = pairs[key] = len(pair_values)
                pair_values.append([keyword, value])
            idx.append(found)
        entries.append(len(files))
        files.append(
            [
                idx,
                _shared(shared, shared_values, header.transfer_syntax),
                None if header.frame_positions is None else [list(p) for p in header.frame_positions],
                _shared(shared, shared_values, header.frame_orientation),
                _shared(shared, shared_values, header.pixel_spacing),
                header.slice_spacing_hint,
            ]
        )
    text = _ENCODER.encode({"pairs": pair_values, "shared": shared_values, "files": files})
    return chunk_id(text), text, entries


def _shared(table: dict[Any, int], values: list[Any], value: str | tuple[float, ...] | None) -> int:
    """The index of a transfer syntax, an orientation or a pixel spacing in a chunk's "shared" list."""
    key = value if type(value) is str else _value_key(value)
    found = table.get(key)
    if found is None:
        found = table[key] = len(values)
        values.append(list(value) if type(value) is tuple else value)
    return found


def _value_key(value: Any) -> tuple[Any, ...]:
    """A key telling apart every JSON value that decodes differently (1, 1.0, True; 0.0, -0.0)."""
    kind = type(value)
    if kind is float:
        return (float, repr(value))
    if kind is list or kind is tuple:
        return (kind, *(_value_key(v) for v in value))
    return (kind, value)


def storable(header: InstanceHeader) -> bool:
    """Whether ``header`` comes back equal from a chunk: JSON values only, finite numbers, the
    fields the header reader always fills, and tuples of finite floats in the geometry fields."""
    attributes = header.attributes
    if type(attributes) is not dict:
        return False
    for keyword, value in attributes.items():
        if type(value) is str and keyword in _INDEXED and keyword not in _SIZES:  # most values: at once
            continue
        if not valid_pair(keyword, value):
            return False
    try:
        check_structure(header)
    except ValueError:
        return False
    hint = header.slice_spacing_hint
    return (
        _finite_floats(header.frame_orientation, 6)
        and _finite_floats(header.pixel_spacing, 2)
        and all(_finite_floats(p, 3) for p in header.frame_positions or ())
        and (hint is None or (type(hint) is float and math.isfinite(hint)))
    )


def valid_pair(keyword: Any, value: Any) -> bool:
    """Whether ``keyword: value`` may be a stored header attribute (on writing and on reading back).

    An indexed keyword with a JSON value (a finite number, an integer of at most 64 bits, text, a
    boolean, None or a shallow list of them); the UIDs always text; Rows and Columns integers
    1-65535. A header with any other attribute is not stored; a chunk holding one is refused.
    """
    if keyword not in _INDEXED or not _finite_value(value):
        return False
    if keyword in _UIDS:
        return type(value) is str
    if keyword in _SIZES:
        return type(value) is int and 0 < value < 65536
    return True


def _finite_value(value: Any, depth: int = 0) -> bool:
    """A JSON scalar (a finite float, an integer of at most 64 bits) or a shallow list of them."""
    kind = type(value)
    if kind is float:
        return math.isfinite(value)
    if kind is int:
        return -(1 << 63) <= value < 1 << 64
    if kind in _SCALARS:
        return True
    return kind is list and depth < 2 and all(_finite_value(v, depth + 1) for v in value)


def _finite_floats(value: Any, n: int) -> bool:
    """None, or a tuple of ``n`` finite floats (a sum that overflows is refused too: read again)."""
    return value is None or (
        type(value) is tuple and len(value) == n and {*map(type, value)} == _FLOAT and math.isfinite(sum(value))
    )


def check_structure(header: InstanceHeader) -> None:
    """Check the fields every reader-made header has (not the attribute values' types).

    Raises:
        ValueError: naming the first field that is not as the header reader makes it.
    """
    attributes = header.attributes
    for keyword in _REQUIRED:
        if not attributes.get(keyword):
            raise ValueError(f"no {keyword}")
    if type(header.transfer_syntax) is not str or not header.transfer_syntax:
        raise ValueError("bad transfer_syntax")
    try:
        frames = header.frames
        _ = header.rows, header.columns
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError("Rows, Columns or NumberOfFrames is not an integer") from exc
    positions = header.frame_positions
    if positions is not None and (type(positions) is not list or len(positions) != frames):
        raise ValueError("frame_positions do not match NumberOfFrames")
    if (positions is None) != (header.frame_orientation is None):
        raise ValueError("frame_positions without frame_orientation or the reverse")


# ------------------------------------------------------------------------------------------
# reading back


class Chunk:
    """A decoded, checked chunk: :meth:`header` rebuilds one entry for a file path.

    The per-chunk tables are checked once here; each entry is checked when it is rebuilt.
    """

    __slots__ = ("_files", "_pairs", "_list_pairs", "_ts", "_six", "_two")

    def __init__(self, pairs: list[Any], shared: list[Any], files: list[Any]) -> None:
        for pair in pairs:
            if type(pair) is not list or len(pair) != 2 or type(pair[0]) is not str or not valid_pair(*pair):
                raise ValueError(f"bad keyword-value pair {str(pair)[:80]}")
        self._pairs = pairs
        self._list_pairs = frozenset(i for i, (_, v) in enumerate(pairs) if type(v) is list)
        self._ts = [v if type(v) is str and v else _BAD for v in shared]
        self._six = [_float_tuple(v, 6) for v in shared]
        self._two = [_float_tuple(v, 2) for v in shared]
        self._files = files

    def __len__(self) -> int:
        return len(self._files)

    def header(self, entry: int, path: str) -> InstanceHeader:
        """The stored header of ``entry``, for ``path``.

        Raises:
            ValueError: no such entry, or the entry is not what :func:`encode_chunk` writes.
        """
        files = self._files
        if type(entry) is not int or not 0 <= entry < len(files):
            raise ValueError(f"no entry {entry!r}")
        fields = files[entry]
        if type(fields) is not list or len(fields) != 6:
            raise ValueError("bad entry")
        idx, ts, positions, orientation, spacing, hint = fields
        attributes = self._attributes(idx)
        try:  # a negative index would count from the end; a non-integer raises TypeError
            if ts < 0 or orientation < 0 or spacing < 0:
                raise IndexError
            transfer_syntax, six, two = self._ts[ts], self._six[orientation], self._two[spacing]
        except (IndexError, TypeError) as exc:
            raise ValueError("bad shared value index") from exc
        if transfer_syntax is _BAD or six is _BAD or two is _BAD:
            raise ValueError("bad transfer syntax, orientation or pixel spacing")
        if hint is not None:
            hint = _float_tuple([hint], 1)
            if hint is _BAD:
                raise ValueError("bad slice_spacing_hint")
            hint = hint[0]
        header = InstanceHeader(
            path=path,
            attributes=attributes,
            transfer_syntax=transfer_syntax,  # type: ignore[arg-type]  # not _BAD: checked above
            frame_positions=None if positions is None else _points(positions),
            frame_orientation=six,
            pixel_spacing=two,
            slice_spacing_hint=hint,
        )
        check_structure(header)
        return header

    def _attributes(self, idx: Any) -> dict[str, Any]:
        pairs = self._pairs
        if type(idx) is not list or not idx:
            raise ValueError("bad attribute indices")
        try:  # anything but integers raises TypeError in the comparisons or the lookups
            if min(idx) < 0 or max(idx) >= len(pairs):
                raise ValueError("attribute index out of range")
            attributes = dict(map(pairs.__getitem__, idx))
        except TypeError as exc:
            raise ValueError("bad attribute indices") from exc
        for i in self._list_pairs.intersection(idx):  # a list is never shared between two headers
            keyword, value = pairs[i]
            attributes[keyword] = [list(v) if type(v) is list else v for v in value]
        return attributes


def decode_chunk(identifier: Any, data: Any) -> Chunk:
    """Check a stored chunk and prepare its entries for :meth:`Chunk.header`.

    Raises:
        ValueError: the text does not match its id, is not JSON, or is not what
            :func:`encode_chunk` writes.
    """
    if type(data) is not str or type(identifier) is not str or chunk_id(data) != identifier:
        raise ValueError("its content does not match its id")
    try:
        fields = _DECODER.decode(data)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    if type(fields) is not dict or fields.keys() != {"pairs", "shared", "files"}:
        raise ValueError("not a chunk")
    pairs, shared, files = fields["pairs"], fields["shared"], fields["files"]
    if type(pairs) is not list or type(shared) is not list or type(files) is not list:
        raise ValueError("not a chunk")
    return Chunk(pairs, shared, files)


def _float_tuple(value: Any, n: int) -> Any:
    """A JSON list of ``n`` numbers as a tuple of finite floats; None stays None; else :data:`_BAD`."""
    if value is None:
        return None
    if type(value) is not list or len(value) != n or not _NUMBERS.issuperset(map(type, value)):
        return _BAD
    try:
        floats = tuple(map(float, value))
    except OverflowError:  # an integer beyond any float
        return _BAD
    return floats if math.isfinite(sum(floats)) else _BAD


def _points(positions: Any) -> list[tuple[float, float, float]]:
    if type(positions) is not list:
        raise ValueError("bad frame_positions")
    points = [_float_tuple(p, 3) for p in positions]
    if any(p is None or p is _BAD for p in points):
        raise ValueError("bad frame_positions")
    return points


# ------------------------------------------------------------------------------------------
# a series' geometry checks


def encode_series_check(series: Series) -> str | None:
    """A series' geometry checks (orientation, slice spacing, problems) as JSON text, or None when
    they could not come back as they are (they are then checked again next time)."""
    check = {"orientation": series.orientation, "slice_spacing": series.slice_spacing, "problems": series.problems}
    return _ENCODER.encode(check) if _valid_check(check) else None


def apply_series_check(series: Series, data: Any) -> None:
    """Fill a series' orientation, slice spacing and problems from :func:`encode_series_check`'s text.

    Raises:
        ValueError: ``data`` is not what :func:`encode_series_check` writes.
    """
    try:
        check = _DECODER.decode(data) if type(data) is str else None
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    if check is None or not _valid_check(check):
        raise ValueError("not a series check")
    series.orientation = check["orientation"]
    series.slice_spacing = check["slice_spacing"]
    series.problems = check["problems"]


def _valid_check(check: Any) -> bool:
    """What :func:`medimg.dicom.scan.check_series_geometry` makes: the same rule on writing and reading."""
    if type(check) is not dict or check.keys() != {"orientation", "slice_spacing", "problems"}:
        return False
    spacing, problems = check["slice_spacing"], check["problems"]
    return (
        check["orientation"] in _ORIENTATIONS
        and (spacing is None or (type(spacing) is float and math.isfinite(spacing) and spacing >= 0))
        and type(problems) is list
        and all(type(p) is str and p for p in problems)
    )
