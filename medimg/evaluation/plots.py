"""Figures of a classifier's evaluation: ROC, precision-recall, calibration, confusion matrix, one-vs-rest ROC.

Each function returns a matplotlib figure (Agg backend, via :func:`medimg.report.new_figure`) with
labelled axes and the headline number (AUC, AP, Brier score, accuracy) in the legend or title,
computed by scikit-learn; an undefined number (one class only) is shown as ``nan``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from medimg.evaluation.binary import calibration_curve, pr_curve, roc_curve
from medimg.evaluation.inputs import binary_inputs, multiclass_inputs
from medimg.evaluation.kernels import safe_ratio
from medimg.report import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_calibration", "plot_confusion", "plot_pr", "plot_roc", "plot_roc_ovr"]


def _roc_auc_or_nan(y: np.ndarray, s: np.ndarray) -> float:
    """sklearn's ROC AUC of bool ``y`` and scores ``s``; NaN unless both classes are present."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, s)) if y.any() and not y.all() else math.nan


def _average_precision_or_nan(y: np.ndarray, s: np.ndarray) -> float:
    """sklearn's average precision of bool ``y`` and scores ``s``; NaN unless both classes are present."""
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(y, s)) if y.any() and not y.all() else math.nan


def _operating_point(y: np.ndarray, s: np.ndarray, threshold: float) -> tuple[float, float]:
    """``(sensitivity, specificity)`` of ``s >= threshold`` (sklearn's recall of each class; NaN if absent)."""
    from sklearn.metrics import recall_score

    predicted = s >= threshold
    sensitivity = recall_score(y, predicted, zero_division=np.nan)
    specificity = recall_score(~y, ~predicted, zero_division=np.nan)
    return float(sensitivity), float(specificity)


def plot_roc(y_true: ArrayLike, score: ArrayLike, *, threshold: float | None = None) -> Figure:
    """ROC curve with its AUC in the legend and, given ``threshold``, the operating point marked.

    Args:
        y_true: ``(N,)`` labels in {0, 1}.
        score: ``(N,)`` float scores.
        threshold: operating point to mark (``score >= threshold`` is positive), or ``None``.

    Returns:
        A matplotlib figure with one axes.
    """
    y, s = binary_inputs(y_true, score)
    fpr, tpr, _ = roc_curve(y, s)
    fig, axes = new_figure(4.8, 4.4)
    ax = axes[0, 0]
    ax.plot(fpr, tpr, lw=2, color="C0", label=f"ROC (AUC = {_roc_auc_or_nan(y, s):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance (AUC = 0.5)")
    if threshold is not None:
        sensitivity, specificity = _operating_point(y, s, float(threshold))
        ax.plot(
            [1.0 - specificity],
            [sensitivity],
            "o",
            color="C3",
            label=f"threshold {threshold:.3g}: sens {sensitivity:.2f}, spec {specificity:.2f}",
        )
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="1 - specificity (false-positive rate)",
        ylabel="Sensitivity (true-positive rate)",
        title=f"ROC curve (n = {y.size}, {int(np.count_nonzero(y))} positive)",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def plot_pr(y_true: ArrayLike, score: ArrayLike) -> Figure:
    """Precision-recall curve (steps, as average precision integrates it) with the AP in the legend.

    Args:
        y_true: ``(N,)`` labels in {0, 1}.
        score: ``(N,)`` float scores.

    Returns:
        A matplotlib figure with one axes; the prevalence line is the curve of a random score.
    """
    y, s = binary_inputs(y_true, score)
    precision, recall, _ = pr_curve(y, s)
    prevalence = float(np.mean(y))
    average_precision = _average_precision_or_nan(y, s)
    fig, axes = new_figure(4.8, 4.4)
    ax = axes[0, 0]
    ax.plot(
        recall,
        precision,
        lw=2,
        color="C0",
        drawstyle="steps-post",
        label=f"AP = {average_precision:.3f}",
    )
    ax.axhline(prevalence, ls="--", lw=1, color="grey", label=f"prevalence = {prevalence:.3f}")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="Recall (sensitivity)",
        ylabel="Precision (PPV)",
        title="Precision-recall curve",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def plot_calibration(y_true: ArrayLike, prob: ArrayLike, *, n_bins: int = 10) -> Figure:
    """Reliability diagram (with the Brier score and ROC AUC in the legend) and probability histogram.

    Args:
        y_true: ``(N,)`` labels in {0, 1}.
        prob: ``(N,)`` float predicted probabilities in [0, 1].
        n_bins: uniform bins of :func:`calibration_curve`.

    Returns:
        A matplotlib figure with two axes: observed fraction of positives against mean predicted
        probability per bin, and the histogram of predicted probabilities by true class.
    """
    from sklearn.metrics import brier_score_loss

    y, p = binary_inputs(y_true, prob)
    mean_predicted, fraction_positive, _ = calibration_curve(y, p, n_bins=n_bins)
    brier = float(brier_score_loss(y, p))
    fig, axes = new_figure(9.6, 4.2, ncols=2)
    ax, hist = axes[0, 0], axes[0, 1]
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="perfectly calibrated")
    ax.plot(
        mean_predicted,
        fraction_positive,
        "o-",
        color="C0",
        label=f"model (Brier = {brier:.3f}, AUC = {_roc_auc_or_nan(y, p):.3f})",
    )
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="Mean predicted probability",
        ylabel="Fraction of positives",
        title=f"Calibration ({n_bins} uniform bins)",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    hist.hist([p[~y], p[y]], bins=edges, color=["C0", "C3"], label=["negative", "positive"], stacked=True)
    hist.set(xlim=(0, 1), xlabel="Predicted probability", ylabel="Cases", title="Predicted probabilities")
    hist.legend(fontsize=8)
    return fig


