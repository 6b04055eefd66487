"""A mammogram's laterality (L/R) and view (CC/MLO) from a user's table, the tags, a naming rule or
the pixels, and where each came from.

Digitised-film archives and Secondary Capture exports (CBIS-DDSM among them) carry neither
ImageLaterality nor ViewPosition; their names say it instead (``Calc-Test_P_00038_LEFT_CC`` in
PatientID). :func:`place_image` decides each of the two values from the first source that gives
it, in this order:

1. ``csv``: a table the user gives (:func:`read_view_table`);
2. ``tag``: ImageLaterality, then Laterality; ViewPosition, then the code in ViewCodeSequence;
3. ``rule:<Keyword>``: a regular expression on a header attribute with named groups
   ``laterality`` and/or ``view`` (:class:`ViewRule`);
4. ``pixels``: laterality only (:func:`medimg.mammo_laterality.laterality_from_pixels`);

and records ``unknown`` when none does. Words are normalised: L/LEFT, R/RIGHT, CC/CRANIOCAUDAL,
MLO/MEDIOLATERAL OBLIQUE (any case); other views (ML, LM, XCCL...) are kept as written.
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "VIEW_CODES",
    "Placement",
    "ViewRule",
    "ViewTable",
    "laterality_from_tags",
    "normalise_laterality",
    "normalise_view",
    "place_image",
    "read_view_header",
    "read_view_table",
    "view_from_tags",
]

_LATERALITY = {"L": "L", "LEFT": "L", "R": "R", "RIGHT": "R"}
_VIEWS = {
    "CC": "CC",
    "CRANIOCAUDAL": "CC",
    "CRANIO-CAUDAL": "CC",
    "MLO": "MLO",
    "MEDIOLATERAL OBLIQUE": "MLO",
    "MEDIO-LATERAL OBLIQUE": "MLO",
}
#: SNOMED CT codes of ViewCodeSequence (DICOM CID 4014) -> view.
VIEW_CODES = {"399162004": "CC", "399368009": "MLO"}
_KEY_COLUMNS = ("sopinstanceuid", "path", "file", "source_file", "image file path")
_LATERALITY_COLUMNS = ("laterality", "imagelaterality", "left or right breast")
_VIEW_COLUMNS = ("view", "viewposition", "view_position", "image view")
#: Largest views table read (bytes).
MAX_TABLE_BYTES = 200_000_000


def normalise_laterality(value: Any) -> str:
    """``"L"``, ``"R"`` or ``""`` (unknown, e.g. ``B`` for both) from L/LEFT/R/RIGHT in any case."""
    return _LATERALITY.get(str(value or "").strip().upper(), "")


def normalise_view(value: Any) -> str:
    """``"CC"``/``"MLO"`` from their names in any case; other views upper-cased; ``""`` when empty."""
    text = " ".join(str(value or "").strip().upper().split())
    return _VIEWS.get(text, text)


def laterality_from_tags(header: Mapping[str, Any]) -> str:
    """ImageLaterality, else Laterality, normalised (``""`` when neither says L or R)."""
    return normalise_laterality(header.get("ImageLaterality")) or normalise_laterality(header.get("Laterality"))


def view_from_tags(header: Mapping[str, Any]) -> str:
    """ViewPosition, else the view of a ViewCodeSequence code (``header["ViewCodes"]``, as
    :func:`read_view_header` gives them), normalised; ``""`` when neither says."""
    view = normalise_view(header.get("ViewPosition"))
    if view:
        return view
    return next((VIEW_CODES[c] for c in header.get("ViewCodes") or () if c in VIEW_CODES), "")


def read_view_header(path: str | os.PathLike[str], keywords: Iterable[str] = ()) -> dict[str, Any]:
    """The placement tags of one DICOM file: ImageLaterality, Laterality, ViewPosition,
    ``ViewCodes`` (the CodeValues of ViewCodeSequence) and ``keywords`` (for :class:`ViewRule`).
    An unreadable file or value gives an empty mapping or leaves the value out."""
    import pydicom

    from medimg.dicom.header import jsonable

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - the image was decoded already; a header that now fails says nothing
        return {}
    out: dict[str, Any] = {}
    for keyword in {"ImageLaterality", "Laterality", "ViewPosition", *keywords}:
        try:
            value = jsonable(ds.get(keyword))
        except Exception:  # noqa: BLE001 - a malformed value simply does not count
            continue
        if value not in (None, ""):
            out[keyword] = value
    try:
        out["ViewCodes"] = [str(item.get("CodeValue", "")) for item in ds.get("ViewCodeSequence") or ()]
    except Exception:  # noqa: BLE001 - a malformed sequence simply does not count
        pass
    return out


@dataclass(frozen=True)
class ViewRule:
    """A regular expression on one header attribute with named groups ``laterality`` and/or
    ``view``, written ``Keyword:regex`` (e.g. ``PatientID:_(?P<laterality>LEFT|RIGHT)_(?P<view>CC|MLO)``).
    The expression is searched (``re.search``) in the attribute's text."""

    attribute: str
    pattern: re.Pattern[str]

    @classmethod
    def parse(cls, text: str) -> ViewRule:
        """Build a rule from ``Keyword:regex``.

        Raises:
            ValueError: no ``:``, an unknown DICOM keyword, a bad expression, or no group named
                ``laterality`` or ``view``.
        """
        from pydicom.datadict import tag_for_keyword

        attribute, sep, expression = str(text).partition(":")
        attribute = attribute.strip()
        if not sep or not attribute or not expression:
            raise ValueError(f"view rule {text!r}: write it as Keyword:regex, e.g. 'PatientID:_(?P<view>CC|MLO)'")
        if tag_for_keyword(attribute) is None:
            raise ValueError(f"view rule {text!r}: {attribute!r} is not a DICOM keyword (e.g. PatientID)")
        try:
            pattern = re.compile(expression)
        except re.error as exc:
            raise ValueError(f"view rule {text!r}: bad regular expression: {exc}") from exc
        if not {"laterality", "view"} & set(pattern.groupindex):
            raise ValueError(f"view rule {text!r}: name a group (?P<laterality>...) or (?P<view>...)")
        return cls(attribute, pattern)

    @property
    def source(self) -> str:
        """The source name recorded for a value this rule gave: ``rule:<Keyword>``."""
        return f"rule:{self.attribute}"

    def apply(self, header: Mapping[str, Any]) -> dict[str, str]:
        """``{"laterality": "L"|"R", "view": ...}`` for what the rule finds in ``header`` (values
        that do not normalise to L/R are left out)."""
        value = header.get(self.attribute)
        if value in (None, ""):
            return {}
        text = "\\".join(map(str, value)) if isinstance(value, list) else str(value)
        match = self.pattern.search(text)
        if match is None:
            return {}
        found = {k: v for k, v in match.groupdict().items() if k in ("laterality", "view") and v}
        out = {}
        if normalise_laterality(found.get("laterality")):
            out["laterality"] = normalise_laterality(found["laterality"])
        if normalise_view(found.get("view")):
            out["view"] = normalise_view(found["view"])
        return out


