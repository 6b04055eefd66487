"""Scanner styles of the synthetic brain MR studies: series names and matching acquisition parameters.

Each style is a vendor (or the BraTS-like naming) with, for each of t1, t1ce, t2 and flair, a
vocabulary of real-world series names; each name comes with the kind of protocol such a series
is (2-D spin echo, MP-RAGE, BRAVO, TFE, SPGR, TSE, 2-D or 3-D FLAIR), and
:func:`protocol_attributes` writes the parameters that kind has (typical TR/TE/TI at the style's
field strength). So the demo data exercise :mod:`medimg.dicom.mr_physics`: a FLAIR named
"t2_tirm_tra_dark-fluid" is an inversion recovery with TI ~2500 ms, whatever its name says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medimg.synth.dicomio import format_ds

__all__ = ["STYLES", "Style", "choose_names", "protocol_attributes", "series_attributes"]

#: A name choice: (SeriesDescription, protocol kind).
Name = tuple[str, str]


@dataclass(frozen=True)
class Style:
    """One scanner style: vendor, model, field strength (T) and name vocabularies per sequence."""

    manufacturer: str
    model: str
    field_strength: str
    names: dict[str, tuple[Name, ...]]
    #: Whether the post-contrast series records ContrastBolusAgent/Route/Volume (else only its name says so).
    bolus_tags: bool = True


STYLES: tuple[Style, ...] = (
    Style(
        "medimg.synth",
        "BraTS-like",
        "3",
        {
            "t1": (("t1", "se_t1"),),
            "t1ce": (("t1ce", "se_t1"),),
            "t2": (("t2", "tse_t2"),),
            "flair": (("flair", "flair_2d"),),
        },
    ),
    Style(
        "GE MEDICAL SYSTEMS",
        "SIGNA Premier",
        "3",
        {
            "t1": (("AX T1", "se_t1"), ("Sag T1 BRAVO", "bravo")),
            "t1ce": (("AX T1 POST GD", "se_t1"), ("Ax T1 BRAVO +C", "bravo")),
            "t2": (("AX T2", "tse_t2"), ("Ax T2 FRFSE", "tse_t2")),
            "flair": (("AX T2 FLAIR", "flair_2d"), ("Sag T2 FLAIR CUBE", "flair_3d")),
        },
    ),
    Style(
        "GE MEDICAL SYSTEMS",
        "Optima MR450w",
        "1.5",
        {
            "t1": (("Ax T1 SE", "se_t1"), ("3D SPGR", "spgr")),
            "t1ce": (("Ax T1 +C", "se_t1"), ("3D SPGR C+", "spgr")),
            "t2": (("Ax T2 FSE", "tse_t2"), ("Ax T2 FRFSE", "tse_t2")),
            "flair": (("Ax T2 FLAIR", "flair_2d"),),
        },
        bolus_tags=False,
    ),
    Style(
        "SIEMENS",
        "Skyra",
        "3",
        {
            "t1": (("t1_se_tra", "se_t1"), ("t1_mprage_sag_p2_iso", "mprage")),
            "t1ce": (("t1_se_tra_KM", "se_t1"), ("t1_mprage_sag_p2_iso_KM", "mprage"), ("T1 MPR Kontrast", "mprage")),
            "t2": (("t2_tse_tra", "tse_t2"),),
            "flair": (("t2_tirm_tra_dark-fluid", "flair_2d"), ("t2_spc_da-fl_sag_p2_iso", "flair_3d")),
        },
    ),
    Style(
        "Philips",
        "Ingenia",
        "1.5",
        {
            "t1": (("T1W_SE", "se_t1"), ("T1W_3D_TFE", "tfe"), ("T1 SE sin contraste", "se_t1")),
            "t1ce": (("T1W_SE_GD", "se_t1"), ("T1W_3D_TFE_Gd", "tfe"), ("T1 SE gado", "se_t1")),
            "t2": (("T2W_TSE", "tse_t2"),),
            "flair": (("T2W_FLAIR", "flair_2d"), ("FLAIR axial", "flair_2d")),
        },
        bolus_tags=False,
    ),
    Style(
        "CANON_MEC",
        "Vantage Orian",
        "1.5",
        {
            "t1": (("T1WI", "se_t1"), ("", "mprage")),
            "t1ce": (("T1WI +C", "se_t1"), ("3D MPRAGE", "mprage")),
            "t2": (("T2WI", "tse_t2"), ("", "tse_t2")),
            "flair": (("FLAIR", "flair_2d"), ("", "flair_2d")),
        },
    ),
)


def choose_names(rng: np.random.Generator, style: Style) -> dict[str, Name]:
    """One (SeriesDescription, protocol kind) per sequence, drawn from the style's vocabularies."""
    return {seq: options[int(rng.integers(0, len(options)))] for seq, options in style.names.items()}


