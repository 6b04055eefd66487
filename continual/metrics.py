"""Per-site metrics and forgetting metrics for domain expansion.

Notation: ``R[t][d]`` is a metric of the model after stage ``t`` on the test set of domain ``d``.
Stage ``t`` is the model just after training on domain ``t``: stage 0 = after training on site A,
stage 1 = after adapting to site B, and so on. ``L = T - 1`` is the last stage of ``T`` stages.
The metric is linear-weighted Cohen's kappa (ordinal BI-RADS classes; the 2022 ACR/NVIDIA challenge
code uses ``cohen_kappa_score(weights="linear")``) and accuracy, or ROC AUC for a binary head.

* :func:`site_metrics` -- accuracy, linear kappa (and ROC AUC for binary probabilities) of one
  model on one site's test set.
* :class:`AccuracyMatrix` -- the full ``R`` table of one metric (Avalanche's
  ``AccuracyMatrixPluginMetric``) and every forgetting quantity computed from it: retention, forgetting,
  relative forgetting, backward transfer, the two average-forgetting variants (Chaudhry's
  max-vs-last and Avalanche's first-vs-last, named distinctly), plasticity, forward (zero-shot)
  transfer, average accuracy, and the gaps to naive fine-tuning and joint training.
* :func:`forgetting_reduction` -- ``(F_naive - F_method) / F_naive``.
* :func:`arm_row`, :func:`summarize_arms`, :func:`tradeoff_curve` -- one flat row per
  (arm, lambda, seed), mean and SD over seeds per (arm, lambda), and the lambda trade-off curve
  (x = ``R[1][B]``, y = ``R[1][A]``).

Undefined values (a zero denominator, a kappa with perfect chance agreement) are NaN, never an
exception, so that a sweep is summarized rather than aborted.
"""

from __future__ import annotations

import math
import string
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from medimg.evaluation import binary_metrics, cohen_kappa

__all__ = [
    "AccuracyMatrix",
    "arm_row",
    "forgetting_reduction",
    "site_metrics",
    "summarize_arms",
    "tradeoff_curve",
]

# Column-name spelling of site_metrics keys in arm rows (``old_kappa_before``, ...).
_SHORT_NAMES = {"kappa_linear": "kappa"}
# Columns of an arm row that identify it rather than measure something.
_KEY_COLUMNS = ("arm", "lambda", "seed")


# --------------------------------------------------------------------------------------------
# One model on one site


def _labels_1d(y_true: ArrayLike) -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"y_true must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("no cases")
    if y.dtype != bool and not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise ValueError("y_true must hold integer class indices")
    return y.astype(np.int64)


