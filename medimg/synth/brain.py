"""Synthetic glioma MRI cases laid out like BraTS 2021, as NIfTI and as DICOM.

Layout written under the dataset root (``OUT/brain``)::

    nifti/BraTS2021_XXXXX/BraTS2021_XXXXX_{t1,t1ce,t2,flair,seg}.nii.gz
    dicom/BraTS2021_XXXXX/<SeriesNumber>_<seq>/IM<InstanceNumber>.dcm
    dicom/BraTS2021_XXXXX/README.txt          (a non-DICOM file, for quarantine tests)

**NIfTI.** Images are ``float32`` (values on each series' DICOM rescale grid, so
both encodings hold identical numbers), ``seg`` is ``uint8`` with the BraTS
2018-2021 labels 0 background, 1 NCR (necrosis), 2 ED (oedema), 4 ET (enhancing
tumour). Necrosis lies inside an enhancing rim, which lies inside oedema
(every 6-neighbour of an NCR voxel is NCR or ET; every 6-neighbour of a tumour
core voxel is tumour). Volumes are skull-stripped: exactly 0 outside the brain.
The affine is BraTS-like RAS: ``diag(-sx, -sy, sz)`` with origin
``(0, sy·(ny-1), 0)`` mm (for the full size this is BraTS's own
``[[-1,0,0,0],[0,-1,0,239],[0,0,1,0]]``).

**Geometry.** Default ``96 × 96 × 64`` voxels at 2 mm isotropic (a 192 × 192 ×
128 mm field of view holding a brain of about 136 × 166 × 112 mm);
``full_size`` is BraTS's ``240 × 240 × 155`` at 1 mm.

**DICOM.** One MR study per case (PatientID = case id) with four axial series
sharing a FrameOfReferenceUID; ImageOrientationPatient ``[1,0,0,0,1,0]``,
ImagePositionPatient stepping by the slice spacing. With DICOM LPS and NIfTI
RAS (``x_ras = -x_lps``, ``y_ras = -y_lps``), DICOM slice ``k`` pixel
``(row r, column c)`` equals ``nifti[c, r, k]`` and lies at the same world
point. Series descriptions and sequence parameters follow one of six scanner
"styles" (BraTS-like names, two GE styles, Siemens, Philips, Canon) per case: each
series name is drawn (seeded) from the style's real-world vocabulary and the series
carries the acquisition parameters of that kind of protocol (see
:mod:`medimg.synth.brain_protocols`), so a FLAIR named "t2_tirm_tra_dark-fluid" is an
inversion recovery with TI ~2500 ms and some Canon-style series have no name at all. In every
case one series has InstanceNumber scrambled against position (files are named
by InstanceNumber) and one series is RLE Lossless; one series carries a
non-trivial RescaleSlope/RescaleIntercept.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, RLELossless
from scipy import ndimage

from medimg.synth.brain_protocols import STYLES, choose_names, series_attributes
from medimg.synth.common import (
    DatasetSummary,
    FileLog,
    atomic_write_bytes,
    item_rng,
    smooth_field,
    write_text,
)
from medimg.synth.dicomio import (
    SeriesWriter,
    compress_lossless,
    format_ds,
    make_uid,
    multi_value,
    new_dataset,
    set_instance_uid,
    set_pixels,
)

__all__ = [
    "DEFAULT_COUNT",
    "DEFAULT_SHAPE",
    "DEFAULT_SPACING_MM",
    "FULL_SHAPE",
    "FULL_SPACING_MM",
    "LABEL_ED",
    "LABEL_ET",
    "LABEL_NCR",
    "SEQUENCES",
    "BrainPhantom",
    "brats_affine",
    "case_id",
    "generate_brain",
    "make_phantom",
    "render_sequence",
]

#: Default number of cases.
DEFAULT_COUNT = 3
DEFAULT_SHAPE = (96, 96, 64)
DEFAULT_SPACING_MM = (2.0, 2.0, 2.0)
FULL_SHAPE = (240, 240, 155)
FULL_SPACING_MM = (1.0, 1.0, 1.0)
#: Sequence names in nnU-Net channel order (t1, t1ce, t2, flair).
SEQUENCES = ("t1", "t1ce", "t2", "flair")
LABEL_NCR = 1
LABEL_ED = 2
LABEL_ET = 4

_DATASET = "brain"
# Tissue codes of the phantom.
_BG, _CSF, _GM, _WM, _ED, _ET, _NCR = range(7)
#: Mean intensity per tissue code (bg, CSF, GM, WM, ED, ET, NCR) and sequence.
_INTENSITY = {
    "t1": (0.0, 300.0, 620.0, 820.0, 560.0, 600.0, 330.0),
    "t1ce": (0.0, 320.0, 640.0, 840.0, 600.0, 1450.0, 340.0),
    "t2": (0.0, 1700.0, 820.0, 560.0, 1350.0, 1050.0, 1550.0),
    "flair": (0.0, 180.0, 760.0, 560.0, 1250.0, 950.0, 700.0),
}
#: Acquisition order, hence SeriesNumber order (post-contrast last).
_ACQ_ORDER = ("t1", "t2", "flair", "t1ce")
#: Non-trivial (RescaleSlope, RescaleIntercept) choices for one series per case.
_RESCALES = ((0.5, -100.0), (0.25, 0.0), (1.5, -30.0))
_NIFTI_GZIP_LEVEL = 4
#: Elements that differ between the slices of one series.
_SLICE_ELEMENTS = (
    "SOPInstanceUID",
    "InstanceNumber",
    "ImagePositionPatient",
    "SliceLocation",
    "PixelData",
)


def case_id(index: int) -> str:
    """Return the BraTS 2021 case id for ``index``, e.g. ``"BraTS2021_00007"``."""
    return f"BraTS2021_{int(index):05d}"


def brats_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """Return the BraTS-like RAS voxel-to-world affine.

    Args:
        shape: ``(nx, ny, nz)`` voxels.
        spacing: ``(sx, sy, sz)`` in mm.

    Returns:
        ``(4, 4)`` float64 matrix ``diag(-sx, -sy, sz, 1)`` with translation
        ``(0, sy·(ny-1), 0)``: voxel ``(i, j, k)`` maps to RAS
        ``(-sx·i, sy·(ny-1-j), sz·k)`` mm.
    """
    sx, sy, sz = (float(s) for s in spacing)
    affine = np.diag([-sx, -sy, sz, 1.0])
    affine[:3, 3] = (0.0, sy * (shape[1] - 1), 0.0)
    return affine


@dataclass(frozen=True)
class BrainPhantom:
    """Tissue model of one case.

    Attributes:
        tissue: ``(nx, ny, nz)`` ``uint8`` tissue codes (0 background, 1 CSF,
            2 grey matter, 3 white matter, 4 oedema, 5 enhancing tumour,
            6 necrosis).
        seg: ``(nx, ny, nz)`` ``uint8`` BraTS labels (0, 1, 2, 4).
        brain: ``(nx, ny, nz)`` bool brain mask (skull-stripped support).
        spacing: Voxel size in mm.
    """

    tissue: np.ndarray
    seg: np.ndarray
    brain: np.ndarray
    spacing: tuple[float, float, float]


def _ellipsoid(
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    center: tuple[float, float, float],
    axes: tuple[float, float, float],
) -> np.ndarray:
    """Return the normalized ellipsoidal radius (``< 1`` inside) on a broadcast grid."""
    x, y, z = coords
    return np.sqrt(
        ((x - center[0]) / axes[0]) ** 2 + ((y - center[1]) / axes[1]) ** 2 + ((z - center[2]) / axes[2]) ** 2
    )


def make_phantom(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
) -> BrainPhantom:
    """Build a brain with a glioma, in millimetres, on the given voxel grid.

    Coordinates are millimetres from the volume center along the voxel axes
    (``+i`` patient left, ``+j`` posterior, ``+k`` superior). The brain is a
    smoothly perturbed ellipsoid scaled to fit the field of view; the cortex is
    a ribbon of varying depth (gyri) cut by sulcal CSF sheets; there are deep
    grey nuclei, lateral and third ventricles and the interhemispheric fissure.
    The tumour sits in one hemisphere: oedema, tumour core and necrosis are
    sub-level sets of noise-perturbed distances, and erosions enforce the
    nesting NCR ⊂ erode(TC), TC ⊂ erode(WT).

    Args:
        rng: Source of randomness for this case.
        shape: ``(nx, ny, nz)``.
        spacing: ``(sx, sy, sz)`` in mm.

    Returns:
        The phantom.
    """
    nx, ny, nz = shape
    sx, sy, sz = spacing
    x = ((np.arange(nx, dtype=np.float32) - (nx - 1) / 2) * sx)[:, None, None]
    y = ((np.arange(ny, dtype=np.float32) - (ny - 1) / 2) * sy)[None, :, None]
    z = ((np.arange(nz, dtype=np.float32) - (nz - 1) / 2) * sz)[None, None, :]
    coords = (x, y, z)
    half_fov = (nx * sx / 2, ny * sy / 2, nz * sz / 2)
    vox = np.array(spacing, dtype=float)

    axes = (
        min(rng.uniform(64.0, 70.0), 0.85 * half_fov[0]),
        min(rng.uniform(80.0, 86.0), 0.85 * half_fov[1]),
        min(rng.uniform(54.0, 58.0), 0.85 * half_fov[2]),
    )
    center = (0.0, rng.uniform(-3.0, 3.0), rng.uniform(-2.0, 2.0))
    rr = _ellipsoid(coords, center, axes)
    rr = rr * (1.0 + 0.03 * smooth_field(rng, shape, 12.0 / vox))
    brain = rr < 1.0
    depth = (1.0 - rr) * float(np.mean(axes))  # approximate mm below the surface

    # Cortex: a ribbon of locally varying depth (gyri), cut by sulcal CSF
    # sheets along the zero crossings of a second field.
    cortex = np.clip(5.5 + 4.0 * smooth_field(rng, shape, 4.0 / vox), 2.5, 14.0)
    sulcal = smooth_field(rng, shape, 3.0 / vox)
    tissue = np.full(shape, _WM, dtype=np.uint8)
    tissue[depth < cortex] = _GM
    sulci = (np.abs(sulcal) < 0.22) & (depth < cortex - 1.5)
    tissue[(depth < 1.2) | sulci] = _CSF
    for side in (-1.0, 1.0):
        deep = _ellipsoid(coords, (side * 15.0, center[1] + 4.0, center[2] + 2.0), (9.0, 14.0, 9.0))
        tissue[deep < 1.0] = _GM
        vent = _ellipsoid(coords, (side * 8.0, center[1] - 4.0, center[2] + 13.0), (6.5, 26.0, 9.0))
        tissue[vent < 1.0] = _CSF
    third = _ellipsoid(coords, (0.0, center[1] + 3.0, center[2] + 2.0), (1.5, 10.0, 8.0))
    tissue[third < 1.0] = _CSF
    fissure = (np.abs(x) < max(0.6 * sx, 0.8)) & (z > center[2] + 5.0) & (depth < 30.0)
    tissue[fissure] = _CSF

    # Tumour in one hemisphere, well inside the brain.
    side = -1.0 if rng.random() < 0.5 else 1.0
    t_center = (
        side * rng.uniform(22.0, min(38.0, axes[0] - 26.0)),
        center[1] + rng.uniform(-35.0, 25.0),
        center[2] + rng.uniform(-2.0, min(22.0, axes[2] - 26.0)),
    )
    stretch = rng.uniform(0.8, 1.25, size=3)
    dist = _ellipsoid(coords, t_center, (float(stretch[0]), float(stretch[1]), float(stretch[2])))  # mm (scaled)
    ci = tuple(
        int(np.clip(round(c / s + (n - 1) / 2), 0, n - 1)) for c, s, n in zip(t_center, spacing, shape, strict=True)
    )
    f_w = smooth_field(rng, shape, 5.0 / vox)
    f_c = smooth_field(rng, shape, 4.0 / vox)
    f_w -= f_w[ci]
    f_c -= f_c[ci]
    r_core = rng.uniform(10.0, 16.0)
    r_nec = r_core * rng.uniform(0.45, 0.62)
    r_whole = r_core + rng.uniform(8.0, 18.0)
    ball = ndimage.generate_binary_structure(3, 1)
    whole = (dist + 4.0 * f_w < r_whole) & (rr < 0.96)
    core = (dist + 2.5 * f_c < r_core) & ndimage.binary_erosion(whole, ball)
    necrosis = (dist + 2.5 * f_c < r_nec) & ndimage.binary_erosion(core, ball)

    seg = np.zeros(shape, dtype=np.uint8)
    seg[whole] = LABEL_ED
    seg[core] = LABEL_ET
    seg[necrosis] = LABEL_NCR
    tissue[whole] = _ED
    tissue[core] = _ET
    tissue[necrosis] = _NCR
    tissue[~brain] = _BG
    seg[~brain] = 0
    return BrainPhantom(tissue=tissue, seg=seg, brain=brain, spacing=spacing)


def render_sequence(
    rng: np.random.Generator,
    phantom: BrainPhantom,
    sequence: str,
    *,
    slope: float = 1.0,
    intercept: float = 0.0,
) -> np.ndarray:
    """Render one MR contrast of a phantom and quantize it to a rescale grid.

    Per-tissue means from ``_INTENSITY`` (T1: tumour hypointense; T1ce: bright
    enhancing rim; T2: oedema and CSF bright; FLAIR: oedema bright, CSF dark)
    with a global gain, fine texture, a smooth bias field, slight partial-volume
    blur and Rician noise. Values are then snapped to ``slope·n + intercept``
    (``n`` an int16 stored value), are exactly 0 outside the brain and
    strictly positive inside it.

    Args:
        rng: Source of randomness for this case and sequence.
        phantom: Output of :func:`make_phantom`.
        sequence: One of :data:`SEQUENCES`.
        slope: DICOM RescaleSlope of the series.
        intercept: DICOM RescaleIntercept of the series; ``-intercept/slope``
            must be an integer so that 0 is on the grid.

    Returns:
        ``(nx, ny, nz)`` ``float32`` image.

    Raises:
        KeyError: For an unknown sequence.
    """
    vox = np.array(phantom.spacing, dtype=float)
    shape = phantom.tissue.shape
    lut = np.asarray(_INTENSITY[sequence], dtype=np.float32) * rng.uniform(0.85, 1.2)
    img = lut[phantom.tissue]
    img *= 1.0 + 0.03 * smooth_field(rng, shape, 1.5 / vox)
    img = ndimage.gaussian_filter(img, 0.5)
    img *= np.exp(0.08 * smooth_field(rng, shape, 40.0 / vox))
    sigma = 0.025 * float(lut[_WM])
    n1 = rng.normal(0.0, sigma, size=shape).astype(np.float32)
    n2 = rng.normal(0.0, sigma, size=shape).astype(np.float32)
    img = np.sqrt((img + n1) ** 2 + n2**2)

    zero = -intercept / slope
    stored = np.rint((img.astype(np.float64) - intercept) / slope)
    stored = np.clip(stored, zero + 1, 32767)
    stored[~phantom.brain] = zero
    return (stored * slope + intercept).astype(np.float32)


def _nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Serialize a NIfTI-1 image and gzip it deterministically (``mtime=0``)."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return gzip.compress(img.to_bytes(), compresslevel=_NIFTI_GZIP_LEVEL, mtime=0)


@dataclass(frozen=True)
class _SeriesPlan:
    """Per-series choices for one case."""

    sequence: str
    number: int
    description: str
    kind: str
    slope: float
    intercept: float
    scrambled: bool
    transfer_syntax_uid: str


def _plan_series(rng: np.random.Generator, style: int, names_rng: np.random.Generator) -> list[_SeriesPlan]:
    """Choose series numbers, descriptions (from ``names_rng``), rescale, scrambling and compression."""
    start, step = [(2, 1), (3, 1), (5, 2), (100, 100)][int(rng.integers(0, 4))]
    rescaled = SEQUENCES[int(rng.integers(0, 4))]
    slope, intercept = _RESCALES[int(rng.integers(0, len(_RESCALES)))]
    scrambled = SEQUENCES[int(rng.integers(0, 4))]
    rle = SEQUENCES[int(rng.integers(0, 4))]
    names = choose_names(names_rng, STYLES[style])
    plans = []
    for n, seq in enumerate(_ACQ_ORDER):
        plans.append(
            _SeriesPlan(
                sequence=seq,
                number=start + step * n,
                description=names[seq][0],
                kind=names[seq][1],
                slope=slope if seq == rescaled else 1.0,
                intercept=intercept if seq == rescaled else 0.0,
                scrambled=seq == scrambled,
                transfer_syntax_uid=RLELossless if seq == rle else ExplicitVRLittleEndian,
            )
        )
    return plans


def _write_case_dicom(
    seed: int,
    index: int,
    case_dir: Path,
    volumes: dict[str, np.ndarray],
    plans: list[_SeriesPlan],
    affine: np.ndarray,
    spacing: tuple[float, float, float],
    style: int,
    log: FileLog,
) -> None:
    """Write the four DICOM series of one case plus its README.txt."""
    cid = case_id(index)
    rng = item_rng(seed, _DATASET, index, "dicom")
    manufacturer, model, field_strength = STYLES[style].manufacturer, STYLES[style].model, STYLES[style].field_strength
    study_uid = make_uid(seed, _DATASET, index, "study")
    frame_uid = make_uid(seed, _DATASET, index, "frame-of-reference")
    date = (_dt.date(2021, 7, 1) + _dt.timedelta(days=index)).strftime("%Y%m%d")
    sx, sy, sz = spacing
    origin_lps = (-affine[0, 3], -affine[1, 3], affine[2, 3])
    nz = next(iter(volumes.values())).shape[2]
    readme = [
        f"{cid}: synthetic BraTS-style case generated by medimg.synth (seed {seed}).",
        "Not patient data. One MR study, four axial series:",
    ]
    for plan in plans:
        series_uid = make_uid(seed, _DATASET, index, plan.sequence, "series")
        series_dir = case_dir / f"{plan.number}_{plan.sequence}"
        readme.append(f"  {series_dir.name}: {plan.description or '(no SeriesDescription)'}")
        volume = volumes[plan.sequence]
        stored_volume = np.rint((volume.astype(np.float64) - plan.intercept) / plan.slope)
        stored_volume = stored_volume.astype(np.int16)
        brain = volume != 0
        lo, hi = np.percentile(volume[brain], [1.0, 99.5]) if brain.any() else (0.0, 1.0)
        instance = rng.permutation(nz) + 1 if plan.scrambled else np.arange(1, nz + 1, dtype=np.int64)
        seq_attrs = series_attributes(rng, STYLES[style], plan.sequence, (plan.description, plan.kind))

        ds = new_dataset(
            sop_class_uid=MRImageStorage,
            sop_instance_uid=make_uid(seed, _DATASET, index, plan.sequence, 0),
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            modality="MR",
            patient_id=cid,
            study_date=date,
            study_time="101500",
        )
        ds.PatientSex = "M" if index % 2 else "F"
        ds.PatientAge = f"{40 + (index * 7) % 40:03d}Y"
        ds.StudyDescription = "MR BRAIN W WO CONTRAST"
        ds.SeriesDescription = plan.description
        ds.SeriesNumber = plan.number
        ds.AcquisitionNumber = 1
        ds.Manufacturer = manufacturer
        ds.ManufacturerModelName = model
        ds.MagneticFieldStrength = field_strength
        ds.ImagedNucleus = "1H"
        ds.MRAcquisitionType = "2D"
        ds.BodyPartExamined = "BRAIN"
        ds.PatientPosition = "HFS"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        for keyword, value in seq_attrs.items():
            setattr(ds, keyword, value)
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.PixelSpacing = multi_value((sy, sx))
        ds.SliceThickness = format_ds(sz)
        ds.SpacingBetweenSlices = format_ds(sz)
        ds.RescaleIntercept = format_ds(plan.intercept)
        ds.RescaleSlope = format_ds(plan.slope)
        ds.WindowCenter = format_ds((lo + hi) / 2.0, 1)
        ds.WindowWidth = format_ds(max(hi - lo, 1.0), 1)
        writer: SeriesWriter | None = None
        for k in range(nz):
            number = int(instance[k])
            set_instance_uid(ds, make_uid(seed, _DATASET, index, plan.sequence, "sop", k))
            ds.InstanceNumber = number
            z = origin_lps[2] + k * sz
            ds.ImagePositionPatient = multi_value((origin_lps[0], origin_lps[1], z))
            ds.SliceLocation = format_ds(z)
            # DICOM rows run along NIfTI j (posterior), columns along i (left).
            set_pixels(ds, np.ascontiguousarray(stored_volume[:, :, k].T), bits_stored=16)
            compress_lossless(ds, plan.transfer_syntax_uid)
            if writer is None:
                writer = SeriesWriter(ds, _SLICE_ELEMENTS)
            writer.write(ds, series_dir / f"IM{number}.dcm", log)
    write_text(case_dir / "README.txt", "\n".join(readme) + "\n", log)


def generate_brain(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    count: int = DEFAULT_COUNT,
    full_size: bool = False,
) -> DatasetSummary:
    """Write BraTS-2021-style cases under ``root`` as NIfTI and as DICOM.

    Args:
        root: Dataset root (e.g. ``OUT/brain``); ``nifti/`` and ``dicom/`` are
            created inside.
        seed: Global seed; the same seed gives byte-identical files.
        count: Number of cases.
        full_size: ``240 × 240 × 155`` at 1 mm instead of ``96 × 96 × 64`` at 2 mm.

    Returns:
        Summary with ``n_items`` cases and ``details`` holding the volume shape
        and spacing.

    Raises:
        ValueError: If ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    root = Path(root)
    log = FileLog(root)
    shape = FULL_SHAPE if full_size else DEFAULT_SHAPE
    spacing = FULL_SPACING_MM if full_size else DEFAULT_SPACING_MM
    affine = brats_affine(shape, spacing)
    (root / "nifti").mkdir(parents=True, exist_ok=True)
    (root / "dicom").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        cid = case_id(index)
        phantom = make_phantom(item_rng(seed, _DATASET, index, "phantom"), shape, spacing)
        style = (index + 1) % len(STYLES)  # case 0 gets scanner-style names, BraTS-like ones follow
        plans = _plan_series(item_rng(seed, _DATASET, index, "series"), style, item_rng(seed, _DATASET, index, "names"))
        by_seq = {p.sequence: p for p in plans}
        volumes: dict[str, np.ndarray] = {}
        nifti_dir = root / "nifti" / cid
        for seq in SEQUENCES:
            plan = by_seq[seq]
            volumes[seq] = render_sequence(
                item_rng(seed, _DATASET, index, seq),
                phantom,
                seq,
                slope=plan.slope,
                intercept=plan.intercept,
            )
            atomic_write_bytes(nifti_dir / f"{cid}_{seq}.nii.gz", _nifti_bytes(volumes[seq], affine), log)
        atomic_write_bytes(nifti_dir / f"{cid}_seg.nii.gz", _nifti_bytes(phantom.seg, affine), log)
        _write_case_dicom(seed, index, root / "dicom" / cid, volumes, plans, affine, spacing, style, log)
    return DatasetSummary.from_log(
        _DATASET,
        log,
        n_items=count,
        item_kind="cases",
        details={"shape": list(shape), "spacing_mm": list(spacing)},
    )