def series_attributes(rng: np.random.Generator, style: Style, sequence: str, name: Name) -> dict[str, object]:
    """Acquisition attributes of one series, with the contrast-bolus tags of a post-contrast one.

    A post-contrast series gets ContrastBolusAgent/Route/Volume when the style records them, and
    always when it has no name (nothing else would tell it apart from the plain T1).
    """
    attrs = protocol_attributes(rng, name[1], style.field_strength)
    if sequence == "t1ce" and (style.bolus_tags or not name[0]):
        attrs["ContrastBolusAgent"] = "GADOBUTROL"
        attrs["ContrastBolusRoute"] = "IV"
        attrs["ContrastBolusVolume"] = format_ds(rng.uniform(6.0, 9.0), 1)
    return attrs


def _u(rng: np.random.Generator, lo: float, hi: float, digits: int = 1) -> str:
    return format_ds(rng.uniform(lo, hi), digits)


def protocol_attributes(rng: np.random.Generator, kind: str, field_strength: str) -> dict[str, object]:
    """MR acquisition attributes (ScanningSequence, TR, TE, TI, ...) of one protocol kind.

    Values are typical vendor defaults at the field strength; see the thresholds in
    :mod:`medimg.dicom.mr_physics`.
    """
    high = float(field_strength) >= 2.0
    if kind == "se_t1":
        tr = (550.0, 750.0) if high else (450.0, 650.0)
        return _attrs("SE", ["SK", "SP"], "2D", _u(rng, *tr), _u(rng, 8.0, 14.0, 2), None, "90", 1)
    if kind == "mprage":
        ti = (880.0, 1000.0) if high else (1000.0, 1100.0)
        return _attrs(
            "GR\\IR", ["SK", "SP", "MP"], "3D", _u(rng, 2200.0, 2300.0), _u(rng, 2.3, 3.0, 2), ti, "8", 1, rng
        )
    if kind == "bravo":
        return _attrs(
            "GR\\IR", ["SS", "SK"], "3D", _u(rng, 7.5, 8.5, 2), _u(rng, 3.0, 3.4, 2), (400.0, 600.0), "12", 1, rng
        )
    if kind in ("tfe", "spgr"):
        variant = ["SK"] if kind == "tfe" else ["SS", "SP"]
        return _attrs("GR", variant, "3D", _u(rng, 6.5, 8.5, 2), _u(rng, 2.5, 4.0, 2), None, "8", 1)
    if kind == "tse_t2":
        return _attrs("SE", ["SK", "SP"], "2D", _u(rng, 3500.0, 5000.0), _u(rng, 90.0, 110.0, 2), None, "90", 16)
    if kind == "flair_3d":
        return _attrs(
            "SE\\IR",
            ["SK", "SP", "MP"],
            "3D",
            _u(rng, 4800.0, 6000.0),
            _u(rng, 330.0, 400.0, 2),
            (1650.0, 1900.0),
            "120",
            200,
            rng,
        )
    if kind == "flair_2d":
        return _attrs(
            "SE\\IR",
            ["SK", "SP", "MP"],
            "2D",
            _u(rng, 8000.0, 10000.0),
            _u(rng, 110.0, 140.0, 2),
            (2300.0, 2600.0),
            "90",
            24,
            rng,
        )
    raise KeyError(f"unknown protocol kind {kind!r}")


def _attrs(
    scanning: str,
    variant: list[str],
    acquisition: str,
    tr: str,
    te: str,
    ti: tuple[float, float] | None,
    flip: str,
    echo_train: int,
    rng: np.random.Generator | None = None,
) -> dict[str, object]:
    out: dict[str, object] = {
        "ScanningSequence": scanning.split("\\") if "\\" in scanning else scanning,
        "SequenceVariant": variant,
        "MRAcquisitionType": acquisition,
        "RepetitionTime": tr,
        "EchoTime": te,
        "FlipAngle": flip,
        "EchoTrainLength": echo_train,
    }
    if ti is not None and rng is not None:
        out["InversionTime"] = _u(rng, *ti)
    return out
