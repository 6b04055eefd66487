"""The audit's protocol presets: which statistic each criterion uses, at which SSIM data range, against what.

Two presets, each a complete set of settings that belong together (a threshold is only ever
compared with a statistic computed the way the threshold was meant for):

``paper`` (the default) reproduces Arun et al. 2020 as their code ran it:

* SSIM with ``data_range=2.0`` for every criterion: their 2020 scikit-image inferred the range of
  a float map from its dtype, (-1, 1), although the maps lie in [0, 1];
* localization: the trapezoidal AUPRC (their estimator); pass when the mean over images exceeds
  the average-mask prior's mean (the prior made from the training and validation masks);
* randomization: cascading re-initialization from the logits down to the block above the stem
  (the stem, and for InceptionV3 ``mixed0``, are never randomized); the curve is the mean SSIM per
  state, averaged over the model replicates (mean +- SD drawn); pass when the curve goes below
  the inter-image SSIM baseline at some state;
* repeatability (replicate pairs) and reproducibility (two architectures): pass when the mean
  SSIM reaches the reference line 0.5 the paper drew;
* three model replicates of the audited architecture.

``calibrated`` is for users who want principled settings:

* SSIM with ``data_range=1.0``, the true range of the maps;
* localization: average precision (not biased towards ties, unlike the trapezoid); pass when the
  mean exceeds the prior's *and* a one-sided paired Wilcoxon test (method > prior) gives a
  Holm-adjusted p below alpha;
* randomization: at the *last* state (no choice of the best state), the per-image SSIM must lie
  below the per-image inter-image baseline: mean below it and a one-sided paired Wilcoxon test,
  Holm-adjusted over the methods;
* repeatability / reproducibility: the paper's line 0.5 is defined at data range 2; its value at
  data range 1 depends on the maps (smooth maps lose more SSIM when the constants shrink), so the
  line is *calibrated per method* on the audit's own map pairs: every pair written to its tables
  (randomized states against the original, model pairs) is also scored at range 2, an isotonic
  regression maps range-2 SSIM to range-1 SSIM, and the line is its value at 0.5
  (:func:`calibrate_line`). The report states each method's calibrated line and the pairs behind it;
* the stem stays out of the randomization unless asked for (``include_stem``), in both presets.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "PAPER_LINE",
    "PAPER_LINE_RANGE",
    "PROTOCOLS",
    "AuditProtocol",
    "calibrate_line",
    "get_protocol",
]

#: The repeatability/reproducibility reference line of Arun et al. (their Figure 4) ...
PAPER_LINE = 0.5
#: ... and the SSIM data range it was drawn for (2020 scikit-image on float maps).
PAPER_LINE_RANGE = 2.0
#: Pairs within this distance of the line (at its own data range) must number at least
#: :data:`MIN_PAIRS_NEAR_LINE` for :func:`calibrate_line` to place it.
NEAR_LINE = 0.05
MIN_PAIRS_NEAR_LINE = 10


@dataclass(frozen=True)
class AuditProtocol:
    """One preset of the audit (see the module docstring).

    Attributes:
        name: ``"paper"`` or ``"calibrated"``.
        data_range: SSIM data range of every criterion.
        localization_statistic: ``"trapezoid"`` or ``"average_precision"`` (column of localization.csv).
        localization_test: also require the one-sided paired Wilcoxon test against the prior (Holm).
        randomization_rule: ``"min"`` (curve minimum over states below the baseline) or
            ``"last-tested"`` (last state below the baseline, per-image one-sided Wilcoxon, Holm).
        agreement_line: fixed repeatability/reproducibility line, or None: calibrated per method
            from :data:`PAPER_LINE` at :data:`PAPER_LINE_RANGE` (:func:`calibrate_line`).
        replicates: models of the audited architecture (the trained one included) the protocol
            uses for randomization curves and repeatability pairs.
    """

    name: str
    data_range: float
    localization_statistic: str
    localization_test: bool
    randomization_rule: str
    agreement_line: float | None
    replicates: int = 3

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-able dict."""
        return asdict(self)

    def rule(self, criterion: str, alpha: float) -> str:
        """The pass rule of ``criterion`` in words (stated in the report and summary.csv)."""
        statistic = "trapezoidal AUPRC" if self.localization_statistic == "trapezoid" else "average precision"
        if criterion == "localization":
            test = ""
            if self.localization_test:
                test = f" and one-sided paired Wilcoxon (method > prior), Holm p < {alpha}"
            return f"mean {statistic} > the average-mask prior's{test}"
        if criterion == "randomization":
            if self.randomization_rule == "min":
                return f"mean-SSIM curve (range {self.data_range:g}) below the inter-image SSIM baseline at some state"
            return (
                f"at the last state, mean SSIM (range {self.data_range:g}) below the inter-image baseline and "
                f"one-sided paired Wilcoxon (state < baseline, per image), Holm p < {alpha}"
            )
        if criterion in ("repeatability", "reproducibility"):
            if self.agreement_line is not None:
                return f"mean SSIM (range {self.data_range:g}) >= {self.agreement_line:g} (the paper's line)"
            return (
                f"mean SSIM (range {self.data_range:g}) >= the paper's line {PAPER_LINE:g} (range "
                f"{PAPER_LINE_RANGE:g}) calibrated to range {self.data_range:g} on this method's map pairs"
            )
        raise ValueError(f"unknown criterion {criterion!r}")


