"""Declarative series selection: which series (or images) of a study a pipeline takes, and why.

A rule set is plain data (YAML or JSON), close to MONAI Deploy's selector schema but with OR,
negation and instance-level selection::

    name: brain-mr
    level: series            # or "instance": pick single images (mammography views, CXR)
    selections:
      - name: flair
        required: true        # the study fails without it
        conditions:           # all must hold (AND)
          Modality: MR
          SeriesDescription: {regex: "(?i)flair"}
      - name: t1ce
        any:                  # at least one group must hold (OR of ANDs)
          - {SeriesDescription: {regex: "(?i)(t1ce|t1c|post|gd)"}}
          - {ContrastBolusAgent: {exists: true}}

A condition on one attribute is one of:

- a scalar: case-insensitive equality (for multi-valued attributes: one value equals it);
- a list of scalars: equals any of them;
- ``{equals: v}``, ``{in: [..]}``, ``{regex: "..."}`` (``re.search``), ``{range: [lo, hi]}``
  (either end may be null), ``{exists: bool}``, ``{contains: [..]}`` (a multi-valued
  attribute holds all of them), ``{not: <condition>}``, ``{any: [<condition>, ..]}``,
  ``{all: [<condition>, ..]}``.

Attributes are header keywords (those not in the scan index are read from the first file) plus
the derived ``Orientation`` (axial/coronal/sagittal), ``NumberOfInstances``, ``NumberOfImageFrames``
and ``Decodable``, and for MR the derived attributes of :mod:`medimg.dicom.mr_physics`, each with
the reason it was given (kept in the decisions' ``evidence``):

- ``MRContrast``: the weighting from the acquisition parameters (TR, TE, TI, ScanningSequence,
  SequenceVariant, MRAcquisitionType, field strength): ``flair``, ``t2``, ``t1``, ``t1-ir-gre``
  (3-D inversion-prepared gradient echo: MP-RAGE, BRAVO, TFE), ``pd``, ``other`` or ``unknown``;
- ``NamedContrast``: what the SeriesDescription (else ProtocolName) says, same values but
  ``t1-ir-gre``;
- ``ContrastEvidence``: ``agree``, ``physics``, ``name``, ``conflict`` or ``none``;
- ``PostContrast``: ``true``, ``false`` or ``unknown``, from the ContrastBolus* tags, contrast words
  in the name (``+C``, ``Gd``, ``KM``, ``post``, ``gado``, ``contraste``...) and, for a name-only
  claim, acquisition after another T1 of the study.

Within a study, selections are evaluated in order and a series (or image) is taken at most
once. When several candidates match, ``prefer`` decides: a list of keywords (``"-Rows"``:
larger first, ``"Rows"``: smaller first) or ``{keyword: [best, next, ..]}`` value rankings;
default most frames, then highest SeriesNumber. ``pick: all`` takes every match.

Two keys make a selection refuse to guess:

- ``fail_if``: a list of condition groups (like ``any``); when a candidate of the selection
  matches one, the selection takes nothing and records a conflict naming that candidate and its
  evidence (e.g. ``{ContrastEvidence: conflict}``: the name says T2, the parameters say FLAIR);
- ``ties: fail``: when the best candidates are equally good by ``prefer``, the selection takes
  nothing and records a conflict naming them (the default, ``ties: prefer``, breaks the tie
  by SeriesInstanceUID).

A required selection that takes nothing (no match, conflict or tie) is listed in ``missing``; the
conflicts are in :attr:`StudySelection.conflicts` with the candidates and their evidence.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from medimg.dicom.index import InstanceHeader, Series, Study
from medimg.dicom.mr_physics import (
    CONTRAST_KEYWORDS,
    PHYSICS_KEYWORDS,
    TIME_KEYWORDS,
    Derived,
    contrast_evidence,
    mr_contrast,
    named_contrast,
    post_contrast,
)

__all__ = [
    "RuleError",
    "Selection",
    "SelectionRules",
    "StudySelection",
    "Decision",
    "select",
    "load_rules",
    "BUNDLED_RULES",
]

BUNDLED_RULES = ("brain_mr", "chest_xray", "mammography")
_OPERATORS = {"equals", "in", "regex", "range", "exists", "contains", "not", "any", "all"}


class RuleError(ValueError):
    """A rule set that cannot be used; the message names the rule and what is wrong."""


@dataclass(frozen=True)
class Selection:
    """One named selection of a rule set (see the module docstring)."""

    name: str
    groups: tuple[Mapping[str, Any], ...]
    required: bool = False
    pick: str = "one"
    prefer: tuple[Any, ...] = ("-NumberOfImageFrames", "-SeriesNumber")
    fail_if: tuple[Mapping[str, Any], ...] = ()
    ties: str = "prefer"


@dataclass(frozen=True)
class SelectionRules:
    """A validated rule set.

    Attributes:
        name: rule set name.
        level: ``"series"`` or ``"instance"``.
        selections: the selections, evaluated in order.
    """

    name: str
    level: str
    selections: tuple[Selection, ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SelectionRules:
        """Validate and build a rule set from plain data.

        Raises:
            RuleError: unknown keys, operators or levels, or malformed conditions.
        """
        name = str(data.get("name", "rules"))
        level = str(data.get("level", "series"))
        if level not in ("series", "instance"):
            raise RuleError(f"rule set '{name}': level must be 'series' or 'instance', not {level!r}")
        raw = data.get("selections")
        if not isinstance(raw, list) or not raw:
            raise RuleError(f"rule set '{name}': 'selections' must be a non-empty list")
        selections = []
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping):
                raise RuleError(f"rule set '{name}': selection #{i + 1} is not a mapping")
            sel_name = str(item.get("name", f"selection{i + 1}"))
            unknown = set(item) - {"name", "conditions", "any", "required", "pick", "prefer", "fail_if", "ties"}
            if unknown:
                raise RuleError(f"rule set '{name}', selection '{sel_name}': unknown keys {sorted(unknown)}")
            base = item.get("conditions") or {}
            alternatives = item.get("any") or []
            if (
                not isinstance(base, Mapping)
                or not isinstance(alternatives, list)
                or not all(isinstance(alt, Mapping) for alt in alternatives)
            ):
                raise RuleError(
                    f"rule set '{name}', selection '{sel_name}': 'conditions' must be a mapping "
                    "and 'any' a list of mappings"
                )
            groups = [{**base, **alt} for alt in alternatives] if alternatives else [dict(base)]
            for group in groups:
                for attr, cond in group.items():
                    _validate_condition(cond, f"rule set '{name}', selection '{sel_name}', {attr}")
            pick = str(item.get("pick", "one"))
            if pick not in ("one", "all"):
                raise RuleError(f"rule set '{name}', selection '{sel_name}': pick must be 'one' or 'all'")
            prefer = tuple(item.get("prefer", Selection.prefer))
            fail_if, ties = _refusals(item, f"rule set '{name}', selection '{sel_name}'")
            selections.append(
                Selection(sel_name, tuple(groups), bool(item.get("required", False)), pick, prefer, fail_if, ties)
            )
        return cls(name, level, tuple(selections))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "level": self.level,
            "selections": [
                {
                    "name": s.name,
                    "any": [dict(g) for g in s.groups],
                    "required": s.required,
                    "pick": s.pick,
                    "prefer": list(s.prefer),
                    "fail_if": [dict(g) for g in s.fail_if],
                    "ties": s.ties,
                }
                for s in self.selections
            ],
        }


def _refusals(item: Mapping[str, Any], where: str) -> tuple[tuple[Mapping[str, Any], ...], str]:
    """Validated ``fail_if`` groups and ``ties`` of one selection."""
    fail_if = item.get("fail_if") or []
    if not isinstance(fail_if, list) or not all(isinstance(g, Mapping) for g in fail_if):
        raise RuleError(f"{where}: 'fail_if' must be a list of mappings")
    for group in fail_if:
        for attr, cond in group.items():
            _validate_condition(cond, f"{where}, fail_if {attr}")
    ties = str(item.get("ties", "prefer"))
    if ties not in ("prefer", "fail"):
        raise RuleError(f"{where}: ties must be 'prefer' or 'fail', not {ties!r}")
    return tuple(dict(g) for g in fail_if), ties


def _validate_condition(cond: Any, where: str) -> None:
    if isinstance(cond, Mapping):
        unknown = set(cond) - _OPERATORS
        if unknown:
            raise RuleError(f"{where}: unknown operator(s) {sorted(unknown)}; use {sorted(_OPERATORS)}")
        for op, arg in cond.items():
            if op == "regex":
                try:
                    re.compile(str(arg))
                except re.error as exc:
                    raise RuleError(f"{where}: bad regex {arg!r}: {exc}") from exc
            elif op == "range":
                if not isinstance(arg, (list, tuple)) or len(arg) != 2:
                    raise RuleError(f"{where}: range needs [low, high]")
            elif op == "not":
                _validate_condition(arg, where)
            elif op in ("any", "all"):
                if not isinstance(arg, list):
                    raise RuleError(f"{where}: {op} needs a list of conditions")
                for sub in arg:
                    _validate_condition(sub, where)


#: Largest rules file accepted (bytes).
MAX_RULES_BYTES = 1_000_000
#: Most YAML alias references (``*name``) accepted in one rules document.
MAX_RULES_ALIASES = 100
#: Most values (scalars, lists, mappings) a rules document may hold once its aliases are expanded.
MAX_RULES_NODES = 100_000


def _read_rules_file(path: Path) -> str:
    try:
        size = path.stat().st_size
        if size > MAX_RULES_BYTES:
            raise RuleError(f"{path}: rules file of {size:,} bytes is over the limit of {MAX_RULES_BYTES:,} bytes")
        with open(path, encoding="utf-8") as fh:
            text = fh.read(MAX_RULES_BYTES + 1)
    except OSError as exc:
        raise RuleError(f"{path}: cannot read rules: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise RuleError(f"{path}: rules are not UTF-8 text: {exc}") from exc
    if len(text) > MAX_RULES_BYTES:
        raise RuleError(f"{path}: rules file is over the limit of {MAX_RULES_BYTES:,} bytes")
    return text


def _check_aliases(text: str, source: Any) -> None:
    """Refuse documents with many alias references or whose aliases expand to a huge structure.

    Works on the composed node graph, where an alias is the anchored node itself (shared, not
    copied), so nothing is expanded: each node's expanded size is counted once (memoized).
    """
    import yaml

    aliases = sum(isinstance(e, yaml.AliasEvent) for e in yaml.parse(text, Loader=yaml.SafeLoader))
    if aliases > MAX_RULES_ALIASES:
        raise RuleError(
            f"{source}: {aliases} YAML alias references (*name), more than the {MAX_RULES_ALIASES} allowed; "
            "refused (nested aliases can expand without bound)"
        )
    if not aliases:
        return
    sizes: dict[int, int] = {}

    def expanded(node: Any) -> int:
        if id(node) not in sizes:
            sizes[id(node)] = 1  # a cycle (a node inside itself) counts once
            children = node.value if isinstance(node, yaml.SequenceNode) else []
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            sizes[id(node)] = 1 + sum(expanded(child) for child in children)
        return sizes[id(node)]

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    total = expanded(root) if root is not None else 0
    if total > MAX_RULES_NODES:
        raise RuleError(
            f"{source}: YAML aliases expand to {total:,} values, more than the {MAX_RULES_NODES:,} allowed; refused"
        )


def load_rules(source: str | Path | Mapping[str, Any]) -> SelectionRules:
    """Load a rule set from a bundled name, a YAML/JSON file, or a mapping.

    Args:
        source: one of :data:`BUNDLED_RULES`, a path to ``.yaml``/``.yml``/``.json``, or data.

    Files over :data:`MAX_RULES_BYTES` and YAML documents with more than
    :data:`MAX_RULES_ALIASES` alias references (``*name``) are refused before they are built:
    a small file of nested aliases (a "billion laughs" document) would otherwise expand to an
    enormous structure.

    Raises:
        RuleError: unreadable, too large or invalid rules.
    """
    if isinstance(source, Mapping):
        return SelectionRules.from_dict(source)
    text: str
    path = Path(source)
    if str(source) in BUNDLED_RULES:
        text = resources.files("medimg.dicom").joinpath(f"rules/{source}.yaml").read_text()
        suffix = ".yaml"
    else:
        text = _read_rules_file(path)
        suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            _check_aliases(text, source)
            data = yaml.safe_load(text)
    except RuleError:
        raise
    except Exception as exc:  # noqa: BLE001 - yaml and json raise different types
        raise RuleError(f"{source}: not valid YAML/JSON: {exc}") from exc
    if not isinstance(data, Mapping):
        raise RuleError(f"{source}: rules must be a mapping at the top level")
    return SelectionRules.from_dict(data)


# --- matching -------------------------------------------------------------------------------


#: Derived MR attributes (see :mod:`medimg.dicom.mr_physics`), in the order evidence is listed.
MR_DERIVED = ("MRContrast", "NamedContrast", "ContrastEvidence", "PostContrast")
#: Keywords outside the scan index the MR attributes read, fetched from the first file in one read.
_MR_EXTRA_KEYWORDS = (*PHYSICS_KEYWORDS, *CONTRAST_KEYWORDS, *TIME_KEYWORDS)


class _Candidate:
    """A series or one image of it, with attribute lookup (derived keys included)."""

    def __init__(self, series: Series, instance: InstanceHeader | None = None):
        self.series = series
        self.instance = instance
        self._extra: dict[str, Any] | None = None
        self.peers: list[_Candidate] = []  # the study's candidates (for PostContrast)
        self.derived: dict[str, Derived] = {}

    @property
    def label(self) -> str:
        desc = self.series.SeriesDescription
        text = f"series {self.series.get('SeriesNumber', '?')}" + (f" '{desc}'" if desc else "")
        if self.instance is not None:
            text += f" image {self.instance.get('InstanceNumber', '?')} ({Path(self.instance.path).name})"
        return text

    @property
    def frames(self) -> int:
        return self.instance.frames if self.instance is not None else self.series.num_frames

    def mr(self, keyword: str) -> Derived:
        """A derived MR attribute with its reason (computed once)."""
        if keyword not in self.derived:
            self._prefetch(_MR_EXTRA_KEYWORDS)
            if keyword == "MRContrast":
                value = mr_contrast(self.get)
            elif keyword == "NamedContrast":
                value = named_contrast(self.get)
            elif keyword == "ContrastEvidence":
                value = contrast_evidence(self.mr("MRContrast"), self.mr("NamedContrast"))
            else:
                others = [c for c in self.peers if c.series is not self.series]
                for other in others:
                    other._prefetch(_MR_EXTRA_KEYWORDS)
                value = post_contrast(self.get, [o.get for o in others])
            self.derived[keyword] = value
        return self.derived[keyword]

    def evidence(self) -> list[str]:
        """``"Keyword 'value': reason"`` for every derived MR attribute computed so far."""
        return [f"{k} {self.derived[k].value!r}: {self.derived[k].reason}" for k in MR_DERIVED if k in self.derived]

    def _header(self) -> InstanceHeader | None:
        return self.instance or (self.series.instances[0] if self.series.instances else None)

    def _prefetch(self, keywords: tuple[str, ...]) -> None:
        """Read the non-indexed ``keywords`` from the first file in one go."""
        from medimg.dicom.header import INDEXED_KEYWORDS

        header = self._header()
        if self._extra is None:
            self._extra = {}
        wanted = [k for k in keywords if k not in INDEXED_KEYWORDS and k not in self._extra]
        if header is None or not wanted:
            return
        self._extra.update(_read_keywords(header.path, wanted))

    def get(self, keyword: str) -> Any:
        header = self._header()
        derived = {
            "Orientation": lambda: self.series.orientation,
            "NumberOfInstances": lambda: 1 if self.instance is not None else len(self.series.instances),
            "NumberOfImageFrames": lambda: self.frames,
            "Decodable": lambda: self.series.decodable,
        }
        if keyword in derived:
            return derived[keyword]()
        if keyword in MR_DERIVED:
            return self.mr(keyword).value
        if header is None:
            return None
        if keyword in header.attributes:
            return header.attributes[keyword]
        from medimg.dicom.header import INDEXED_KEYWORDS

        if keyword in INDEXED_KEYWORDS:
            return None
        if self._extra is None:
            self._extra = {}
        if keyword not in self._extra:
            self._extra[keyword] = _read_keyword(header.path, keyword)
        return self._extra[keyword]


def _read_keywords(path: str, keywords: list[str]) -> dict[str, Any]:
    """Read several keywords from a file's header in one read (None for each one not there)."""
    import pydicom

    from medimg.dicom.header import jsonable

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=list(keywords))
        return {k: jsonable(ds.get(k)) for k in keywords}
    except Exception:  # noqa: BLE001 - an unreadable value simply does not match
        return dict.fromkeys(keywords)


