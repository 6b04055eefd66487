"""The audit presets: each rule with its own statistic, and the calibration of the paper's SSIM line."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from saliency.protocol import PAPER_LINE, PROTOCOLS, calibrate_line, get_protocol


def test_the_paper_preset_is_the_papers_protocol() -> None:
    paper = get_protocol("paper")
    assert paper.data_range == 2.0 and paper.agreement_line == PAPER_LINE == 0.5
    assert paper.localization_statistic == "trapezoid" and not paper.localization_test
    assert paper.randomization_rule == "min" and paper.replicates == 3
    assert "range 2" in paper.rule("randomization", 0.05) and ">= 0.5" in paper.rule("repeatability", 0.05)


def test_the_calibrated_preset_never_borrows_the_papers_line() -> None:
    calibrated = get_protocol("calibrated")
    assert calibrated.data_range == 1.0 and calibrated.agreement_line is None
    assert calibrated.localization_statistic == "average_precision" and calibrated.localization_test
    assert calibrated.randomization_rule == "last-tested"
    rule = calibrated.rule("reproducibility", 0.05)
    assert "calibrated to range 1" in rule and "(range 1)" in rule
    assert "Holm p < 0.01" in calibrated.rule("localization", 0.01)


def test_unknown_presets_and_criteria_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown audit preset 'captum'; choose from paper, calibrated"):
        get_protocol("captum")
    with pytest.raises(ValueError, match="unknown criterion"):
        PROTOCOLS["paper"].rule("beauty", 0.05)


def test_calibration_reads_the_fitted_relation_at_the_line() -> None:
    """A known relation target = reference - 0.1 puts the line at 0.4; a fit at the wrong point would not."""
    reference = np.linspace(0.0, 1.0, 201)
    value = calibrate_line(reference, reference - 0.1)
    assert (
        value["value"] == pytest.approx(0.4) and value["n_pairs"] == 201 and value["n_near"] in (20, 21)
    )  # 0.45 and 0.55 sit on the band's float edges
    squared = calibrate_line(reference, reference**2)  # any monotone relation
    assert squared["value"] == pytest.approx(0.25, abs=1e-3)


def test_calibration_refuses_to_place_a_line_the_pairs_do_not_reach() -> None:
    reference = np.linspace(0.7, 1.0, 50)  # every pair far above 0.5: the line lies below all of them
    above = calibrate_line(reference, reference - 0.2)
    assert math.isnan(above["value"]) and above["side"] == "above"
    assert calibrate_line(reference - 0.6, reference)["side"] == "below"
    straddling = calibrate_line([0.1, 0.2, 0.8, 0.9], [0.0, 0.1, 0.7, 0.8])  # too few pairs near 0.5
    assert math.isnan(straddling["value"]) and straddling["side"] == ""
    with pytest.raises(ValueError, match="3 reference SSIMs for 2"):
        calibrate_line([0.1, 0.2, 0.3], [0.1, 0.2])
    nan_pairs = calibrate_line([np.nan] * 30 + [0.5] * 12, [0.4] * 42)
    assert nan_pairs["n_pairs"] == 12 and nan_pairs["value"] == pytest.approx(0.4)


def test_on_smooth_maps_the_papers_line_sits_lower_at_range_one() -> None:
    """The reason for the calibration: SSIM falls when the data range shrinks, more for smooth maps."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    pairs = []
    for rho in np.linspace(0.0, 1.0, 41):
        a = rng.normal(size=(64, 64))
        b = rho * a + math.sqrt(1 - rho**2) * rng.normal(size=(64, 64))
        a, b = (gaussian_filter(m, 4) for m in (a, b))
        a, b = ((m - m.min()) / (m.max() - m.min()) for m in (a, b))
        pairs.append((structural_similarity(a, b, data_range=2.0), structural_similarity(a, b, data_range=1.0)))
    reference, target = np.asarray(pairs).T
    assert np.all(target <= reference + 1e-12)
    line = calibrate_line(reference, target, near=0.1)["value"]
    assert 0.3 < line < 0.5