@dataclass
class ViewTable:
    """Laterality and view per image, from :func:`read_view_table`; ``""`` where a row left it blank."""

    source: str
    by_uid: dict[str, tuple[str, str]] = field(default_factory=dict)
    by_path: dict[str, tuple[str, str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.by_uid) + len(self.by_path)

    def lookup(self, sop_instance_uid: str, path: str | os.PathLike[str] | None) -> tuple[str, str] | None:
        """``(laterality, view)`` of an image by its SOPInstanceUID, else its file path; None if absent."""
        if sop_instance_uid and sop_instance_uid in self.by_uid:
            return self.by_uid[sop_instance_uid]
        if path:
            return self.by_path.get(os.path.realpath(path))
        return None


def _column(fields: Sequence[str], names: Sequence[str]) -> str | None:
    lowered = {f.strip().lower(): f for f in fields}
    return next((lowered[n] for n in names if n in lowered), None)


def read_view_table(path: str | os.PathLike[str], *, base: str | os.PathLike[str] | None = None) -> ViewTable:
    """Read a CSV giving the laterality and view of images.

    Columns (names in any case): ``SOPInstanceUID`` and/or ``path`` (also ``file``,
    ``source_file``, CBIS-DDSM's ``image file path``: a path relative to ``base``, the DICOM
    folder, or absolute); ``laterality`` (also ``ImageLaterality``, ``left or right breast``)
    and/or ``view`` (also ``ViewPosition``, ``image view``). A blank cell gives nothing (the next
    source decides). Rows repeating an image with the same values are allowed.

    Raises:
        ValueError: naming the file (and line): unreadable, too large, no key or value column, a
            laterality other than L/R/LEFT/RIGHT, or two rows giving one image different values.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_TABLE_BYTES:
            raise ValueError(f"{path}: views table over {MAX_TABLE_BYTES:,} bytes")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return _parse_table(path, csv.DictReader(fh), Path(base) if base is not None else Path.cwd())
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the views table: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a UTF-8 CSV views table: {exc}") from exc


def _parse_table(path: Path, reader: csv.DictReader, base: Path) -> ViewTable:
    fields = list(reader.fieldnames or [])
    uid_col = _column(fields, _KEY_COLUMNS[:1])
    path_col = _column(fields, _KEY_COLUMNS[1:])
    lat_col, view_col = _column(fields, _LATERALITY_COLUMNS), _column(fields, _VIEW_COLUMNS)
    if uid_col is None and path_col is None:
        raise ValueError(f"{path}: the views table needs a SOPInstanceUID or path column (has {fields})")
    if lat_col is None and view_col is None:
        raise ValueError(f"{path}: the views table needs a laterality or view column (has {fields})")
    table = ViewTable(str(path))
    for line, row in enumerate(reader, start=2):
        raw_lat = (row.get(lat_col) or "").strip() if lat_col else ""
        laterality = normalise_laterality(raw_lat)
        if raw_lat and not laterality:
            raise ValueError(f"{path}, line {line}: laterality {raw_lat!r} is not L, R, LEFT or RIGHT")
        value = (laterality, normalise_view(row.get(view_col)) if view_col else "")
        keys = []
        if uid_col and (row.get(uid_col) or "").strip():
            keys.append((table.by_uid, row[uid_col].strip()))
        if path_col and (row.get(path_col) or "").strip():
            keys.append((table.by_path, os.path.realpath(base / row[path_col].strip().replace("\\", "/"))))
        if not keys:
            raise ValueError(f"{path}, line {line}: neither a SOPInstanceUID nor a path")
        for index, key in keys:
            if index.setdefault(key, value) != value:
                raise ValueError(f"{path}, line {line}: {key} already has {index[key]}, not {value}")
    return table


@dataclass(frozen=True)
class Placement:
    """Where a mammogram belongs and how that was decided.

    Attributes:
        laterality: ``"L"``, ``"R"`` or ``""`` (unknown).
        view: ``"CC"``, ``"MLO"``, another view as written, or ``""`` (unknown).
        laterality_source: ``csv``, ``tag``, ``rule:<Keyword>``, ``pixels`` or ``unknown``.
        view_source: ``csv``, ``tag``, ``rule:<Keyword>`` or ``unknown``.
    """

    laterality: str
    view: str
    laterality_source: str
    view_source: str


def place_image(
    header: Mapping[str, Any],
    *,
    table_entry: tuple[str, str] | None = None,
    rules: Sequence[ViewRule] = (),
    pixel_laterality: Callable[[], str] | None = None,
) -> Placement:
    """Laterality and view of one image by the precedence of the module docstring.

    Args:
        header: the image's tags (see :func:`read_view_header`) and the attributes ``rules`` name.
        table_entry: ``(laterality, view)`` from the user's table, when it lists the image.
        rules: naming rules, tried in order (the first that gives a value wins).
        pixel_laterality: called (only when nothing else gave the laterality) for ``"L"``,
            ``"R"`` or ``""``.
    """
    found: dict[str, tuple[str, str]] = {}
    if table_entry is not None:
        for name, value in zip(("laterality", "view"), table_entry, strict=True):
            if value:
                found[name] = (value, "csv")
    tagged = {"laterality": laterality_from_tags(header), "view": view_from_tags(header)}
    for name, value in tagged.items():
        if value and name not in found:
            found[name] = (value, "tag")
    for rule in rules:
        for name, value in rule.apply(header).items():
            found.setdefault(name, (value, rule.source))
    if "laterality" not in found and pixel_laterality is not None:
        side = pixel_laterality()
        if side:
            found["laterality"] = (side, "pixels")
    laterality, lat_source = found.get("laterality", ("", "unknown"))
    view, view_source = found.get("view", ("", "unknown"))
    return Placement(laterality, view, lat_source, view_source)