def _read_keyword(path: str, keyword: str) -> Any:
    """Read one extra keyword from a file's header (for rules on non-indexed attributes)."""
    import pydicom

    from medimg.dicom.header import jsonable

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[keyword])
        return jsonable(ds.get(keyword))
    except Exception:  # noqa: BLE001 - an unreadable value simply does not match
        return None


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(b, bool):
        return float(a) == float(b)
    return str(a).strip().casefold() == str(b).strip().casefold()


def _number(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _matches(value: Any, cond: Any) -> bool:
    values = _values(value)
    if isinstance(cond, list):
        return any(_eq(v, c) for v in values for c in cond)
    if not isinstance(cond, Mapping):
        return any(_eq(v, cond) for v in values)
    for op, arg in cond.items():
        if op == "equals":
            ok = any(_eq(v, arg) for v in values)
        elif op == "in":
            ok = any(_eq(v, a) for v in values for a in arg)
        elif op == "regex":
            ok = any(re.search(str(arg), str(v)) for v in values)
        elif op == "range":
            lo, hi = arg
            nums = [n for n in (_number(v) for v in values) if n is not None]
            ok = any((lo is None or n >= lo) and (hi is None or n <= hi) for n in nums)
        elif op == "exists":
            ok = bool(values) == bool(arg)
        elif op == "contains":
            ok = all(any(_eq(v, a) for v in values) for a in _values(arg))
        elif op == "not":
            ok = not _matches(value, arg)
        elif op == "any":
            ok = any(_matches(value, sub) for sub in arg)
        else:  # "all"
            ok = all(_matches(value, sub) for sub in arg)
        if not ok:
            return False
    return True


def _describe(cond: Any) -> str:
    if isinstance(cond, Mapping):
        return " and ".join(f"{op} {arg!r}" for op, arg in cond.items())
    return f"= {cond!r}"


def _first_failure(candidate: _Candidate, selection: Selection) -> str | None:
    """None when the candidate matches; else why it fails (for the first group)."""
    reasons = []
    for group in selection.groups:
        failed = next(((a, c) for a, c in group.items() if not _matches(candidate.get(a), c)), None)
        if failed is None:
            return None
        attr, cond = failed
        why = f" ({candidate.derived[attr].reason})" if attr in candidate.derived else ""
        reasons.append(f"{attr} {candidate.get(attr)!r} does not match {_describe(cond)}{why}")
    return reasons[0] if len(reasons) == 1 else " / ".join(reasons)


# --- results --------------------------------------------------------------------------------


@dataclass
class Decision:
    """Why one series (or image) was taken or skipped."""

    SeriesInstanceUID: str
    SOPInstanceUID: str | None
    label: str
    taken_by: str | None
    reason: str
    evidence: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "SeriesInstanceUID": self.SeriesInstanceUID,
            "SOPInstanceUID": self.SOPInstanceUID,
            "item": self.label,
            "taken_by": self.taken_by,
            "reason": self.reason,
            "evidence": list(self.evidence),
        }


