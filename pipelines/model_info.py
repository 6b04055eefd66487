"""What ``run.json``, ``metrics.json`` and the reports say about the model a command used: its file
and digest, and its source (medimg checkpoint, MONAI bundle, TorchScript, ``torch.export``) with
every value taken from the bundle or the model card (:func:`medimg.model_sources.load_model`)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["add_model_source", "model_record"]


def model_record(
    weights: str | os.PathLike[str], meta: Mapping[str, Any], card: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """``{"path", "sha256", "architecture", "source"}`` of the model at ``weights`` (the digest of
    :func:`medimg.model_sources.model_sha256`: a bundle folder's files and the model card count)."""
    from medimg.model_sources import model_sha256

    return {
        "path": str(weights),
        "sha256": model_sha256(weights, card),
        "architecture": meta["architecture"],
        "source": dict(meta.get("source") or {}),
    }


def add_model_source(report: Any, meta: Mapping[str, Any], notes: Sequence[str] = ()) -> None:
    """A "Model" section in a :class:`medimg.report.Report`: the source kind, a table of the values
    taken from the bundle or card and where each came from, the bundle's preprocessing steps medimg
    does not mirror, and ``notes`` (what a run left out, e.g. heat maps), as warnings."""
    source = meta.get("source") or {}
    report.heading("Model")
    where = f" ({source['path']})" if source.get("path") else ""
    report.text(f"Source: {source.get('kind', 'checkpoint')}{where}.")
    values = source.get("values") or {}
    if values:
        rows = [{"field": k, "value": str(v.get("value")), "from": v.get("from", "")} for k, v in values.items()]
        report.table(rows, ["field", "value", "from"])
    if source.get("ignored_steps"):
        steps = ", ".join(map(str, source["ignored_steps"]))
        report.text(f"Bundle preprocessing steps medimg does not mirror: {steps}.", warning=True)
    for note in notes:
        report.text(note, warning=True)
