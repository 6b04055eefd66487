"""Text from headers and file names is data: it never drives the terminal, a spreadsheet or a
figure; and numbers that would mislead come with a warning (issue 17, parts 5 and 6)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_factory import write_series
from qubrats_factory import make_case, write_submission, write_truth
from typer.testing import CliRunner

from medimg.cli import app
from medimg.untrusted import plot_text, spreadsheet_text, terminal_text
from medimg.writers import write_csv

runner = CliRunner()
FORMULA = '=HYPERLINK("http://x","y")'


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("[/x]", r"\[/x]"),
        ("[bold]loud", r"\[bold]loud"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("bell\x07", "bell"),
        ("\x1b]0;title\x07name", "name"),
        ("\x9b2Jclear", "clear"),
        ("two\nlines\ttab", "two lines tab"),
        ("plain 1.5 mm [0, 1]", "plain 1.5 mm [0, 1]"),
        (3, "3"),
    ],
)
def test_terminal_text(value: object, expected: str) -> None:
    assert terminal_text(value) == expected


def test_terminal_text_prints_literally() -> None:
    from rich.console import Console

    console = Console(record=True, width=200, color_system=None)
    console.print(f"[red]x[/red] {terminal_text('[/x] [bold]y')}")  # raised MarkupError unescaped
    assert console.export_text().strip() == "x [/x] [bold]y"


@pytest.mark.parametrize(
    "value", [FORMULA, "+1+1", "@SUM(A1)", "-2+3", "=1", "\tx", "\rx", "-cmd|' /C calc'!A0", "--option"]
)
def test_spreadsheet_text_neutralises_formulas(value: str) -> None:
    assert spreadsheet_text(value) == "'" + value


@pytest.mark.parametrize("value", ["-0.5", "1e-3", "+2", "-1E+05", "-inf", "nan", 3, -2, 2.5, -0.25, None, "a=b", ""])
def test_spreadsheet_text_leaves_numbers_and_plain_text(value: object) -> None:
    assert spreadsheet_text(value) == value


def test_write_csv_neutralises_text_cells_and_keeps_numbers(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "t.csv",
        [{"id": FORMULA, "x": -0.5, "y": "-0.5", "z": "1e-3", "n": -3, "extra": "ignored"}, {"id": "ok"}],
        ["id", "x", "y", "z", "n", "@col"],
    )
    rows = _rows(path)
    assert list(rows[0]) == ["id", "x", "y", "z", "n", "'@col"]
    assert rows[0]["id"] == "'" + FORMULA
    assert [float(rows[0][k]) for k in ("x", "y", "z", "n")] == [-0.5, -0.5, 1e-3, -3]
    assert rows[1] == {"id": "ok", "x": "", "y": "", "z": "", "n": "", "'@col": ""}


def test_plot_text_escapes_mathtext() -> None:
    assert plot_text("$\\alpha$") == "\\$\\alpha\\$"


def test_scan_prints_markup_and_escapes_literally(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SeriesDescription ``[/x]`` and a file named ``[/bold]evil.dcm`` used to crash the tables."""
    folder = tmp_path / "dicom"
    write_series(folder / "s1", n=2, description="[/x]", patient_id="P\x1b[31mRED")
    (folder / "[bold]evil.dcm").write_bytes(b"not a DICOM file at all " * 8)  # quarantined
    nested = folder / "[" / "bold]evil.dcm"  # '/' cannot be in a name: a folder '[' holds 'bold]evil.dcm'
    nested.parent.mkdir()
    nested.write_bytes(b"garbage " * 16)
    monkeypatch.chdir(tmp_path)  # short paths: the 160-column tables must not cut the names
    result = runner.invoke(app, ["scan", "dicom", "-q"])
    assert result.exit_code == 0, result.output
    assert result.exception is None
    flat = "".join(result.output.split())
    assert "[/x]" in flat and "[bold]evil.dcm" in flat
    assert "\x1b" not in result.output


@pytest.fixture(scope="module")
def cxr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from medimg.synth import generate_sample_data

    root = tmp_path_factory.mktemp("cxr")
    generate_sample_data(root, only=["cxr"], count={"cxr": 3}, seed=1)
    return root / "cxr" / "stage_2_train_images"


