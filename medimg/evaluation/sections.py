"""Report sections of a classifier's evaluation: :func:`add_binary_section` and :func:`add_multiclass_section`.

Each adds to a :class:`medimg.report.Report` a text line, the metrics table with the 95%
intervals of :mod:`medimg.evaluation.evaluate`, and the figures of :mod:`medimg.evaluation.plots`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from medimg.evaluation.inputs import binary_inputs, multiclass_inputs
from medimg.evaluation.plots import plot_calibration, plot_confusion, plot_pr, plot_roc, plot_roc_ovr

if TYPE_CHECKING:
    from medimg.report import Report

__all__ = ["BINARY_NAMES", "MULTICLASS_NAMES", "add_binary_section", "add_multiclass_section"]

#: Table row names of the binary metrics, in table order.
BINARY_NAMES = {
    "roc_auc": "ROC AUC",
    "pr_auc": "Average precision (PR AUC)",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "ppv": "PPV (precision)",
    "npv": "NPV",
}
#: Table row names of the multiclass metrics, in table order.
MULTICLASS_NAMES = {
    "accuracy": "Accuracy",
    "kappa_linear": "Cohen's kappa (linear weights)",
    "kappa_quadratic": "Cohen's kappa (quadratic weights)",
    "macro_roc_auc_ovr": "Macro one-vs-rest ROC AUC",
}


def _ci_text(metrics: Mapping[str, Any], key: str) -> str:
    interval = metrics.get("ci95", {}).get(key)
    if interval is None:
        return ""
    lo, hi = interval
    return f"[{lo:.3f}, {hi:.3f}]"


def _metric_rows(metrics: Mapping[str, Any], names: Mapping[str, str]) -> list[dict[str, Any]]:
    return [
        {"metric": name, "value": float(metrics[key]), "95% CI": _ci_text(metrics, key)}
        for key, name in names.items()
        if key in metrics
    ]


def _bootstrap_note(metrics: Mapping[str, Any]) -> str:
    if "ci95" not in metrics:
        return ""
    n_boot = metrics.get("n_boot")
    resamples = f"{n_boot} resamples" if n_boot is not None else "resamples"
    return f" 95% CIs: percentile bootstrap, {resamples} stratified by class."


def add_binary_section(
    report: Report,
    y_true: ArrayLike,
    score: ArrayLike,
    metrics: Mapping[str, Any],
    *,
    heading: str | None = None,
) -> None:
    """Add a binary classifier's metrics table and ROC, precision-recall and calibration figures.

    Blocks added, in order: the heading (if given), a text line (cases, prevalence, operating
    threshold, bootstrap), the table (metric, value, 95% CI), then three figures.

    Args:
        report: the report to extend.
        y_true: ``(N,)`` labels in {0, 1}.
        score: ``(N,)`` predicted probabilities.
        metrics: output of :func:`evaluate_binary` (or :func:`binary_metrics`, without CIs).
        heading: optional section heading.
    """
    y, s = binary_inputs(y_true, score)
    threshold = float(metrics.get("threshold", 0.5))
    if heading:
        report.heading(heading)
    report.text(
        f"{y.size} cases, {int(np.count_nonzero(y))} positive ({np.mean(y):.1%}). "
        f"Operating threshold {threshold:.3g} (score >= threshold is positive)." + _bootstrap_note(metrics)
    )
    report.table(_metric_rows(metrics, BINARY_NAMES), ["metric", "value", "95% CI"], caption="Binary metrics")
    report.figure(plot_roc(y, s, threshold=threshold), "ROC curve; the dot is the operating threshold.")
    report.figure(plot_pr(y, s), "Precision-recall curve; the dashed line is the prevalence.")
    report.figure(plot_calibration(y, s), "Calibration: reliability diagram and predicted-probability histogram.")


def add_multiclass_section(
    report: Report,
    y_true: ArrayLike,
    prob: ArrayLike,
    metrics: Mapping[str, Any],
    labels: Sequence[str],
    *,
    heading: str | None = None,
) -> None:
    """Add a multiclass classifier's metrics and per-class tables, confusion matrix and ROC figures.

    Blocks added, in order: the heading (if given), a text line, the metrics table (metric, value,
    95% CI), the per-class table (class, cases, recall, one-vs-rest AUC), then the confusion-matrix
    and one-vs-rest ROC figures.

    Args:
        report: the report to extend.
        y_true: ``(N,)`` int class indices in ``[0, K)``.
        prob: ``(N, K)`` class probabilities.
        metrics: output of :func:`evaluate_multiclass` (or :func:`multiclass_metrics`).
        labels: the K class names.
        heading: optional section heading.
    """
    labels = [str(label) for label in labels]
    y, p = multiclass_inputs(y_true, prob, len(labels))
    if heading:
        report.heading(heading)
    report.text(
        f"{y.size} cases in {len(labels)} classes ({', '.join(labels)}); prediction = most probable class."
        + _bootstrap_note(metrics)
    )
    report.table(_metric_rows(metrics, MULTICLASS_NAMES), ["metric", "value", "95% CI"], caption="Metrics")
    per_class = [
        {
            "class": label,
            "cases": int(metrics["support"][label]),
            "recall": float(metrics["per_class_recall"][label]),
            "one-vs-rest ROC AUC": float(metrics["per_class_roc_auc_ovr"][label]),
        }
        for label in labels
    ]
    report.table(per_class, ["class", "cases", "recall", "one-vs-rest ROC AUC"], caption="Per class")
    report.figure(plot_confusion(metrics["confusion_matrix"], labels), "Confusion matrix (rows: truth).")
    report.figure(plot_roc_ovr(y, p, labels), "One-vs-rest ROC curves.")
