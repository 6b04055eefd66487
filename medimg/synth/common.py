"""Helpers shared by the synthetic-data generators (no DICOM here).

This module holds the pieces that every generator needs and that must behave
identically across them:

* **Determinism.** :func:`item_rng` derives an independent
  :class:`numpy.random.Generator` from ``(seed, dataset, *keys)`` through SHA-256,
  so an item's content depends only on its own key and never on how many items
  are generated. :func:`hex_id` and :func:`uuid_from` derive identifiers the
  same way.
* **Atomic output.** :func:`atomic_write_bytes` writes to a temporary name in
  the destination folder and then :func:`os.replace`\\ s it, so a reader never
  sees a half-written file. :class:`FileLog` records what was written.
* **Procedural fields.** :func:`smooth_field` (band-limited Gaussian noise,
  generated on a coarse grid when the smoothing scale is large) and
  :func:`stratified_choice` (block-permuted class assignment with exact
  proportions per block).
* **Summaries.** :class:`DatasetSummary` is what each generator returns.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from medimg.writers import write_bytes

__all__ = [
    "DatasetSummary",
    "FileLog",
    "atomic_write_bytes",
    "hex_id",
    "item_rng",
    "smooth_field",
    "smoothstep",
    "stable_digest",
    "stratified_choice",
    "upsample_linear",
    "uuid_from",
    "write_csv",
    "write_text",
]


# --------------------------------------------------------------------------- determinism


def stable_digest(*parts: object) -> bytes:
    """Return a SHA-256 digest of ``parts`` that is stable across processes.

    Python's built-in :func:`hash` is salted per process, so it must not be used
    for seeding. Each part is converted with :func:`repr` and the parts are joined
    with an ASCII unit separator, which keeps ``("ab", "c")`` and ``("a", "bc")``
    distinct.

    Args:
        *parts: Hashable description of the item (ints, strings, floats).

    Returns:
        32 raw digest bytes.
    """
    text = "\x1f".join(repr(p) for p in parts)
    return hashlib.sha256(text.encode("utf-8")).digest()


def item_rng(seed: int, dataset: str, *keys: object) -> np.random.Generator:
    """Return a generator seeded from ``(seed, dataset, *keys)``.

    Every item (one radiograph, one breast image, one brain case) gets its own
    generator, so adding items (a larger ``count``) never changes earlier ones.

    Args:
        seed: Global seed given by the user.
        dataset: Dataset name, e.g. ``"cxr"``.
        *keys: Item key, e.g. the item index and a purpose string.

    Returns:
        A PCG64-backed :class:`numpy.random.Generator`.
    """
    digest = stable_digest("medimg.synth", int(seed), dataset, *keys)
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def hex_id(seed: int, *keys: object, length: int = 32) -> str:
    """Return a hashed-looking lowercase hex identifier (VinDr-style ids).

    Args:
        seed: Global seed.
        *keys: Item key.
        length: Number of hex characters (at most 64).

    Returns:
        ``length`` lowercase hex digits.
    """
    return stable_digest("medimg.synth.id", int(seed), *keys).hex()[:length]


def uuid_from(seed: int, *keys: object) -> str:
    """Return a version-4-formatted UUID string derived from the key.

    Args:
        seed: Global seed.
        *keys: Item key.

    Returns:
        A string like ``"0004cfab-14fd-4e49-80ba-63a80b6bddd6"``.
    """
    digest = stable_digest("medimg.synth.uuid", int(seed), *keys)
    return str(uuid.UUID(bytes=digest[:16], version=4))


def stratified_choice(seed: int, dataset: str, index: int, pattern: Sequence[str], *, salt: str = "strata") -> str:
    """Assign a class to item ``index`` with exact proportions per block.

    Items are grouped in consecutive blocks of ``len(pattern)``; within each block
    the pattern is shuffled by a generator seeded from the block number. Every
    complete block therefore holds the classes exactly in the pattern's
    proportions, small counts still see every class early, and an item's class
    does not depend on the total count.

    Args:
        seed: Global seed.
        dataset: Dataset name (part of the block seed).
        index: Zero-based item index.
        pattern: One block's classes, repeated to encode proportions, e.g.
            ``("A", "B", "B", "C")``.
        salt: Distinguishes independent stratifications of the same items.

    Returns:
        The class of item ``index``.
    """
    block, pos = divmod(int(index), len(pattern))
    order = item_rng(seed, dataset, salt, block).permutation(len(pattern))
    return pattern[int(order[pos])]


# --------------------------------------------------------------------------- fields


def smooth_field(
    rng: np.random.Generator,
    shape: Sequence[int],
    sigma: float | Sequence[float] | np.ndarray,
) -> np.ndarray:
    """Return band-limited Gaussian noise with zero mean and unit variance.

    White noise is smoothed with a Gaussian of standard deviation ``sigma``
    (pixels, per axis). When ``sigma`` is large the noise is generated on a grid
    coarser by an integer factor per axis and linearly upsampled, which keeps the
    cost proportional to the output size rather than to ``size * sigma``.

    Args:
        rng: Source of randomness.
        shape: Output shape (2-D or 3-D), in pixels.
        sigma: Smoothing scale in output pixels, scalar or one per axis; must be
            positive.

    Returns:
        ``float32`` array of ``shape``, mean 0, standard deviation 1.
    """
    shape = tuple(int(s) for s in shape)
    sig = np.broadcast_to(np.asarray(sigma, dtype=float), (len(shape),))
    factors = [max(1, int(s // 2.0)) for s in sig]
    coarse_shape = tuple(n if f == 1 else max(2, -(-n // f) + 1) for n, f in zip(shape, factors, strict=True))
    noise = rng.standard_normal(coarse_shape, dtype=np.float32)
    coarse_sigma = [s / f for s, f in zip(sig, factors, strict=True)]
    noise = ndimage.gaussian_filter(noise, coarse_sigma, mode="wrap")
    for axis, n in enumerate(shape):
        if noise.shape[axis] != n:
            noise = upsample_linear(noise, axis, n)
    noise -= noise.mean()
    std = float(noise.std())
    if std > 0:
        noise /= std
    return noise


def upsample_linear(arr: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Resample ``arr`` along one axis to ``size`` samples by linear interpolation.

    The first and last samples of input and output coincide (corner-aligned
    grids). Implemented with two gathers and a blend, which is much faster than
    :func:`scipy.ndimage.zoom` for the large factors used by :func:`smooth_field`.

    Args:
        arr: Input array (at least 2 samples along ``axis``).
        axis: Axis to resample.
        size: Output length along ``axis``.

    Returns:
        ``float32`` array with ``size`` samples along ``axis``.
    """
    n_in = arr.shape[axis]
    pos = np.linspace(0.0, n_in - 1.0, size)
    lo = np.minimum(pos.astype(np.intp), n_in - 2)
    weight = (pos - lo).astype(np.float32)
    wshape = [1] * arr.ndim
    wshape[axis] = size
    weight = weight.reshape(wshape)
    a = np.take(arr, lo, axis=axis)
    b = np.take(arr, lo + 1, axis=axis)
    return (a + (b - a) * weight).astype(np.float32, copy=False)