def site_metrics(
    y_true: ArrayLike, y_prob_or_pred: ArrayLike, *, labels: Sequence[int] | None = None
) -> dict[str, float]:
    """Accuracy and linear-weighted Cohen's kappa of one model on one site (plus ROC AUC if binary).

    Kappa equals scikit-learn's ``cohen_kappa_score(y_true, y_pred, labels=labels,
    weights="linear")``, as in the 2022 breast-density challenge code, computed by
    :func:`medimg.evaluation.cohen_kappa` from the confusion matrix: ``kappa = 1 - sum(W * O) /
    sum(W * E)`` with ``W[i, j] = |i - j|`` over the positions ``i, j`` of the classes in
    ``labels``. Usable as the ``metric_fn`` of :func:`medimg.training.train_classifier`.

    Args:
        y_true: ``(N,)`` int class indices.
        y_prob_or_pred: one of
            * ``(N, K)`` float class probabilities (or scores): the prediction is the argmax (ties
              to the lower index); with ``K == 2`` the ROC AUC of column 1 is added;
            * ``(N,)`` float probabilities of class 1 of a binary task (values in [0, 1]): the
              prediction is ``p >= 0.5`` and the ROC AUC is added;
            * ``(N,)`` int (or bool) predicted classes: no AUC.
        labels: the ordered classes the kappa weights run over, e.g. ``range(4)`` for BI-RADS A-D.
            ``None`` (scikit-learn's default) takes the sorted union of the values in ``y_true``
            and the predictions, so an absent class shrinks the distances; pass the full list to
            keep the ordinal spacing fixed.

    Returns:
        ``{"accuracy", "kappa_linear"}`` (floats in [0, 1] and [-1, 1]; kappa is NaN when every
        case and prediction is one class), plus ``"roc_auc"`` for binary probabilities (NaN when
        ``y_true`` holds one class only).

    Raises:
        ValueError: mismatched lengths, no cases, non-integer labels, ``y_true`` outside the
            probability columns, a 1-D float input outside [0, 1] or with non-binary ``y_true``,
            or a value that is not in ``labels``.
    """
    y = _labels_1d(y_true)
    s = np.asarray(y_prob_or_pred)
    if s.ndim not in (1, 2) or s.shape[0] != y.shape[0]:
        raise ValueError(f"y_prob_or_pred must be (N,) or (N, K) with N = {y.shape[0]}, got shape {s.shape}")
    score: np.ndarray | None = None
    if s.ndim == 2:
        prob = s.astype(np.float64)
        if not np.isfinite(prob).all():
            raise ValueError("probabilities hold NaN or infinite values")
        if y.min() < 0 or y.max() >= prob.shape[1]:
            raise ValueError(f"y_true must lie in [0, {prob.shape[1]}) for {prob.shape[1]} probability columns")
        pred = np.argmax(prob, axis=1)
        if prob.shape[1] == 2:
            score = prob[:, 1]
    elif s.dtype == bool or np.issubdtype(s.dtype, np.integer):
        pred = s.astype(np.int64)
    else:
        score = s.astype(np.float64)
        if not np.isfinite(score).all() or score.min() < 0.0 or score.max() > 1.0:
            raise ValueError(
                "a 1-D float y_prob_or_pred is read as binary class-1 probabilities and must lie in [0, 1]; "
                "pass predicted classes as an integer array"
            )
        pred = (score >= 0.5).astype(np.int64)
    classes = np.union1d(y, pred) if labels is None else np.asarray(list(labels), dtype=np.int64)
    if classes.ndim != 1 or classes.size == 0 or np.unique(classes).size != classes.size:
        raise ValueError(f"labels must be distinct class indices, got {labels!r}")
    for values in (y, pred):
        unknown = values[~np.isin(values, classes)]
        if unknown.size:
            raise ValueError(f"class {int(unknown[0])} is not among labels {classes.tolist()}")
    import warnings

    from sklearn.metrics import confusion_matrix

    with warnings.catch_warnings():  # a single class present is fine here: the labels are given
        warnings.filterwarnings("ignore", message="A single label was found", category=UserWarning)
        confusion = confusion_matrix(y, pred, labels=classes)  # rows = truth, in the caller's class order
    result = {
        "accuracy": float(np.mean(y == pred)),
        "kappa_linear": cohen_kappa(confusion, weights="linear"),
    }
    if score is not None:
        if not np.isin(y, (0, 1)).all():
            raise ValueError(f"binary probabilities need y_true in {{0, 1}}, got values {np.unique(y)[:10].tolist()}")
        result["roc_auc"] = float(binary_metrics(y, score)["roc_auc"])
    return result


# --------------------------------------------------------------------------------------------
# The R table


def forgetting_reduction(f_naive: float, f_method: float) -> float:
    """Forgetting reduction of a method relative to naive fine-tuning.

    ``(F_naive - F_method) / F_naive``: 1 = no forgetting left, 0 = as much as naive fine-tuning,
    negative = more. Only interpretable when naive fine-tuning forgets (``F_naive > 0``).

    Args:
        f_naive: absolute forgetting ``F_A`` of naive fine-tuning (same metric, same seed or mean).
        f_method: absolute forgetting ``F_A`` of the method.

    Returns:
        The reduction (float); NaN when ``F_naive == 0`` (the ratio is undefined) or either is NaN.
    """
    f_naive, f_method = float(f_naive), float(f_method)
    if f_naive == 0.0 or math.isnan(f_naive) or math.isnan(f_method):
        return math.nan
    return (f_naive - f_method) / f_naive


