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
    RayOption,
    TrustModelCodeOption,
    app,
    apply_max_pixels,
    console,
    err_console,
    error_exit,
    load_pipeline,
)

if TYPE_CHECKING:
    from medimg.pacs.dicomweb import DicomWebSource
    from pipelines.base import Pipeline
    from pipelines.dimse_runs import DimsePacs
    from pipelines.pacs_runs import FetchReport
    from pipelines.runner import RunSummary


# Options of `run` declared once here, so that the command reads as a list (the PACS ones: docs/pacs.md).
_Overwrite = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Remove the earlier run's outputs in OUT and start clean (needed when the weights or "
        "result settings differ from those in OUT/run.json).",
    ),
]

_Uncertainty = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="brats: uncertainty maps by tta, mc-dropout or ensemble (QU-BraTS files)."),
]

_EnsembleWeights = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Option(
        help="brats: further models for --uncertainty ensemble (repeatable; any --weights kind, each with "
        "its own card beside it; --trust-model-code applies to them too)."
    ),
]

_Naming = Annotated[
    str,
    typer.Option(
        help="brats NIfTI input naming: brats2021 (_t1ce...), brats2023 (-t1c...) or plain "
        "(a folder per case holding t1, t1ce, t2, flair .nii.gz)."
    ),
]

_LabelConvention = Annotated[
    str,
    typer.Option(
        help="brats output labels: auto (BraTS 2023 naming -> brats2023, ET = 3; any other input, "
        "DICOM included -> brats2020, the 2021 labels, ET = 4), brats2020 or brats2023."
    ),
]

_Views = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--views",
        help="density: CSV of laterality and view per image (columns SOPInstanceUID or path, "
        "laterality, view); overrides the tags.",
    ),
]

_ViewRule = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(
        "--view-rule",
        help="density: 'Keyword:regex' with groups (?P<laterality>..) and/or (?P<view>..), e.g. "
        "'PatientID:_(?P<laterality>LEFT|RIGHT)_(?P<view>CC|MLO)', for images the tags do not place "
        "(repeatable).",
    ),
]

_DicomResults = Annotated[
    bool,
    typer.Option(
        "--dicom-results/--no-dicom-results",
        help="DICOM inputs: also write the results as DICOM objects (SR, overlay SC) under OUT/dicom/, "
        "listed in run.json dicom_results (docs: dicom-results).",
    ),
]

_Study = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option("--study", help="DICOMweb: a StudyInstanceUID to run (repeatable)."),
]

_Query = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="DICOMweb: QIDO-RS study search, e.g. 'ModalitiesInStudy=CR&StudyDate=20260101-'."),
]

_NetrcFile = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--netrc",
        help="PACS credentials: netrc file with a 'machine HOST login USER password PASS' line "
        "(else MEDIMG_PACS_TOKEN or MEDIMG_PACS_USER + MEDIMG_PACS_PASSWORD).",
    ),
]

_CaBundle = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--ca-bundle", help="DICOMweb over HTTPS: the CA certificate(s) (PEM) to trust, instead of the system's."
    ),
]

_Push = Annotated[
    bool,
    typer.Option("--push", help="Send the run's DICOM results back to the PACS (OUT/pushed.json records them)."),
]

_FromPacs = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--from-pacs",
        help="A PACS over DIMSE, AE@HOST:PORT, instead of SOURCE: C-FIND the studies (--study or --query "
        "'KEY=VALUE&...' C-FIND keys), C-GET their series (docs: pacs).",
    ),
]

_MovePort = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        min=1,
        max=65535,
        help="--from-pacs: when the PACS refuses C-GET, receive by C-MOVE on this port (the PACS must "
        "know --calling-ae at this host and port).",
    ),
]


_Workers = Annotated[
    Optional[int],  # noqa: UP045
    typer.Option(
        min=0,
        help="Processes that read headers and decode/preprocess images while the model runs "
        "(default: all cores; 0: everything in this process).",
    ),
]

_Index = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--index",
        help="SQLite scan index of the DICOM folder (made or updated): only new or changed files are read "
        "(`medimg scan DIR --index FILE`).",
    ),
]