def smoothstep(x: np.ndarray) -> np.ndarray:
    """Cubic smoothstep of ``x`` clipped to [0, 1] (float32): soft edges for phantoms."""
    t = np.clip(x, 0.0, 1.0).astype(np.float32, copy=False)
    return t * t * (3.0 - 2.0 * t)


# --------------------------------------------------------------------------- output


@dataclass
class FileLog:
    """Record of the files one generator wrote.

    Attributes:
        root: Folder the paths are relative to.
        files: Relative POSIX path → size in bytes, in write order.
    """

    root: Path
    files: dict[str, int] = field(default_factory=dict)

    def add(self, path: Path, n_bytes: int) -> None:
        """Record ``path`` (absolute or relative to the cwd) as written."""
        try:
            rel = Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            rel = Path(path).as_posix()
        self.files[rel] = int(n_bytes)

    @property
    def n_files(self) -> int:
        """Number of files written."""
        return len(self.files)

    @property
    def n_bytes(self) -> int:
        """Total size of the files written, in bytes."""
        return sum(self.files.values())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, log: FileLog | None = None) -> int:
    """Write ``data`` to ``path`` atomically.

    Delegates to :func:`medimg.writers.write_bytes` (temporary file in the same
    folder, renamed into place) and records the write in ``log``.

    Args:
        path: Destination file.
        data: File content.
        log: If given, the write is recorded there.

    Returns:
        The number of bytes written.
    """
    dest = Path(path)
    write_bytes(dest, data)
    if log is not None:
        log.add(dest, len(data))
    return len(data)


def write_text(path: str | os.PathLike[str], text: str, log: FileLog | None = None) -> int:
    """Write UTF-8 text with ``\\n`` line endings atomically; see :func:`atomic_write_bytes`."""
    return atomic_write_bytes(path, text.encode("utf-8"), log)


def write_csv(
    path: str | os.PathLike[str],
    header: Sequence[str],
    rows: Iterable[Sequence[Any]],
    log: FileLog | None = None,
) -> int:
    """Write a comma-separated file (``\\n`` line endings, minimal quoting) atomically.

    Args:
        path: Destination file.
        header: Column names, written as the first line.
        rows: One sequence per line; ``None`` becomes an empty field.
        log: If given, the write is recorded there.

    Returns:
        The number of bytes written.
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return write_text(path, buf.getvalue(), log)


# --------------------------------------------------------------------------- summaries


@dataclass(frozen=True)
class DatasetSummary:
    """What one generator wrote.

    Attributes:
        name: Dataset key: ``"cxr"``, ``"mammo"`` or ``"brain"``.
        root: Dataset root folder.
        n_items: Number of generated units (see ``item_kind``).
        item_kind: What an item is: ``"images"``, ``"exams"`` or ``"cases"``.
        n_files: Number of files written (images, volumes, CSVs, sidecars).
        n_bytes: Total size of those files in bytes.
        details: Extra per-dataset counts, e.g. positives or files per site.
    """

    name: str
    root: Path
    n_items: int
    item_kind: str
    n_files: int
    n_bytes: int
    details: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_log(
        cls,
        name: str,
        log: FileLog,
        n_items: int,
        item_kind: str,
        details: dict[str, Any] | None = None,
    ) -> DatasetSummary:
        """Build a summary from a :class:`FileLog`."""
        return cls(
            name=name,
            root=log.root,
            n_items=n_items,
            item_kind=item_kind,
            n_files=log.n_files,
            n_bytes=log.n_bytes,
            details=dict(details or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serializable dictionary (paths as strings)."""
        return {
            "name": self.name,
            "root": str(self.root),
            "n_items": self.n_items,
            "item_kind": self.item_kind,
            "n_files": self.n_files,
            "n_bytes": self.n_bytes,
            "details": dict(self.details),
        }
