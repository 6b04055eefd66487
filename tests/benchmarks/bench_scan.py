"""Benchmark: ``scan_folder`` against a plain pydicom header loop over the same files.

Generates N small DICOM files (default 6,000: 60 MR series of 100 slices of 32x32, with a few
non-DICOM files), then in one run times

- reference: ``for p in files: pydicom.dcmread(p, stop_before_pixels=True)`` (listing the
  files is not counted), and
- medimg: ``scan_folder(root)`` (walks, reads headers on every core, checks pixel data,
  groups Patient/Study/Series, validates slice geometry).

and prints the ratio medimg / reference (target <= 1.0). Then the incremental scan
(:func:`medimg.dicom.scan_index.scan_folder_indexed`, index file outside the folder):

- first indexed scan (fresh index) / reference loop (target <= 1.0), and
- rescan of the unchanged folder with that index / first indexed scan (target <= 0.1).

Each is run ``--repeats`` times and the best time is kept, alternating them so that disk cache
effects are shared. Last, the machine's own parallel speed-up: the same pure-Python loop on one
process and on one per core (the scans read on every core, the reference loop on one, so on a
machine whose cores do not add up the scan ratios cannot reach their targets).

Usage (repository root): python -m tests.benchmarks.bench_scan [--files N] [--repeats R] [--workers W]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid


def generate(root: Path, n_files: int, per_series: int = 100) -> list[str]:
    """Write ``n_files`` 32x32 MR slices in series of ``per_series``; returns their paths."""
    rng = np.random.default_rng(0)
    paths: list[str] = []
    n_series = -(-n_files // per_series)
    for s in range(n_series):
        study_uid, series_uid = generate_uid(), generate_uid()
        folder = root / f"patient{s // 4:03d}" / f"series{s:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(min(per_series, n_files - len(paths))):
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MRImageStorage
            meta.MediaStorageSOPInstanceUID = generate_uid()
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = MRImageStorage
            ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
            ds.PatientID = f"P{s // 4:03d}"
            ds.PatientName = f"Bench^{s // 4}"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = s
            ds.SeriesDescription = ("T1", "T2", "FLAIR", "T1 POST")[s % 4]
            ds.Modality = "MR"
            ds.InstanceNumber = int(rng.integers(1, 10_000))
            ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
            ds.PixelSpacing = [1.0, 1.0]
            ds.SliceThickness = 2.0
            ds.Rows = ds.Columns = 32
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.PixelData = rng.integers(0, 4096, (32, 32), dtype=np.uint16).tobytes()
            path = folder / f"{k:05d}"  # no extension, as PACS exports often have
            ds.save_as(path, enforce_file_format=True)
            paths.append(str(path))
    for i in range(3):
        (root / f"notes{i}.txt").write_text("not DICOM")
    return paths


def reference_loop(paths: list[str]) -> int:
    n = 0
    for path in paths:
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
            n += 1
        except Exception:  # noqa: BLE001 - the reference skips what it cannot read
            pass
    return n


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def parallel_speedup(cores: int, work: int = 3_000_000) -> float:
    """How many times one process's work ``cores`` processes do: ``2 * cores`` equal pure-Python
    loops, timed on one process and on ``cores`` (best of 3 each)."""
    from medimg.parallel import parallel_map

    def best(workers: int) -> float:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            parallel_map(_spin, [work] * (2 * cores), workers=workers)
            times.append(time.perf_counter() - start)
        return min(times)

    return best(1) / best(cores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="scan workers (default: all cores)")
    args = parser.parse_args()

    from medimg.dicom import scan_folder
    from medimg.dicom.scan_index import scan_folder_indexed

    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as index_dir:
        root = Path(tmp)
        index = Path(index_dir) / "scan-index.sqlite"
        t0 = time.perf_counter()
        generate(root, args.files)
        print(f"generated {args.files} DICOM files (+3 non-DICOM) in {time.perf_counter() - t0:.1f} s")
        all_files = sorted(str(p) for p in root.rglob("*") if p.is_file())

        ref_times, scan_times, first_times, rescan_times = [], [], [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            n_ref = reference_loop(all_files)
            ref_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            result = scan_folder(root, workers=args.workers)
            scan_times.append(time.perf_counter() - t)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{index}{suffix}").unlink(missing_ok=True)
            t = time.perf_counter()
            first = scan_folder_indexed(root, index, workers=args.workers)
            first_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            rescan = scan_folder_indexed(root, index, workers=args.workers)
            rescan_times.append(time.perf_counter() - t)
            assert first == result and rescan == result, "the indexed scan differs from scan_folder"
        n_indexed = sum(len(s.instances) for _, s in result.iter_series())
        assert n_indexed == args.files and len(result.quarantine) == 3, (n_indexed, len(result.quarantine))
        ref, ours = min(ref_times), min(scan_times)
        print(f"cores: {os.cpu_count()}; files: {len(all_files)}; reference read {n_ref}")
        print(f"reference pydicom.dcmread(stop_before_pixels=True) loop: {ref:.3f} s (best of {args.repeats})")
        print(f"medimg scan_folder (walk + headers + pixel check + grouping + validation): {ours:.3f} s")
        print(f"ratio scan / reference = {ours / ref:.2f}  (target <= 1.0)")
        t_first, t_rescan = min(first_times), min(rescan_times)
        print(f"medimg scan_folder_indexed, first scan (fresh index): {t_first:.3f} s; scan_folder: {ours:.3f} s")
        print(f"medimg scan_folder_indexed, rescan of the unchanged folder: {t_rescan:.3f} s")
        print(f"ratio first indexed scan / reference = {t_first / ref:.2f}  (target <= 1.0)")
        print(f"ratio rescan / first indexed scan = {t_rescan / t_first:.3f}  (target <= 0.1)")
        cores = os.cpu_count() or 1
        print(
            f"this machine: {cores} processes do {parallel_speedup(cores):.2f}x one process's work (pure-Python loop)"
        )


if __name__ == "__main__":
    main()
