"""What an audit produced: the tables, verdicts and settings that the report and the caller read."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["AuditResult"]


@dataclass
class AuditResult:
    """The audit's outcome.

    Attributes:
        methods: the methods judged, controls last (display order of every table).
        criteria: the criteria that ran.
        summary: rows of ``summary.csv``.
        matrix: ``{method: {criterion: passed (True / False / None = could not be scored)}}``.
        non_discriminating: ``{criterion: [controls that pass it]}``: such a criterion does not tell
            model-aware maps from model-blind ones on this setting.
        rows: the per-image tables by file name (``localization.csv``, ``randomization.csv``,
            ``repeatability.csv``, ``reproducibility.csv``).
        randomization: ``{method: saliency.verdicts.RandomizationScores}``.
        variant_rows: localization of the other models (``--variant``).
        settings: everything recorded in ``settings.json``.
        notes: what was skipped or substituted, and why.
        files: the files written.
    """

    methods: list[str]
    criteria: list[str]
    summary: list[dict[str, Any]]
    matrix: dict[str, dict[str, bool | None]]
    non_discriminating: dict[str, list[str]]
    rows: dict[str, list[dict[str, Any]]]
    randomization: dict[str, Any]
    variant_rows: list[dict[str, Any]]
    settings: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    files: dict[str, Path] = field(default_factory=dict)
