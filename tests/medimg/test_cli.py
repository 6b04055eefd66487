"""The medimg command: version, fast help, the click group the docs render, the console script,
scan, convert, sample-data, demo, and how ``train`` fills its TrainPipelineConfig."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import click
import pytest
from dicom_factory import write_series
from typer.testing import CliRunner

import medimg.cli
from medimg import __version__
from medimg.cli import app

runner = CliRunner()

#: Every command of ``medimg``: top-level commands and "group command" pairs.
COMMANDS = [
    "sample-data", "scan", "convert", "demo", "run", "train", "evaluate", "export", "listen",
    "uncertainty score", "uncertainty rank", "saliency audit",
    "continual fisher", "continual expand", "continual compare", "federated simulate",
]  # fmt: skip


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_import_and_help_do_not_import_torch_or_monai() -> None:
    # A fresh interpreter: this one has imported torch long ago.
    code = (
        "import sys; from medimg.cli import app\n"
        "heavy = lambda: [m for m in ('torch', 'monai', 'pydicom', 'numpy') if m in sys.modules]\n"
        "assert not heavy(), f'import medimg.cli: {heavy()}'\n"
        "from typer.testing import CliRunner\n"
        f"for command in [''] + {COMMANDS!r}:\n"
        "    r = CliRunner().invoke(app, [*command.split(), '--help']); assert r.exit_code == 0, command\n"
        "print(','.join(heavy()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_click_command_is_the_group_of_every_command() -> None:
    group = medimg.cli.click_command  # what the docs render with mkdocs-click
    assert isinstance(group, click.Group) and group.name == "medimg"
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += [f"{name} {sub}" for sub in command.commands]
        else:
            found.append(name)
    assert found == COMMANDS
    assert [p.name for p in group.commands["train"].params][:3] == ["pipeline", "data", "out"]
    with pytest.raises(AttributeError):
        medimg.cli.no_such_thing  # noqa: B018


def test_reference_names_every_command_for_the_docs() -> None:
    from pipelines.commands import reference  # the module the docs pages name in their mkdocs-click blocks

    for name, command in reference.click_command.commands.items():
        assert getattr(reference, name.replace("-", "_")) is command
    assert set(reference.__all__) == {"click_command"} | {n.replace("-", "_") for n in reference.click_command.commands}


def test_console_script_is_main_and_runs() -> None:
    (script,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == "medimg"]
    assert script.value == "medimg.cli:main" and script.load() is medimg.cli.main
    out = subprocess.run([sys.executable, "-m", "medimg.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"medimg {__version__}"


def test_scan_json_lists_every_file_once(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n=3, description="T1")
    (tmp_path / "notes.txt").write_text("hello")
    result = runner.invoke(app, ["scan", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    (study,) = data["studies"]
    assert set(study) >= {"StudyInstanceUID", "PatientID", "series"}
    (series,) = study["series"]
    assert set(series) >= {"SeriesInstanceUID", "Modality", "SeriesDescription", "files"}
    assert len(series["files"]) == 3
    assert data["quarantine"] == [{"path": str(tmp_path / "notes.txt"), "reason": data["quarantine"][0]["reason"]}]
    assert data["quarantine"][0]["reason"].startswith("not DICOM")


def test_scan_table(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n=3, description="AX FLAIR")
    result = runner.invoke(app, ["scan", str(tmp_path), "--quiet"])
    assert result.exit_code == 0
    assert "AX FLAIR" in result.output and "1 patient(s), 1 study(ies), 1 series" in result.output


def test_convert_exit_codes(tmp_path: Path) -> None:
    write_series(tmp_path / "dicom" / "good", n=3)
    ok = runner.invoke(app, ["convert", str(tmp_path / "dicom"), "-o", str(tmp_path / "out"), "-q"])
    assert ok.exit_code == 0, ok.output
    assert len(list((tmp_path / "out").rglob("*.nii.gz"))) == 1
    write_series(tmp_path / "dicom" / "bad", n=4, skip=[1], patient_id="P9")
    bad = runner.invoke(app, ["convert", str(tmp_path / "dicom"), "-o", str(tmp_path / "out"), "-q"])
    assert bad.exit_code == 1
    assert "missing slices" in bad.output
    rules = runner.invoke(app, ["convert", str(tmp_path / "dicom"), "-o", str(tmp_path / "o2"), "--rules", "nope.yaml"])
    assert rules.exit_code == 2


def test_sample_data_counts_and_bad_count(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sample-data", str(tmp_path / "d"), "--only", "cxr", "--count", "3"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "d" / "cxr" / "stage_2_train_images").glob("*.dcm"))) == 3
    assert not (tmp_path / "d" / "brain").exists()
    per = runner.invoke(app, ["sample-data", str(tmp_path / "e"), "--count", "cxr=2,mammo=1,brain=0"])
    assert per.exit_code == 0, per.output
    assert len(list((tmp_path / "e" / "cxr" / "stage_2_train_images").glob("*.dcm"))) == 2
    assert len(list((tmp_path / "e" / "mammo").rglob("*.dicom"))) == 12  # 1 exam x 4 views x 3 sites
    bad = runner.invoke(app, ["sample-data", str(tmp_path / "f"), "--count", "lungs=3"])
    assert bad.exit_code == 2 and "unknown dataset" in bad.output


@pytest.mark.slow
def test_demo_generates_missing_data_and_checks_conversion(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "brain" / "nifti").is_dir()
    assert "1/1 studies have every required selection" in result.output  # the brain study
    assert not re.search(r"│ NO +│", result.output)  # the conversion check's "matches" column
    assert len(list((tmp_path / "out" / "brain_nifti").rglob("*.nii.gz"))) == 4


def test_train_fills_the_pipeline_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.training
    from pipelines import get_pipeline
    from pipelines.training import TrainPipelineConfig

    seen = []

    def fake_train(pipeline, data_dir, run_dir, config):  # type: ignore[no-untyped-def]
        seen.append((pipeline.name, Path(data_dir), Path(run_dir), config))
        return SimpleNamespace(best_value=0.75, best_epoch=2, best_checkpoint=Path(run_dir) / "best.pt")

    monkeypatch.setattr(pipelines.training, "train_pipeline", fake_train)
    out = tmp_path / "run"
    plain = runner.invoke(app, ["train", "pneumonia", str(tmp_path), "-o", str(out), "-q"])
    assert plain.exit_code == 0, plain.output
    assert f"best roc_auc 0.7500 at epoch 2; checkpoint {out / 'best.pt'}" in plain.output
    name, data_dir, run_dir, config = seen[-1]
    assert (name, data_dir, run_dir) == ("pneumonia", tmp_path, out)
    assert config == TrainPipelineConfig(architecture=get_pipeline("pneumonia").default_architecture, quiet=True)
    args = ["train", "density", str(tmp_path), "-o", str(out), "--architecture", "compact", "--epochs", "3"]
    args += ["--image-size", "64x48", "--no-cache", "--note", "n", "--attention", "--attention-heads", "2"]
    args += ["--box-fraction", "0.5"]
    gated = runner.invoke(app, args)
    assert gated.exit_code == 0, gated.output
    config = seen[-1][3]
    assert (config.architecture, config.epochs, config.image_size, config.cache, config.note, config.quiet) == (
        "compact",
        3,
        (64, 48),
        False,
        "n",
        False,
    )
    assert config.attention == {
        "heads": 2, "activation": "softmax", "regularizer": "none", "regularizer_weight": 0.0,
        "box_fraction": 0.5, "box_weight": 1.0,
    }  # fmt: skip
    for spelling in ("regularizer", "regulariser"):  # the American name, and the old British one
        options = [f"--attention-{spelling}", "tv", f"--attention-{spelling}-weight", "0.5"]
        assert runner.invoke(app, [*args, *options]).exit_code == 0
        assert (seen[-1][3].attention["regularizer"], seen[-1][3].attention["regularizer_weight"]) == ("tv", 0.5)
    assert runner.invoke(app, [*args, "--attention-regularise", "tv"]).exit_code == 2
    assert runner.invoke(app, ["train", "lungs", str(tmp_path), "-o", str(out)]).exit_code == 2
