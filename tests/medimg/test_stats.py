"""Tests for the shared statistics of ``medimg.stats``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medimg.stats import finite_mean


def test_finite_mean_leaves_out_nan_inf_and_none() -> None:
    assert finite_mean([1.0, math.nan, 3.0, math.inf, -math.inf]) == 2.0
    assert finite_mean(np.array([[1.0, 2.0], [np.nan, 6.0]])) == 3.0  # every element of an array
    assert finite_mean([0.5, None, 1.5]) == 1.0
    assert type(finite_mean(np.arange(4, dtype=np.float32))) is float


def test_finite_mean_takes_any_iterable() -> None:
    assert finite_mean(v for v in (1.0, 2.0, math.nan)) == 1.5
    assert finite_mean({"a": 1.0, "b": 4.0}.values()) == 2.5
    assert finite_mean((2, 4)) == 3.0


@pytest.mark.parametrize("values", [[], [math.nan], [math.inf, None], np.array([])])
def test_finite_mean_of_nothing_finite_is_nan(values: object) -> None:
    assert math.isnan(finite_mean(values))  # type: ignore[arg-type]


def test_saliency_reexports_the_same_function() -> None:
    from saliency.verdicts import finite_mean as from_verdicts

    assert from_verdicts is finite_mean
