"""The summary row schema: one dataclass, the columns of summary.csv."""

from __future__ import annotations

import math

import pytest

from saliency.verdicts import SUMMARY_COLUMNS, SummaryRow


def test_summary_row_is_the_schema_of_summary_csv() -> None:
    row = SummaryRow("gradcam", "localization", value=0.4, baseline_value=0.35, n=50, passed=True).as_dict()
    assert tuple(row) == SUMMARY_COLUMNS
    assert row["p_value"] != row["p_value"] and math.isnan(row["p_holm"])  # no test: NaN, not 0
    assert (row["discriminating"], row["n_degenerate"], row["passed"]) == ("", 0, True)


def test_a_key_outside_the_schema_is_refused() -> None:
    with pytest.raises(TypeError, match="ssim_range"):
        SummaryRow("gradcam", "repeatability", ssim_range=2.0)  # type: ignore[call-arg]