PROTOCOLS: dict[str, AuditProtocol] = {
    "paper": AuditProtocol(
        name="paper",
        data_range=PAPER_LINE_RANGE,
        localization_statistic="trapezoid",
        localization_test=False,
        randomization_rule="min",
        agreement_line=PAPER_LINE,
    ),
    "calibrated": AuditProtocol(
        name="calibrated",
        data_range=1.0,
        localization_statistic="average_precision",
        localization_test=True,
        randomization_rule="last-tested",
        agreement_line=None,
    ),
}


def get_protocol(name: str) -> AuditProtocol:
    """The preset called ``name``.

    Raises:
        ValueError: unknown name.
    """
    if name not in PROTOCOLS:
        raise ValueError(f"unknown audit preset {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def calibrate_line(
    reference: ArrayLike, target: ArrayLike, *, line: float = PAPER_LINE, near: float = NEAR_LINE
) -> dict[str, float | int | str]:
    """The value at the target data range of an SSIM line drawn at the reference range.

    Each pair of maps was scored twice: ``reference[i]`` at the line's data range (2.0) and
    ``target[i]`` at the audit's (1.0). SSIM falls monotonically as the data range shrinks, but by
    how much depends on the maps, so the relation is fitted on the pairs themselves: an increasing
    isotonic regression (scikit-learn) of ``target`` on ``reference``, read at ``line``.

    Args:
        reference: SSIM of each pair at the line's data range.
        target: SSIM of the same pairs at the target range.
        line: the line at the reference range.
        near: half-width of the band around ``line`` whose pairs are counted.

    Returns:
        ``{"value", "n_pairs", "n_near", "side"}``: the calibrated line, the finite pairs used, how
        many of them lie within ``near`` of ``line``, and ``side``: ``""``, or ``"above"`` /
        ``"below"`` when *every* pair lies on that side of the band, where the line cannot be placed
        (``value`` NaN) but is known to lie below (above) every pair at the target range too (the
        relation is monotone), so any mean of those pairs passes (fails). ``value`` is also NaN
        when the pairs straddle the line with fewer than :data:`MIN_PAIRS_NEAR_LINE` near it.

    Raises:
        ValueError: the arrays differ in length.
    """
    from sklearn.isotonic import IsotonicRegression

    x = np.asarray(reference, dtype=np.float64).ravel()
    y = np.asarray(target, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{x.size} reference SSIMs for {y.size} target SSIMs")
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    n_near = int(np.count_nonzero(np.abs(x - line) <= near))
    value, side = math.nan, ""
    if x.size and np.all(x > line + near):
        side = "above"
    elif x.size and np.all(x < line - near):
        side = "below"
    elif n_near >= MIN_PAIRS_NEAR_LINE:
        fit = IsotonicRegression(increasing=True, out_of_bounds="nan").fit(x, y)
        value = float(fit.predict([line])[0])
    return {"value": value, "n_pairs": int(x.size), "n_near": n_near, "side": side}
