"""Overlay PNGs: a grey image with a heat map blended in and boxes drawn on top."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medimg.writers import atomic_path

__all__ = ["overlay_rgb", "write_overlay"]


def overlay_rgb(image: np.ndarray, heatmap: np.ndarray | None, *, alpha: float = 0.4) -> np.ndarray:
    """(rows, columns) image in [0, 1] (+ heat map in [0, 1]) -> (rows, columns, 3) uint8 RGB."""
    from matplotlib import colormaps

    grey = np.clip(np.nan_to_num(image), 0, 1)[..., None].repeat(3, axis=2)
    if heatmap is None:
        return (grey * 255).astype(np.uint8)
    colors = colormaps["jet"](np.clip(heatmap, 0, 1))[..., :3]
    weight = alpha * np.clip(heatmap, 0, 1)[..., None]  # transparent where the map is cold
    return ((grey * (1 - weight) + colors * weight) * 255).astype(np.uint8)


def write_overlay(
    path: str | Path,
    image: np.ndarray,
    heatmap: np.ndarray | None,
    boxes: Sequence[tuple[float, float, float, float]] = (),
    label: str = "",
) -> Path:
    """Write an overlay PNG atomically; boxes are (x, y, width, height) in pixels (x = column)."""
    from PIL import Image, ImageDraw

    picture = Image.fromarray(overlay_rgb(image, heatmap))
    draw = ImageDraw.Draw(picture)
    for x, y, w, h in boxes:
        draw.rectangle([x, y, x + w - 1, y + h - 1], outline=(0, 255, 0), width=max(1, picture.width // 256))
    if label:
        draw.text((4, 4), label, fill=(255, 255, 0))
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG", compress_level=1)  # fast; overlays are for looking at
    return Path(path)
