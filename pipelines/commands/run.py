"""``medimg run``: a pipeline over a DICOM folder (brats: also a BraTS NIfTI folder; pneumonia: also
a folder of PNG/JPEG radiographs)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from medimg.progress import tracked
from medimg.untrusted import terminal_text
from pipelines.commands.app import (
    WEIGHTS_HELP,
    MaxPixelsOption,
    ModelCardOption,
    PipelineArgument,
    QuietOption,
    TrustModelCodeOption,
    app,
    apply_max_pixels,
    console,
    err_console,
    error_exit,
    load_pipeline,
)

if TYPE_CHECKING:
    from pipelines.base import Pipeline
    from pipelines.runner import RunSummary


@app.command()
def run(
    pipeline: PipelineArgument,
    dicom_dir: Annotated[
        Path,
        typer.Argument(
            exists=True, file_okay=False, help="DICOM folder (e.g. a PACS export); pneumonia: also PNG/JPEG images."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (a second run resumes).")],
    weights: Annotated[
        Path | None,
        typer.Option(
            help=f"{WEIGHTS_HELP} Default: the demo weights in sample_data/weights/ (synthetic phantoms only).",
        ),
    ] = None,  # noqa: UP045
    trust_model_code: TrustModelCodeOption = False,
    model_card: ModelCardOption = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Remove the earlier run's outputs in OUT and start clean (needed when the weights or "
            "result settings differ from those in OUT/run.json).",
        ),
    ] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    uncertainty: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="brats: uncertainty maps by tta, mc-dropout or ensemble (QU-BraTS files)."),
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="brats: samples for tta / mc-dropout.")] = 8,
    ensemble_weights: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(
            help="brats: further models for --uncertainty ensemble (repeatable; any --weights kind, each with "
            "its own card beside it; --trust-model-code applies to them too)."
        ),
    ] = None,
    naming: Annotated[
        str,
        typer.Option(
            help="brats NIfTI input naming: brats2021 (_t1ce...), brats2023 (-t1c...) or plain "
            "(a folder per case holding t1, t1ce, t2, flair .nii.gz)."
        ),
    ] = "brats2021",
    label_convention: Annotated[
        str,
        typer.Option(
            help="brats output labels: auto (BraTS 2023 naming -> brats2023, ET = 3; any other input, "
            "DICOM included -> brats2020, the 2021 labels, ET = 4), brats2020 or brats2023."
        ),
    ] = "auto",
    views: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--views",
            help="density: CSV of laterality and view per image (columns SOPInstanceUID or path, "
            "laterality, view); overrides the tags.",
        ),
    ] = None,
    view_rule: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(
            "--view-rule",
            help="density: 'Keyword:regex' with groups (?P<laterality>..) and/or (?P<view>..), e.g. "
            "'PatientID:_(?P<laterality>LEFT|RIGHT)_(?P<view>CC|MLO)', for images the tags do not place "
            "(repeatable).",
        ),
    ] = None,
    max_pixels: MaxPixelsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Run a pipeline on a DICOM folder (brats: also a BraTS NIfTI folder): results.csv, per-study
    outputs, errors.csv, report.html."""
    from medimg.models import CheckpointError
    from pipelines.runner import RunRefused, run_pipeline

    apply_max_pixels(max_pixels)
    task = load_pipeline(pipeline)
    _configure(
        task,
        naming=naming,
        uncertainty=uncertainty,
        samples=samples,
        ensemble_weights=ensemble_weights,
        label_convention=label_convention,
    )
    _configure_views(task, views, view_rule or [], dicom_dir)
    weights = _weights_or_demo(task, weights)
    bar, update = tracked(not quiet, f"Running {task.name}")
    try:
        with bar:
            summary = run_pipeline(
                task,
                dicom_dir,
                out,
                weights=weights,
                overwrite=overwrite,
                batch_size=batch_size,
                device=device,
                progress=update,
                trust_code=trust_model_code,
                card=model_card,
            )
    except (CheckpointError, RunRefused) as exc:
        raise error_exit(exc) from exc
    _print_run_summary(task, summary, out)
    if summary.failed:
        raise typer.Exit(1)


def _configure(
    task: Pipeline,
    *,
    naming: str,
    uncertainty: str | None,
    samples: int,
    ensemble_weights: list[Path] | None,
    label_convention: str = "auto",
) -> None:
    """Pass the brats-only options to a pipeline that takes them; exit 2 when they are wrong or the
    pipeline takes none (uncertainty on a 2-D pipeline)."""
    if hasattr(task, "configure"):
        try:
            task.configure(
                naming=naming,
                uncertainty=uncertainty,
                samples=samples,
                ensemble_weights=[str(w) for w in ensemble_weights or []],
                label_convention=label_convention,
            )
        except ValueError as exc:
            raise error_exit(exc) from exc
    elif uncertainty or ensemble_weights:
        raise error_exit(f"--uncertainty and --ensemble-weights apply to brats, not {task.name}")
    elif label_convention != "auto":
        raise error_exit(f"--label-convention applies to brats, not {task.name}")


def _configure_views(task: Pipeline, views: Path | None, view_rules: list[str], dicom_dir: Path) -> None:
    """Pass ``--views`` / ``--view-rule`` to a pipeline that places mammograms; exit 2 when they are
    wrong or the pipeline takes none."""
    if views is None and not view_rules:
        return
    if not hasattr(task, "configure_views"):
        raise error_exit(f"--views and --view-rule apply to density, not {task.name}")
    try:
        task.configure_views(views=views, view_rules=view_rules, base=dicom_dir)
    except ValueError as exc:
        raise error_exit(exc) from exc


def _weights_or_demo(task: Pipeline, weights: Path | None) -> Path:
    """``weights``, or the pipeline's demo weights (with a note); exit 2 when there are none."""
    from pipelines.runner import default_weights

    if weights is not None:
        return weights
    weights = default_weights(task.name)
    if weights is None:
        raise error_exit(f"no --weights given and no demo weights for '{task.name}' found")
    err_console.print(f"[yellow]note:[/yellow] using the demo weights {weights}: valid for synthetic phantoms only")
    return weights


def _print_run_summary(task: Pipeline, summary: RunSummary, out: Path) -> None:
    """The counts of a run and its errors grouped by kind."""
    from pipelines.run_report import summarize_errors

    c = summary.counts
    console.print(
        f"{c['images']} {'case(s)' if task.unit == 'study' else 'image(s)'} in results.csv "
        f"({c['images_processed']} processed now, "
        f"{c['studies_resumed']} stud(ies) resumed); {c['errors']} error(s), {c['skipped']} skipped. "
        f"Outputs in {terminal_text(out)} (report.html)."
    )
    for what, count in summarize_errors(summary.errors).items():
        style = "red" if what.startswith("error") else "dim"
        console.print(f"  [{style}]{terminal_text(what)}: {count}[/{style}]")
    warned = sum(1 for row in summary.rows if row.get("input_check"))
    if warned:
        console.print(f"  [yellow]{warned} case(s) unlike BraTS data: see input_check in results.csv[/yellow]")
