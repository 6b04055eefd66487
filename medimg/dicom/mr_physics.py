"""What an MR series is, from its acquisition parameters and, as extra evidence, its name.

Sequence names differ by vendor, site and technologist ("t2_tirm_tra_dark-fluid" is a FLAIR,
"Ax T1 BRAVO +C" a post-contrast 3-D T1); the acquisition parameters do not. This module derives,
for one series, each value with the reason it was given:

- :func:`mr_contrast`: the weighting from RepetitionTime, EchoTime, InversionTime,
  ScanningSequence, SequenceVariant, MRAcquisitionType and MagneticFieldStrength: ``flair``,
  ``t2``, ``t1``, ``t1-ir-gre`` (3-D inversion-prepared gradient echo: MP-RAGE, BRAVO, TFE),
  ``pd``, ``other`` (diffusion, T2*, STIR, ...) or ``unknown`` (parameters missing);
- :func:`named_contrast`: what the SeriesDescription (else ProtocolName) says: ``flair``, ``t2``,
  ``t1``, ``pd``, ``other`` or ``unknown``;
- :func:`contrast_evidence`: ``agree``, ``physics`` (only the parameters tell), ``name`` (only
  the name tells), ``conflict`` or ``none``;
- :func:`post_contrast`: ``true``, ``false`` or ``unknown`` from the contrast-bolus tags, a
  multilingual vocabulary on the name and, for a name-only claim, the acquisition order against
  the other T1 series of the study.

Values are read through a getter (``get(keyword) -> value or None``), so this module does not
depend on how headers are stored. Thresholds are named constants below, with their sources.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CONTRAST_KEYWORDS",
    "PHYSICS_KEYWORDS",
    "TIME_KEYWORDS",
    "Derived",
    "Getter",
    "contrast_evidence",
    "field_strength",
    "mr_contrast",
    "name_text",
    "named_contrast",
    "named_phase",
    "post_contrast",
    "t1_like",
]

Getter = Callable[[str], Any]

#: Header keywords :func:`mr_contrast` reads.
PHYSICS_KEYWORDS = (
    "RepetitionTime",
    "EchoTime",
    "InversionTime",
    "ScanningSequence",
    "SequenceVariant",
    "MRAcquisitionType",
    "MagneticFieldStrength",
)
#: Contrast-bolus keywords: any of them present and not empty means contrast was given.
CONTRAST_KEYWORDS = ("ContrastBolusAgent", "ContrastBolusRoute", "ContrastBolusVolume", "ContrastBolusStartTime")
#: Keywords giving the acquisition order (first present wins; SeriesNumber is the fallback).
TIME_KEYWORDS = ("AcquisitionTime", "SeriesTime")

# --- thresholds (ms) --------------------------------------------------------------------------
# Typical brain protocols (vendor defaults, e.g. Siemens/GE/Philips application guides; Bitar et al.,
# RadioGraphics 2006; Bernstein et al., Handbook of MRI Pulse Sequences, 2004):
#   T1 SE/TSE: TR 400-650 (1.5 T), 500-900 (3 T); TE 8-20.    T2 TSE/FSE: TR 3000-6000, TE 80-120.
#   PD: TR > 2000, TE 10-30.     2-D FLAIR: TR 8000-11000, TI 2000-2800, TE 80-140.
#   3-D FLAIR (SPACE/CUBE/VISTA): TR 4800-6500, TI 1600-2000, effective TE 300-400.
#   MP-RAGE: TR 1900-2400 (shot interval), TI 900-1100, TE 2-4.  BRAVO: TR 7-9, TI 400-600, TE 3.
#   STIR (fat nulled): TI ~150 ms at 1.5 T, ~220 ms at 3 T.   T1-FLAIR: TR 1800-2800, TI 700-1100.

#: Shortest TI of a FLAIR: CSF (T1 ~4 s at any field) is nulled at TI ~ 0.69*T1 for a long TR, and a
#: little earlier (1600-2000 ms) with the shorter TR of 3-D FLAIR. T1-FLAIR and MP-RAGE stay below ~1200.
FLAIR_MIN_TI_MS = 1500.0
#: Shortest TR of a FLAIR (3-D FLAIR runs at ~4800 ms; 2-D at 8000-11000).
FLAIR_MIN_TR_MS = 4000.0
#: Longest TI of a STIR (fat nulled) by field strength: fat T1 grows with the field (~150 -> ~220 ms).
STIR_MAX_TI_MS = {1.5: 250.0, 3.0: 300.0}
#: TI window of an inversion-prepared 3-D gradient echo (BRAVO ~450, MP-RAGE/TFE 800-1100).
IR_GRE_TI_MS = (300.0, FLAIR_MIN_TI_MS)
#: Longest TR of a T1-weighted spin echo by field strength: tissue T1 is ~20-40 % longer at 3 T, so
#: 3 T protocols use longer TRs for the same T1 weighting.
T1_MAX_TR_MS = {1.5: 800.0, 3.0: 1000.0}
#: Longest TE of a T1 (or PD) weighted spin echo.
T1_MAX_TE_MS = 30.0
#: Shortest TR of a T2 or PD weighted spin echo (full T1 recovery of brain tissue).
LONG_TR_MS = 2000.0
#: Shortest TE of a T2 weighted spin echo.
T2_MIN_TE_MS = 60.0
#: Longest TE of a PD weighted spin echo.
PD_MAX_TE_MS = 40.0
#: Longest TR of a T1-weighted spoiled gradient echo (3-D SPGR/FLASH 5-30 ms, 2-D FLASH up to ~300).
GRE_T1_MAX_TR_MS = 300.0
#: Shortest TE of a T2*-weighted gradient echo (SWI, T2* GRE: TE 15-40 ms).
GRE_T2STAR_MIN_TE_MS = 15.0
#: Shortest TE a spin echo reaches in practice: a shorter TE is a gradient-echo readout even when the
#: header does not say GR (GE research-mode MP-RAGE writes ScanningSequence RM\\IR, TE ~3 ms).
GRE_ONLY_MAX_TE_MS = 6.0
#: Field strength (T) whose thresholds apply when the header does not record it.
DEFAULT_FIELD_T = 3.0


@dataclass(frozen=True)
class Derived:
    """A derived value and why it was given (e.g. ``"IR, TI 2500 ms, TR 9000 ms -> FLAIR"``)."""

    value: str
    reason: str

    def __str__(self) -> str:
        return f"{self.value} ({self.reason})"


def _number(value: Any) -> float | None:
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if number == number else None  # NaN is no value


def _tokens(value: Any) -> set[str]:
    values = value if isinstance(value, list) else [value] if value is not None else []
    out: set[str] = set()
    for v in values:
        out.update(part.strip().upper() for part in re.split(r"[\\/ ,]+", str(v)) if part.strip())
    return out


def field_strength(value: Any) -> float | None:
    """MagneticFieldStrength in tesla (old headers give gauss: 15000 -> 1.5), or None."""
    number = _number(value)
    if number is None or number <= 0:
        return None
    return number / 10000.0 if number > 100 else number


def _by_field(table: dict[float, float], tesla: float | None) -> float:
    return table[1.5] if tesla is not None and tesla < 2.0 else table[3.0]


def _ms(value: float) -> str:
    return f"{value:g} ms"


def mr_contrast(get: Getter) -> Derived:
    """The weighting of an MR series from its acquisition parameters (see the module docstring)."""
    tr, te, ti = (_number(get(k)) for k in ("RepetitionTime", "EchoTime", "InversionTime"))
    scanning = _tokens(get("ScanningSequence"))
    variant = _tokens(get("SequenceVariant"))
    acquisition = str(get("MRAcquisitionType") or "").strip().upper()
    tesla = field_strength(get("MagneticFieldStrength"))
    parts = ["/".join(sorted(scanning)) or "readout not recorded"]
    if acquisition:
        parts.append(acquisition)
    parts += [f"{name} {_ms(v)}" for name, v in (("TR", tr), ("TE", te), ("TI", ti)) if v is not None]
    parts.append(f"{tesla:g} T" if tesla is not None else f"field not recorded, {DEFAULT_FIELD_T:g} T limits")
    said = ", ".join(parts)

    def out(value: str, why: str) -> Derived:
        return Derived(value, f"{said} -> {why}")

    if tr is None and te is None and ti is None:
        return Derived("unknown", "no RepetitionTime, EchoTime or InversionTime in the header")
    inverted = "IR" in scanning or (ti is not None and ti > 0)
    gradient = "GR" in scanning and "SE" not in scanning
    if "GR" not in scanning and "SE" not in scanning and te is not None and te < GRE_ONLY_MAX_TE_MS:
        gradient = True  # only a gradient echo reaches such a short TE, whatever the header says
    if inverted:
        return _inverted(ti, tr, te, gradient, "EP" in scanning, acquisition, tesla, out)
    if "EP" in scanning:
        return out("other", "echo planar without inversion (diffusion, perfusion or BOLD)")
    if gradient:
        if te is not None and te >= GRE_T2STAR_MIN_TE_MS:
            return out("other", f"gradient echo with TE >= {_ms(GRE_T2STAR_MIN_TE_MS)} (T2*/SWI)")
        if "TRSS" in variant:
            return out("other", "time-reversed steady state gradient echo")
        if tr is not None and tr <= GRE_T1_MAX_TR_MS and te is not None:
            return out("t1", f"spoiled gradient echo, TR <= {_ms(GRE_T1_MAX_TR_MS)} and short TE (T1)")
        return out("unknown" if tr is None or te is None else "other", "gradient echo, not T1 weighted")
    if tr is None or te is None:
        return out("unknown", "TR or TE missing")
    t1_tr = _by_field(T1_MAX_TR_MS, tesla)
    if tr <= t1_tr and te <= T1_MAX_TE_MS:
        return out("t1", f"TR <= {_ms(t1_tr)} and TE <= {_ms(T1_MAX_TE_MS)} (T1)")
    if tr >= LONG_TR_MS and te >= T2_MIN_TE_MS:
        return out("t2", f"TR >= {_ms(LONG_TR_MS)} and TE >= {_ms(T2_MIN_TE_MS)} without inversion (T2)")
    if tr >= LONG_TR_MS and te <= PD_MAX_TE_MS:
        return out("pd", f"TR >= {_ms(LONG_TR_MS)} and TE <= {_ms(PD_MAX_TE_MS)} (proton density)")
    return out("other", "TR/TE between the T1, T2 and PD ranges")


def _inverted(
    ti: float | None,
    tr: float | None,
    te: float | None,
    gradient: bool,
    echo_planar: bool,
    acquisition: str,
    tesla: float | None,
    out: Callable[[str, str], Derived],
) -> Derived:
    """Classify an inversion-recovery (or inversion-prepared) series."""
    if ti is None:
        return out("unknown", "inversion recovery without InversionTime")
    if gradient:
        lo, hi = IR_GRE_TI_MS
        if lo <= ti < hi:
            kind = "3-D " if acquisition == "3D" else ""
            return out(
                "t1-ir-gre", f"{kind}inversion-prepared gradient echo, TI {_ms(lo)}-{_ms(hi)} (MP-RAGE/BRAVO/TFE)"
            )
        return out("other", "inversion-prepared gradient echo outside the T1 TI window (e.g. MP2RAGE, DIR)")
    stir = _by_field(STIR_MAX_TI_MS, tesla)
    if ti >= FLAIR_MIN_TI_MS:
        if tr is None or tr >= FLAIR_MIN_TR_MS:
            return out("flair", f"inversion recovery, TI >= {_ms(FLAIR_MIN_TI_MS)} and long TR (FLAIR)")
        return out("other", f"long TI but TR < {_ms(FLAIR_MIN_TR_MS)}")
    if ti <= stir:
        return out("other", f"inversion recovery, TI <= {_ms(stir)} (STIR, fat nulled)")
    if echo_planar:
        return out("other", "echo planar inversion recovery")
    if te is not None and te <= T1_MAX_TE_MS:
        return out("t1", f"inversion recovery, TI {_ms(stir)}-{_ms(FLAIR_MIN_TI_MS)} with short TE (T1-FLAIR/T1-IR)")
    return out("other", "inversion recovery with intermediate TI and long TE")


# --- names -----------------------------------------------------------------------------------


def _words(*patterns: str) -> re.Pattern[str]:
    """Alternatives matched as whole words, where ``_``, ``-`` and digits around them separate."""
    return re.compile(r"(?<![a-z])(?:" + "|".join(patterns) + r")(?![a-z])")


_OTHER = _words(
    r"t2\s?\*",
    r"t2[ _-]?star",
    "swi",
    "swan",
    "swip",
    "susc\\w*",
    "dwi",
    "diff\\w*",
    "dti",
    "adc",
    "trace",
    "ep2d\\w*",
    "perf\\w*",
    "dsc",
    "dce",
    "asl",
    "pcasl",
    "bold",
    "tof",
    "mra",
    "angio",
    "mip",
    "stir",
    "local\\w*",
    "scout",
    "survey",
    "3[ -]?pl\\w*",
    "aahead\\w*",
    "cal\\w*",
    "fiesta",
    "ciss",
    "haste",
    "mrs",
)
_FLAIR = _words("flair", "t2[ _-]?f", r"dark[ _-]?fluid", r"da[ _-]?fl", "tirm", "fluid[ _-]?att\\w*")
_T1 = _words(
    "t1(?:w|wi|n|c|ce|gd)?",
    r"mp[ _-]?rage",
    "mpr",
    "bravo",
    "f?spgr",
    "tfe",
    "vibe",
    "flash",
    "fl3d",
    "lava",
    "thrive",
    "t1[ _-]?w",
)
_T2 = _words("t2(?:w|wi)?", "t2[ _-]?w", "frfse", "t2[ _-]?tse", "t2[ _-]?fse")
_PD = _words("pd(?:w)?", "dp", "rho", "proton[ _-]?density")

# Pre-contrast phrases come first: "sin contraste" and "ohne KM" must not read as post-contrast.
_PRE = re.compile(
    r"(?<![a-z])(?:pre(?:[ _-]?(?:contrast|gd|gad|km|c))?|native?|nativ|t1n|plain|"
    r"w/?o(?:[ _-]?(?:contrast|gd|gad))?|without|non[ _-]?contrast|no[ _-]?contrast|"
    r"ohne[ _-]?(?:km|kontrast\w*)|sans[ _-]?(?:gado\w*|contraste|injection)|"
    r"sin[ _-]?(?:contraste|gado\w*)|senza[ _-]?(?:mdc|contrasto|gado\w*))(?![a-z])"
)
# Exam-level wording ("BRAIN W WO", "pre/post") says nothing about one series.
_BOTH = re.compile(r"(?<![a-z])(?:w[ /]+wo|w/?\s?w/?o|with and without|pre[ _/-]+(?:and[ _-]+)?post)(?![a-z])")
_POST = re.compile(
    r"(?:(?<![a-z0-9])\+\s?c(?![a-z])|(?<![a-z0-9])c\s?\+|"
    r"(?<![a-z])(?:post(?![ _-]?op)\w*|gd|gad|gado\w*|gadolinium|km\+?|\+km|kontrast\w*|contrast[eo]?|"
    r"mdc|ce|t1ce|t1c|t1gd|t1\+c|iv|enh\w*|inj\w*|con[ _-]?(?:contraste|contrasto|gado\w*)|"
    r"mit[ _-]?km|nach[ _-]?km|avec[ _-]?(?:gado\w*|injection)|gadovist|dotarem|multihance|prohance|"
    r"clariscan|magnevist|omniscan)(?![a-z]))"
)


def name_text(get: Getter) -> tuple[str, str]:
    """``(keyword, text)`` of the series name: SeriesDescription, else ProtocolName, else ``("", "")``.

    ProtocolName is only a fallback: on some scanners it names the whole exam ("BRAIN W WO").
    """
    for keyword in ("SeriesDescription", "ProtocolName"):
        text = str(get(keyword) or "").strip()
        if text:
            return keyword, text
    return "", ""


def named_contrast(get: Getter) -> Derived:
    """What the series name says about the weighting (see the module docstring)."""
    keyword, text = name_text(get)
    if not text:
        return Derived("unknown", "no SeriesDescription or ProtocolName")
    low = text.casefold()
    quoted = f"{keyword} {text!r}"
    for value, pattern in (("other", _OTHER), ("flair", _FLAIR), ("t1", _T1), ("t2", _T2), ("pd", _PD)):
        found = pattern.search(low)
        if found is None:
            continue
        if value == "flair" and _T1.search(low) and not _T2.search(low):
            t1_word = _T1.search(low)
            assert t1_word is not None
            return Derived("t1", f"{quoted} says T1 ('{t1_word.group()}' with '{found.group()}': T1-FLAIR)")
        if value == "t2" and _PD.search(low):
            return Derived("unknown", f"{quoted} names both T2 and PD")
        return Derived(
            value, f"{quoted} says {value.upper() if value != 'other' else 'another kind'} ('{found.group()}')"
        )
    return Derived("unknown", f"{quoted} names no known sequence")


def named_phase(get: Getter) -> Derived:
    """``post``, ``pre`` or ``none``: what the series name says about contrast."""
    keyword, text = name_text(get)
    low = text.casefold()
    both = _BOTH.search(low)
    if both is not None:
        return Derived("none", f"{keyword} {text!r} names both phases ('{both.group()}')")
    pre = _PRE.search(low)
    if pre is not None:
        return Derived("pre", f"{keyword} {text!r} says without contrast ('{pre.group()}')")
    post = _POST.search(low)
    if post is not None:
        return Derived("post", f"{keyword} {text!r} says post-contrast ('{post.group().strip()}')")
    return Derived("none", "no contrast word in the name" if text else "no name")


def contrast_evidence(physics: Derived, named: Derived) -> Derived:
    """Whether the parameters and the name agree on the weighting."""
    p = "t1" if physics.value == "t1-ir-gre" else physics.value
    n = named.value
    if p == "unknown" and n == "unknown":
        return Derived("none", "neither the parameters nor the name tell")
    if n == "unknown":
        return Derived("physics", f"parameters say {physics.value}; the name does not tell")
    if p == "unknown":
        return Derived("name", f"only the name tells ({named.reason}); parameters: {physics.reason}")
    if p == n:
        return Derived("agree", f"parameters and name both say {n}")
    return Derived("conflict", f"name says {n} ({named.reason}) but parameters say {physics.value} ({physics.reason})")


def _bolus_tags(get: Getter) -> list[str]:
    found = []
    for keyword in CONTRAST_KEYWORDS:
        value = get(keyword)
        text = " ".join(str(v) for v in value) if isinstance(value, list) else str(value or "")
        if text.strip() and text.strip().casefold() not in {"none", "no", "n/a", "na", "0", "-", "nil"}:
            found.append(f"{keyword} {text.strip()!r}")
    return found


def t1_like(get: Getter) -> bool:
    """The parameters say T1 (or, without parameters, the name does)."""
    physics = mr_contrast(get).value
    if physics != "unknown":
        return physics in ("t1", "t1-ir-gre")
    return named_contrast(get).value == "t1"


def _order(get: Getter) -> tuple[str, float | None]:
    for keyword in TIME_KEYWORDS:
        value = str(get(keyword) or "").strip()
        if value:
            return keyword, _number(value.replace(":", ""))
    return "SeriesNumber", _number(get("SeriesNumber"))


def _label(get: Getter) -> str:
    desc = str(get("SeriesDescription") or "").strip()
    return f"series {get('SeriesNumber') if get('SeriesNumber') is not None else '?'}" + (f" '{desc}'" if desc else "")


def post_contrast(get: Getter, others: Sequence[Getter]) -> Derived:
    """``true``, ``false`` or ``unknown``: was this series acquired after a contrast injection?

    Args:
        get: the series.
        others: the other series of the same study (for the acquisition order of T1 series).
    """
    tags = _bolus_tags(get)
    phase = named_phase(get)
    if tags and phase.value == "pre":
        return Derived("unknown", f"conflict: {', '.join(tags)} but {phase.reason}")
    if tags:
        return Derived("true", ", ".join(tags) + ("; " + phase.reason if phase.value == "post" else ""))
    if phase.value == "pre":
        return Derived("false", phase.reason)
    if phase.value == "none":
        return Derived("false", f"no contrast-bolus tags and {phase.reason}")
    plain = [o for o in others if t1_like(o) and not _bolus_tags(o) and named_phase(o).value != "post"]
    if not plain:
        return Derived("unknown", f"{phase.reason} but no contrast-bolus tags and no other T1 in the study to compare")
    earlier, later, unordered = [], [], []
    for other in plain:
        key, mine = _order(get)
        other_key, theirs = _order(other)
        if other_key != key:  # compare like with like: fall back to series numbers
            key, mine, theirs = "SeriesNumber", _number(get("SeriesNumber")), _number(other("SeriesNumber"))
        if mine is None or theirs is None or mine == theirs:
            unordered.append(_label(other))
        elif theirs < mine:
            earlier.append(f"{_label(other)} ({key} {theirs:g} < {mine:g})")
        else:
            later.append(f"{_label(other)} ({key} {theirs:g} > {mine:g})")
    if earlier:
        return Derived("true", f"{phase.reason}, acquired after the T1 {earlier[0]}; no contrast-bolus tags")
    if later:
        return Derived("unknown", f"{phase.reason} but no contrast-bolus tags and acquired before the T1 {later[0]}")
    return Derived(
        "true", f"{phase.reason} next to the T1 {unordered[0]} without contrast words (acquisition order not recorded)"
    )
