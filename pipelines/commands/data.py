"""Data commands: ``sample-data`` (synthetic datasets), ``scan`` (index a DICOM folder),
``convert`` (DICOM series to NIfTI) and ``demo`` (every job on the sample data)."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from medimg.progress import tracked
from medimg.untrusted import terminal_text
from pipelines.commands.app import QuietOption, app, console, err_console, error_exit

if TYPE_CHECKING:
    from medimg.dicom import ScanResult


class Dataset(str, Enum):
    cxr = "cxr"
    mammo = "mammo"
    brain = "brain"
    cxr_png = "cxr-png"


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
    """Generate synthetic data in the public datasets' layouts (RSNA CXR, VinDr-like MG, BraTS; with
    --only cxr-png also NIH ChestX-ray14-style PNG/JPEG)."""
    from medimg.synth import generate_sample_data

    try:
        counts = _parse_count(count)
        summary = generate_sample_data(
            out, seed=seed, full_size=full_size, only=[d.value for d in only] if only else None, count=counts
        )
    except ValueError as exc:
        raise error_exit(exc) from exc
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


def _print_sample_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"Sample data (seed {summary['seed']}{', full size' if summary['full_size'] else ''})")
    for column in ("dataset", "folder", "items", "files", "MB", "details"):
        table.add_column(column)
    for name, info in summary["datasets"].items():
        details = ", ".join(f"{k}: {v}" for k, v in info.get("details", {}).items())
        table.add_row(
            name,
            terminal_text(info["root"]),
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
    index: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--index",
            dir_okay=False,
            help="SQLite scan index of this folder (created when missing): only new or changed files are read.",
        ),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Index a DICOM folder (headers only): patients, studies, series, and the quarantine."""
    from medimg.dicom import scan_folder

    bar, update = tracked(not (quiet or as_json), "Reading headers")
    reuse = None
    with bar:
        if index is None:
            result = scan_folder(folder, workers=workers, progress=update)
        else:
            from medimg.dicom.scan_index import ScanIndexError, scan_with_index

            try:
                result, stats = scan_with_index(folder, index, workers=workers, progress=update)
            except ScanIndexError as exc:
                raise error_exit(exc) from exc
            reuse = [*stats.notes, f"{stats.read} file(s) read, {stats.reused} reused from the index {index}"]
            if stats.dropped:
                reuse[-1] += f", {stats.dropped} gone file(s) dropped from it"
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
    else:
        _print_scan(result)
    for line in reuse or ():  # after the JSON on stderr, so that stdout stays one JSON object
        (err_console if as_json else console).print(terminal_text(line))


def _print_scan(result: ScanResult) -> None:
    from pydicom.uid import UID
    from rich.table import Table

    table = Table(title=f"Series under {terminal_text(result.root)}")
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
                terminal_text(f"{study.PatientID or '?'} / ..{study.StudyInstanceUID[-6:]}") if k == 0 else "",
                terminal_text(s["SeriesNumber"] or ""),
                terminal_text(s["Modality"]),
                terminal_text(s["SeriesDescription"]),
                terminal_text(s["orientation"] or ""),
                images,
                "x".join(map(str, s["image_size"])) if s["image_size"] else "mixed",
                spacing,
                terminal_text(syntax),
                "[green]yes[/green]" if s["decodable"] and not s["problems"] else "[red]no[/red]",
                end_section=k == len(study.series) - 1,
            )
            for problem in s["problems"]:
                problems.append(f"{study.PatientID} series {s['SeriesNumber']} '{s['SeriesDescription']}': {problem}")
            if not s["decodable"]:
                problems.append(f"{study.PatientID} series {s['SeriesNumber']}: {s['decode_note']}")
    console.print(table)
    for line in problems:
        console.print(f"[yellow]problem:[/yellow] {terminal_text(line)}")
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
            qtable.add_row(terminal_text(entry.path), terminal_text(entry.reason))
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
    quiet: QuietOption = False,
) -> None:
    """Convert series (all, or those the rules select) to NIfTI with the same geometry."""
    from medimg.dicom.convert import convert_folder
    from medimg.dicom.selection import RuleError, load_rules

    try:
        rule_set = load_rules(rules) if rules else None
    except RuleError as exc:
        raise error_exit(exc) from exc
    bar, update = tracked(not quiet, "Converting")
    with bar:
        result = convert_folder(
            folder, out, rules=rule_set, voi=True if voi else None, overwrite=overwrite, progress=update
        )
    console.print(
        f"wrote {len(result.written)} NIfTI file(s) to {terminal_text(out)}; {len(result.skipped)} already there; "
        f"{len(result.failures)} failure(s). Details: {terminal_text(out / 'conversion.json')}"
    )
    for failure in result.failures:
        err_console.print(f"[red]failed:[/red] {terminal_text(failure['source'])}: {terminal_text(failure['error'])}")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def demo(
    data: Annotated[Path, typer.Option(help="Sample data folder; generated there when missing.")] = Path("sample_data"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the demo writes its outputs.")] = Path("demo_out"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
    keep_pacs: Annotated[
        bool, typer.Option("--keep-pacs", help="Keep the demo's local Orthanc running at the end (Ctrl-C stops it).")
    ] = False,
) -> None:
    """Show every job the toolkit has, on the bundled (or freshly generated) sample data."""
    from medimg.demo import run_demo

    ok = run_demo(data, out, console=console, quiet=quiet, keep_pacs=keep_pacs)
    if not ok:
        raise typer.Exit(1)