def test_run_results_csv_neutralises_header_formula(cxr: Path, untrained_weights: dict, tmp_path: Path) -> None:
    folder = tmp_path / "pacs"
    shutil.copytree(cxr, folder)
    first = sorted(folder.glob("*.dcm"))[0]
    ds = pydicom.dcmread(first)
    ds.PatientID = FORMULA
    ds.save_as(first)
    out = tmp_path / "out"
    args = ["run", "pneumonia", str(folder), "-o", str(out), "--weights", str(untrained_weights["pneumonia"]), "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = _rows(out / "results.csv")
    assert "'" + FORMULA in {r["PatientID"] for r in rows}
    assert not any(value.startswith("=") for r in rows for value in r.values())
    assert all(0.0 <= float(r["probability"]) <= 1.0 for r in rows)  # numbers untouched


def test_ranking_report_with_mathtext_team_names(tmp_path: Path) -> None:
    """``$\\notacommand$`` used to raise in matplotlib's mathtext parser while drawing the report."""
    teams = ["$\\notacommand$", "$\\alpha$", "=evil"]
    lines = ["team,case_id,region,SCORE"]
    for t, team in enumerate(teams):
        lines += [f"{team},c{c},{r},{0.2 + 0.1 * t + 0.01 * c}" for c in range(3) for r in ("WT", "TC", "ET")]
    scores = tmp_path / "scores.csv"
    scores.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = runner.invoke(app, ["uncertainty", "rank", "--from-scores", str(scores), "-o", str(out), "-q",
                                 "--permutations", "20"])  # fmt: skip
    assert result.exit_code == 0, result.output
    html = (out / "report.html").read_text()
    assert "$\\notacommand$" in html
    ranking = _rows(out / "ranking.csv")
    assert {r["team"] for r in ranking} == {"$\\notacommand$", "$\\alpha$", "'=evil"}


def test_score_warns_on_unit_scale_maps(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(2):
        case_id = f"BraTS20_Validation_{i:03d}"
        case = make_case(rng, float_maps=True)
        if i == 0:  # 0..1 instead of 0..100
            case["maps"] = {k: (v / 100.0).astype(np.float32) for k, v in case["maps"].items()}
        write_submission(tmp_path / "sub", case_id, case)
        write_truth(tmp_path / "truth", case_id, case)
    out = tmp_path / "o" / "scores.csv"
    args = ["uncertainty", "score", str(tmp_path / "sub"), "--truth", str(tmp_path / "truth"), "-o", str(out)]
    result = runner.invoke(app, [*args, "--report", str(tmp_path / "o" / "report.html"), "-q"])
    assert result.exit_code == 0, result.output
    assert len(_rows(out)) == 6  # still scored
    (warning,) = _rows(out.with_name("warnings.csv"))
    assert warning["case_id"] == "BraTS20_Validation_000" and "0..1" in warning["warning"]
    assert "warning:" in result.output and "BraTS20_Validation_000" in result.output
    assert "0..1 scale" in (tmp_path / "o" / "report.html").read_text()


def test_federation_data_warnings(tmp_path: Path) -> None:
    from pipelines.federated_eval import summary_lines
    from pipelines.federation import duplicate_warnings, fingerprint, split_warnings

    items = []
    for k in range(4):
        image = tmp_path / "a" / f"{k}.dcm"
        image.parent.mkdir(exist_ok=True)
        image.write_bytes(bytes(10 + k))
        items.append({"image": str(image), "patient_id": f"p{k}", "label": k % 2})
    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a", copy)
    copied = [{**item, "image": str(copy / Path(item["image"]).name)} for item in items]
    other = [{**item, "label": 1 - item["label"]} for item in items]
    prints = {"a": fingerprint(items), "b": fingerprint(copied), "c": fingerprint(other)}
    (duplicate,) = duplicate_warnings(prints)
    assert "a and b" in duplicate
    single = split_warnings("s", {"train": items, "test": [items[1], items[3]]})
    assert len(single) == 1 and "test split has a single class" in single[0]
    assert split_warnings("s", {"train": items, "test": items}) == []
    lines = summary_lines({"metric": "kappa", "data_warnings": [duplicate]})
    assert any(line.startswith("  warning: sites a and b") for line in lines)
    from continual.report import write_federated_report

    page = write_federated_report(
        tmp_path / "fed", {"metric": "kappa", "sites": ["a", "b"], "data_warnings": [duplicate]}, []
    )
    assert "Data warning: sites a and b" in page.read_text()
