"""Scan a folder of DICOM files (headers only, in parallel) into a Study/Series index.

Every regular file under the folder ends up exactly once in the result: in a series, or in the
quarantine with a reason. The scan never raises on bad files.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from medimg.dicom.codecs import decode_support
from medimg.dicom.geometry import GeometryError, orientation_label
from medimg.dicom.header import read_instance_header
from medimg.dicom.index import InstanceHeader, QuarantineEntry, ScanResult, Series, Study
from medimg.dicom.series4d import frame_order_key, split_volumes
from medimg.parallel import ProgressCallback, gc_paused, parallel_map

__all__ = [
    "check_series_decoding",
    "check_series_geometry",
    "group_instances",
    "list_files",
    "scan_folder",
    "validate_series",
]

#: Below this many files the scan runs in-process: starting workers would cost more.
PARALLEL_THRESHOLD = 400


def list_files(root: str | os.PathLike[str]) -> tuple[list[str], list[QuarantineEntry]]:
    """Walk ``root`` recursively, following directory links but never into a loop.

    Args:
        root: the folder to walk.

    Returns:
        ``(files, quarantine)``: sorted file paths to read, and entries for what cannot be
        walked (directory link loops, broken links, unreadable folders, non-regular files).

    Raises:
        NotADirectoryError: ``root`` is not a folder.
    """
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root}: not a folder")
    files: list[str] = []
    quarantine: list[QuarantineEntry] = []
    root_stat = os.stat(root)
    visited = {(root_stat.st_dev, root_stat.st_ino)}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            quarantine.append(QuarantineEntry(folder, f"unreadable folder: {exc.strerror or exc}"))
            continue
        subfolders = []
        for entry in entries:
            try:
                is_link = entry.is_symlink()
                is_dir = entry.is_dir(follow_symlinks=True)
                is_file = entry.is_file(follow_symlinks=True)
            except OSError as exc:
                quarantine.append(QuarantineEntry(entry.path, f"unreadable: {exc.strerror or exc}"))
                continue
            if is_dir:
                try:
                    st = entry.stat(follow_symlinks=True)
                except OSError as exc:
                    quarantine.append(QuarantineEntry(entry.path, f"unreadable folder: {exc.strerror or exc}"))
                    continue
                key = (st.st_dev, st.st_ino)
                if key in visited:
                    reason = (
                        "directory symlink loop: links to a folder already scanned (not followed)"
                        if is_link
                        else "folder already scanned through another path (not followed)"
                    )
                    quarantine.append(QuarantineEntry(entry.path, reason))
                    continue
                visited.add(key)
                subfolders.append(entry.path)
            elif is_file:
                files.append(entry.path)
            elif is_link and not os.path.exists(entry.path):
                quarantine.append(QuarantineEntry(entry.path, "broken symbolic link: target does not exist"))
            else:
                quarantine.append(QuarantineEntry(entry.path, "not a regular file (device, pipe or socket)"))
        stack.extend(reversed(subfolders))
    return sorted(files), quarantine


def _read_chunk(paths: list[str]) -> list[InstanceHeader | QuarantineEntry]:
    return [read_instance_header(p) for p in paths]


def _read_headers(
    files: list[str], workers: int | None, progress: ProgressCallback | None
) -> list[InstanceHeader | QuarantineEntry]:
    workers = workers or os.cpu_count() or 1
    total = len(files)
    if workers <= 1 or total < PARALLEL_THRESHOLD:
        chunks = [files[i : i + 64] for i in range(0, total, 64)]
        workers = 1
    else:
        # A few chunks per worker keeps the load balanced and the inter-process traffic small.
        size = -(-total // (workers * 4))
        chunks = [files[i : i + size] for i in range(0, total, size)]

    def chunk_progress(finished: int, _: int) -> None:
        if progress:
            progress(min(total, sum(len(c) for c in chunks[:finished])), total)

    results = parallel_map(
        _read_chunk, chunks, workers=workers, progress=chunk_progress, preload=["medimg.dicom.header"]
    )
    return [r for chunk in results for r in chunk]


def scan_folder(
    root: str | os.PathLike[str],
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> ScanResult:
    """Index every DICOM file under ``root`` by patient, study and series, from headers only.

    Args:
        root: the folder to scan (recursively; any file name).
        workers: processes reading headers; default: one per CPU core.
        progress: called as ``progress(done, total)`` while headers are read.

    Returns:
        The :class:`ScanResult`: studies with their series, and the quarantine.

    Raises:
        NotADirectoryError: ``root`` is not a folder. Bad files never raise.
    """
    files, quarantine = list_files(root)
    results = _read_headers(files, workers, progress)
    headers = [r for r in results if isinstance(r, InstanceHeader)]
    quarantine.extend(r for r in results if isinstance(r, QuarantineEntry))
    with gc_paused():
        studies, duplicates = group_instances(headers)
    quarantine.extend(duplicates)
    quarantine.sort(key=lambda q: q.path)
    return ScanResult(root=os.fspath(Path(root)), studies=studies, quarantine=quarantine)


def group_instances(
    headers: Iterable[InstanceHeader], validate: Callable[[Series], None] | None = None
) -> tuple[list[Study], list[QuarantineEntry]]:
    """Group instance headers into studies and series, and validate each series.

    Args:
        headers: instance headers (any order).
        validate: fills a series' summary and problems in place; default :func:`validate_series`
            (the scan index passes one that reuses stored geometry checks).

    Returns:
        ``(studies, duplicates)``: the studies, and quarantine entries for files whose
        SOPInstanceUID was already seen (the first path in sorted order is kept).
    """
    seen: dict[str, str] = {}
    duplicates: list[QuarantineEntry] = []
    by_study: dict[str, dict[str, Series]] = {}
    patient: dict[str, str] = {}
    for header in sorted(headers, key=lambda h: h.path):
        uid = header.sop_instance_uid
        if uid in seen:
            duplicates.append(QuarantineEntry(header.path, f"duplicate instance: same SOPInstanceUID as {seen[uid]}"))
            continue
        seen[uid] = header.path
        study_uid = str(header.get("StudyInstanceUID"))
        series_uid = str(header.get("SeriesInstanceUID"))
        patient.setdefault(study_uid, str(header.get("PatientID", "") or ""))
        series_map = by_study.setdefault(study_uid, {})
        series_map.setdefault(series_uid, Series(series_uid)).instances.append(header)

    studies = []
    for study_uid, series_map in by_study.items():
        series_list = sorted(series_map.values(), key=_series_sort_key)
        for series in series_list:
            (validate or validate_series)(series)
        studies.append(Study(study_uid, patient[study_uid], series_list))
    studies.sort(key=lambda s: (s.PatientID, s.StudyInstanceUID))
    return studies, duplicates


def _series_sort_key(series: Series) -> tuple[int, str]:
    number = series.get("SeriesNumber")
    return (int(number) if isinstance(number, int) else 1 << 30, series.SeriesInstanceUID)


def validate_series(series: Series) -> None:
    """Fill a series' orientation, spacing, decodability and consistency problems in place."""
    check_series_geometry(series)
    check_series_decoding(series)