def plot_confusion(matrix: ArrayLike, labels: Sequence[str]) -> Figure:
    """Confusion matrix shaded by row fraction (recall), each cell annotated with count and row %.

    Args:
        matrix: ``(K, K)`` int counts, rows = truth, columns = prediction.
        labels: the K class names.

    Returns:
        A matplotlib figure with one axes.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    k = len(labels)
    if counts.shape != (k, k):
        raise ValueError(f"matrix must be ({k}, {k}) for {k} labels, got {counts.shape}")
    rows = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(rows > 0, counts / np.maximum(rows, 1), 0.0)
    side = 1.2 + 0.9 * k
    fig, axes = new_figure(side + 0.4, side)
    ax = axes[0, 0]
    ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{counts[i, j]}\n{100.0 * fraction[i, j]:.0f}%",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if fraction[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), [str(label) for label in labels])
    ax.set_yticks(range(k), [str(label) for label in labels])
    accuracy = safe_ratio(np.trace(counts), counts.sum())
    ax.set(xlabel="Predicted", ylabel="True", title=f"Confusion matrix (accuracy {accuracy:.3f})")
    return fig


def plot_roc_ovr(y_true: ArrayLike, prob: ArrayLike, labels: Sequence[str]) -> Figure:
    """One-vs-rest ROC curves of a K-class classifier, each class's AUC in the legend.

    Args:
        y_true: ``(N,)`` int class indices in ``[0, K)``.
        prob: ``(N, K)`` float class probabilities.
        labels: the K class names.

    Returns:
        A matplotlib figure with one axes; a class absent from ``y_true`` is listed as absent.
    """
    y, p = multiclass_inputs(y_true, prob, len(labels))
    fig, axes = new_figure(4.8, 4.4)
    ax = axes[0, 0]
    aucs = []
    for c, label in enumerate(labels):
        positive = y == c
        auc = _roc_auc_or_nan(positive, p[:, c])
        aucs.append(auc)
        if math.isnan(auc):
            ax.plot([], [], color=f"C{c}", label=f"{label} (absent)")
            continue
        fpr, tpr, _ = roc_curve(positive, p[:, c])
        ax.plot(fpr, tpr, lw=1.8, color=f"C{c}", label=f"{label} vs rest (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey")
    ax.set(
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        xlabel="1 - specificity (false-positive rate)",
        ylabel="Sensitivity (true-positive rate)",
        title=f"One-vs-rest ROC (macro AUC = {float(np.mean(aucs)):.3f})",
    )
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig
