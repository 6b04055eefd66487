"""Team ranking: per-pair ranks, ties, missing cases, permutation tests, the rank command."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from qubrats_factory import make_case, write_submission, write_truth
from typer.testing import CliRunner

from medimg.cli import app
from uncertainty.ranking import paired_permutation_test, rank_per_pair, rank_teams

runner = CliRunner()


def test_rank_per_pair_ties_and_missing() -> None:
    scores = np.array([[0.9, 0.5, np.nan], [0.8, 0.5, 0.7], [0.7, 0.9, np.nan]])
    ranks = rank_per_pair(scores)
    np.testing.assert_array_equal(ranks[:, 0], [1, 2, 3])
    np.testing.assert_array_equal(ranks[:, 1], [2.5, 2.5, 1])  # tie shares the mean of ranks 2 and 3
    np.testing.assert_array_equal(ranks[:, 2], [2.5, 1, 2.5])  # missing teams share the worst ranks


def test_rank_teams_mean_rank_and_nrs() -> None:
    cases = ["c1", "c2"]
    good = {(c, r): 0.9 for c in cases for r in ("WT", "TC", "ET")}
    middle = {(c, r): 0.8 for c in cases for r in ("WT", "TC", "ET")}
    partial = {("c1", r): 0.95 for r in ("WT", "TC", "ET")}  # c2 missing -> worst rank there
    ranking = rank_teams({"good": good, "middle": middle, "partial": partial}, cases, permutations=2000)
    table = {row["team"]: row for row in ranking.table}
    assert ranking.teams == ("good", "partial", "middle")  # partial: ranks 1,1,1,3,3,3 -> 2.0
    assert table["good"]["mean_rank"] == pytest.approx((2 * 3 + 1 * 3) / 6)
    assert table["partial"]["mean_rank"] == pytest.approx(2.0)
    assert table["middle"]["mean_rank"] == pytest.approx((3 * 3 + 2 * 3) / 6)
    assert table["middle"]["normalised_ranking_score"] == pytest.approx(2.5 / 3)
    assert table["partial"]["pairs_missing"] == 3 and table["good"]["pairs_missing"] == 0
    assert table["middle"]["p_value_vs_next"] is None  # last team has no next


def test_permutation_test() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=200)
    assert paired_permutation_test(a, a, permutations=1000) == 1.0
    p_far = paired_permutation_test(a, a + 1.0, permutations=5000, seed=1)
    assert p_far == pytest.approx(1 / 5001)
    b = a + rng.normal(scale=0.01, size=200) * rng.choice([-1, 1], size=200)
    p_same = paired_permutation_test(a, b, permutations=5000, seed=1)
    assert p_same > 0.05
    assert paired_permutation_test(a, b, permutations=5000, seed=1) == p_same  # seeded


def test_rank_command(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cases = {f"case{i}": make_case(rng) for i in range(3)}
    for case_id, case in cases.items():
        write_truth(tmp_path / "truth", case_id, case)
        perfect = dict(case, prediction=case["truth"])
        write_submission(tmp_path / "teams" / "alpha", case_id, perfect)
        write_submission(tmp_path / "teams" / "beta", case_id, case)
        if case_id != "case2":
            write_submission(tmp_path / "teams" / "gamma", case_id, case)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "uncertainty",
            "rank",
            str(tmp_path / "teams"),
            "--truth",
            str(tmp_path / "truth"),
            "-o",
            str(out),
            "--permutations",
            "500",
            "-q",
        ],
    )
    assert result.exit_code == 1, result.output  # gamma misses a case: reported, still ranked
    ranking = list(csv.DictReader(open(out / "ranking.csv")))
    assert [row["team"] for row in ranking] == ["alpha", "beta", "gamma"]
    assert ranking[2]["pairs_missing"] == "3"
    scores = list(csv.DictReader(open(out / "scores.csv")))
    assert len(scores) == (3 + 3 + 2) * 3 and list(scores[0])[0] == "team"
    errors = list(csv.DictReader(open(out / "errors.csv")))
    assert [(e["team"], e["case_id"]) for e in errors] == [("gamma", "case2")]
    html = (out / "report.html").read_text()
    assert "alpha" in html and "no submission for this case" in html and html.count("data:image/png") == 2


def test_rank_command_without_teams(tmp_path: Path) -> None:
    (tmp_path / "teams").mkdir()
    (tmp_path / "truth").mkdir()
    args = ["uncertainty", "rank", str(tmp_path / "teams"), "--truth", str(tmp_path / "truth"), "-o", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "no team folders" in result.output
