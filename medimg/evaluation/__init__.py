"""Classification metrics with stratified bootstrap confidence intervals, their plots and report sections.

Two tasks are covered:

* **binary** (e.g. chest X-ray pneumonia): ROC AUC, average precision, and sensitivity,
  specificity, PPV and NPV at an operating threshold (:func:`binary_metrics`);
* **ordinal multiclass** (e.g. mammographic breast density A-D): accuracy, linearly and
  quadratically weighted Cohen's kappa, confusion matrix, per-class recall and one-vs-rest ROC AUC
  (:func:`multiclass_metrics`).

:func:`bootstrap_ci` turns any metric function into percentile confidence intervals by resampling
cases with replacement (stratified by class by default); :func:`evaluate_binary` and
:func:`evaluate_multiclass` return the metrics with their 95% intervals as a JSON-able dict, and
:func:`add_binary_section` / :func:`add_multiclass_section` put them, with ROC, precision-recall,
calibration and confusion-matrix figures, into a :class:`medimg.report.Report`.

The numbers are scikit-learn's. Curves, plots and one-off values call it directly; the metrics the
bootstrap recomputes on every resample use the hand-written kernels of
:mod:`medimg.evaluation.kernels`, tested equal to scikit-learn and 35-140x faster on one resample.

Degenerate inputs (one class only, no predicted positives, ...) give NaN for the metrics that are
undefined, never an exception, so that bootstrap resamples and small test sets are summarized
rather than aborted.

Modules, lowest first (each imports only those above it in this list):

* :mod:`~medimg.evaluation.inputs` -- input checks and conversion to plain Python values;
* :mod:`~medimg.evaluation.kernels` -- the fast metric kernels of the bootstrap, and :func:`cohen_kappa`;
* :mod:`~medimg.evaluation.binary` -- binary metrics, ROC/PR/calibration curves, Youden threshold;
* :mod:`~medimg.evaluation.multiclass` -- multiclass metrics;
* :mod:`~medimg.evaluation.bootstrap` -- :func:`bootstrap_ci`;
* :mod:`~medimg.evaluation.evaluate` -- :func:`evaluate_binary`, :func:`evaluate_multiclass`;
* :mod:`~medimg.evaluation.plots` -- the figures;
* :mod:`~medimg.evaluation.sections` -- the report sections.
"""

from __future__ import annotations

from medimg.evaluation.binary import binary_metrics, calibration_curve, pr_curve, roc_curve, youden_threshold
from medimg.evaluation.bootstrap import bootstrap_ci
from medimg.evaluation.evaluate import evaluate_binary, evaluate_multiclass
from medimg.evaluation.kernels import cohen_kappa
from medimg.evaluation.multiclass import multiclass_metrics
from medimg.evaluation.plots import plot_calibration, plot_confusion, plot_pr, plot_roc, plot_roc_ovr
from medimg.evaluation.sections import add_binary_section, add_multiclass_section

__all__ = [
    "add_binary_section",
    "add_multiclass_section",
    "binary_metrics",
    "bootstrap_ci",
    "calibration_curve",
    "cohen_kappa",
    "evaluate_binary",
    "evaluate_multiclass",
    "multiclass_metrics",
    "plot_calibration",
    "plot_confusion",
    "plot_pr",
    "plot_roc",
    "plot_roc_ovr",
    "pr_curve",
    "roc_curve",
    "youden_threshold",
]
