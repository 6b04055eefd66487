"""Synthetic screening mammograms from several institutions, VinDr-Mammo style.

Layout written under the dataset root (``OUT/mammo``), one folder per site::

    <site>/images/<study_id>/<image_id>.dicom
    <site>/breast-level_annotations.csv
        study_id,series_id,image_id,laterality,view_position,height,width,
        breast_birads,breast_density,split

Each exam (study) has four images, L/R × CC/MLO, each in its own series as in
VinDr-Mammo. Breast density and BI-RADS live in the CSV only (they are not
standard header attributes); the two breasts of a woman share the density in
about 85 % of exams and otherwise differ by one category.

The sites differ the way real vendors do (see :data:`SITES`): manufacturer,
intensity response, noise, detector pitch and matrix, bit depth, MONOCHROME1 vs
MONOCHROME2, transfer syntax (Explicit VR Little Endian, RLE Lossless, JPEG 2000
Lossless) and whether *Pixel Spacing* accompanies *Imager Pixel Spacing*. A
classifier trained at one site therefore sees a genuine domain shift at another.

Image content (see :func:`render_breast`): a breast silhouette whose chest wall
lies on the image edge (right breast: right edge, nipple pointing left; left
breast mirrored), a pectoral-muscle triangle in the upper chest-wall corner on
MLO views, and fibroglandular tissue obtained by thresholding smoothed noise at
the quantile that gives the target area fraction for the density category
(A < 25 % ≤ B < 50 % ≤ C < 75 % ≤ D).

Tagless stand-ins for digitised-film archives (CBIS-DDSM style, :func:`generate_film_mammo`,
:func:`write_film_mammogram`): Secondary Capture files with neither laterality nor view tags,
the side and view only in the PatientID (``Calc-Test_P_00038_LEFT_CC``) and the pixels;
optionally mirrored, MONOCHROME1 or with a burned-in label.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.uid import (
    DigitalMammographyXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    SecondaryCaptureImageStorage,
)
from scipy import ndimage

from medimg.synth.common import (
    DatasetSummary,
    FileLog,
    hex_id,
    item_rng,
    smooth_field,
    smoothstep,
    stratified_choice,
    write_csv,
)
from medimg.synth.dicomio import (
    code_item,
    compress_lossless,
    format_ds,
    make_uid,
    new_dataset,
    sequence,
    set_pixels,
    write_dataset,
)

__all__ = [
    "ANNOTATION_HEADER",
    "DEFAULT_COUNT",
    "DENSITY_FRACTION_RANGES",
    "FAT_LEVEL",
    "GLAND_LEVEL",
    "SITES",
    "SITE_NAMES",
    "SiteProfile",
    "film_patient_id",
    "generate_film_mammo",
    "generate_mammo",
    "render_breast",
    "write_film_mammogram",
]

#: Default number of exams (4 images each) per site.
DEFAULT_COUNT = 4

ANNOTATION_HEADER = (
    "study_id",
    "series_id",
    "image_id",
    "laterality",
    "view_position",
    "height",
    "width",
    "breast_birads",
    "breast_density",
    "split",
)

#: Fibroglandular area fraction (of the breast, pectoral muscle excluded) drawn
#: uniformly from these ranges per ACR density category.
DENSITY_FRACTION_RANGES: dict[str, tuple[float, float]] = {
    "A": (0.08, 0.20),
    "B": (0.29, 0.46),
    "C": (0.54, 0.71),
    "D": (0.80, 0.92),
}
_DENSITIES = ("A", "B", "C", "D")
#: One block of ten women: B and C most common.
_DENSITY_PATTERN = ("A",) + ("B",) * 4 + ("C",) * 4 + ("D",)
#: One block of five exams: 20 % test split.
_SPLIT_PATTERN = ("training",) * 4 + ("test",)
#: One implant breast per 20 breasts (about 5 % of images).
_IMPLANT_PATTERN = ("YES",) + ("NO",) * 19
_BIRADS_P = (0.62, 0.24, 0.07, 0.05, 0.02)
_VIEWS = (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
_VIEW_CODES = {
    "CC": ("399162004", "cranio-caudal"),
    "MLO": ("399368009", "medio-lateral oblique"),
}
#: PatientOrientation (row direction, column direction) per laterality and view.
_PATIENT_ORIENTATION = {
    ("R", "CC"): ["P", "L"],
    ("L", "CC"): ["A", "R"],
    ("R", "MLO"): ["P", "F"],
    ("L", "MLO"): ["A", "F"],
}
_DATASET = "mammo"

#: Display-domain levels (0 = air/black, 1 = densest/white) of fatty and
#: fibroglandular tissue at full thickness.
FAT_LEVEL = 0.30
GLAND_LEVEL = 0.68
_PECTORAL = 0.78
_IMPLANT = 0.95
#: Largest working-grid height used by :func:`render_breast`.
_WORK_ROWS = 800


@dataclass(frozen=True)
class SiteProfile:
    """Acquisition and export characteristics of one institution ("vendor profile").

    Attributes:
        name: Folder name, e.g. ``"site_a"``.
        institution: InstitutionName written to the headers.
        manufacturer: Manufacturer.
        model: ManufacturerModelName.
        rows: Default matrix rows.
        cols: Default matrix columns.
        full_rows: Full-field detector rows (``full_size=True``).
        full_cols: Full-field detector columns.
        full_pitch_mm: Detector pixel pitch at full size, mm. At the default
            matrix the same field of view is kept, so the pitch is scaled by
            ``full_rows / rows``.
        bits_stored: BitsStored (stored in 16 bits).
        photometric: ``"MONOCHROME1"`` (stored = max − display) or ``"MONOCHROME2"``.
        response: ``"linear"``, ``"log"`` or ``"gamma"``: display value d in [0, 1]
            maps to ``d``, ``log1p(k·d)/log1p(k)`` or ``d**k`` with
            ``k = response_param`` before scaling to the stored range.
        response_param: Parameter of the response.
        noise_std: Standard deviation of additive noise in display units.
        transfer_syntax_uid: Transfer syntax of the files.
        has_pixel_spacing: Whether *Pixel Spacing* is written next to *Imager
            Pixel Spacing*.
        voi_lut_function: ``"LINEAR"`` or ``"SIGMOID"``.
        kvp: Tube voltage range (kV) as ``(low, high)``.
    """

    name: str
    institution: str
    manufacturer: str
    model: str
    rows: int
    cols: int
    full_rows: int
    full_cols: int
    full_pitch_mm: float
    bits_stored: int
    photometric: str
    response: str
    response_param: float
    noise_std: float
    transfer_syntax_uid: str
    has_pixel_spacing: bool
    voi_lut_function: str
    kvp: tuple[int, int]

    def matrix(self, full_size: bool = False) -> tuple[int, int]:
        """Return ``(rows, columns)`` for the chosen size."""
        return (self.full_rows, self.full_cols) if full_size else (self.rows, self.cols)

    def pixel_spacing_mm(self, full_size: bool = False) -> float:
        """Return the pixel pitch in mm for the chosen size (same field of view)."""
        if full_size:
            return self.full_pitch_mm
        return round(self.full_pitch_mm * self.full_rows / self.rows, 4)

    @property
    def max_value(self) -> int:
        """Largest stored value, ``2**bits_stored - 1``."""
        return (1 << self.bits_stored) - 1

    @property
    def pixel_intensity_relationship(self) -> str:
        """PixelIntensityRelationship for the response: LIN, LOG or OTHER."""
        return {"linear": "LIN", "log": "LOG"}.get(self.response, "OTHER")

    def encode(self, display: np.ndarray) -> np.ndarray:
        """Map display values to stored pixel values.

        Args:
            display: Array of display values in [0, 1] (clipped), 0 = black.

        Returns:
            ``uint16`` stored values in ``[0, max_value]``; for MONOCHROME1 the
            result is inverted (``max_value - x``) so a viewer still shows air
            dark.

        Raises:
            ValueError: For an unknown response.
        """
        d = np.clip(display, 0.0, 1.0).astype(np.float64, copy=False)
        if self.response == "linear":
            v = d
        elif self.response == "log":
            v = np.log1p(self.response_param * d) / np.log1p(self.response_param)
        elif self.response == "gamma":
            v = d**self.response_param
        else:
            raise ValueError(f"unknown response {self.response!r}")
        stored = np.rint(v * self.max_value).astype(np.uint16)
        if self.photometric == "MONOCHROME1":
            stored = (self.max_value - stored).astype(np.uint16)
        return stored

    def decode(self, stored: np.ndarray) -> np.ndarray:
        """Invert :meth:`encode`: map stored values back to display values in [0, 1].

        Args:
            stored: Stored pixel values (any integer dtype).

        Returns:
            ``float64`` display values, 0 = black (air), quantized by the bit depth.
        """
        v = np.asarray(stored, dtype=np.float64)
        if self.photometric == "MONOCHROME1":
            v = self.max_value - v
        v = np.clip(v / self.max_value, 0.0, 1.0)
        if self.response == "log":
            return np.expm1(v * np.log1p(self.response_param)) / self.response_param
        if self.response == "gamma":
            return v ** (1.0 / self.response_param)
        return v


#: The three institutions. Full-field matrices follow the vendors' detectors.
SITES: tuple[SiteProfile, ...] = (
    SiteProfile(
        name="site_a",
        institution="Synthetic Breast Center A",
        manufacturer="HOLOGIC, Inc.",
        model="Selenia Dimensions",
        rows=320,
        cols=256,
        full_rows=4096,
        full_cols=3328,
        full_pitch_mm=0.07,
        bits_stored=12,
        photometric="MONOCHROME2",
        response="linear",
        response_param=1.0,
        noise_std=0.006,
        transfer_syntax_uid=JPEG2000Lossless,
        has_pixel_spacing=True,
        voi_lut_function="LINEAR",
        kvp=(26, 32),
    ),
    SiteProfile(
        name="site_b",
        institution="Synthetic University Hospital B",
        manufacturer="SIEMENS",
        model="Mammomat Inspiration",
        rows=352,
        cols=272,
        full_rows=3328,
        full_cols=2560,
        full_pitch_mm=0.085,
        bits_stored=16,
        photometric="MONOCHROME2",
        response="gamma",
        response_param=1.6,
        noise_std=0.012,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        has_pixel_spacing=True,
        voi_lut_function="LINEAR",
        kvp=(28, 34),
    ),
    SiteProfile(
        name="site_c",
        institution="Synthetic Screening Unit C",
        manufacturer="GE MEDICAL SYSTEMS",
        model="Senographe Essential",
        rows=288,
        cols=224,
        full_rows=3062,
        full_cols=2394,
        full_pitch_mm=0.1,
        bits_stored=14,
        photometric="MONOCHROME1",
        response="log",
        response_param=15.0,
        noise_std=0.02,
        transfer_syntax_uid=RLELossless,
        has_pixel_spacing=False,
        voi_lut_function="SIGMOID",
        kvp=(27, 31),
    ),
)
#: Site folder names, in order.
SITE_NAMES: tuple[str, ...] = tuple(s.name for s in SITES)


def render_breast(
    rng: np.random.Generator,
    shape: tuple[int, int],
    spacing_mm: float,
    *,
    laterality: str,
    view: str,
    density: str,
    implant: bool = False,
    noise_std: float = 0.01,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Render one mammogram in the display domain.

    The breast is modelled in millimetres in a canonical frame with the chest
    wall at column 0 (a left breast) and mirrored for a right breast, so anatomy
    keeps its physical size whatever the matrix. CC: a half-ellipse centered on
    the chest wall. MLO: a taller, drooping half-ellipse reaching the upper edge,
    plus the pectoral muscle as a triangle in the upper chest-wall corner.
    The outline is perturbed by smooth noise and tissue fades towards the skin
    (decreasing thickness). Fibroglandular tissue is smoothed noise plus a
    central bias, thresholded at the quantile giving a fraction drawn from
    :data:`DENSITY_FRACTION_RANGES`. An implant adds a bright ellipse behind the
    tissue.

    Args:
        rng: Source of randomness for this image.
        shape: ``(rows, columns)``.
        spacing_mm: Pixel pitch in mm.
        laterality: ``"L"`` or ``"R"``.
        view: ``"CC"`` or ``"MLO"``.
        density: ``"A"`` to ``"D"``.
        implant: Whether to draw a breast implant.
        noise_std: Additive Gaussian noise in display units.

    Returns:
        ``(display, breast_mask, fraction)``: a ``float32`` image in [0, 1]
        (0 = air), the boolean breast mask (pectoral muscle included) and the
        fibroglandular area fraction actually drawn.

    Raises:
        ValueError: For an unknown laterality, view or density.
    """
    if laterality not in ("L", "R") or view not in ("CC", "MLO"):
        raise ValueError(f"bad laterality/view {laterality!r}/{view!r}")
    if density not in DENSITY_FRACTION_RANGES:
        raise ValueError(f"unknown density {density!r}")
    out_rows, out_cols = shape
    height_mm, width_mm = out_rows * spacing_mm, out_cols * spacing_mm
    # Anatomy is rendered on a working grid of at most ~_WORK_ROWS rows and
    # linearly upsampled, so full-field images cost little more than small ones.
    factor = max(1, int(np.ceil(out_rows / _WORK_ROWS)))
    rows, cols = -(-out_rows // factor), -(-out_cols // factor)
    work = (rows, cols)
    pitch = spacing_mm * factor
    y = ((np.arange(rows, dtype=np.float32) + 0.5) * pitch)[:, None]
    s = ((np.arange(cols, dtype=np.float32) + 0.5) * pitch)[None, :]
    px = 1.0 / pitch  # working pixels per mm

    depth = min(rng.uniform(95.0, 150.0), 0.8 * width_mm)
    if view == "CC":
        yc = height_mm * rng.uniform(0.46, 0.54)
        half_h = min(rng.uniform(75.0, 100.0), 0.43 * height_mm)
        yy = y - yc
    else:
        yc = height_mm * rng.uniform(0.50, 0.56)
        half_h = 0.58 * height_mm
        depth = min(depth * 1.08, 0.85 * width_mm)
        yy = y - yc - rng.uniform(0.10, 0.25) * s  # the nipple droops
    outline = smooth_field(rng, work, 15.0 * px)
    rr = np.sqrt((s / depth) ** 2 + (yy / half_h) ** 2)
    if view == "MLO":
        # Pectoral muscle (upper chest-wall corner) and the axillary tail around it.
        p_top = rng.uniform(0.45, 0.65) * depth
        p_height = rng.uniform(0.45, 0.62) * height_mm
        axilla = (p_top + rng.uniform(10.0, 25.0)) * np.clip(1.0 - y / (1.3 * p_height), 0.0, 1.0)
        rr = np.minimum(rr, s / np.maximum(axilla, 1e-3))
    rr = rr * (1.0 + 0.025 * outline)
    edge = 1.0 * px / depth  # ~1 mm transition in rr units
    breast_soft = smoothstep((1.0 - rr) / (edge * 1.5 + 1e-6))
    breast = rr < 1.0

    pectoral = np.zeros(work, dtype=bool)
    if view == "MLO":
        limit = p_top * np.clip(1.0 - y / p_height, 0.0, None) ** 1.15
        pectoral = s < limit
        breast = breast | pectoral
    tissue = breast & ~pectoral

    # Fibroglandular texture: smooth noise + central bias, thresholded at a quantile.
    score = smooth_field(rng, work, 4.0 * px) + 0.5 * smooth_field(rng, work, 1.5 * px)
    score += 1.3 * np.clip(1.0 - rr, 0.0, 1.0)
    lo, hi = DENSITY_FRACTION_RANGES[density]
    target = float(rng.uniform(lo, hi))
    values = score[tissue]
    if values.size:
        thr = float(np.quantile(values, 1.0 - target))
        dense = (score > thr) & tissue
        fraction = float(dense.sum() / values.size)
    else:
        dense = np.zeros(work, dtype=bool)
        fraction = 0.0
    dense_soft = ndimage.gaussian_filter(dense.astype(np.float32), 0.8 * px)
    gland_var = 0.88 + 0.12 * np.tanh(smooth_field(rng, work, 6.0 * px))

    thickness = np.sqrt(np.clip(1.0 - rr * rr, 0.0, 1.0))
    fine = smooth_field(rng, work, max(0.6 * px, 0.8))
    falloff = 0.8 + 0.2 * np.sqrt(thickness)  # thinner tissue towards the skin line
    display = breast_soft * (falloff * (FAT_LEVEL + (GLAND_LEVEL - FAT_LEVEL) * dense_soft * gland_var) + 0.015 * fine)
    if view == "MLO":
        pect_soft = ndimage.gaussian_filter(pectoral.astype(np.float32), 0.8 * px)
        display = np.maximum(display, _PECTORAL * pect_soft + 0.01 * fine * pect_soft)
    if implant:
        ir = np.sqrt(((s - 0.33 * depth) / (0.3 * depth)) ** 2 + (yy / (0.5 * half_h)) ** 2)
        display = np.maximum(display, _IMPLANT * smoothstep((1.0 - ir) / 0.05))
    if factor > 1:
        zoom = (out_rows / rows, out_cols / cols)
        display = ndimage.zoom(display, zoom, order=1, mode="nearest", grid_mode=True)
        breast = ndimage.zoom(breast.astype(np.uint8), zoom, order=0, mode="nearest", grid_mode=True) > 0
        display, breast = display[:out_rows, :out_cols], breast[:out_rows, :out_cols]
    display = display + rng.normal(0.0, noise_std, size=shape).astype(np.float32)
    display = np.clip(display, 0.0, 1.0).astype(np.float32)
    if laterality == "R":
        display, breast = display[:, ::-1], breast[:, ::-1]
    return np.ascontiguousarray(display), np.ascontiguousarray(breast), fraction


@dataclass(frozen=True)
class _Woman:
    """Exam-level draws for one woman."""

    patient_id: str
    study_id: str
    age: int
    split: str
    density: dict[str, str]
    birads: dict[str, int]
    implant: dict[str, bool]
    thickness_mm: dict[str, float]
    study_date: str


def _draw_woman(seed: int, site_index: int, site: SiteProfile, exam: int) -> _Woman:
    """Draw per-exam attributes; density and implants are stratified over all sites."""
    rng = item_rng(seed, _DATASET, site.name, exam, "exam")
    # Global exam index: interleave the sites so every site's first exams are
    # spread over one stratification block (independent of ``count``).
    g = exam * len(SITES) + site_index
    primary = stratified_choice(seed, _DATASET, g, _DENSITY_PATTERN, salt="density")
    other = primary
    if rng.random() < 0.15:
        idx = _DENSITIES.index(primary) + (1 if rng.random() < 0.5 else -1)
        other = _DENSITIES[int(np.clip(idx, 0, 3))]
    first = "L" if rng.random() < 0.5 else "R"
    second = "R" if first == "L" else "L"
    density = {first: primary, second: other}
    birads = {lat: int(rng.choice(5, p=_BIRADS_P)) + 1 for lat in ("L", "R")}
    implant = {
        lat: stratified_choice(seed, _DATASET, 2 * g + k, _IMPLANT_PATTERN, salt="implant") == "YES"
        for k, lat in enumerate(("L", "R"))
    }
    thickness = {lat: float(rng.uniform(35.0, 70.0)) for lat in ("L", "R")}
    date = _dt.date(2019, 1, 2) + _dt.timedelta(days=int(rng.integers(0, 730)))
    return _Woman(
        patient_id=hex_id(seed, _DATASET, site.name, exam, "patient", length=16),
        study_id=hex_id(seed, _DATASET, site.name, exam, "study"),
        age=int(rng.integers(40, 76)),
        split=stratified_choice(seed, _DATASET, g, _SPLIT_PATTERN, salt="split"),
        density=density,
        birads=birads,
        implant=implant,
        thickness_mm=thickness,
        study_date=date.strftime("%Y%m%d"),
    )


def _window(stored: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """Return (center, width) covering the 0.5-99.5 percentiles of ``stored[mask]``."""
    values = stored[mask] if mask.any() else stored.ravel()
    lo, hi = np.percentile(values, [0.5, 99.5])
    return float((lo + hi) / 2.0), float(max(hi - lo, 1.0))


def generate_mammo(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    count: int = DEFAULT_COUNT,
    full_size: bool = False,
    sites: tuple[SiteProfile, ...] = SITES,
) -> DatasetSummary:
    """Write a multi-site, VinDr-Mammo-style mammography set under ``root``.

    Args:
        root: Dataset root (e.g. ``OUT/mammo``); one sub-folder per site.
        seed: Global seed; the same seed gives byte-identical files.
        count: Number of exams (4 images each) per site.
        full_size: Use the full-field detector matrices instead of the small
            default ones.
        sites: Site profiles to generate (default :data:`SITES`).

    Returns:
        Summary with ``n_items`` exams (all sites) and ``details`` holding the
        number of images per site.

    Raises:
        ValueError: If ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    root = Path(root)
    log = FileLog(root)
    per_site: dict[str, int] = {}
    for site_index, site in enumerate(sites):
        site_root = root / site.name
        (site_root / "images").mkdir(parents=True, exist_ok=True)
        rows_csv: list[tuple[object, ...]] = []
        shape = site.matrix(full_size)
        spacing = site.pixel_spacing_mm(full_size)
        spacing_ds = format_ds(spacing)
        for exam in range(count):
            woman = _draw_woman(seed, site_index, site, exam)
            study_uid = make_uid(seed, _DATASET, site.name, exam, "study")
            for series_number, (lat, view) in enumerate(_VIEWS, start=1):
                key = (site.name, exam, lat, view)
                rng = item_rng(seed, _DATASET, *key)
                display, breast, _ = render_breast(
                    rng,
                    shape,
                    spacing,
                    laterality=lat,
                    view=view,
                    density=woman.density[lat],
                    implant=woman.implant[lat],
                    noise_std=site.noise_std,
                )
                stored = site.encode(display)
                center, width = _window(stored, breast)
                series_id = hex_id(seed, _DATASET, *key, "series")
                image_id = hex_id(seed, _DATASET, *key, "image")

                ds = new_dataset(
                    sop_class_uid=DigitalMammographyXRayImageStorageForPresentation,
                    sop_instance_uid=make_uid(seed, _DATASET, *key, "sop"),
                    study_instance_uid=study_uid,
                    series_instance_uid=make_uid(seed, _DATASET, *key, "series"),
                    modality="MG",
                    patient_id=woman.patient_id,
                    study_date=woman.study_date,
                    study_time="093000",
                )
                ds.PatientSex = "F"
                ds.PatientAge = f"{woman.age:03d}Y"
                ds.Manufacturer = site.manufacturer
                ds.ManufacturerModelName = site.model
                ds.InstitutionName = site.institution
                ds.SeriesDescription = f"{lat} {view}"
                ds.SeriesNumber = series_number
                ds.InstanceNumber = 1
                ds.ImageType = ["ORIGINAL", "PRIMARY", ""]
                ds.PresentationIntentType = "FOR PRESENTATION"
                ds.BodyPartExamined = "BREAST"
                ds.ImageLaterality = lat
                ds.ViewPosition = view
                code, meaning = _VIEW_CODES[view]
                view_item = code_item(code, "SCT", meaning)
                view_item.ViewModifierCodeSequence = sequence()
                ds.ViewCodeSequence = sequence(view_item)
                ds.PatientOrientation = _PATIENT_ORIENTATION[(lat, view)]
                ds.BreastImplantPresent = "YES" if woman.implant[lat] else "NO"
                ds.ImagerPixelSpacing = [spacing_ds, spacing_ds]
                if site.has_pixel_spacing:
                    ds.PixelSpacing = [spacing_ds, spacing_ds]
                ds.EstimatedRadiographicMagnificationFactor = "1.0"
                ds.BodyPartThickness = format_ds(woman.thickness_mm[lat], 1)
                ds.CompressionForce = format_ds(float(rng.uniform(60.0, 150.0)), 1)
                ds.KVP = str(int(rng.integers(site.kvp[0], site.kvp[1] + 1)))
                ds.Exposure = int(rng.integers(40, 200))
                ds.PositionerPrimaryAngle = "0" if view == "CC" else format_ds(45.0 if lat == "R" else -45.0)
                ds.DetectorType = "DIRECT"
                ds.PixelIntensityRelationship = site.pixel_intensity_relationship
                ds.PixelIntensityRelationshipSign = 1 if site.photometric == "MONOCHROME1" else -1
                ds.RescaleIntercept = "0"
                ds.RescaleSlope = "1"
                ds.RescaleType = "US"
                ds.WindowCenter = format_ds(center, 1)
                ds.WindowWidth = format_ds(width, 1)
                ds.VOILUTFunction = site.voi_lut_function
                ds.BurnedInAnnotation = "NO"
                ds.LossyImageCompression = "00"
                set_pixels(ds, stored, photometric=site.photometric, bits_stored=site.bits_stored)
                compress_lossless(ds, site.transfer_syntax_uid)
                path = site_root / "images" / woman.study_id / f"{image_id}.dicom"
                write_dataset(ds, path, log)
                rows_csv.append(
                    (
                        woman.study_id,
                        series_id,
                        image_id,
                        lat,
                        view,
                        shape[0],
                        shape[1],
                        f"BI-RADS {woman.birads[lat]}",
                        f"DENSITY {woman.density[lat]}",
                        woman.split,
                    )
                )
        write_csv(site_root / "breast-level_annotations.csv", ANNOTATION_HEADER, rows_csv, log)
        per_site[site.name] = len(rows_csv)

    return DatasetSummary.from_log(
        _DATASET,
        log,
        n_items=count * len(sites),
        item_kind="exams",
        details={"images_per_site": per_site, "sites": [s.name for s in sites]},
    )


# --- digitised-film, tagless stand-ins (CBIS-DDSM style) ---------------------------------------

_FILM = "mammo_film"
_SIDE_WORDS = {"L": "LEFT", "R": "RIGHT"}


def film_patient_id(case: int, laterality: str, view: str, *, prefix: str = "Calc-Test") -> str:
    """The CBIS-DDSM-style PatientID of one image, e.g. ``Calc-Test_P_00038_LEFT_CC``."""
    return f"{prefix}_P_{case:05d}_{_SIDE_WORDS[laterality]}_{view}"


def _burn_in_marker(display: np.ndarray, laterality: str, mirrored: bool) -> None:
    """A bright label block (as a technologist's lead marker or a scanned film label) in the air
    beside the breast, in the upper corner away from the chest wall."""
    rows, cols = display.shape
    h, w = max(3, rows // 12), max(4, cols // 6)
    chest_wall_left = (laterality == "L") != mirrored
    top = max(1, rows // 20)
    left = cols - w - max(1, cols // 20) if chest_wall_left else max(1, cols // 20)
    display[top : top + h, left : left + w] = 0.97


def write_film_mammogram(
    path: str | os.PathLike[str],
    *,
    seed: int,
    laterality: str,
    view: str,
    density: str = "B",
    case: int = 0,
    study_uid: str | None = None,
    mirrored: bool = False,
    monochrome1: bool = False,
    marker: bool = True,
    modality: str = "MG",
    shape: tuple[int, int] = (160, 128),
    log: FileLog | None = None,
) -> Path:
    """Write one digitised-film mammogram as CBIS-DDSM exports it: a Secondary Capture image
    (SOP Class 1.2.840.10008.5.1.4.1.1.7) with neither ImageLaterality, Laterality, ViewPosition,
    ViewCodeSequence nor PatientOrientation; the side and view are only in the PatientID
    (:func:`film_patient_id`) and the pixels.

    Args:
        path: Output file.
        seed: Global seed; the image is seeded from ``(seed, case, laterality, view)``.
        laterality: ``"L"`` or ``"R"``: the breast drawn (chest wall on the image's left edge
            for ``L``, right edge for ``R``, the DICOM display convention).
        view: ``"CC"`` or ``"MLO"``.
        density: ``"A"`` to ``"D"``.
        case: Case number in the PatientID.
        study_uid: StudyInstanceUID (default: one per case).
        mirrored: Store the image mirrored left-right (a film scanned the wrong way round):
            the pixels then show the other side.
        monochrome1: Store MONOCHROME1 (dense tissue dark in the stored values).
        marker: Burn a bright label block into the air beside the breast.
        modality: Modality (CBIS-DDSM writes ``MG``; ``OT`` for a generic capture).
        shape: ``(rows, columns)``.
        log: Record of written files.

    Returns:
        The path written.
    """
    rng = item_rng(seed, _FILM, case, laterality, view)
    display, _, _ = render_breast(
        rng, shape, 0.1 * 3062 / shape[0], laterality=laterality, view=view, density=density, noise_std=0.01
    )
    if mirrored:
        display = np.ascontiguousarray(display[:, ::-1])
    if marker:
        _burn_in_marker(display, laterality, mirrored)
    stored = np.rint(np.clip(display, 0.0, 1.0) * 4095).astype(np.uint16)
    if monochrome1:
        stored = (4095 - stored).astype(np.uint16)
    key = (case, laterality, view, mirrored)
    ds = new_dataset(
        sop_class_uid=SecondaryCaptureImageStorage,
        sop_instance_uid=make_uid(seed, _FILM, *key, "sop"),
        study_instance_uid=study_uid or make_uid(seed, _FILM, case, "study"),
        series_instance_uid=make_uid(seed, _FILM, *key, "series"),
        modality=modality,
        patient_id=film_patient_id(case, laterality, view),
    )
    ds.SeriesDescription = "full mammogram images"
    ds.BodyPartExamined = "BREAST"
    ds.ConversionType = "DF"  # digitised film
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    set_pixels(ds, stored, photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2", bits_stored=12)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_dataset(ds, path, log)
    return path


def generate_film_mammo(
    root: str | os.PathLike[str], *, seed: int = 0, count: int = 2, shape: tuple[int, int] = (160, 128)
) -> DatasetSummary:
    """Write ``count`` tagless four-view exams (see :func:`write_film_mammogram`) under ``root``,
    one folder per image named like its PatientID (``Calc-Test_P_00000_LEFT_CC/1-1.dcm``).

    Unlike CBIS-DDSM (one study per image) the four images of a case share a StudyInstanceUID, so
    that an exam's per-breast aggregation can be checked; odd cases are stored MONOCHROME1.

    Raises:
        ValueError: If ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    root = Path(root)
    log = FileLog(root)
    for case in range(count):
        for lat, view in _VIEWS:
            write_film_mammogram(
                root / film_patient_id(case, lat, view) / "1-1.dcm",
                seed=seed,
                laterality=lat,
                view=view,
                density=_DENSITIES[(case + (lat == "R")) % 4],
                case=case,
                monochrome1=case % 2 == 1,
                shape=shape,
                log=log,
            )
    return DatasetSummary.from_log(_FILM, log, n_items=count, item_kind="exams", details={"images": 4 * count})
