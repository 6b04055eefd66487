"""The ``medimg`` command (Typer + rich).

Start-up imports nothing heavy: torch, monai, pydicom and the job packages are imported inside
the commands that need them, so ``medimg --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from medimg import __version__
from medimg.progress import tracked

app = typer.Typer(
    name="medimg",
    help="Medical-imaging toolkit on MONAI: DICOM ingestion, pipelines, audits and scoring.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (files, CI logs) gets wide tables instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True)  # error lines stay whole for grep


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medimg {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        Optional[bool],  # noqa: UP045 - typer needs Optional on 3.10
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """medimg: run imaging pipelines on DICOM folders, audit saliency, score uncertainty."""


class Dataset(str, Enum):
    cxr = "cxr"
    mammo = "mammo"
    brain = "brain"


@app.command("sample-data")
def sample_data(
    out: Annotated[Path, typer.Argument(help="Output folder (created).")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives identical files.")] = 0,
    full_size: Annotated[
        bool, typer.Option("--full-size", help="Real sizes (1024² CXR, full-field MG, 240x240x155 MR).")
    ] = False,
    only: Annotated[Optional[list[Dataset]], typer.Option(help="Generate only this dataset (repeatable).")] = None,  # noqa: UP045
    count: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="N (CXR images / exams per mammography site / brain cases), or per dataset: cxr=8,mammo=2,brain=1."
        ),
    ] = None,
) -> None:
    """Generate synthetic data in the public datasets' layouts (RSNA CXR, VinDr-like MG, BraTS)."""
    from medimg.synth import generate_sample_data

    try:
        counts = _parse_count(count)
        summary = generate_sample_data(
            out, seed=seed, full_size=full_size, only=[d.value for d in only] if only else None, count=counts
        )
    except ValueError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    _print_sample_summary(summary.to_dict())


def _parse_count(text: str | None) -> int | dict[str, int] | None:
    """``"8"`` -> 8; ``"cxr=8,brain=1"`` -> {"cxr": 8, "brain": 1}."""
    if text is None:
        return None
    if "=" not in text:
        return int(text)
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        out[name.strip()] = int(value)
    return out


def _print_sample_summary(summary: dict) -> None:
    from rich.table import Table

    table = Table(title=f"Sample data (seed {summary['seed']}{', full size' if summary['full_size'] else ''})")
    for column in ("dataset", "folder", "items", "files", "MB", "details"):
        table.add_column(column)
    for name, info in summary["datasets"].items():
        details = ", ".join(f"{k}: {v}" for k, v in info.get("details", {}).items())
        table.add_row(
            name,
            info["root"],
            f"{info['n_items']} {info['item_kind']}",
            str(info["n_files"]),
            f"{info['n_bytes'] / 1e6:.1f}",
            details,
        )
    console.print(table)


