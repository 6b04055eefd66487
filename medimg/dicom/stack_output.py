"""Write a decoded :class:`~medimg.dicom.stack.Stack` as NIfTI with its BIDS sidecar JSON, plus FSL
``.bval``/``.bvec`` for a diffusion series."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from medimg.dicom.bids import bids_sidecar
from medimg.dicom.diffusion import diffusion_of, write_fsl
from medimg.dicom.stack import Stack

__all__ = ["nifti_stem", "sidecar_datasets", "write_stack"]


def nifti_stem(path: str | os.PathLike[str]) -> str:
    """``out/x.nii.gz`` -> ``out/x`` (the stem beside which .json/.bval/.bvec go)."""
    text = os.fspath(path)
    for suffix in (".nii.gz", ".nii"):
        if text.endswith(suffix):
            return text[: -len(suffix)]
    return text


def sidecar_datasets(stack: Stack) -> list[Any]:
    """The headers :func:`~medimg.dicom.bids.bids_sidecar` wants: every slice in stored order, one per mosaic."""
    out: list[Any] = []
    for volume in stack.volumes:
        for ds in volume:
            if not out or ds is not out[-1]:
                out.append(ds)
    return out


def _storage(array: np.ndarray) -> np.ndarray:
    """int16 (or uint16) when every value is an integer that fits, as dcm2niix stores most MR; else float32."""
    if array.size and np.all(array == np.round(array)):
        low, high = array.min(), array.max()
        if low >= -32768 and high <= 32767:
            return array.astype(np.int16)
        if low >= 0 and high <= 65535:
            return array.astype(np.uint16)
    return array.astype(np.float32)


def write_stack(stack: Stack, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write ``stack`` to ``path`` (``.nii.gz``) atomically, ``<stem>.json`` (BIDS sidecar, from
    :func:`medimg.dicom.bids.bids_sidecar`) beside it, and ``.bval``/``.bvec`` for a diffusion series.

    Returns:
        Record fields: shape, pixel_spacing, slice_spacing, volumes, sidecar, and ``bval``/``bvec``
        paths when written.
    """
    import nibabel as nib

    from medimg.writers import atomic_path, write_json

    try:
        sidecar = bids_sidecar(sidecar_datasets(stack))
    except Exception as exc:  # noqa: BLE001 - odd headers fail this series only, the batch goes on
        raise ValueError(f"cannot build the BIDS sidecar: {type(exc).__name__}: {exc}") from exc
    diffusion = [diffusion_of(volume[0]) for volume in stack.volumes]  # before writing: may raise
    stem = nifti_stem(path)
    record: dict[str, Any] = {
        "shape": list(stack.array.shape),
        "pixel_spacing": list(stack.pixel_spacing),
        "slice_spacing": stack.slice_spacing,
        "volumes": len(stack.volumes),
        "sidecar": f"{stem}.json",
    }
    # side files first: the NIfTI, written last, is what marks a finished output for a rerun
    write_json(f"{stem}.json", sidecar)
    if len(stack.volumes) > 1 and any(d is not None for d in diffusion):
        bval, bvec = write_fsl(stem, diffusion, stack.affine)
        record["bval"], record["bvec"] = str(bval), str(bvec)
    image = nib.Nifti1Image(_storage(stack.array), stack.affine)
    image.set_qform(stack.affine, code=1)
    image.set_sform(stack.affine, code=1)
    if stack.array.ndim == 4 and stack.repetition_time:
        image.header.set_zooms((*image.header.get_zooms()[:3], stack.repetition_time))
        image.header.set_xyzt_units("mm", "sec")
    else:
        image.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
    return record
