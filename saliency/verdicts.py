"""The audit's verdicts: per criterion, each method's statistic against its baseline under a protocol.

Input: per-image scores already computed (AUPRC per image and source, SSIM per image, state and
model); output: the rows of ``summary.csv`` (:data:`SUMMARY_COLUMNS`) and the pass/fail matrix.
Every rule comes from :class:`saliency.protocol.AuditProtocol`, so a threshold is only compared with
the statistic it was made for. The controls of :mod:`saliency.controls` are judged by the same
rules; a criterion that a control passes is marked not discriminating (:func:`non_discriminating`).
``finite_mean`` is :func:`medimg.stats.finite_mean`, re-exported for the audit modules.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from medimg.stats import finite_mean
from saliency.protocol import AuditProtocol

__all__ = [
    "CRITERION_LABELS",
    "SUMMARY_COLUMNS",
    "SummaryRow",
    "RandomizationScores",
    "agreement_summary",
    "finite_mean",
    "is_informative",
    "localization_summary",
    "method_label",
    "non_discriminating",
    "pass_matrix",
    "randomization_summary",
]

CRITERION_LABELS = {
    "localization": "Localization (AUPRC)",
    "randomization": "Randomization sensitivity",
    "repeatability": "Repeatability",
    "reproducibility": "Reproducibility",
}


@dataclass(frozen=True)
class SummaryRow:
    """One row of ``summary.csv``: a method's verdict on one criterion, or an informative row.

    Attributes:
        method: the method, control or baseline the row is about.
        criterion: ``localization``, ``randomization``, ``repeatability`` or ``reproducibility``.
        statistic: what ``value`` is (e.g. "mean AUPRC (trained)").
        value: the statistic of the method.
        baseline: what ``baseline_value`` is (e.g. the average-mask prior).
        baseline_value: the statistic of the baseline, or the agreement line.
        p_value, p_holm: the one-sided test's p-value and its Holm-adjusted value (NaN: no test).
        n: images (or image pairs) with a finite statistic.
        n_degenerate: degenerate (constant or non-finite) maps among them.
        passed: the verdict (None: undecidable, or an informative row).
        discriminating: False when a model-blind control passes the criterion ("" until checked).
        rule: the rule the verdict follows, in words, or :data:`INFORMATIVE`.
    """

    method: str
    criterion: str
    statistic: str = ""
    value: float = math.nan
    baseline: str = ""
    baseline_value: float = math.nan
    p_value: float = math.nan
    p_holm: float = math.nan
    n: int = 0
    n_degenerate: int = 0
    passed: bool | None = None
    discriminating: bool | str = ""
    rule: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The row as ``summary.csv`` writes it (keys in :data:`SUMMARY_COLUMNS` order)."""
        return {column: getattr(self, column) for column in SUMMARY_COLUMNS}


#: The columns of ``summary.csv``, in order: the fields of :class:`SummaryRow`.
SUMMARY_COLUMNS = tuple(f.name for f in fields(SummaryRow))
INFORMATIVE = "informative (not a pass criterion)"


def is_informative(row: Mapping[str, Any]) -> bool:
    """Whether a summary row only informs (a baseline beside the verdict) rather than carrying one."""
    return row["rule"] == INFORMATIVE


def method_label(method: str) -> str:
    """Display name of a method, the trainable attention or a control."""
    from saliency.controls import CONTROL_LABELS
    from saliency.methods import LABELS

    if method == "attention":
        return "Attention (trainable)"
    return CONTROL_LABELS.get(method) or LABELS.get(method, method)


def _row(method: str, criterion: str, **values: Any) -> dict[str, Any]:
    """A summary row as a dict; unknown keys fail here (:class:`SummaryRow` is the schema)."""
    return SummaryRow(method, criterion, **values).as_dict()


def _tests(
    groups: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray], alternative: str, family: Sequence[str]
) -> dict[str, dict[str, float]]:
    """One-sided paired Wilcoxon per group against its own reference; Holm over ``family`` only.

    Groups outside the family (the controls) keep their raw p-value as their adjusted one: they are
    checks of the criterion, not members of the multiple-comparison family of the methods.
    """
    from saliency.criteria import holm, paired_wilcoxon_holm

    raw = {
        name: paired_wilcoxon_holm({name: values}, references[name], alternative=alternative)[name]["p"]
        for name, values in groups.items()
    }
    members = [name for name in groups if name in family]
    adjusted = dict(zip(members, holm([raw[name] for name in members]), strict=True))
    return {name: {"p": raw[name], "p_holm": float(adjusted.get(name, raw[name]))} for name in groups}