@app.command()
def scan(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="Folder to scan recursively.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of tables.")] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="Header-reading processes (default: all cores).")] = None,  # noqa: UP045
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Index a DICOM folder (headers only): patients, studies, series, and the quarantine."""
    from medimg.dicom import scan_folder

    bar, update = tracked(not (quiet or as_json), "Reading headers")
    with bar:
        result = scan_folder(folder, workers=workers, progress=update)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        return
    _print_scan(result)


def _print_scan(result) -> None:  # type: ignore[no-untyped-def]
    from pydicom.uid import UID
    from rich.table import Table

    table = Table(title=f"Series under {result.root}")
    for column in (
        "patient / study",
        "#",
        "mod.",
        "description",
        "plane",
        "images",
        "size",
        "spacing mm",
        "transfer syntax",
        "decodes",
    ):
        table.add_column(column, overflow="fold")
    problems = []
    for study in result.studies:
        for k, series in enumerate(study.series):
            s = series.summary()
            spacing = "x".join(f"{v:.4g}" for v in s["pixel_spacing"] or [])
            if s["slice_spacing"]:
                spacing += f"x{s['slice_spacing']:.4g}"
            images = str(s["instances"]) + (f" ({s['frames']} fr)" if s["frames"] != s["instances"] else "")
            syntax = ", ".join(UID(ts).keyword or ts for ts in series.transfer_syntaxes)
            table.add_row(
                f"{study.PatientID or '?'} / ..{study.StudyInstanceUID[-6:]}" if k == 0 else "",
                str(s["SeriesNumber"] or ""),
                s["Modality"],
                s["SeriesDescription"],
                s["orientation"] or "",
                images,
                "x".join(map(str, s["image_size"])) if s["image_size"] else "mixed",
                spacing,
                syntax,
                "[green]yes[/green]" if s["decodable"] and not s["problems"] else "[red]no[/red]",
                end_section=k == len(study.series) - 1,
            )
            for problem in s["problems"]:
                problems.append(f"{study.PatientID} series {s['SeriesNumber']} '{s['SeriesDescription']}': {problem}")
            if not s["decodable"]:
                problems.append(f"{study.PatientID} series {s['SeriesNumber']}: {s['decode_note']}")
    console.print(table)
    for line in problems:
        console.print(f"[yellow]problem:[/yellow] {line}")
    n_series = sum(1 for _ in result.iter_series())
    console.print(
        f"{len(result.patients)} patient(s), {len(result.studies)} study(ies), {n_series} series, "
        f"{result.num_files - len(result.quarantine)} image file(s); {len(result.quarantine)} quarantined"
    )
    if result.quarantine:
        qtable = Table(title="Quarantine (files not used)")
        qtable.add_column("path", overflow="fold")
        qtable.add_column("reason", overflow="fold")
        for entry in result.quarantine:
            qtable.add_row(entry.path, entry.reason)
        console.print(qtable)


@app.command()
def convert(
    folder: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="DICOM folder.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder for NIfTI files.")],
    rules: Annotated[
        str | None,
        typer.Option(
            help="Selection rules: brain_mr, chest_xray, mammography, or a YAML/JSON file. Default: every series."
        ),
    ] = None,  # noqa: UP045
    voi: Annotated[bool, typer.Option("--voi", help="Apply the header window/VOI LUT (output in [0, 1]).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Rewrite outputs that already exist.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Convert series (all, or those the rules select) to NIfTI with the same geometry."""
    from medimg.dicom.convert import convert_folder
    from medimg.dicom.selection import RuleError, load_rules

    try:
        rule_set = load_rules(rules) if rules else None
    except RuleError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    bar, update = tracked(not quiet, "Converting")
    with bar:
        result = convert_folder(
            folder, out, rules=rule_set, voi=True if voi else None, overwrite=overwrite, progress=update
        )
    console.print(
        f"wrote {len(result.written)} NIfTI file(s) to {out}; {len(result.skipped)} already there; "
        f"{len(result.failures)} failure(s). Details: {out / 'conversion.json'}"
    )
    for failure in result.failures:
        err_console.print(f"[red]failed:[/red] {failure['source']}: {failure['error']}")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def demo(
    data: Annotated[Path, typer.Option(help="Sample data folder; generated there when missing.")] = Path("sample_data"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the demo writes its outputs.")] = Path("demo_out"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """Show every job the toolkit has, on the bundled (or freshly generated) sample data."""
    from medimg.demo import run_demo

    ok = run_demo(data, out, console=console, quiet=quiet)
    if not ok:
        raise typer.Exit(1)


PIPELINE_HELP = "Pipeline: pneumonia (chest X-ray), density (mammography) or brats (brain-tumour MRI)."


def _pipeline(name: str):  # type: ignore[no-untyped-def]
    from pipelines import get_pipeline

    try:
        return get_pipeline(name)
    except KeyError as exc:
        err_console.print(f"[red]error:[/red] {exc.args[0]}")
        raise typer.Exit(2) from exc


@app.command()
def run(
    pipeline: Annotated[str, typer.Argument(help=PIPELINE_HELP)],
    dicom_dir: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="DICOM folder (e.g. a PACS export).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (a second run resumes).")],
    weights: Annotated[
        Path | None,
        typer.Option(help="Checkpoint; default: the demo weights in sample_data/weights/ (synthetic phantoms only)."),
    ] = None,  # noqa: UP045
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Redo studies that are already done.")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    uncertainty: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="brats: uncertainty maps by tta, mc-dropout or ensemble (QU-BraTS files)."),
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="brats: samples for tta / mc-dropout.")] = 8,
    ensemble_weights: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(help="brats: further checkpoints for --uncertainty ensemble (repeatable)."),
    ] = None,
    naming: Annotated[
        str, typer.Option(help="brats NIfTI input naming: brats2021 (_t1ce...) or brats2023 (-t1c...).")
    ] = "brats2021",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Run a pipeline on a DICOM folder (brats: also a BraTS NIfTI folder): results.csv, per-study
    outputs, errors.csv, report.html."""
    from medimg.models import CheckpointError
    from pipelines.run_report import summarize_errors
    from pipelines.runner import default_weights, run_pipeline

    task = _pipeline(pipeline)
    if hasattr(task, "configure"):
        try:
            task.configure(
                naming=naming,
                uncertainty=uncertainty,
                samples=samples,
                ensemble_weights=[str(w) for w in ensemble_weights or []],
            )
        except ValueError as exc:
            err_console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from exc
    elif uncertainty or ensemble_weights:
        err_console.print(f"[red]error:[/red] --uncertainty and --ensemble-weights apply to brats, not {task.name}")
        raise typer.Exit(2)
    if weights is None:
        weights = default_weights(task.name)
        if weights is None:
            err_console.print(f"[red]error:[/red] no --weights given and no demo weights for '{task.name}' found")
            raise typer.Exit(2)
        err_console.print(f"[yellow]note:[/yellow] using the demo weights {weights}: valid for synthetic phantoms only")
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
            )
    except CheckpointError as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    c = summary.counts
    console.print(
        f"{c['images']} {'case(s)' if task.unit == 'study' else 'image(s)'} in results.csv "
        f"({c['images_processed']} processed now, "
        f"{c['studies_resumed']} stud(ies) resumed); {c['errors']} error(s), {c['skipped']} skipped. "
        f"Outputs in {out} (report.html)."
    )
    for what, count in summarize_errors(summary.errors).items():
        style = "red" if what.startswith("error") else "dim"
        console.print(f"  [{style}]{what}: {count}[/{style}]")
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def train(
    pipeline: Annotated[str, typer.Argument(help=PIPELINE_HELP)],
    data: Annotated[
        Path,
        typer.Argument(
            exists=True,
            file_okay=False,
            help="RSNA layout (pneumonia), VinDr-like site folder(s) (density) or BraTS NIfTI folder (brats).",
        ),
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run folder: best.pt, last.pt, metrics.csv, learning_curve.png.")
    ],
    architecture: Annotated[
        str | None,
        typer.Option(
            help="densenet121 (default, paper-faithful), compact (CPU), resnet18, resnet-compact (CPU), "
            "inception_v3 (the saliency paper's classifier, 320x320); "
            "brats: segresnet (default), segresnet-compact."
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of the patient split, initialisation and augmentation.")] = 0,
    image_size: Annotated[
        str | None, typer.Option(help="Network input WxH, e.g. 128x128 (default per architecture).")
    ] = None,  # noqa: UP045
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Decode DICOM every epoch instead of caching.")] = False,
    note: Annotated[str, typer.Option(help="A note stored in the checkpoint (what the weights are valid for).")] = "",
    loss: Annotated[
        str | None, typer.Option(help="brats: dice (default, MONAI DiceLoss) or dicece (Dice + per-channel BCE).")
    ] = None,
    attention: Annotated[
        bool, typer.Option("--attention", help="2-D pipelines: add the trainable attention gate (saliency.attention).")
    ] = False,
    attention_heads: Annotated[int, typer.Option(min=1, help="Attention heads.")] = 1,
    attention_activation: Annotated[
        str, typer.Option(help="softmax (spatial; default) or sigmoid (see the README: measured choice).")
    ] = "softmax",
    attention_regulariser: Annotated[str, typer.Option(help="none, sparsity or tv.")] = "none",
    attention_regulariser_weight: Annotated[float, typer.Option(min=0.0)] = 0.0,
    box_fraction: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of positive training images whose boxes supervise the map."),
    ] = 0.0,
    box_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the box-supervision loss.")] = 1.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train a pipeline's network (patient-level split, best checkpoint, resume; DDP under torchrun)."""
    from pipelines import DatasetError
    from pipelines.training import train_pipeline

    task = _pipeline(pipeline)
    size = tuple(int(v) for v in image_size.lower().split("x")) if image_size else None
    try:
        result = train_pipeline(
            task,
            data,
            out,
            architecture=architecture or task.default_architecture,
            image_size=size,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            cache=not no_cache,
            note=note,
            loss=loss,
            attention={
                "heads": attention_heads,
                "activation": attention_activation,
                "regulariser": attention_regulariser,
                "regulariser_weight": attention_regulariser_weight,
                "box_fraction": box_fraction,
                "box_weight": box_weight,
            }
            if attention
            else None,
            quiet=quiet,
        )
    except (DatasetError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    from medimg.training import rank

    if rank() != 0:
        return
    if result.best_value is None:
        console.print(
            f"[yellow]no finite validation {task.monitor} in {result.last_epoch} epoch(s) (too few validation images "
            f"of each class?); the last weights are in {result.last_checkpoint}[/yellow]"
        )
    else:
        console.print(
            f"best {task.monitor} {result.best_value:.4f} at epoch {result.best_epoch}; "
            f"checkpoint {result.best_checkpoint}"
        )


@app.command()
def evaluate(
    pipeline: Annotated[str, typer.Argument(help=PIPELINE_HELP)],
    data: Annotated[
        Path, typer.Argument(exists=True, file_okay=False, help="Dataset in the pipeline's public layout.")
    ],
    weights: Annotated[Path, typer.Option(exists=True, dir_okay=False, help="Checkpoint to evaluate.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder: metrics.json, predictions.csv, report.html.")
    ],
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    n_boot: Annotated[int, typer.Option(min=0, help="Bootstrap resamples for the 95% intervals.")] = 1000,
    uncertainty: Annotated[
        str | None, typer.Option(help="brats: also score uncertainty maps (tta, mc-dropout) with QU-BraTS.")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="brats: samples for the uncertainty method.")] = 8,
    naming: Annotated[str, typer.Option(help="brats: NIfTI naming, brats2021 or brats2023.")] = "brats2021",
) -> None:
    """Evaluate a checkpoint on a labelled dataset (classification: bootstrap 95% intervals;
    brats: Dice and HD95 per region, QU-BraTS scores with --uncertainty)."""
    from medimg.models import CheckpointError
    from pipelines import DatasetError
    from pipelines.training import evaluate_pipeline

    task = _pipeline(pipeline)
    if hasattr(task, "configure"):
        task.configure(naming=naming, uncertainty=uncertainty, samples=samples)
    try:
        metrics = evaluate_pipeline(task, data, weights, out, seed=seed, n_boot=n_boot)
    except (DatasetError, CheckpointError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    ci = metrics.get("ci95", {})
    for key, value in shown.items():
        interval = f" (95% CI {ci[key][0]:.3f}-{ci[key][1]:.3f})" if key in ci else ""
        console.print(f"{key}: {value:.4f}{interval}")
    console.print(f"wrote {', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))} in {out}")


uncertainty_app = typer.Typer(
    help="QU-BraTS uncertainty scoring (exact to the official scorer) and team ranking.", no_args_is_help=True
)
app.add_typer(uncertainty_app, name="uncertainty")


def _print_errors(rows: list[dict]) -> None:
    for row in rows:
        where = " ".join(part for part in (row.get("team", ""), row["case_id"], row["file"]) if part)
        err_console.print(f"[red]error:[/red] {where}: {row['error']}")


@uncertainty_app.command("score")
def uncertainty_score(
    submission: Annotated[
        Path, typer.Argument(help="Submission folder: {ID}.nii.gz and {ID}_unc_{whole,core,enhance}.nii.gz.")
    ],
    truth: Annotated[
        Path, typer.Option("--truth", help="Truth folder: {ID}_seg.nii.gz (flat or one folder per case).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="scores.csv to write (errors.csv is written beside it).")],
    curves: Annotated[Optional[Path], typer.Option(help="Also write the per-threshold curves CSV.")] = None,  # noqa: UP045
    report: Annotated[Optional[Path], typer.Option(help="Also write a self-contained HTML report.")] = None,  # noqa: UP045
    num_thresholds: Annotated[
        int, typer.Option(min=2, help="Threshold grid size: 41 = 100 -> 0 in steps of 2.5 (the challenge's).")
    ] = 41,
    no_brain_mask: Annotated[
        bool,
        typer.Option("--no-brain-mask", help="Count the whole volume as brain when a case has no brain mask or T1."),
    ] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Processes (default: all cores).")] = None,  # noqa: UP045
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Score one QU-BraTS submission: DSC/FTP/FTN AUCs and the score per case and region."""
    from rich.table import Table

    from uncertainty.scoring import score_submission, summarize, write_results

    bar, update = tracked(not quiet, "Scoring cases")
    with bar:
        result = score_submission(
            submission,
            truth,
            num_thresholds=num_thresholds,
            brain_mask="none" if no_brain_mask else "auto",
            workers=workers,
            progress=update,
        )
    write_results(result, out, curves_csv=curves)
    if report is not None:
        from uncertainty.report import score_report

        score_report(result, source=f"submission {submission}, truth {truth}").write(report)
    table = Table(title=f"QU-BraTS scores: {len(result.cases)} case(s) of {len(result.truth_case_ids)}")
    for column in ("region", "cases", "mean score", "median score", "mean DSC AUC", "mean FTP AUC", "mean FTN AUC"):
        table.add_column(column)
    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    for row in summarize(result.cases):
        table.add_row(
            row["region"],
            str(row["cases"]),
            fmt(row["mean_SCORE"]),
            fmt(row["median_SCORE"]),
            fmt(row["mean_DSC_AUC"]),
            fmt(row["mean_FTP_RATIO_AUC"]),
            fmt(row["mean_FTN_RATIO_AUC"]),
        )
    console.print(table)
    console.print(
        f"wrote {out}"
        + (f", {curves}" if curves else "")
        + (f", {report}" if report else "")
        + f", {out.with_name('errors.csv')}"
    )
    _print_errors([e.to_row() for e in result.errors])
    if not result.ok:
        raise typer.Exit(1)


def _print_ranking(ranking) -> None:  # type: ignore[no-untyped-def]
    """The ranking table and the team x team p-value matrix, on the console."""
    from rich.table import Table

    fmt = lambda v: "" if v is None else f"{v:.4f}"  # noqa: E731
    table = Table(title="QU-BraTS ranking")
    for column in ("#", "team", "mean rank", "NRS", "missing", "WT", "TC", "ET", "p vs next"):
        table.add_column(column)
    for row in ranking.table:
        table.add_row(
            str(row["position"]),
            row["team"],
            f"{row['mean_rank']:.3f}",
            f"{row['normalised_ranking_score']:.3f}",
            str(row["pairs_missing"]),
            fmt(row["mean_score_WT"]),
            fmt(row["mean_score_TC"]),
            fmt(row["mean_score_ET"]),
            fmt(row["p_value_vs_next"]),
        )
    console.print(table)
    if ranking.permutations == 0 or len(ranking.teams) < 2:
        return
    from uncertainty.ranking import pairwise_rows

    matrix = Table(title=f"Pairwise p-values (permutation test over cases, unadjusted; * p < {ranking.alpha:g})")
    matrix.add_column("team")
    for team in ranking.teams:
        matrix.add_column(team)
    for row in pairwise_rows(ranking):
        cells = [row[t] for t in ranking.teams]
        matrix.add_row(
            row["team"], *("-" if p is None else f"{p:.4f}" + ("*" if p < ranking.alpha else "") for p in cells)
        )
    console.print(matrix)


def _rank_sources(teams_dir: Path | None, truth: Path | None, from_scores: Path | None) -> None:
    """Exit 2 unless exactly one of (TEAMS_DIR with --truth) and --from-scores is given."""
    folder = teams_dir is not None or truth is not None
    problem = ""
    if from_scores is not None and folder:
        problem = "give either TEAMS_DIR with --truth, or --from-scores, not both"
    elif from_scores is None and not folder:
        problem = "give TEAMS_DIR with --truth (score and rank submissions) or --from-scores SCORES_CSV"
    elif from_scores is None and (teams_dir is None or truth is None):
        problem = "TEAMS_DIR needs --truth" if truth is None else "--truth needs TEAMS_DIR"
    if problem:
        err_console.print(f"[red]error:[/red] {problem}")
        raise typer.Exit(2)


@uncertainty_app.command("rank")
def uncertainty_rank(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="Output folder: ranking.csv, pairwise_p_values.csv, scores.csv, errors.csv, report.html.",
        ),
    ],
    teams_dir: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Argument(help="One sub-folder per team, each a submission folder (with --truth)."),
    ] = None,
    truth: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--truth", help="Truth folder: {ID}_seg.nii.gz (flat or one folder per case)."),
    ] = None,
    from_scores: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--from-scores",
            help="Rank teams already scored, instead of TEAMS_DIR and --truth: a CSV with team,case_id,region,SCORE "
            "(other columns ignored, e.g. the scores.csv this command writes).",
        ),
    ] = None,
    num_thresholds: Annotated[int, typer.Option(min=2, help="Threshold grid size (41: the challenge's).")] = 41,
    permutations: Annotated[int, typer.Option(min=0, help="Permutations per pairwise test (0: no tests).")] = 100_000,
    seed: Annotated[int, typer.Option(help="Seed of the permutation tests.")] = 0,
    no_brain_mask: Annotated[
        bool, typer.Option("--no-brain-mask", help="Whole volume as brain when a case has no mask or T1.")
    ] = False,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Processes (default: all cores).")] = None,  # noqa: UP045
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Rank teams: cumulative rank per case, mean rank, normalised ranking score, pairwise permutation tests."""
    from uncertainty.leaderboard import build_leaderboard, missing_rows, rank_from_scores

    _rank_sources(teams_dir, truth, from_scores)
    try:
        if from_scores is not None:
            ranking = rank_from_scores(from_scores, out, permutations=permutations, seed=seed)
            errors = missing_rows(ranking, from_scores)
            written = ("ranking.csv", "pairwise_p_values.csv", "errors.csv", "report.html")
        else:
            assert teams_dir is not None and truth is not None
            bar, update = tracked(not quiet, "Scoring teams")
            with bar:
                board = build_leaderboard(
                    teams_dir,
                    truth,
                    out,
                    num_thresholds=num_thresholds,
                    brain_mask="none" if no_brain_mask else "auto",
                    permutations=permutations,
                    seed=seed,
                    workers=workers,
                    progress=update,
                )
            assert board.ranking is not None
            ranking = board.ranking
            errors = [{"team": team, **e.to_row()} for team, e in board.errors]  # type: ignore[attr-defined]
            written = ("ranking.csv", "pairwise_p_values.csv", "scores.csv", "errors.csv", "report.html")
    except (FileNotFoundError, NotADirectoryError, ValueError) as exc:
        err_console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    _print_ranking(ranking)
    console.print("wrote " + ", ".join(str(out / name) for name in written))
    _print_errors(errors)
    if errors:
        raise typer.Exit(1)


saliency_app = typer.Typer(
    help="Saliency-map trust audits (Arun et al. 2020): eight methods, four criteria.", no_args_is_help=True
)
app.add_typer(saliency_app, name="saliency")


def _variants(values: list[str]) -> dict[str, str]:
    out = {}
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not label or not Path(path).is_file():
            raise typer.BadParameter(f"--variant {value!r}: expected LABEL=WEIGHTS with an existing file")
        out[label] = path
    return out


def _csv_list(text: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())


@saliency_app.command("audit")
def saliency_audit(
    pipeline: Annotated[str, typer.Argument(help="2-D pipeline: pneumonia (boxes: all criteria) or density.")],
    data: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="The pipeline's dataset folder.")],
    weights: Annotated[Path, typer.Option("--weights", exists=True, dir_okay=False, help="Trained model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (report, CSVs, map cache).")],
    preset: Annotated[
        str,
        typer.Option(
            help="Protocol: paper (the paper's SSIM range 2, statistics, rules; default) or calibrated "
            "(range 1, tested rules, the paper's line calibrated to range 1)."
        ),
    ] = "paper",
    replica: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(
            exists=True, dir_okay=False, help="Same architecture, another seed (repeatable; the presets use 3 models)."
        ),
    ] = None,
    other_arch: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--other-arch", exists=True, dir_okay=False, help="Another architecture (reproducibility)."),
    ] = None,
    train_replicas: Annotated[
        bool, typer.Option("--train-replicas", help="Train the missing replicates and the second architecture.")
    ] = False,
    other_architecture: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Architecture --train-replicas trains for reproducibility (default: densenet121 <-> "
            "inception_v3, the paper's pair; compact <-> resnet-compact)."
        ),
    ] = None,
    train_data: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(file_okay=False, help="Training data for --train-replicas and the prior (default: the weights')."),
    ] = None,
    prior: Annotated[
        str, typer.Option(help="Average-mask prior: training (train + validation masks) or leave-one-out.")
    ] = "training",
    prior_data: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(file_okay=False, help="Folder whose training + validation boxes make the prior."),
    ] = None,
    methods: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(
            help="Comma-separated: gradient,smoothgrad,integrated_gradients,smoothgrad_ig,gradcam,"
            "guided_backprop,guided_gradcam,xrai (default: all). The two controls always run."
        ),
    ] = None,
    criteria: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="Comma-separated: localization,randomization,repeatability,reproducibility (default: all)."),
    ] = None,
    method_settings: Annotated[
        str, typer.Option(help="Method settings: paper (the paper code's) or captum (captum's defaults).")
    ] = "paper",
    include_stem: Annotated[
        bool, typer.Option("--include-stem", help="Randomise the stem too (the paper never does).")
    ] = False,
    max_images: Annotated[int, typer.Option(min=1, help="At most this many images (positives first).")] = 100,
    seed: Annotated[int, typer.Option(help="Seeds noise, randomisation, baseline pairs, replicas.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Images x samples per forward/backward chunk.")] = 32,
    localizer: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Option(exists=True, dir_okay=False, help="Saved supervised localiser (twice: the repeatability pair)."),
    ] = None,
    train_localizer: Annotated[
        bool, typer.Option("--train-localizer", help="Train two supervised localisers (seeds) on the training boxes.")
    ] = False,
    localizer_epochs: Annotated[int, typer.Option(min=1, help="Epochs of --train-localizer.")] = 30,
    variant: Annotated[
        Optional[list[str]],  # noqa: UP045
        typer.Option(help="LABEL=WEIGHTS: another model whose maps are scored for localisation (repeatable)."),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Audit a model's saliency maps: localisation, randomisation, repeatability, reproducibility.

    Two model-blind controls (an edge detector, the input image) are judged beside the methods;
    a criterion they pass is reported as not discriminating. A model with the trainable attention
    gate adds "attention" as a ninth method."""

    from medimg.models import CheckpointError
    from pipelines.base import DatasetError
    from pipelines.saliency_audit import audit_pipeline
    from saliency.audit_report import pass_matrix_rows

    try:
        result = audit_pipeline(
            pipeline,
            data,
            weights,
            out,
            replicas=replica or [],
            other_arch=other_arch,
            other_architecture=other_architecture,
            train_replicas=train_replicas,
            train_data=train_data,
            prior=prior,
            prior_data=prior_data,
            methods=_csv_list(methods),
            criteria=_csv_list(criteria),
            preset=preset,
            method_preset=method_settings,
            include_stem=include_stem,
            max_images=max_images,
            seed=seed,
            batch_size=batch_size,
            localizers=localizer or [],
            train_localizer=train_localizer,
            localizer_epochs=localizer_epochs,
            variants=_variants(variant or []),
            progress=not quiet,
        )
    except (DatasetError, CheckpointError, ValueError, KeyError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    _print_pass_matrix(pass_matrix_rows(result.matrix, result.criteria, result.non_discriminating), "Pass/fail matrix")
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    console.print("wrote " + ", ".join(str(p) for p in result.files.values()))


def _print_pass_matrix(rows: list[dict[str, str]], title: str) -> None:
    from rich.table import Table

    if not rows:
        return
    table = Table(title=title)
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*row.values())
    console.print(table)


continual_app = typer.Typer(
    help="Expand a model to a new institution without forgetting the old one (EWC + the old site's BN statistics).",
    no_args_is_help=True,
)
app.add_typer(continual_app, name="continual")
_SITE_HELP = "A site folder in the pipeline's layout (split by patient 60/20/20 into train/val/test)."


@contextlib.contextmanager
def _input_errors() -> Iterator[None]:
    """Bad data, weights or settings: one red line and exit code 2 (no traceback)."""
    from medimg.models import CheckpointError
    from pipelines.base import DatasetError

    try:
        yield
    except (DatasetError, CheckpointError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


@continual_app.command("fisher")
def continual_fisher(
    pipeline: Annotated[str, typer.Argument(help="2-D pipeline, e.g. density.")],
    data_a: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="The OLD site. " + _SITE_HELP)],
    weights: Annotated[Path, typer.Option("--weights", exists=True, dir_okay=False, help="The old site's model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="fisher.pt to write (Fisher diagonal + metadata).")],
    mode: Annotated[
        str, typer.Option(help="empirical_logprob (default), true_fisher or qtim_logit_sum.")
    ] = "empirical_logprob",
    max_samples: Annotated[Optional[int], typer.Option(min=1, help="A seeded subset of the training split.")] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Estimate the Fisher diagonal at the old site: only the model and this file leave it."""
    from pipelines.continual_expansion import estimate_site_fisher

    with _input_errors():
        fisher = estimate_site_fisher(pipeline, data_a, weights, out, mode=mode, max_samples=max_samples, seed=seed)
    console.print(f"wrote {out} ({fisher.meta.get('mode')}, {fisher.meta.get('n_samples')} samples)")


@continual_app.command("expand")
def continual_expand(
    pipeline: Annotated[str, typer.Argument(help="2-D pipeline, e.g. density.")],
    data_b: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="The NEW site. " + _SITE_HELP)],
    weights: Annotated[Path, typer.Option("--weights", exists=True, dir_okay=False, help="The old site's model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: best.pt, metrics.json, metrics.csv.")],
    fisher: Annotated[
        Optional[Path], typer.Option(exists=True, dir_okay=False, help="fisher.pt from `continual fisher` (EWC).")  # noqa: UP045
    ] = None,
    method: Annotated[str, typer.Option(help="ewc-gbn (proposed), ewc, finetune, finetune-gbn, bn-*, lwf, ...")] = (
        "ewc-gbn"
    ),
    lam: Annotated[float, typer.Option("--lambda", min=0.0, help="EWC lambda (mean-normalised Fisher).")] = 100.0,
    old: Annotated[
        Optional[Path], typer.Option(exists=True, file_okay=False, help="Old site, to measure forgetting.")  # noqa: UP045
    ] = None,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option()] = 1e-4,
    seed: Annotated[int, typer.Option()] = 0,
    select: Annotated[
        str, typer.Option(help="Epoch kept: metric (best new-site validation metric) or ce_penalty (the paper code).")
    ] = "metric",
) -> None:
    """Adapt the old site's model to the new site with one method; new weights and metrics.json."""
    from pipelines.continual_expansion import expand_site

    with _input_errors():
        metrics = expand_site(
            pipeline, data_b, weights, out, method=method, fisher=fisher, lam=lam, data_a=old, epochs=epochs,
            batch_size=batch_size, lr=lr, seed=seed, select=select,
        )  # fmt: skip
    for key in ("new_before", "new_after", "old_before", "old_after"):
        if key in metrics:
            console.print(f"{key}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[key].items()))
    console.print(f"wrote {metrics['checkpoint']}, {out / 'metrics.json'}")


@continual_app.command("compare")
def continual_compare(
    pipeline: Annotated[str, typer.Argument(help="2-D pipeline, e.g. density.")],
    old: Annotated[Path, typer.Option(exists=True, file_okay=False, help="The OLD site. " + _SITE_HELP)],
    new: Annotated[Path, typer.Option(exists=True, file_okay=False, help="The NEW site.")],
    weights: Annotated[Path, typer.Option("--weights", exists=True, dir_okay=False, help="The old site's model.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder: arms.csv, summary.csv, report.html, runs/.")],
    arms: Annotated[Optional[str], typer.Option(help="Comma-separated arms (default: all).")] = None,  # noqa: UP045
    lambdas: Annotated[str, typer.Option(help="Comma-separated EWC lambdas.")] = "1,100,10000",
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0",
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option()] = 1e-4,
    fisher_mode: Annotated[
        str, typer.Option(help="Fisher of the EWC arms: empirical_logprob (default), true_fisher, qtim_logit_sum.")
    ] = "empirical_logprob",
    select: Annotated[
        str, typer.Option(help="Epoch kept: metric (best new-site validation metric) or ce_penalty (the paper code).")
    ] = "metric",
) -> None:
    """Run every arm (EWC arms at every lambda, every seed) and compare forgetting and plasticity."""
    from pipelines.continual_expansion import compare_arms

    with _input_errors():
        rows = compare_arms(
            pipeline, old, new, weights, out, arms=_csv_list(arms), lambdas=[float(v) for v in _csv_list(lambdas)],
            seeds=[int(v) for v in _csv_list(seeds)], epochs=epochs, batch_size=batch_size, lr=lr,
            fisher_mode=fisher_mode, select=select,
        )  # fmt: skip
    console.print(f"{len(rows)} run(s); wrote {out / 'arms.csv'}, {out / 'summary.csv'}, {out / 'report.html'}")


