"""Split the frames of one series into volumes: one for a 3-D series, several for a 4-D one.

A 4-D series (an fMRI time series, diffusion directions, several echoes) has several frames at
each slice position. Frames are taken in acquisition order (echo, temporal position,
AcquisitionNumber, InstanceNumber, then file and frame order): the k-th frame at each slice
position belongs to volume k. Every position must hold the same number of frames and every
volume must be evenly spaced; what is wrong is said in user words ("volume 3 of 10 has 35
slices, the others 36 (no slice at 16.0 mm)").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medimg.dicom.geometry import GeometryError, sort_slices

__all__ = ["ORDER_KEYWORDS", "VolumeSplit", "frame_order_key", "split_volumes"]

#: Header keywords that order the frames of a 4-D series, most significant first.
ORDER_KEYWORDS = ("EchoNumbers", "TemporalPositionIdentifier", "AcquisitionNumber", "InstanceNumber")


@dataclass(frozen=True)
class VolumeSplit:
    """Frames grouped into volumes.

    Attributes:
        volumes: per volume, frame indices sorted along the slice normal (ascending).
        spacing: distance between slices in mm (None for one slice per volume).
        normal: unit slice normal, row x column direction cosines (LPS).
    """

    volumes: list[list[int]]
    spacing: float | None
    normal: tuple[float, float, float]


def _number(value: Any) -> float:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("inf")


def frame_order_key(get: Any, file_index: int, frame_index: int = 0) -> tuple[float, ...]:
    """Acquisition-order key of one frame; ``get(keyword)`` reads its header (None when absent)."""
    return (*(_number(get(k)) for k in ORDER_KEYWORDS), float(file_index), float(frame_index))


def _slices(n: int) -> str:
    return f"{n} slice{'s' if n != 1 else ''}"


def _position_ids(dist: np.ndarray, tol: float) -> np.ndarray:
    """The same id for frames whose positions along the normal lie within ``tol`` of the previous one."""
    order = np.argsort(dist, kind="stable")
    ids = np.empty(len(dist), dtype=int)
    ids[order] = np.concatenate([[0], np.cumsum(np.diff(dist[order]) > tol)]) if len(dist) else []
    return ids


def _walk(in_order: list[int], ids: np.ndarray) -> list[list[int]]:
    """Frames in acquisition order -> volumes: a new one starts when a position repeats."""
    volumes: list[list[int]] = [[]]
    seen: set[int] = set()
    for i in in_order:
        if int(ids[i]) in seen:
            volumes.append([])
            seen = set()
        volumes[-1].append(i)
        seen.add(int(ids[i]))
    return volumes


def _uneven_error(in_order: list[int], ids: np.ndarray, dist: np.ndarray, counts: Counter[int]) -> GeometryError:
    """Why frames do not split into equal volumes, in user words."""
    usual_count = Counter(counts.values()).most_common(1)[0][0]
    if usual_count == 1:  # mostly single frames: a duplicated slice, not a time series
        shared = [float(dist[ids == pid][0]) for pid, c in sorted(counts.items()) if c > 1]
        where = ", ".join(f"{d:.3f} mm" for d in shared[:3])
        n = sum(c for c in counts.values() if c > 1)
        return GeometryError(f"duplicate slice positions: {n} frames share positions ({where})")
    volumes = _walk(in_order, ids)
    sizes = [len(v) for v in volumes]
    usual = Counter(sizes).most_common(1)[0][0]
    odd = [k for k, size in enumerate(sizes) if size != usual] or [int(np.argmin(sizes))]
    k = odd[0]
    absent = sorted(float(dist[ids == pid][0]) for pid in counts if pid not in {int(ids[i]) for i in volumes[k]})
    detail = f" (no slice at {', '.join(f'{d:.1f} mm' for d in absent[:3])})" if absent else ""
    others = "the others" if len(volumes) > 2 else "the other"
    more = f"; {len(odd)} volumes differ" if len(odd) > 1 else ""
    return GeometryError(f"volume {k + 1} of {len(volumes)} has {_slices(sizes[k])}, {others} {usual}{detail}{more}")


def split_volumes(
    positions: Sequence[Sequence[float]],
    orientations: Sequence[Sequence[float]],
    keys: Sequence[tuple[float, ...]] | Callable[[], Sequence[tuple[float, ...]]],
    *,
    atol: float = 1e-3,
) -> VolumeSplit:
    """Group frames into volumes of identical slice positions and check each is regular.

    Args:
        positions: ImagePositionPatient per frame, (N, 3) mm, LPS.
        orientations: ImageOrientationPatient per frame, (N, 6).
        keys: acquisition-order key per frame (:func:`frame_order_key`), or a function that makes
            them: called only when several frames share a slice position (a plain 3-D series
            is ordered by position alone).
        atol: positions closer than this (mm, along the normal) are the same slice position.

    Returns:
        The :class:`VolumeSplit`; volumes in acquisition order.

    Raises:
        GeometryError: mixed orientations, a duplicated slice, volumes with different slices,
            missing slices (``"missing slices: no slice at 16.0 mm ..."``), irregular spacing.
    """
    pos = np.asarray(positions, dtype=float).reshape(-1, 3)
    ori = np.asarray(orientations, dtype=float).reshape(-1, 6)
    if np.abs(ori - ori[0]).max() > 1e-3:
        raise GeometryError("frames differ in ImageOrientationPatient")
    normal = np.cross(ori[0, :3], ori[0, 3:])
    if np.linalg.norm(normal) < 1e-6:
        raise GeometryError("ImageOrientationPatient row and column directions are parallel")
    normal /= np.linalg.norm(normal)
    dist = pos @ normal
    ids = _position_ids(dist, max(atol, 0.01))
    counts = Counter(ids.tolist())
    if len(counts) == len(pos):  # one frame per position: one volume, ordered by position alone
        stack = sort_slices(pos.tolist(), ori.tolist(), atol=atol)
        return VolumeSplit([stack.order], stack.spacing, (float(normal[0]), float(normal[1]), float(normal[2])))
    order_keys = keys() if callable(keys) else keys
    in_order = sorted(range(len(pos)), key=lambda j: order_keys[j])
    if len(set(counts.values())) > 1:
        raise _uneven_error(in_order, ids, dist, counts)
    # the k-th frame (in acquisition order) at each position belongs to volume k
    n_volumes = next(iter(counts.values()))
    volumes: list[list[int]] = [[] for _ in range(n_volumes)]
    rank: Counter[int] = Counter()
    for i in in_order:
        volumes[rank[int(ids[i])]].append(i)
        rank[int(ids[i])] += 1
    ordered: list[list[int]] = []
    spacing: float | None = None
    for volume in volumes:
        stack = sort_slices(pos[volume].tolist(), ori[volume].tolist(), atol=atol)
        ordered.append([volume[j] for j in stack.order])
        spacing = stack.spacing
    return VolumeSplit(ordered, spacing, (float(normal[0]), float(normal[1]), float(normal[2])))