def check_series_geometry(series: Series) -> None:
    """Fill a series' orientation, slice spacing and consistency problems in place.

    A function of the instances' headers alone (in their order), so its result can be stored;
    what the installed codecs decode is :func:`check_series_decoding`.
    """
    instances = series.instances
    problems: list[str] = []
    sizes: dict[tuple[int, int], int] = {}
    for inst in instances:
        key = (inst.rows, inst.columns)
        sizes[key] = sizes.get(key, 0) + 1
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c} ({n})" for (r, c), n in sorted(sizes.items()))
        problems.append(f"mixed image sizes (Rows x Columns): {listed}")

    spacings = {inst.pixel_spacing for inst in instances}
    if len(spacings) > 1:
        problems.append("mixed pixel spacing")

    with_geometry = [inst for inst in instances if inst.frame_positions is not None]
    if with_geometry and len(with_geometry) != len(instances):
        problems.append(
            f"{len(instances) - len(with_geometry)} of {len(instances)} instances lack "
            "ImagePositionPatient/ImageOrientationPatient"
        )
    elif with_geometry:
        series.orientation = orientation_label(with_geometry[0].frame_orientation)
        positions = [p for inst in with_geometry for p in inst.frame_positions or []]
        orientations = [inst.frame_orientation for inst in with_geometry for _ in range(inst.frames)]

        def keys() -> list[tuple[float, ...]]:
            return [frame_order_key(inst.get, f, k) for f, inst in enumerate(with_geometry) for k in range(inst.frames)]

        if len(positions) > 1:
            try:  # several frames per position make a 4-D series (time, diffusion, echoes), not an error
                split = split_volumes(positions, orientations, keys)  # type: ignore[arg-type]
                series.slice_spacing = split.spacing
            except GeometryError as exc:
                problems.append(str(exc))
    series.problems = problems


def check_series_decoding(series: Series) -> None:
    """Fill whether the installed codecs decode every instance of a series, and the note saying so."""
    notes = []
    decodable = True
    for ts in series.transfer_syntaxes:
        support = decode_support(ts)
        decodable &= support.available
        notes.append(support.note)
    series.decodable = decodable
    series.decode_note = "; ".join(sorted(set(notes)))
