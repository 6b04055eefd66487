"""QU-BraTS scorer: the official reference cases, a direct spec implementation, edge cases."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qubrats_factory import direct_score, make_case

from uncertainty.qubrats import REGIONS, score_case, thresholds

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "data" / "qubrats-reference"
needs_reference = pytest.mark.skipif(not REFERENCE.is_dir(), reason="shared QU-BraTS reference cases not present")


def _reference_case(case_id: str):
    folder = REFERENCE / "cases" / case_id

    def load(suffix: str) -> np.ndarray:
        return nib.load(str(folder / f"{case_id}{suffix}.nii.gz")).get_fdata()

    maps = {r: load(f"_unc_{s}") for r, s in zip(REGIONS, ("whole", "core", "enhance"), strict=True)}
    return score_case(load(""), maps, load("_seg"), load("_brainmask"), case_id=case_id)


@needs_reference
def test_reference_scores_and_curves_match_the_official_scorer() -> None:
    expected = list(csv.DictReader(open(REFERENCE / "expected_scores.csv")))
    curves = list(csv.DictReader(open(REFERENCE / "expected_curves.csv")))
    cases = {cid: _reference_case(cid) for cid in sorted({row["case_id"] for row in expected})}
    for row in expected:
        result = cases[row["case_id"]][row["region"]]
        assert result.dsc_auc == pytest.approx(float(row["DSC_AUC"]), abs=1e-6)
        assert result.ftp_auc == pytest.approx(float(row["FTP_RATIO_AUC"]), abs=1e-6)
        assert result.ftn_auc == pytest.approx(float(row["FTN_RATIO_AUC"]), abs=1e-6)
        assert result.score == pytest.approx(float(row["SCORE"]), abs=1e-6)
    for case_id, case in cases.items():
        rows = [r for r in curves if r["case_id"] == case_id]
        assert len(rows) == 41
        for i, row in enumerate(rows):
            for region in REGIONS:
                result = case[region]
                assert result.thresholds[i] == float(row["THRESHOLDS"])
                assert result.dsc[i] == pytest.approx(float(row[f"{region}_DICE"]), abs=1e-6)
                assert result.ftp[i] == pytest.approx(float(row[f"{region}_FTP_RATIO"]), abs=1e-6)
                assert result.ftn[i] == pytest.approx(float(row[f"{region}_FTN_RATIO"]), abs=1e-6)


def test_threshold_grid() -> None:
    taus = thresholds()
    assert len(taus) == 41 and taus[0] == 100.0 and taus[-1] == 0.0
    np.testing.assert_array_equal(np.diff(taus), -2.5)
    assert len(thresholds(11)) == 11 and thresholds(11)[1] == 90.0
    with pytest.raises(ValueError):
        thresholds(1)


@st.composite
def small_cases(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shape = tuple(draw(st.lists(st.integers(2, 7), min_size=3, max_size=3)))
    labels = np.array([0, 1, 2, 4])
    truth = rng.choice(labels, size=shape, p=draw(st.sampled_from([(0.7, 0.1, 0.1, 0.1), (1, 0, 0, 0), (0.25,) * 4])))
    prediction = np.where(rng.random(shape) < 0.3, rng.choice(labels, size=shape), truth)
    kind = draw(st.sampled_from(["uint8", "grid", "float", "extremes"]))
    num = draw(st.sampled_from([2, 5, 41]))
    grid = thresholds(num)
    maps = {}
    for region in REGIONS:
        if kind == "uint8":
            maps[region] = rng.integers(0, 101, shape).astype(np.uint8)
        elif kind == "grid":  # values exactly on thresholds: kept at that threshold
            maps[region] = rng.choice(grid, size=shape)
        elif kind == "float":
            maps[region] = rng.uniform(0, 100, shape).astype(draw(st.sampled_from([np.float32, np.float64])))
        else:
            maps[region] = rng.choice(np.array([0.0, 100.0]), size=shape)
    brain = rng.random(shape) < draw(st.sampled_from([0.0, 0.8, 1.0]))
    return prediction, maps, truth, brain, num


@given(small_cases())
@settings(max_examples=60, deadline=None)
def test_vectorized_equals_direct_implementation(case) -> None:
    prediction, maps, truth, brain, num = case
    fast = score_case(prediction, maps, truth, brain, num_thresholds=num)
    slow = direct_score(prediction, maps, truth, brain, thresholds(num))
    for region in REGIONS:
        np.testing.assert_allclose(fast[region].dsc, slow[region]["dsc"], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(fast[region].ftp, slow[region]["ftp"])
        np.testing.assert_array_equal(fast[region].ftn, slow[region]["ftn"])
        # AUCs: the scorer sums float32 curve values pairwise in float32, as sklearn's auc does on the
        # official float32 curves; the direct version sums in float64, so they differ by ~1e-9.
        for key in ("dsc_auc", "ftp_auc", "ftn_auc", "score"):
            assert getattr(fast[region], key) == pytest.approx(slow[region][key], abs=1e-7)


def test_all_zero_map_scores_dsc_plus_two_over_three() -> None:
    case = make_case(np.random.default_rng(0))
    zero = {r: np.zeros_like(m) for r, m in case["maps"].items()}
    result = score_case(case["prediction"], zero, case["truth"], case["brain"])
    for r in result.regions:
        assert r.ftp_auc == 0.0 and r.ftn_auc == 0.0
        assert np.all(r.dsc == r.dsc[0])  # never filtered
        assert r.score == pytest.approx((r.dsc_auc + 2) / 3)


def test_all_100_map_filters_everything_below_100() -> None:
    case = make_case(np.random.default_rng(1))
    full = {r: np.full_like(m, 100) for r, m in case["maps"].items()}
    result = score_case(case["prediction"], full, case["truth"], case["brain"])
    for r in result.regions:
        # kept only at tau = 100: FTP = FTN = 1 elsewhere, so AUC = (2.5 * 0.5 + 97.5) / 100
        assert r.ftp_auc == pytest.approx(0.9875, abs=1e-7)
        assert r.ftn_auc == pytest.approx(0.9875, abs=1e-7)
        assert r.dsc_auc == pytest.approx(0.975 + 0.0125 * (1 + r.dsc[0]))


def test_empty_regions() -> None:
    shape = (6, 6, 6)
    truth = np.zeros(shape, np.uint8)
    prediction = np.zeros(shape, np.uint8)
    maps = {r: np.full(shape, 50, np.uint8) for r in REGIONS}
    both_empty = score_case(prediction, maps, truth, None)
    for r in both_empty.regions:
        assert r.dsc_auc == 1.0 and r.ftp_auc == 0.0
    prediction[0, 0, :3] = 4  # 3 false-positive ET voxels, truth empty
    maps["ET"][0, 0, :3] = 30
    fp = score_case(prediction, maps, truth, None)["ET"]
    # DSC 0 while the FPs are kept (tau >= 30), 1 once they are filtered (tau < 30)
    expected = np.where(thresholds() >= 30, 0.0, 1.0)
    np.testing.assert_array_equal(fp.dsc, expected)
    assert fp.ftp_auc == 0.0  # no true positives


def test_value_on_threshold_is_kept_and_nan_never_filtered() -> None:
    truth = np.array([[[1, 1]]], np.uint8)
    prediction = truth.copy()
    on = {r: np.array([[[50.0, 50.0]]]) for r in REGIONS}
    r = score_case(prediction, on, truth, None)["TC"]
    kept = thresholds() >= 50
    np.testing.assert_array_equal(r.ftp, np.where(kept, 0.0, 1.0).astype(np.float32))
    nan = {reg: np.array([[[np.nan, np.nan]]]) for reg in REGIONS}
    assert score_case(prediction, nan, truth, None)["TC"].ftp_auc == 0.0  # NaN > tau is False


def test_brain_mask_is_boolean_even_for_negative_t1() -> None:
    case = make_case(np.random.default_rng(2))
    t1 = np.where(case["brain"] > 0, 5.0, -3.0)  # z-scored T1: negative outside the brain
    with_t1 = score_case(case["prediction"], case["maps"], case["truth"], t1)
    with_mask = score_case(case["prediction"], case["maps"], case["truth"], case["brain"])
    for a, b in zip(with_t1.regions, with_mask.regions, strict=True):
        assert a.score == b.score
        assert 0 <= a.ftn_auc <= 1


def test_integer_and_float_maps_agree() -> None:
    case = make_case(np.random.default_rng(3))
    as_float = {r: m.astype(np.float64) for r, m in case["maps"].items()}
    as_int16 = {r: m.astype(np.int16) for r, m in case["maps"].items()}
    a = score_case(case["prediction"], case["maps"], case["truth"], case["brain"])
    b = score_case(case["prediction"], as_float, case["truth"], case["brain"])
    c = score_case(case["prediction"], as_int16, case["truth"], case["brain"])
    for ra, rb, rc in zip(a.regions, b.regions, c.regions, strict=True):
        assert ra.score == rb.score == rc.score


def test_shape_mismatch_raises() -> None:
    case = make_case(np.random.default_rng(4))
    bad = dict(case["maps"], ET=case["maps"]["ET"][:-1])
    with pytest.raises(ValueError, match="ET uncertainty has shape"):
        score_case(case["prediction"], bad, case["truth"], case["brain"])


def test_scorer_does_not_import_torch() -> None:
    code = "import sys, uncertainty.scoring, uncertainty.leaderboard; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_memory_order_does_not_change_the_result() -> None:
    case = make_case(np.random.default_rng(6))
    c_order = score_case(case["prediction"], case["maps"], case["truth"], case["brain"])
    fortran = {r: np.asfortranarray(m) for r, m in case["maps"].items()}
    mixed = score_case(case["prediction"], fortran, np.asfortranarray(case["truth"]), case["brain"])
    for a, b in zip(c_order.regions, mixed.regions, strict=True):
        assert a.score == b.score
        np.testing.assert_array_equal(a.dsc, b.dsc)