federated_app = typer.Typer(
    help="Federated training across institutions (Flower): simulation, baselines, cross-site evaluation.",
    no_args_is_help=True,
)
app.add_typer(federated_app, name="federated")


@federated_app.command("simulate")
def federated_simulate(
    pipeline: Annotated[str, typer.Argument(help="2-D classification pipeline, e.g. density.")],
    site: Annotated[
        list[Path], typer.Option("--site", exists=True, file_okay=False, help="A site folder (repeat). " + _SITE_HELP)
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder: seed<s>/, cross_site.csv, summary.json, ...")],
    rounds: Annotated[int, typer.Option(min=1, help="Communication rounds R.")] = 3,
    local_epochs: Annotated[int, typer.Option(min=1, help="Local epochs E per round.")] = 1,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option()] = 1e-3,
    proximal_mu: Annotated[float, typer.Option(min=0.0, help="FedProx mu (0 = FedAvg).")] = 0.0,
    bn_policy: Annotated[
        str, typer.Option(help="average (default), local (FedBN) or global_frozen (needs --weights).")
    ] = "average",
    weights: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(exists=True, dir_okay=False, help="Initial global model (default: a fresh network)."),
    ] = None,
    architecture: Annotated[str, typer.Option(help="Architecture of a fresh network.")] = "compact",
    seeds: Annotated[
        str, typer.Option(help="Comma-separated seeds; each trains the federation and the baselines again.")
    ] = "0,1,2",
    leave_one_out: Annotated[
        bool,
        typer.Option(help="Also federate every K-1 sites and score them on the held-out site (generalisation)."),
    ] = False,
    n_boot: Annotated[int, typer.Option(min=1, help="Bootstrap replicates of the 95% intervals.")] = 1000,
    engine: Annotated[
        str, typer.Option(help="flower (Flower's simulation engine) or inprocess (no engine).")
    ] = "flower",
    baselines: Annotated[bool, typer.Option(help="Also train local-only and pooled models (same budget).")] = True,
) -> None:
    """Simulate a federation on this machine; compare it with local-only and pooled training across sites."""
    from pipelines.federated import simulate_federation
    from pipelines.federated_eval import summary_lines

    with _input_errors():
        try:
            seed_list = [int(v) for v in _csv_list(seeds)]
        except ValueError as exc:
            raise ValueError(f"--seeds must be comma-separated integers, got {seeds!r}") from exc
        summary = simulate_federation(
            pipeline, site, out, rounds=rounds, local_epochs=local_epochs, batch_size=batch_size, lr=lr,
            proximal_mu=proximal_mu, bn_policy=bn_policy, weights=weights, architecture=architecture,
            seeds=seed_list, leave_one_out=leave_one_out, n_boot=n_boot, engine=engine, baselines=baselines,
        )  # fmt: skip
    for line in summary_lines(summary):
        console.print(line, highlight=False, markup=False)
    console.print(f"wrote {out / 'cross_site.csv'}, {out / 'summary.json'}, {out / 'report.html'}")


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
