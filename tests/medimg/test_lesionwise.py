"""BraTS lesion-wise metrics on tiny synthetic masks with hand-computed values, and the surface
distances against MONAI's."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics.utils import get_mask_edges, get_surface_distance

from medimg.evaluation.brats_lesionwise import (
    CHALLENGE_REGIONS,
    HD95_INFINITY,
    case_columns,
    lesionwise_case,
    summarise_mets,
    summarise_seg,
    summary_rows,
)
from medimg.evaluation.lesionwise import connected_lesions, evaluate_region, match_lesions
from medimg.evaluation.surface import directed_surface_distances, hd95, normalized_surface_dice, surface_metrics

SHAPE = (20, 20, 20)
ONE_MM = (1.0, 1.0, 1.0)


def cube(corner: tuple[int, int, int], size: int = 3, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    x, y, z = corner
    mask[x : x + size, y : y + size, z : z + size] = True
    return mask


A = cube((2, 2, 2))  # 27 voxels
B = cube((10, 10, 10))  # 27 voxels, far from A


# --- lesions and matching -------------------------------------------------------------------


def test_missed_lesion_is_a_false_negative() -> None:
    result = evaluate_region(A | B, A, ONE_MM)
    assert (result.n_ref, result.n_pred, result.tp, result.fp, result.fn) == (2, 1, 1, 0, 1)
    assert result.f1 == pytest.approx(2 / 3)
    matched = [lesion for lesion in result.lesions if lesion.matched]
    assert len(matched) == 1 and matched[0].dice == 1.0 and matched[0].hd95 == 0.0 and matched[0].nsd == 1.0
    # the shipped official rule leaves the missed lesion out of the means; the current one penalises it
    assert summarise_mets(result)["lesionwise_dsc_mean"] == 1.0
    penalised = summarise_mets(result, penalise_unmatched=True)
    assert penalised["lesionwise_dsc_mean"] == 0.5
    assert penalised["lesionwise_hd95_mean"] == HD95_INFINITY / 2
    assert penalised["lesionwise_dsc_std"] == 0.5  # population std of (1, 0)


def test_false_positive_lesion() -> None:
    result = evaluate_region(A, A | B, ONE_MM)
    assert (result.tp, result.fp, result.fn) == (1, 1, 0)
    assert result.f1 == pytest.approx(2 / 3)
    row = summarise_mets(result)
    assert row["lesionwise_dsc_mean"] == 1.0
    assert math.isnan(row["small_instance_tp"])  # no small reference lesion: the small columns are NaN
    assert summarise_mets(result, penalise_unmatched=True)["lesionwise_nsd_mean"] == 0.5


def test_two_lesions_merged_by_the_prediction() -> None:
    first, second = cube((2, 2, 2)), cube((2, 2, 6))  # a gap of one slice (z = 5) between them
    merged = first | second
    merged[2:5, 2:5, 5] = True  # 27 + 27 + 9 = 63 voxels, one component
    result = evaluate_region(first | second, merged, ONE_MM)
    assert (result.n_ref, result.n_pred, result.tp, result.fp, result.fn) == (2, 1, 1, 0, 1)
    (matched,) = [lesion for lesion in result.lesions if lesion.matched]
    assert matched.dice == pytest.approx(2 * 27 / (27 + 63))


def test_empty_versus_empty() -> None:
    empty = np.zeros(SHAPE, dtype=bool)
    result = evaluate_region(empty, empty, ONE_MM)
    assert (result.n_ref, result.n_pred, result.tp, result.fp, result.fn) == (0, 0, 0, 0, 0)
    assert math.isnan(result.f1)
    for summary in (summarise_mets(result), summarise_seg(result)):
        assert summary["all_instance_tp"] == 0
        assert math.isnan(summary["all_instance_f1"]) and math.isnan(summary["lesionwise_dsc_mean"])
    row, _ = lesionwise_case(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8), ONE_MM)
    assert math.isnan(row["lesionwise_hd95_mean_et"]) and row["all_instance_fn_wt"] == 0


def test_small_lesion_under_the_volume_threshold() -> None:
    small = cube((4, 4, 4), size=2)  # 8 voxels
    half = small.copy()
    half[:, :, 5] = False  # 4 voxels: Dice 2*4/(8+4) = 2/3 >= 0.1
    row = summarise_mets(evaluate_region(small, half, ONE_MM))  # 8 mm^3 < 20: small, only detected
    assert (row["small_instance_tp"], row["small_instance_fn"], row["small_instance_fp"]) == (1, 0, 0)
    assert row["small_instance_f1"] == 1.0
    assert math.isnan(row["lesionwise_dsc_mean"])  # no large lesion
    # the threshold is in mm^3: the same 8 voxels of 2 mm are 64 mm^3, a large lesion
    large = summarise_mets(evaluate_region(small, half, (2.0, 2.0, 2.0)))
    assert large["lesionwise_dsc_mean"] == pytest.approx(2 / 3)
    assert math.isnan(large["small_instance_tp"])
    # below the overlap threshold, a matched small lesion is not detected
    assert summarise_mets(evaluate_region(small, half, ONE_MM), overlap_threshold=0.7)["small_instance_fn"] == 1


def test_lesions_are_26_connected() -> None:
    mask = np.zeros(SHAPE, dtype=bool)
    mask[3, 3, 3] = mask[4, 4, 4] = True  # touching by a corner only
    assert connected_lesions(mask)[1] == 1


def test_matching_maximises_total_dice_one_to_one() -> None:
    ref_labels = np.zeros((1, 12), dtype=np.int32)
    ref_labels[0, 0:4] = 1
    ref_labels[0, 6:10] = 2
    pred_labels = np.zeros((1, 12), dtype=np.int32)
    pred_labels[0, 2:8] = 1  # overlaps both reference lesions (Dice 0.4 each)
    pred_labels[0, 9:11] = 2  # overlaps reference lesion 2 only (Dice 1/3)
    pairs, _, _ = match_lesions(ref_labels, 2, pred_labels, 2)
    assert [(r, p) for r, p, _ in pairs] == [(1, 1), (2, 2)]  # 0.4 + 1/3 beats 0.4 + 0
    assert pairs[1][2] == pytest.approx(1 / 3)


def test_seg_rules_zero_true_positives() -> None:
    row = summarise_seg(evaluate_region(A, B, ONE_MM))
    assert (row["all_instance_tp"], row["all_instance_fp"], row["all_instance_fn"]) == (0, 1, 1)
    assert row["lesionwise_dsc_mean"] == 0.0 and row["lesionwise_hd95_mean"] == HD95_INFINITY
    assert math.isnan(row["lesionwise_dsc_std"])


def test_case_columns_and_label_groups() -> None:
    reference = np.zeros(SHAPE, np.uint16)
    reference[A] = 3  # ET (inside TC and WT)
    reference[B] = 2  # SNFH: WT only
    prediction = reference.copy()
    row, results = lesionwise_case(reference, prediction, ONE_MM)
    assert list(row) == case_columns("mets")[1:]
    assert (results["et"].n_ref, results["tc"].n_ref, results["wt"].n_ref, results["rc"].n_ref) == (1, 1, 2, 0)
    assert row["lesionwise_dsc_mean_wt"] == 1.0
    assert set(CHALLENGE_REGIONS["ped"]) == {"et", "net", "cc", "ed", "tc", "wt"}
    with pytest.raises(ValueError, match="unknown challenge"):
        lesionwise_case(reference, prediction, ONE_MM, challenge="nope")


def test_summary_rows_are_nan_skipping_mean_and_sample_std() -> None:
    rows = [{"case_id": "a", "x": 1.0}, {"case_id": "b", "x": 3.0}, {"case_id": "c", "x": math.nan}]
    mean, std = summary_rows(rows, ["case_id", "x"])
    assert mean == {"case_id": "mean", "x": 2.0}
    assert std["x"] == pytest.approx(math.sqrt(2.0))  # ddof 1, as pandas
    assert math.isnan(summary_rows(rows[:1], ["case_id", "x"])[1]["x"])


# --- surface distances ----------------------------------------------------------------------


def test_hd95_and_nsd_of_a_shifted_cube_by_hand() -> None:
    reference = cube((4, 4, 4), size=4)
    shifted = cube((5, 4, 4), size=4)  # one voxel along x
    distances = directed_surface_distances(shifted, reference)
    # 56 surface voxels: the 16 of the far face (x = 8) lie outside the reference and the 4 in the
    # middle of the near face (x = 5) lie inside it, all 1 mm from its surface; the other 36 lie on it
    assert distances.size == 56 and np.count_nonzero(distances) == 20 and distances.max() == 1.0
    assert hd95(reference, shifted) == 1.0
    assert normalized_surface_dice(reference, shifted) == 1.0  # tolerance 1 mm
    assert normalized_surface_dice(reference, shifted, tolerance=0.5) == pytest.approx(36 / 56)
    # the NSD tolerance defaults to the smallest spacing: 0.5 mm voxels -> all 1-voxel errors are 0.5 mm
    assert surface_metrics(reference, shifted, (0.5, 1.0, 1.0)) == (0.5, 1.0)
    # the same shift along y: the 16 far-face voxels are 1 mm off, beyond the 0.5 mm tolerance (the
    # 4 near-face ones are 0.5 mm from the surface along x, within it)
    across = cube((4, 5, 4), size=4)
    assert surface_metrics(reference, across, (0.5, 1.0, 1.0)) == (1.0, pytest.approx(40 / 56))
    assert surface_metrics(reference, np.zeros_like(reference)) == (math.inf, 0.0)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8594, 0.8594, 1.5), (0.5, 2.0, 1.0)])
def test_directed_distances_equal_monai(spacing: tuple[float, float, float]) -> None:
    rng = np.random.default_rng(0)
    reference = np.zeros((24, 20, 16), dtype=bool)
    prediction = np.zeros_like(reference)
    reference[5:15, 4:14, 3:12] = rng.random((10, 10, 9)) > 0.2
    prediction[6:17, 3:12, 4:13] = rng.random((11, 9, 9)) > 0.3
    edges_pred, edges_ref = get_mask_edges(torch.as_tensor(prediction), torch.as_tensor(reference), crop=False)
    monai_pred_to_ref = np.sort(np.asarray(get_surface_distance(edges_pred, edges_ref, spacing=spacing)))
    monai_ref_to_pred = np.sort(np.asarray(get_surface_distance(edges_ref, edges_pred, spacing=spacing)))
    ours = np.sort(directed_surface_distances(prediction, reference, spacing))
    np.testing.assert_allclose(ours, monai_pred_to_ref, rtol=1e-6)
    pooled = np.concatenate([monai_pred_to_ref, monai_ref_to_pred]).astype(np.float64)
    assert hd95(reference, prediction, spacing) == pytest.approx(np.percentile(pooled, 95), rel=1e-6)