@app.command()
def run(
    pipeline: PipelineArgument,
    dicom_dir: Annotated[
        Optional[str],  # noqa: UP045
        typer.Argument(
            metavar="SOURCE",
            help="DICOM folder (e.g. a PACS export; pneumonia: also PNG/JPEG images) or a DICOMweb server "
            "dicomweb+http(s)://HOST:PORT/PATH (with --study or --query; docs: pacs). None with --from-pacs.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (a second run resumes).")] = ...,  # type: ignore[assignment]  # required
    weights: Annotated[
        Path | None,
        typer.Option(
            help=f"{WEIGHTS_HELP} Default: the demo weights in sample_data/weights/ (synthetic phantoms only).",
        ),
    ] = None,  # noqa: UP045
    trust_model_code: TrustModelCodeOption = False,
    model_card: ModelCardOption = None,
    overwrite: _Overwrite = False,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 8,
    device: Annotated[str, typer.Option(help="torch device, e.g. cpu or cuda.")] = "cpu",
    workers: _Workers = None,
    ray: RayOption = None,
    index: _Index = None,
    uncertainty: _Uncertainty = None,
    samples: Annotated[int, typer.Option(min=1, help="brats: samples for tta / mc-dropout.")] = 8,
    ensemble_weights: _EnsembleWeights = None,
    naming: _Naming = "brats2021",
    label_convention: _LabelConvention = "auto",
    views: _Views = None,
    view_rule: _ViewRule = None,
    dicom_results: _DicomResults = True,
    study: _Study = None,
    query: _Query = None,
    netrc_file: _NetrcFile = None,
    ca_bundle: _CaBundle = None,
    push: _Push = False,
    from_pacs: _FromPacs = None,
    calling_ae: Annotated[str, typer.Option("--calling-ae", help="--from-pacs: this side's AE title.")] = "MEDIMG",
    move_port: _MovePort = None,
    max_pixels: MaxPixelsOption = None,
    quiet: QuietOption = False,
) -> None:
    """Run a pipeline on a DICOM folder (brats: also a BraTS NIfTI folder): results.csv, per-study
    outputs, errors.csv, report.html."""
    from medimg.devices import DeviceError, check_device
    from medimg.models import CheckpointError
    from pipelines.ray_runs import RayUnavailable
    from pipelines.runner import RunRefused, run_pipeline

    apply_max_pixels(max_pixels)
    try:
        if ray is None:  # with --ray the model runs on the cluster's workers
            check_device(device)  # before anything is fetched or written
    except DeviceError as exc:
        raise error_exit(exc) from exc
    task = load_pipeline(pipeline)
    _configure(
        task,
        naming=naming,
        uncertainty=uncertainty,
        samples=samples,
        ensemble_weights=ensemble_weights,
        label_convention=label_convention,
    )
    pacs = (
        _pacs_source(dicom_dir, study=study, query=query, netrc_file=netrc_file, ca_bundle=ca_bundle, push=push)
        if from_pacs is None and dicom_dir is not None
        else _dimse_source(
            dicom_dir,
            from_pacs,
            calling_ae=calling_ae,
            move_port=move_port,
            study=study,
            query=query,
            others={"--netrc": netrc_file, "--ca-bundle": ca_bundle},
        )
    )
    folder = _input_folder(dicom_dir) if pacs is None and dicom_dir is not None else None
    weights = _weights_or_demo(task, weights)
    fetched = _fetch(pacs, task, out, study or [], query) if pacs is not None else None
    folder = fetched.folder if fetched is not None else folder
    assert folder is not None
    _configure_views(task, views, view_rule or [], folder)
    bar, update = tracked(not quiet, f"Running {task.name}")
    try:
        with bar:
            summary = run_pipeline(
                task,
                folder,
                out,
                weights=weights,
                overwrite=overwrite,
                batch_size=batch_size,
                device=device,
                progress=update,
                trust_code=trust_model_code,
                card=model_card,
                dicom_results=dicom_results,
                input_errors=fetched.errors if fetched is not None else (),
                workers=workers,
                ray=ray,
                scan_index=index,
            )
    except (CheckpointError, RunRefused, DeviceError, RayUnavailable) as exc:
        raise error_exit(exc) from exc
    _print_run_summary(task, summary, out)
    failed = summary.failed
    if pacs is not None and fetched is not None:
        failed |= _after_pacs_run(pacs, fetched, out, push=push)
    if failed:
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


def _input_folder(source: str) -> Path:
    """A folder SOURCE, checked; exit 2 when it is not one."""
    folder = Path(source)
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise error_exit(f"{source} {what}: give a DICOM folder or dicomweb+http(s)://HOST:PORT/PATH")
    return folder