def localization_summary(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    methods: Sequence[str],
    protocol: AuditProtocol,
    *,
    alpha: float,
    degenerate: Mapping[str, Mapping[str, int]],
    family: Sequence[str],
) -> list[dict[str, Any]]:
    """Summary rows of criterion 1 (see :meth:`AuditProtocol.rule`).

    Args:
        scores: ``{source: {method: (N,) per-image statistic}}`` with sources ``trained`` (every
            method), ``prior`` (method ``prior``) and optionally ``untrained`` and ``localizer``
            (method ``localizer``); the statistic is the protocol's (trapezoid or average precision).
        methods: methods and controls to judge.
        protocol: the preset.
        alpha: significance level (Holm-adjusted).
        degenerate: ``{source: {method: count}}`` of degenerate maps.
        family: the methods forming the Holm family (controls excluded).
    """
    prior = scores["prior"]["prior"]
    statistic = f"mean {protocol.localization_statistic.replace('_', ' ')} (trained)"
    trained = {m: scores["trained"][m] for m in methods}
    versus_prior = _tests(trained, {m: prior for m in methods}, "greater", family)
    untrained = {m: scores["untrained"][m] for m in methods if m in scores.get("untrained", {})}
    versus_untrained = _tests({m: trained[m] for m in untrained}, untrained, "greater", family)
    rows = []
    for method in methods:
        values = trained[method]
        shared = np.isfinite(values) & np.isfinite(prior)  # both means over the same images
        mean, prior_mean = finite_mean(values[shared]), finite_mean(prior[shared])
        test = versus_prior[method]
        passed = bool(mean > prior_mean) if np.isfinite(mean) and np.isfinite(prior_mean) else None
        if passed and protocol.localization_test:
            passed = bool(test["p_holm"] < alpha)
        common = {"statistic": statistic, "value": mean, "n": int(np.isfinite(values).sum())}
        rows.append(
            _row(
                method,
                "localization",
                **common,
                baseline="average-mask prior",
                baseline_value=prior_mean,
                p_value=test["p"],
                p_holm=test["p_holm"],
                n_degenerate=int(degenerate.get("trained", {}).get(method, 0)),
                passed=passed,
                rule=protocol.rule("localization", alpha),
            )
        )
        if method in untrained:
            rows.append(
                _row(
                    method,
                    "localization",
                    **common,
                    baseline="untrained model",
                    baseline_value=finite_mean(untrained[method]),
                    p_value=versus_untrained[method]["p"],
                    p_holm=versus_untrained[method]["p_holm"],
                    n_degenerate=int(degenerate.get("untrained", {}).get(method, 0)),
                    passed=None,
                    rule=INFORMATIVE,
                )
            )
        if "localizer" in scores:
            rows.append(
                _row(
                    method,
                    "localization",
                    **common,
                    baseline="supervised localizer",
                    baseline_value=finite_mean(scores["localizer"]["localizer"]),
                    passed=None,
                    rule=INFORMATIVE,
                )
            )
    return rows


@dataclass
class RandomizationScores:
    """The SSIMs behind one method's randomization verdict.

    Attributes:
        states: state labels in order (the original excluded).
        ssim: ``{model role: (states, N) per-image SSIM against that model's original maps}``.
        baseline: ``{model role: (N,) per-image mean inter-image SSIM under that model}``.
        degenerate: degenerate maps over all randomized states.
    """

    states: list[str]
    ssim: dict[str, np.ndarray] = field(default_factory=dict)
    baseline: dict[str, np.ndarray] = field(default_factory=dict)
    degenerate: int = 0

    def curve(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean, sd)`` per state over the models of each model's mean SSIM over images.

        The SD is numpy's default population SD (``ddof=0``), as the paper's plotting code used.
        """
        per_model = np.array([[finite_mean(row) for row in values] for values in self.ssim.values()])
        with np.errstate(all="ignore"):
            mean = np.array([finite_mean(column) for column in per_model.T])
            sd = np.array([np.nanstd(column) if np.isfinite(column).sum() > 1 else math.nan for column in per_model.T])
        return mean, sd

    def baseline_mean(self) -> float:
        """The baseline: mean over the models of each model's mean inter-image SSIM."""
        return finite_mean([finite_mean(values) for values in self.baseline.values()])

    def last_state_per_image(self) -> tuple[np.ndarray, np.ndarray]:
        """``(SSIM, baseline)`` per image at the last state, each averaged over the models."""
        with np.errstate(all="ignore"):
            last = np.nanmean(np.stack([values[-1] for values in self.ssim.values()]), axis=0)
            base = np.nanmean(np.stack(list(self.baseline.values())), axis=0)
        return last, base