@dataclass
class StudySelection:
    """What a rule set picked in one study.

    Attributes:
        study: the study.
        picked: selection name -> picked series, or (series, image) pairs at instance level.
        missing: required selections that took nothing (no match, a conflict or a tie).
        decisions: one :class:`Decision` per series (or image) of the study.
        conflicts: selection name -> why it refused to pick (``fail_if`` or ``ties: fail``),
            naming the candidates and their evidence.
    """

    study: Study
    picked: dict[str, list[tuple[Series, InstanceHeader | None]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    conflicts: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.missing and not self.conflicts

    def failure_reasons(self) -> list[str]:
        """One line per required selection that took nothing, and per conflict."""
        lines = [f"'{name}': {self.conflicts[name]}" for name in self.conflicts]
        lines += [f"no series matches required selection '{n}'" for n in self.missing if n not in self.conflicts]
        return lines

    def series(self, name: str) -> Series:
        """The one series picked for selection ``name``.

        Raises:
            KeyError: nothing was picked for ``name``.
        """
        items = self.picked.get(name) or []
        if not items:
            raise KeyError(f"study {self.study.StudyInstanceUID}: nothing selected for '{name}'")
        return items[0][0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "StudyInstanceUID": self.study.StudyInstanceUID,
            "PatientID": self.study.PatientID,
            "picked": {
                name: [
                    {"SeriesInstanceUID": s.SeriesInstanceUID, "SOPInstanceUID": i.sop_instance_uid if i else None}
                    for s, i in items
                ]
                for name, items in self.picked.items()
            },
            "missing": list(self.missing),
            "conflicts": dict(self.conflicts),
            "decisions": [d.to_dict() for d in self.decisions],
        }


def _sort_key(candidate: _Candidate, prefer: tuple[Any, ...]) -> tuple[Any, ...]:
    key: list[Any] = []
    for spec in prefer:
        if isinstance(spec, Mapping):  # {keyword: [best, second, ...]}
            for keyword, ranking in spec.items():
                value = candidate.get(keyword)
                ranks = [i for i, v in enumerate(ranking) if any(_eq(x, v) for x in _values(value))]
                key.append(ranks[0] if ranks else len(ranking))
            continue
        descending = spec.startswith("-")
        value = _number(candidate.get(spec.lstrip("-+")))
        value = 0.0 if value is None else value
        key.append(-value if descending else value)
    key.append(candidate.series.SeriesInstanceUID)
    key.append(candidate.instance.path if candidate.instance is not None else "")
    return tuple(key)


def _cited(candidate: _Candidate) -> str:
    """A candidate's label with its evidence, for conflict messages."""
    if candidate.derived:
        for keyword in MR_DERIVED:
            candidate.mr(keyword)
    evidence = candidate.evidence()
    return candidate.label + (f" [{'; '.join(evidence)}]" if evidence else "")


def _held(candidate: _Candidate, group: Mapping[str, Any]) -> str | None:
    """None unless ``group`` holds for the candidate; then its attributes, values and reasons."""
    if not all(_matches(candidate.get(a), c) for a, c in group.items()):
        return None
    parts = []
    for attr in group:
        why = f" ({candidate.derived[attr].reason})" if attr in candidate.derived else ""
        parts.append(f"{attr} {candidate.get(attr)!r}{why}")
    return ", ".join(parts)


def _refuse(
    selection: Selection, candidates: list[_Candidate], matching: list[int], why_not: dict[int, list[str]]
) -> str | None:
    """Why ``selection`` must take nothing (``fail_if`` or an unbroken tie), or None; notes each candidate."""
    conflicts: dict[int, str] = {}
    for i in matching:
        held = next((h for h in (_held(candidates[i], g) for g in selection.fail_if) if h is not None), None)
        if held is not None:
            conflicts[i] = held
    if conflicts:
        named = ", ".join(candidates[i].label for i in conflicts)
        for i in matching:
            why_not[i].append(
                f"matches '{selection.name}' but "
                + (f"the evidence conflicts: {conflicts[i]}" if i in conflicts else f"{named} has conflicting evidence")
            )
        return "conflicting evidence: " + " | ".join(_cited(candidates[i]) for i in conflicts)
    if selection.ties != "fail" or selection.pick == "all" or len(matching) < 2:
        return None
    best = _sort_key(candidates[matching[0]], selection.prefer)[:-2]
    tied = [i for i in matching if _sort_key(candidates[i], selection.prefer)[:-2] == best]
    if len(tied) < 2:
        return None
    for i in matching:
        others = ", ".join(candidates[j].label for j in tied if j != i)
        why_not[i].append(
            f"matches '{selection.name}' but "
            + (f"is as good a candidate as {others}" if i in tied else f"{others} tie for it")
        )
    return f"{len(tied)} equally good candidates: " + " | ".join(_cited(candidates[i]) for i in tied)


def select(study: Study, rules: SelectionRules) -> StudySelection:
    """Apply ``rules`` to one study.

    Args:
        study: a study from :func:`medimg.dicom.scan_folder`.
        rules: the rule set.

    Returns:
        The :class:`StudySelection`, with a reason for every series (or image) taken or skipped.
    """
    if rules.level == "instance":
        candidates = [_Candidate(s, i) for s in study.series for i in s.instances]
    else:
        candidates = [_Candidate(s) for s in study.series]
    for cand in candidates:
        cand.peers = candidates
    result = StudySelection(study=study)
    taken: dict[int, str] = {}
    why_not: dict[int, list[str]] = {i: [] for i in range(len(candidates))}
    for selection in rules.selections:
        matching = []
        for i, cand in enumerate(candidates):
            failure = _first_failure(cand, selection)
            if failure is not None:
                why_not[i].append(f"not '{selection.name}': {failure}")
            elif i in taken:
                why_not[i].append(f"matches '{selection.name}' but already taken by '{taken[i]}'")
            elif cand.series.problems and rules.level == "series":
                why_not[i].append(f"matches '{selection.name}' but unusable: {'; '.join(cand.series.problems)}")
            else:
                matching.append(i)
        matching.sort(key=lambda i: _sort_key(candidates[i], selection.prefer))
        refusal = _refuse(selection, candidates, matching, why_not)
        if refusal is not None:
            result.conflicts[selection.name] = refusal
            matching = []
        chosen = matching if selection.pick == "all" else matching[:1]
        for i in matching[len(chosen) :]:
            why_not[i].append(f"matches '{selection.name}' but {candidates[chosen[0]].label} was preferred")
        for i in chosen:
            taken[i] = selection.name
        result.picked[selection.name] = [(candidates[i].series, candidates[i].instance) for i in chosen]
        if not chosen and selection.required:
            result.missing.append(selection.name)
    for i, cand in enumerate(candidates):
        uid = cand.instance.sop_instance_uid if cand.instance is not None else None
        if i in taken:
            reason = f"taken by '{taken[i]}'"
        else:
            reason = "; ".join(why_not[i]) or "no selection applies"
        if cand.derived:  # the rules looked at MR evidence: record all of it
            for keyword in MR_DERIVED:
                cand.mr(keyword)
        decision = Decision(cand.series.SeriesInstanceUID, uid, cand.label, taken.get(i), reason, cand.evidence())
        result.decisions.append(decision)
    return result
