"""Team ranking: ranks per case and region, cumulative ranks, permutation tests over cases, the rank command."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from qubrats_factory import make_case, write_submission, write_truth
from typer.testing import CliRunner

from medimg.cli import app
from medimg.synth.submissions import TEAM_STYLES, generate_submission
from uncertainty.ranking import cumulative_ranks, pairwise_permutation_test, rank_per_pair, rank_teams

runner = CliRunner()
REGIONS = ("WT", "TC", "ET")


def test_rank_per_pair_ties_and_missing() -> None:
    scores = np.array([[0.9, 0.5, np.nan], [0.8, 0.5, 0.7], [0.7, 0.9, np.nan]])
    ranks = rank_per_pair(scores)
    np.testing.assert_array_equal(ranks[:, 0], [1, 2, 3])
    np.testing.assert_array_equal(ranks[:, 1], [2.5, 2.5, 1])  # tie shares the mean of ranks 2 and 3
    np.testing.assert_array_equal(ranks[:, 2], [2.5, 1, 2.5])  # missing teams share the worst ranks


def test_cumulative_rank_by_hand() -> None:
    """Three teams, two cases; a tie (c1 TC) and a missing case (partial has no c2).

    Region ranks, by hand (1 = best):
        c1: WT good 2, middle 3, partial 1 | TC good 1.5, middle 1.5, partial 3 | ET good 2, middle 3, partial 1
        c2: partial is missing -> rank 3 everywhere; good 1, middle 2 in every region
    Cumulative ranks (mean over regions): c1 good 5.5/3, middle 7.5/3, partial 5/3; c2 good 1, middle 2, partial 3.
    Mean ranks: good (5.5/3 + 1) / 2 = 1.41667, partial (5/3 + 3) / 2 = 2.33333, middle (7.5/3 + 2) / 2 = 2.25.
    Breaking it: ranking ties low instead of sharing (TC 1 and 2) changes good and middle; treating the
    missing case as skipped instead of worst would put partial (5/3) ahead of middle.
    """
    scores = {
        "good": {("c1", "WT"): 0.8, ("c1", "TC"): 0.7, ("c1", "ET"): 0.6} | {("c2", r): 0.9 for r in REGIONS},
        "middle": {("c1", "WT"): 0.7, ("c1", "TC"): 0.7, ("c1", "ET"): 0.5} | {("c2", r): 0.5 for r in REGIONS},
        "partial": {("c1", "WT"): 0.95, ("c1", "TC"): 0.1, ("c1", "ET"): 0.95},
    }
    ranking = rank_teams(scores, ["c1", "c2"], permutations=0)
    assert ranking.teams == ("good", "middle", "partial")
    np.testing.assert_allclose(ranking.cumulative, [[5.5 / 3, 1], [7.5 / 3, 2], [5 / 3, 3]])
    np.testing.assert_allclose(ranking.ranks[:, 0, 1], [1.5, 1.5, 3])  # the tie
    table = {row["team"]: row for row in ranking.table}
    assert table["good"]["mean_rank"] == pytest.approx((5.5 / 3 + 1) / 2)
    assert table["middle"]["mean_rank"] == pytest.approx(2.25)
    assert table["partial"]["mean_rank"] == pytest.approx(7 / 3)
    assert table["partial"]["normalized_ranking_score"] == pytest.approx(7 / 9)
    assert table["partial"]["pairs_missing"] == 3 and table["good"]["pairs_missing"] == 0
    assert table["partial"]["mean_score_TC"] == pytest.approx(0.1)
    assert ranking.missing() == [("partial", "c2", r) for r in REGIONS]
    assert np.isnan(ranking.p_values).all() and table["good"]["p_value_vs_next"] is None  # no tests
    np.testing.assert_allclose(cumulative_ranks(ranking.scores), ranking.cumulative)


def _exchangeable_null(rng: np.random.Generator, teams: int, cases: int) -> np.ndarray:
    """Scores (teams, cases, regions): a per-team, per-case latent shared by the three regions plus
    small noise, every team drawn from the same distribution (so any two teams are exchangeable)."""
    latent = rng.normal(size=(teams, cases, 1))
    return latent + 0.1 * rng.normal(size=(teams, cases, len(REGIONS)))


def _rejection_rate(sims: int, *, per_case: bool, seed: int) -> float:
    """Share of simulated nulls where the test of teams 0 and 1 rejects at 0.05 (6 teams, 60 cases,
    999 permutations). ``per_case=False`` feeds the test every case-region rank as its own unit,
    which is the old per-pair scheme."""
    rng = np.random.default_rng(seed)
    rejected = 0
    for i in range(sims):
        scores = _exchangeable_null(rng, teams=6, cases=60)
        units = cumulative_ranks(scores) if per_case else rank_per_pair(scores).reshape(6, -1)
        p = pairwise_permutation_test(units[:2], permutations=999, seed=i)[0, 1]
        rejected += p < 0.05
    return rejected / sims


def test_null_rejection_rate_is_nominal() -> None:
    """Under exchangeable teams with correlated regions the test rejects at its nominal rate.

    2,000 simulated nulls (data seed 2024, permutation seeds 0..1999): six exchangeable teams,
    60 cases, regions sharing a per-case latent (noise SD 0.1 against latent SD 1), test of
    teams 0 and 1 at alpha 0.05 with 999 permutations. The binomial SD of the rate at 0.05 is
    sqrt(0.05 * 0.95 / 2000) = 0.0049, so [0.03, 0.07] is about +-4 SD. Measured: 0.0475 here;
    data seeds 0-4 gave 0.0495, 0.0435, 0.0485, 0.0455, 0.047, and 10,000 nulls (seed 7)
    0.0473: slightly conservative, as a test on a discrete rank statistic is.

    What failing looks like: the old scheme (signs flipped per case-region pair, i.e. the three
    region ranks of a case treated as independent cases) rejects 0.2615 of the same 2,000 nulls
    (checked once by hand with the old implementation), because it counts one case's evidence
    three times. The second assertion runs that scheme through the same function as a negative
    control (0.30 on 300 nulls).
    """
    rate = _rejection_rate(2000, per_case=True, seed=2024)
    assert 0.03 <= rate <= 0.07, rate
    assert _rejection_rate(300, per_case=False, seed=2024) > 0.15


def test_power_clear_winner() -> None:
    """A team better by one latent SD in every region is detected among five others (p < 0.01).

    Breaking it (e.g. comparing the wrong rows, or counting |null| <= |observed|) gives p near 1."""
    rng = np.random.default_rng(3)
    scores = _exchangeable_null(rng, teams=5, cases=40)
    scores[0] += 1.0
    p = pairwise_permutation_test(cumulative_ranks(scores), permutations=2000, seed=0)
    assert (p[0, 1:] < 0.01).all(), p[0]
    assert (p[1:, 1:][~np.eye(4, dtype=bool)] > 0.01).mean() > 0.5  # the exchangeable four are mostly not


def test_permutation_test_against_exact_values() -> None:
    """Hand-computable cases: identical rows give p = 1; a row better in all 10 units has the exact
    two-sided p-value 2 / 2**10, which the Monte Carlo estimate (1 + k) / (1 + N) must approach;
    one unit alone can never be significant (both signs give the same |mean|)."""
    values = np.array([np.arange(10.0), np.arange(10.0) + 1.0, np.arange(10.0)])
    p = pairwise_permutation_test(values, permutations=200_000, seed=1)
    assert p[0, 2] == 1.0
    assert p[0, 1] == pytest.approx(2 / 1024, abs=4 * np.sqrt(2 / 1024 / 200_000))  # 4 binomial SDs: 20%
    assert pairwise_permutation_test(np.array([[1.0], [3.0]]), permutations=500)[0, 1] == 1.0
    again = pairwise_permutation_test(values, permutations=200_000, seed=1)
    np.testing.assert_array_equal(p, again)  # seeded
    with pytest.raises(ValueError, match="teams, units"):
        pairwise_permutation_test(np.zeros(4))


def test_permutation_test_against_scipy_exact() -> None:
    """Against scipy's exact paired permutation test (all 2**12 sign patterns) on random data: the
    null of sign flips is symmetric, so scipy's two-sided p (twice the smaller tail) equals
    P(|null| >= |observed|). Ours must lie within 4 binomial SDs of it. Breaking it (e.g. flipping
    signs per row instead of per unit, or a one-sided count) moves p far outside."""
    from scipy.stats import permutation_test

    rng = np.random.default_rng(11)
    values = rng.normal(size=(3, 12)) + np.array([[0.0], [0.5], [1.0]])
    ours = pairwise_permutation_test(values, permutations=200_000, seed=4)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        exact = permutation_test(
            (values[i], values[j]), lambda a, b, axis: np.mean(a - b, axis=axis),
            permutation_type="samples", n_resamples=np.inf, vectorized=True,
        ).pvalue  # fmt: skip
        assert ours[i, j] == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / 200_000) + 1e-5), (i, j)


def test_pairwise_matrix_symmetric_and_vs_next() -> None:
    rng = np.random.default_rng(5)
    cases = [f"c{i}" for i in range(12)]
    shifts = {"a": 0.0, "b": 0.3, "c": 0.6, "d": 0.6}
    scores = {t: {(c, r): rng.normal() + s for c in cases for r in REGIONS} for t, s in shifts.items()}
    ranking = rank_teams(scores, cases, permutations=3000, seed=2)
    p = ranking.p_values
    assert p.shape == (4, 4)
    assert np.isnan(np.diag(p)).all()
    off = ~np.eye(4, dtype=bool)
    np.testing.assert_array_equal(p[off], p.T[off])
    assert ((p[off] > 0) & (p[off] <= 1)).all()
    for i, row in enumerate(ranking.table[:-1]):
        assert row["p_value_vs_next"] == p[i, i + 1]
        assert row["significant_vs_next"] == (p[i, i + 1] < 0.05)
    assert ranking.table[-1]["p_value_vs_next"] is None
    # the matrix is the test on the cumulative ranks in final order
    np.testing.assert_array_equal(p, pairwise_permutation_test(ranking.cumulative, permutations=3000, seed=2))


def _invoke(*args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["uncertainty", "rank", *args])


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
    teams, truth = str(tmp_path / "teams"), str(tmp_path / "truth")
    result = _invoke(teams, "--truth", truth, "-o", str(out), "--permutations", "500", "-q")
    assert result.exit_code == 1, result.output  # gamma misses a case: reported, still ranked
    ranking = list(csv.DictReader(open(out / "ranking.csv")))
    assert [row["team"] for row in ranking] == ["alpha", "beta", "gamma"]
    assert ranking[2]["pairs_missing"] == "3"
    scores = list(csv.DictReader(open(out / "scores.csv")))
    assert len(scores) == (3 + 3 + 2) * 3 and list(scores[0])[0] == "team"
    errors = list(csv.DictReader(open(out / "errors.csv")))
    assert [(e["team"], e["case_id"]) for e in errors] == [("gamma", "case2")]
    pairwise = list(csv.reader(open(out / "pairwise_p_values.csv")))
    assert pairwise[0] == ["team", "alpha", "beta", "gamma"] and [r[0] for r in pairwise[1:]] == pairwise[0][1:]
    assert pairwise[1][1] == "" and float(pairwise[1][2]) == float(ranking[0]["p_value_vs_next"])
    html = (out / "report.html").read_text()
    assert "alpha" in html and "no submission for this case" in html and "Pairwise significance" in html
    assert html.count("data:image/png") == 3  # p-value heat map, curves, distributions
    assert "Pairwise p-values" in result.output


def _demo_style_teams(root: Path, cases: int) -> tuple[Path, Path]:
    """Small BraTS-layout truth and the demo's three synthetic teams, plus ``partial`` (the random
    team without its last case)."""
    rng = np.random.default_rng(1)
    truth = root / "truth"
    ids = [f"BraTS2021_{i:05d}" for i in range(cases)]
    for case_id in ids:
        write_truth(truth, case_id, make_case(rng, shape=(16, 14, 12)), layout="brats")
    for style in TEAM_STYLES:
        generate_submission(truth, root / "teams" / style, style=style, seed=0, error_rate=0.3)
    shutil.copytree(root / "teams" / "random", root / "teams" / "partial")
    for path in (root / "teams" / "partial").glob(f"{ids[-1]}*"):
        path.unlink()
    return root / "teams", truth


def test_rank_from_scores_agrees_with_folder(tmp_path: Path) -> None:
    """Ranking the same teams from their scores.csv gives byte-identical ranking.csv and
    pairwise_p_values.csv, the same missing case, and a report without curves that says so."""
    teams, truth = _demo_style_teams(tmp_path, cases=6)
    folder, scored = tmp_path / "folder", tmp_path / "scored"
    first = _invoke(
        str(teams), "--truth", str(truth), "-o", str(folder), "--permutations", "999", "--workers", "1", "-q"
    )
    assert first.exit_code == 1, first.output  # partial misses a case
    second = _invoke("--from-scores", str(folder / "scores.csv"), "-o", str(scored), "--permutations", "999")
    assert second.exit_code == 1, second.output
    for name in ("ranking.csv", "pairwise_p_values.csv"):
        assert (scored / name).read_text() == (folder / name).read_text(), name
    assert not (scored / "scores.csv").exists()
    ranking = list(csv.DictReader(open(scored / "ranking.csv")))
    assert {r["team"]: r["pairs_missing"] for r in ranking} == {t: "0" for t in TEAM_STYLES} | {"partial": "3"}
    errors = list(csv.DictReader(open(scored / "errors.csv")))
    assert [(e["team"], e["case_id"]) for e in errors] == [("partial", "BraTS2021_00005")]
    assert "no score for WT, TC, ET" in errors[0]["error"] and "partial" in second.output
    html = (scored / "report.html").read_text()
    assert "came from a scores file" in html and "Curves per team" not in html
    assert html.count("data:image/png") == 2  # heat map and distributions
    assert "Curves per team" in (folder / "report.html").read_text()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


GOOD_ROWS = "".join(f"{t},c1,{r},0.{i}{j}\n" for i, t in enumerate(("a", "b"), 5) for j, r in enumerate(REGIONS))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("team,case_id,SCORE\na,c1,0.5\n", "missing column(s) region"),
        ("team,case_id,region,SCORE\n" + GOOD_ROWS + "b,c2,WT,abc\n", "line 8: SCORE 'abc' is not a number"),
        ("team,case_id,region,SCORE\n" + GOOD_ROWS + "b,c2,WT,nan\n", "line 8: SCORE 'nan' is not a finite number"),
        ("team,case_id,region,SCORE\n" + GOOD_ROWS + "b,c2,NCR,0.5\n", "line 8: region 'NCR' is not one of WT, TC, ET"),
        (
            "team,case_id,region,SCORE\n" + GOOD_ROWS + "a,c1,TC,0.5\n",
            "line 8: duplicate row for team a, case c1, region TC (first at line 3)",
        ),  # fmt: skip
        ("team,case_id,region,SCORE\n" + GOOD_ROWS + ",c2,WT,0.5\n", "line 8: empty team"),
        ("team,case_id,region,SCORE\n", "no score rows"),
    ],
)
def test_rank_from_scores_bad_csv(tmp_path: Path, text: str, message: str) -> None:
    """Each bad file exits 2 with the file, the line and the problem; the good rows alone rank."""
    path = _write(tmp_path / "bad.csv", text)
    result = _invoke("--from-scores", str(path), "-o", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    flat = " ".join(result.output.split())
    assert "bad.csv" in flat and message in flat, flat
    assert not (tmp_path / "out" / "ranking.csv").exists()


def test_rank_from_scores_good_rows(tmp_path: Path) -> None:
    """The rows the bad-file cases share are valid on their own (so each error above is the bad row's)."""
    path = _write(tmp_path / "good.csv", "team,case_id,region,SCORE,extra\n" + GOOD_ROWS.replace("\n", ",x\n"))
    result = _invoke("--from-scores", str(path), "-o", str(tmp_path / "out"), "--permutations", "99")
    assert result.exit_code == 0, result.output
    ranking = list(csv.DictReader(open(tmp_path / "out" / "ranking.csv")))
    assert [r["team"] for r in ranking] == ["b", "a"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give TEAMS_DIR with --truth"),
        (["teams", "--from-scores", "s.csv"], "not both"),
        (["--truth", "truth", "--from-scores", "s.csv"], "not both"),
        (["teams"], "TEAMS_DIR needs --truth"),
        (["--truth", "truth"], "--truth needs TEAMS_DIR"),
        (["--from-scores", "absent.csv"], "absent.csv: no such scores file"),
    ],
)
def test_rank_command_sources(tmp_path: Path, args: list[str], message: str) -> None:
    result = _invoke(*args, "-o", str(tmp_path / "out"))
    assert result.exit_code == 2 and message in " ".join(result.output.split()), result.output


def test_rank_command_without_teams(tmp_path: Path) -> None:
    (tmp_path / "teams").mkdir()
    (tmp_path / "truth").mkdir()
    args = ["uncertainty", "rank", str(tmp_path / "teams"), "--truth", str(tmp_path / "truth"), "-o", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "no team folders" in result.output