def _pacs_source(
    source: str,
    *,
    study: list[str] | None,
    query: str | None,
    netrc_file: Path | None,
    ca_bundle: Path | None,
    push: bool,
) -> DicomWebSource | None:
    """The DICOMweb server of a ``dicomweb+http(s)://`` SOURCE with its credentials (None for a
    folder); exit 2 when the PACS options do not fit the source or the credentials cannot be read."""
    from medimg.pacs.credentials import CredentialError, find_credentials
    from medimg.pacs.dicomweb import DicomWebSource, is_dicomweb, parse_query

    if not is_dicomweb(source):
        given = [name for name, v in (("--study", study), ("--query", query), ("--push", push)) if v]
        given += [name for name, v in (("--netrc", netrc_file), ("--ca-bundle", ca_bundle)) if v is not None]
        if given:
            raise error_exit(f"{', '.join(given)}: only for a PACS source (dicomweb+http(s)://...)")
        return None
    if not study and not query:
        raise error_exit("a DICOMweb source needs --study UID (repeatable) or --query 'KEY=VALUE&...'")
    if ca_bundle is not None and not ca_bundle.is_file():
        raise error_exit(f"--ca-bundle {ca_bundle}: no such file")
    try:
        if query:
            parse_query(query)
        pacs = DicomWebSource(source)
        credentials = find_credentials(pacs.host, netrc_file=netrc_file)
        return DicomWebSource(source, credentials, ca_bundle=ca_bundle)
    except (CredentialError, ValueError) as exc:
        raise error_exit(exc) from exc


def _fetch(
    pacs: DicomWebSource | DimsePacs, task: Pipeline, out: Path, study: list[str], query: str | None
) -> FetchReport:
    """Retrieve the selected series into OUT/pacs-cache (holding OUT's lock); exit 2 when the PACS
    refuses the credentials, the search fails or another run holds OUT."""
    from medimg.pacs.dicomweb import PacsError
    from pipelines.dimse_runs import DimsePacs
    from pipelines.pacs_runs import fetch_studies
    from pipelines.run_state import OutputLock, RunRefused, prepare_output

    try:
        with OutputLock(prepare_output(out)):
            if isinstance(pacs, DimsePacs):
                fetched = pacs.fetch(task, out, study, query)
            else:
                fetched = fetch_studies(pacs, task, out, studies=study, query=query)
    except (PacsError, RunRefused) as exc:
        raise error_exit(exc) from exc
    console.print(
        f"{len(fetched.studies)} stud(ies) from {terminal_text(pacs.url)}: {len(fetched.retrieved)} series "
        f"retrieved, {len(fetched.cached)} already in {terminal_text(fetched.folder)}"
    )
    return fetched


def _after_pacs_run(pacs: DicomWebSource | DimsePacs, fetched: FetchReport, out: Path, *, push: bool) -> bool:
    """Print the retrieval errors; push the results when asked. True when
    something failed; exit 2 when the PACS refuses the credentials."""
    from medimg.pacs.dicomweb import PacsSetupError
    from pipelines.pacs_runs import push_results

    for line in fetched.errors:  # in errors.csv and the counts already (run_pipeline's input_errors)
        style = "red" if line["kind"] == "error" else "dim"
        console.print(f"  [{style}]{line['kind']}: {terminal_text(line['reason'])}[/{style}]")
    if not push:
        return fetched.failed
    try:
        report = push_results(pacs, out)
    except PacsSetupError as exc:
        raise error_exit(exc) from exc
    except ValueError as exc:
        console.print(f"  [red]not pushed: {terminal_text(exc)}[/red]")
        return True
    console.print(
        f"pushed {len(report.sent)} DICOM result(s) to {terminal_text(pacs.url)} "
        f"({len(report.earlier)} sent before, {len(report.failed)} failed; OUT/pushed.json)"
    )
    for path, reason in report.failed:
        console.print(f"  [red]not pushed: {terminal_text(path)}: {terminal_text(reason)}[/red]")
    return fetched.failed or bool(report.failed)


def _dimse_source(
    source: str | None,
    from_pacs: str | None,
    *,
    calling_ae: str,
    move_port: int | None,
    study: list[str] | None,
    query: str | None,
    others: dict[str, Path | None],
) -> DimsePacs:
    """The PACS of ``--from-pacs AE@HOST:PORT`` (C-FIND, C-GET or C-MOVE, C-STORE for --push); exit 2
    when SOURCE is given too, neither is given, or the options do not fit."""
    from medimg.pacs.aet import check_ae_title, parse_remote
    from medimg.pacs.dicomweb import parse_query
    from pipelines.dimse_runs import DimsePacs

    if from_pacs is None:
        raise error_exit("give SOURCE (a DICOM folder or dicomweb+http(s)://...) or --from-pacs AE@HOST:PORT")
    if source is not None:
        raise error_exit(f"--from-pacs takes no SOURCE (got {source}): the studies come from the PACS")
    given = [name for name, value in others.items() if value is not None]
    if given:
        raise error_exit(f"{', '.join(given)}: only for a DICOMweb source, not --from-pacs")
    if not study and not query:
        raise error_exit("--from-pacs needs --study UID (repeatable) or --query 'KEY=VALUE&...' (C-FIND keys)")
    try:
        if query:
            parse_query(query)
        return DimsePacs(parse_remote(from_pacs), calling_ae=check_ae_title(calling_ae), move_port=move_port)
    except ValueError as exc:
        raise error_exit(exc) from exc