def _default_domains(n: int) -> tuple[str, ...]:
    return tuple(string.ascii_uppercase[:n]) if n <= len(string.ascii_uppercase) else tuple(f"d{i}" for i in range(n))


@dataclass(frozen=True, eq=False)
class AccuracyMatrix:
    """``R[t][d]``: one metric of the model after stage ``t`` on domain ``d``'s test set.

    Stage ``t`` is the model just after training on domain ``t`` (0 = after site A, 1 = after
    adapting to site B, ...), so ``T = n_stages <= n_domains``; domains beyond the last stage are
    test-only. ``L = T - 1`` is the last stage. Domains are referred to by index or name.

    Attributes:
        values: ``(T, D)`` float64, read-only; NaN entries propagate into every result.
        domains: the ``D`` domain names (default ``"A", "B", ...``).
        metric: the metric's name, e.g. ``"kappa_linear"`` or ``"accuracy"``.
    """

    values: np.ndarray
    domains: tuple[str, ...] = ()
    metric: str = "kappa_linear"

    def __post_init__(self) -> None:
        values = np.array(self.values, dtype=np.float64)
        if values.ndim != 2 or values.shape[0] == 0:
            raise ValueError(f"R must be a (stages, domains) matrix, got shape {values.shape}")
        n_stages, n_domains = values.shape
        if n_stages > n_domains:
            raise ValueError(f"{n_stages} stages but {n_domains} domains: stage t trains on domain t")
        values.setflags(write=False)
        domains = tuple(str(d) for d in self.domains) if self.domains else _default_domains(n_domains)
        if len(domains) != n_domains or len(set(domains)) != n_domains:
            raise ValueError(f"need {n_domains} distinct domain names, got {list(domains)}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "domains", domains)

    @classmethod
    def from_metrics(
        cls, stages: Sequence[Mapping[str, Mapping[str, float]]], metric: str = "kappa_linear"
    ) -> AccuracyMatrix:
        """Build ``R`` for one metric from per-stage, per-domain metric dicts.

        Args:
            stages: ``stages[t][domain]`` = e.g. :func:`site_metrics` of the stage-``t`` model on
                that domain's test set; every stage must cover the same domains (the first
                stage's key order is the domain order).
            metric: the key to take from each dict.

        Returns:
            The matrix.

        Raises:
            ValueError: no stages, a stage missing a domain, or a dict missing ``metric``.
        """
        if not stages:
            raise ValueError("no stages")
        domains = list(stages[0])
        rows = []
        for t, stage in enumerate(stages):
            if set(stage) != set(domains):
                raise ValueError(f"stage {t} covers domains {sorted(stage)}, stage 0 covers {sorted(domains)}")
            row = []
            for d in domains:
                if metric not in stage[d]:
                    raise ValueError(f"stage {t}, domain {d!r} has no {metric!r} (keys: {sorted(stage[d])})")
                row.append(float(stage[d][metric]))
            rows.append(row)
        return cls(np.array(rows), tuple(domains), metric)

    @property
    def n_stages(self) -> int:
        """``T``, the number of stages (rows)."""
        return int(self.values.shape[0])

    @property
    def last(self) -> int:
        """``L = T - 1``, the index of the last stage."""
        return self.n_stages - 1

    def to_dict(self) -> dict[str, Any]:
        """``{"metric", "domains", "values"}`` as plain JSON-able types (NaN stays a float NaN)."""
        return {"metric": self.metric, "domains": list(self.domains), "values": self.values.tolist()}

    def _domain(self, domain: int | str) -> int:
        if isinstance(domain, str):
            if domain not in self.domains:
                raise ValueError(f"unknown domain {domain!r}; domains are {list(self.domains)}")
            return self.domains.index(domain)
        d = int(domain)
        if not 0 <= d < len(self.domains):
            raise ValueError(f"domain index {d} out of range for {len(self.domains)} domains")
        return d

    def _seen_before_last(self, domain: int | str) -> int:
        d = self._domain(domain)
        if d >= self.last:
            raise ValueError(
                f"domain {self.domains[d]!r} is trained at stage {d}, not before the last stage {self.last}: "
                "nothing to forget yet"
            )
        return d

    def _need_two_stages(self, what: str) -> None:
        if self.n_stages < 2:
            raise ValueError(f"{what} needs at least 2 stages, R has {self.n_stages}")

    def retention(self, domain: int | str = 0) -> float:
        """Retention on an old domain: ``R[L][d]``; for two stages, ``R[1][A]``.

        Args:
            domain: the old domain (default A).

        Returns:
            The last stage's metric on that domain.
        """
        return float(self.values[self.last, self._domain(domain)])

    def forgetting(self, domain: int | str = 0) -> float:
        """Absolute forgetting ``F_d = R[d][d] - R[L][d]``; for domain A, ``F_A = R[0][A] - R[1][A]``.

        The value just after training on ``d`` minus the last value: Avalanche's
        ``ExperienceForgetting`` (initial - last).

        Args:
            domain: a domain trained before the last stage (default A).

        Returns:
            ``F_d`` (positive = forgotten).

        Raises:
            ValueError: the domain is not trained before the last stage.
        """
        d = self._seen_before_last(domain)
        return float(self.values[d, d] - self.values[self.last, d])

    def relative_forgetting(self, domain: int | str = 0) -> float:
        """Relative forgetting ``F_d / R[d][d]``; for domain A, ``F_A / R[0][A]``.

        Meaningful for metrics that are positive before forgetting (accuracy, AUC, a kappa > 0).

        Args:
            domain: a domain trained before the last stage (default A).

        Returns:
            The fraction of the initial value lost; NaN when ``R[d][d] == 0``.
        """
        d = self._seen_before_last(domain)
        initial = float(self.values[d, d])
        return self.forgetting(d) / initial if initial != 0.0 else math.nan

    def backward_transfer(self) -> float:
        """Backward transfer ``BWT = (1/(T-1)) sum_{d<T} (R[T-1][d] - R[d][d])`` (Lopez-Paz & Ranzato, GEM).

        ``T`` = number of stages; the ``d = T - 1`` term is zero, so this is the mean over the
        ``T - 1`` earlier domains. Equals ``-average_forgetting_first()`` (Avalanche: BWT =
        -forgetting); for two domains ``BWT = -F_A``.

        Returns:
            BWT (negative = forgetting).

        Raises:
            ValueError: fewer than 2 stages.
        """
        self._need_two_stages("backward transfer")
        t = self.n_stages
        return float(sum(self.values[t - 1, d] - self.values[d, d] for d in range(t)) / (t - 1))

    def average_forgetting_max(self) -> float:
        """Average forgetting over a stream, max-vs-last (Chaudhry et al. 2018).

        ``mean_{d<L} [max_{t<L} R[t][d] - R[L][d]]`` with ``L`` the last stage: the best value
        any earlier stage reached on ``d`` (including zero-shot stages ``t < d``, as in Chaudhry's
        definition) minus the last. Differs from :meth:`average_forgetting_first` when an
        intermediate stage beats ``R[d][d]``; equal for two stages.

        Returns:
            The mean over the domains trained before the last stage.

        Raises:
            ValueError: fewer than 2 stages.
        """
        self._need_two_stages("average forgetting")
        last = self.last
        return float(np.mean([self.values[:last, d].max() - self.values[last, d] for d in range(last)]))

    def average_forgetting_first(self) -> float:
        """Average forgetting over a stream, first-vs-last (Avalanche ``StreamForgetting``).

        ``mean_{d<L} [R[d][d] - R[L][d]]``: the value just after training on ``d`` minus the last,
        averaged over the domains trained before the last stage ``L``. Equals ``-BWT``.

        Returns:
            The mean forgetting.

        Raises:
            ValueError: fewer than 2 stages.
        """
        self._need_two_stages("average forgetting")
        return float(np.mean([self.forgetting(d) for d in range(self.last)]))

    def plasticity(self, domain: int | str = 1) -> float:
        """Plasticity on a new domain: ``R[d][d]``, the value just after training on it; ``R[1][B]``.

        Args:
            domain: a trained domain (default B).

        Returns:
            The metric on ``d`` after the stage that trained on ``d``.

        Raises:
            ValueError: the domain has no stage (test-only).
        """
        d = self._domain(domain)
        if d >= self.n_stages:
            raise ValueError(f"domain {self.domains[d]!r} is never trained on ({self.n_stages} stages)")
        return float(self.values[d, d])

    def plasticity_gap(self, naive: AccuracyMatrix, domain: int | str = 1) -> float:
        """Gap to naive fine-tuning on the new domain: ``R_naive[1][B] - R[1][B]`` (for domain ``d``, at stage ``d``).

        The intransigence-style cost of regularization: positive = the method learns B less well.

        Args:
            naive: the naive fine-tuning arm's matrix (same domains).
            domain: the new domain (default B).

        Returns:
            ``naive.plasticity(d) - self.plasticity(d)``.
        """
        return naive.plasticity(domain) - self.plasticity(domain)

    def forward_transfer(self, domain: int | str = 1) -> float:
        """Forward transfer / zero-shot: ``R[d-1][d]``, the model before adapting to ``d``; ``R[0][B]``.

        Not Avalanche's ``ForwardTransfer``, which subtracts a randomly initialized model's value.

        Args:
            domain: a domain after the first (default B).

        Returns:
            The metric on ``d`` of the stage just before training on ``d``.

        Raises:
            ValueError: domain 0 (no earlier stage) or no stage ``d - 1``.
        """
        d = self._domain(domain)
        if not 1 <= d <= self.n_stages:
            raise ValueError(f"forward transfer on domain {self.domains[d]!r} needs stage {d - 1}")
        return float(self.values[d - 1, d])

    def forgetting_reduction(self, naive: AccuracyMatrix, domain: int | str = 0) -> float:
        """``(F_naive - F_method) / F_naive`` on ``domain`` (default A); NaN when ``F_naive == 0``.

        Args:
            naive: the naive fine-tuning arm's matrix (same domains and stages).
            domain: a domain trained before the last stage.

        Returns:
            See :func:`forgetting_reduction`.
        """
        return forgetting_reduction(naive.forgetting(domain), self.forgetting(domain))

    def average_accuracy(self, stage: int = -1) -> float:
        """Average metric ``mean_d R[T][d]`` over all domains at a stage (default the last).

        Args:
            stage: stage index (negative counts from the end).

        Returns:
            The mean over the ``D`` domains (test-only domains included).
        """
        if not -self.n_stages <= stage < self.n_stages:
            raise ValueError(f"stage {stage} out of range for {self.n_stages} stages")
        return float(np.mean(self.values[stage]))

    def joint_gap(self, joint: AccuracyMatrix | float | ArrayLike) -> float:
        """Gap to joint training: ``mean_d R_joint[d] - mean_d R[L][d]`` (positive = below the pooled reference).

        Args:
            joint: the joint (A+B pooled) model: its matrix (last stage used), its per-domain
                values ``(D,)``, or its already averaged value.

        Returns:
            The joint model's average minus :meth:`average_accuracy`.
        """
        if isinstance(joint, AccuracyMatrix):
            reference = joint.average_accuracy()
        else:
            values = np.asarray(joint, dtype=np.float64)
            if values.ndim == 1 and values.size != len(self.domains):
                raise ValueError(f"joint has {values.size} values for {len(self.domains)} domains")
            reference = float(np.mean(values))
        return reference - self.average_accuracy()


# --------------------------------------------------------------------------------------------
# Arm rows, their summary and the lambda trade-off curve


def _metric_value(value: Mapping[str, float] | float, metric: str, what: str) -> float:
    if isinstance(value, Mapping):
        if metric not in value:
            raise ValueError(f"{what} has no {metric!r} (keys: {sorted(value)})")
        return float(value[metric])
    return float(value)


def _scalar_keys(metrics: Mapping[str, Any]) -> list[str]:
    return [
        k
        for k, v in metrics.items()
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
    ]


def arm_row(
    arm: str,
    lam: float | None,
    seed: int,
    *,
    old_before: Mapping[str, float],
    old_after: Mapping[str, float],
    new_before: Mapping[str, float],
    new_after: Mapping[str, float],
    metric: str = "kappa_linear",
    naive_old_after: Mapping[str, float] | float | None = None,
    naive_new_after: Mapping[str, float] | float | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One flat row of results for one (arm, lambda, seed) of a two-site expansion A -> B.

    "Before" is the site-A model (stage 0), "after" the adapted model (stage 1); "old" is site A's
    test set, "new" site B's. With ``R`` the 2x2 matrix of ``metric``:
    ``forgetting = F_A = R[0][A] - R[1][A]``, ``relative_forgetting = F_A / R[0][A]``,
    ``bwt = R[1][A] - R[0][A] = -F_A``, ``average_after = (R[1][A] + R[1][B]) / 2``,
    ``plasticity_gap = R_naive[1][B] - R[1][B]``,
    ``forgetting_reduction = (F_naive - F_A) / F_naive`` with ``F_naive = R[0][A] - R_naive[1][A]``.

    Args:
        arm: the arm's name (e.g. ``"ewc-gbn"``).
        lam: EWC lambda, or ``None`` for arms without one (NaN is stored as ``None`` too).
        seed: the repetition's seed.
        old_before, old_after, new_before, new_after: :func:`site_metrics` dicts (any scalar
            metrics; the keys common to all four become columns).
        metric: the metric the derived columns use (``"kappa_linear"``; ``"roc_auc"`` for a
            binary head).
        naive_old_after: naive fine-tuning's ``R[1][A]`` (its metric dict or the value), same seed
            (or mean); gives ``forgetting_reduction``. The naive arm shares the A model, so its
            ``R[0][A]`` is ``old_before``.
        naive_new_after: naive fine-tuning's ``R[1][B]``; gives ``plasticity_gap``.
        extra: further columns appended as they are (e.g. the Fisher mode, epochs).

    Returns:
        ``{"arm", "lambda", "seed", "metric", old_<m>_before, old_<m>_after, new_<m>_before,
        new_<m>_after for every metric m (``kappa_linear`` spelled ``kappa``: ``old_kappa_before``
        ...), "forgetting", "relative_forgetting", "bwt", "average_after", "plasticity_gap",
        "forgetting_reduction", **extra}``. The naive-based columns are NaN when the naive values
        are not given.

    Raises:
        ValueError: ``metric`` missing from one of the four dicts, or an ``extra`` key that clashes.
    """
    parts = {"old_before": old_before, "old_after": old_after, "new_before": new_before, "new_after": new_after}
    common = [k for k in _scalar_keys(old_before) if all(k in p for p in parts.values())]
    if metric not in common:
        raise ValueError(f"metric {metric!r} is not a scalar in all four metric dicts (common: {common})")
    lam_value = None if lam is None or math.isnan(float(lam)) else float(lam)
    row: dict[str, Any] = {"arm": str(arm), "lambda": lam_value, "seed": int(seed), "metric": metric}
    for key in common:
        short = _SHORT_NAMES.get(key, key)
        for site in ("old", "new"):
            for when in ("before", "after"):
                row[f"{site}_{short}_{when}"] = float(parts[f"{site}_{when}"][key])
    matrix = AccuracyMatrix(
        np.array([[old_before[metric], new_before[metric]], [old_after[metric], new_after[metric]]], dtype=np.float64),
        metric=metric,
    )
    row["forgetting"] = matrix.forgetting(0)
    row["relative_forgetting"] = matrix.relative_forgetting(0)
    row["bwt"] = matrix.backward_transfer()
    row["average_after"] = matrix.average_accuracy()
    row["plasticity_gap"] = (
        math.nan
        if naive_new_after is None
        else _metric_value(naive_new_after, metric, "naive_new_after") - matrix.plasticity(1)
    )
    if naive_old_after is None:
        row["forgetting_reduction"] = math.nan
    else:
        f_naive = matrix.values[0, 0] - _metric_value(naive_old_after, metric, "naive_old_after")
        row["forgetting_reduction"] = forgetting_reduction(f_naive, row["forgetting"])
    for key, value in (extra or {}).items():
        if key in row:
            raise ValueError(f"extra column {key!r} clashes with a computed column")
        row[key] = value
    return row


def _is_number(value: Any) -> bool:
    return value is None or (
        isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    )


def summarize_arms(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean and SD over seeds of every numeric column, per (arm, lambda).

    SD is the sample standard deviation (``ddof=1``), NaN for a single seed. NaN values propagate
    (a NaN kappa in one seed makes that column's mean NaN) rather than being dropped silently.

    Args:
        rows: :func:`arm_row` dicts (any dicts with ``arm``, ``lambda`` and ``seed``).

    Returns:
        One dict per (arm, lambda) in order of first appearance: ``arm``, ``lambda``, ``n_seeds``,
        ``seeds`` (list), each non-numeric column that is constant within the group (e.g.
        ``metric``), and ``<column>_mean`` / ``<column>_sd`` for every numeric column (``None``
        values count as NaN).

    Raises:
        ValueError: a row without ``arm``/``lambda``/``seed``, or a repeated (arm, lambda, seed).
    """
    groups: dict[tuple[str, float | None], list[Mapping[str, Any]]] = {}
    for row in rows:
        missing = [k for k in _KEY_COLUMNS if k not in row]
        if missing:
            raise ValueError(f"row lacks {missing}: {dict(row)}")
        lam = row["lambda"]
        key = (str(row["arm"]), None if lam is None or math.isnan(float(lam)) else float(lam))
        group = groups.setdefault(key, [])
        if any(r["seed"] == row["seed"] for r in group):
            raise ValueError(f"arm {key[0]!r}, lambda {key[1]} has seed {row['seed']} twice")
        group.append(row)
    summaries = []
    for (arm, lam), group in groups.items():
        summary: dict[str, Any] = {
            "arm": arm,
            "lambda": lam,
            "n_seeds": len(group),
            "seeds": [r["seed"] for r in group],
        }
        columns: list[str] = []
        for r in group:
            columns += [c for c in r if c not in _KEY_COLUMNS and c not in columns]
        for column in columns:
            values = [r.get(column) for r in group]
            if all(_is_number(v) for v in values):
                data = np.array([math.nan if v is None else float(v) for v in values])
                summary[f"{column}_mean"] = float(np.mean(data))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    summary[f"{column}_sd"] = float(np.std(data, ddof=1)) if data.size > 1 else math.nan
            elif all(v == values[0] for v in values):
                summary[column] = values[0]
        summaries.append(summary)
    return summaries


def tradeoff_curve(rows: Iterable[Mapping[str, Any]], arm: str, *, metric: str = "kappa") -> list[dict[str, Any]]:
    """The lambda trade-off curve of one arm: x = ``R[1][B]``, y = ``R[1][A]`` per lambda, means over seeds.

    Args:
        rows: :func:`arm_row` dicts (other arms are ignored).
        arm: the arm to trace, e.g. ``"ewc-gbn"``.
        metric: the column spelling of the metric (``"kappa"``, ``"accuracy"``, ``"roc_auc"``).

    Returns:
        One point per lambda, sorted by increasing lambda (``None`` first): ``{"lambda",
        "new_after" (x), "old_after" (y), "new_after_sd", "old_after_sd", "n_seeds"}``.

    Raises:
        ValueError: no row of ``arm``, or the rows lack ``new_<metric>_after``/``old_<metric>_after``.
    """
    selected = [r for r in rows if r.get("arm") == arm]
    if not selected:
        raise ValueError(f"no rows for arm {arm!r}")
    x_col, y_col = f"new_{metric}_after", f"old_{metric}_after"
    points = []
    for summary in summarize_arms(selected):
        if f"{x_col}_mean" not in summary or f"{y_col}_mean" not in summary:
            raise ValueError(f"rows of arm {arm!r} lack the numeric columns {x_col!r} and {y_col!r}")
        points.append(
            {
                "lambda": summary["lambda"],
                "new_after": summary[f"{x_col}_mean"],
                "old_after": summary[f"{y_col}_mean"],
                "new_after_sd": summary[f"{x_col}_sd"],
                "old_after_sd": summary[f"{y_col}_sd"],
                "n_seeds": summary["n_seeds"],
            }
        )
    return sorted(points, key=lambda p: (p["lambda"] is not None, p["lambda"] or 0.0))