def randomization_summary(
    scores: Mapping[str, RandomizationScores],
    protocol: AuditProtocol,
    *,
    alpha: float,
    family: Sequence[str],
) -> list[dict[str, Any]]:
    """Summary rows of criterion 2 (see :meth:`AuditProtocol.rule`); one row per method."""
    rows = []
    tested = {}
    if protocol.randomization_rule == "last-tested":
        pairs = {m: s.last_state_per_image() for m, s in scores.items()}
        tested = _tests({m: p[0] for m, p in pairs.items()}, {m: p[1] for m, p in pairs.items()}, "less", family)
    for method, score in scores.items():
        mean, _ = score.curve()
        base = score.baseline_mean()
        finite = mean[np.isfinite(mean)]
        if protocol.randomization_rule == "min":
            value = float(finite.min()) if finite.size else math.nan
            statistic = f"min over states of mean SSIM (last state, {score.states[-1]}: {mean[-1]:.3f})"
            test = {"p": math.nan, "p_holm": math.nan}
            passed = bool(value < base) if np.isfinite(value) and np.isfinite(base) else None
        else:
            value = float(mean[-1]) if mean.size else math.nan
            statistic = f"mean SSIM at the last state ({score.states[-1]})"
            test = tested[method]
            passed = bool(value < base and test["p_holm"] < alpha) if np.isfinite(value) and np.isfinite(base) else None
        n = int(np.isfinite(np.stack([v[-1] for v in score.ssim.values()])).all(axis=0).sum())
        rows.append(
            _row(
                method,
                "randomization",
                statistic=statistic,
                value=value,
                baseline=f"inter-image SSIM ({len(score.ssim)} model(s))",
                baseline_value=base,
                p_value=test["p"],
                p_holm=test["p_holm"],
                n=n,
                n_degenerate=score.degenerate,
                passed=passed,
                rule=protocol.rule("randomization", alpha),
            )
        )
    return rows


def agreement_summary(
    criterion: str,
    ssim: Mapping[str, np.ndarray],
    lines: Mapping[str, Mapping[str, float | int]],
    protocol: AuditProtocol,
    *,
    alpha: float,
    degenerate: Mapping[str, int],
    pairs: int,
) -> list[dict[str, Any]]:
    """Summary rows of repeatability or reproducibility: mean SSIM over images and model pairs vs the line.

    Args:
        criterion: ``"repeatability"`` or ``"reproducibility"``.
        ssim: ``{method: per-(pair, image) SSIM}``.
        lines: ``{method: {"value", "n_pairs", "n_near"}}`` from :func:`saliency.protocol.calibrate_line`
            (calibrated protocol); ignored when the protocol's line is fixed.
        protocol: the preset.
        alpha: for the rule text.
        degenerate: ``{method: pairs with a degenerate map}``.
        pairs: model pairs compared (reported).
    """
    rows = []
    for method, values in ssim.items():
        mean = finite_mean(values)
        side = ""
        if protocol.agreement_line is not None:
            line, baseline = protocol.agreement_line, "the paper's reference line"
        else:
            calibrated = lines[method]
            line, side = float(calibrated["value"]), str(calibrated.get("side", ""))
            if np.isfinite(line):
                baseline = f"line calibrated from {calibrated['n_pairs']} map pairs ({calibrated['n_near']} near it)"
            elif side:
                baseline = f"every one of {calibrated['n_pairs']} map pairs {side} the line: decided without placing it"
            else:
                baseline = f"line not calibrable: {calibrated['n_near']} map pairs near it"
        if np.isfinite(mean) and np.isfinite(line):
            passed: bool | None = bool(mean >= line)
        else:
            passed = {"above": True, "below": False}.get(side) if np.isfinite(mean) else None
        rows.append(
            _row(
                method,
                criterion,
                statistic=f"mean SSIM ({pairs} model pair(s))",
                value=mean,
                baseline=baseline,
                baseline_value=line,
                n=int(np.isfinite(values).sum()),
                n_degenerate=int(degenerate.get(method, 0)),
                passed=passed,
                rule=protocol.rule(criterion, alpha),
            )
        )
    return rows


def pass_matrix(summary: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, dict[str, bool | None]]:
    """``{method: {criterion: passed}}`` from the summary rows that carry a rule (informative rows skipped)."""
    matrix: dict[str, dict[str, bool | None]] = {m: {} for m in methods}
    for row in summary:
        if not is_informative(row) and row["method"] in matrix:
            matrix[row["method"]][row["criterion"]] = row["passed"]
    return matrix


def non_discriminating(
    matrix: Mapping[str, Mapping[str, bool | None]], controls: Sequence[str]
) -> dict[str, list[str]]:
    """``{criterion: [controls that pass it]}`` for every criterion some control passes."""
    found: dict[str, list[str]] = {}
    for control in controls:
        for criterion, passed in matrix.get(control, {}).items():
            if passed:
                found.setdefault(criterion, []).append(control)
    return found
