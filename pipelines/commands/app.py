"""The ``medimg`` Typer app and what its command modules share: the consoles, the version option,
pipeline lookup, error exits and the options several commands take.

Start-up imports nothing heavy: torch, monai, pydicom and the job packages are imported inside
the commands that need them, so ``medimg --help`` answers at once.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from medimg import __version__
from medimg.untrusted import terminal_text

if TYPE_CHECKING:
    from pipelines.base import Pipeline

__all__ = [
    "PIPELINE_HELP",
    "SITE_HELP",
    "PipelineArgument",
    "ModelCardOption",
    "QuietOption",
    "RayOption",
    "TrustModelCodeOption",
    "WEIGHTS_HELP",
    "app",
    "console",
    "csv_list",
    "err_console",
    "error_exit",
    "input_errors",
    "load_pipeline",
]

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

PIPELINE_HELP = "Pipeline: pneumonia (chest X-ray), density (mammography) or brats (brain-tumour MRI)."
SITE_HELP = (
    "A site folder in the pipeline's layout, split by patient: the dataset's own test split (VinDr's split "
    "column) with the rest 75/25 train/validation, or without one 60/20/20 train/validation/test."
)

#: The PIPELINE argument of run, train and evaluate.
PipelineArgument = Annotated[str, typer.Argument(help=PIPELINE_HELP)]
#: ``--quiet/-q`` of the commands with one progress bar.
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]
#: ``--weights`` of every command that runs a model (see medimg.model_sources).
WEIGHTS_HELP = (
    "The model: a medimg checkpoint, a MONAI bundle (folder or .zip), or a TorchScript (.ts) or torch.export "
    "(.pt2) file with its model card beside it."
)
#: ``--trust-model-code`` of every command that loads a model.
TrustModelCodeOption = Annotated[
    bool,
    typer.Option(
        "--trust-model-code",
        help="Let a MONAI bundle's config run code ($ expressions, any _target_). Only for bundles whose "
        "origin you trust; without it, only MONAI network classes are instantiated.",
    ),
]
#: ``--model-card`` of every command that loads a model.
ModelCardOption = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(
        "--model-card",
        exists=True,
        dir_okay=False,
        help="Model card YAML (default: NAME.yaml beside the model file); fills what a bundle does not state.",
    ),
]
#: ``--ray`` of the commands that can run their model on a Ray cluster (run, evaluate, saliency audit).
RayOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--ray",
        help="Run the model's work on a Ray cluster: auto (the cluster this machine belongs to, else a local "
        "one) or its ADDRESS (host:port); inputs and weights must be at the same path on every node; outputs "
        "are written here (needs the cluster extra; docs: throughput).",
    ),
]
#: ``--max-pixels`` of the commands that read images or volumes (checked from the header, before decoding).
MaxPixelsOption = Annotated[
    Optional[int],  # noqa: UP045 - typer needs Optional on 3.10
    typer.Option(
        "--max-pixels",
        min=1,
        help="Largest image or volume, in values, read before decoding (default 2**28, or MEDIMG_MAX_PIXELS).",
    ),
]


def apply_max_pixels(value: int | None) -> None:
    """Set the size limit of :mod:`medimg.limits` for this run (and the worker processes it starts)."""
    if value is not None:
        os.environ["MEDIMG_MAX_PIXELS"] = str(value)


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


def error_exit(message: object, *, code: int = 2, to: Console = err_console) -> typer.Exit:
    """Print ``error: message`` (red) on ``to`` and return the :class:`typer.Exit` to raise.

    Exit code 2 (the default) means bad input: data, weights or settings. ``message`` is printed
    literally (it often quotes file names or header values).
    """
    to.print(f"[red]error:[/red] {terminal_text(message)}")
    return typer.Exit(code)


@contextlib.contextmanager
def input_errors() -> Iterator[None]:
    """Bad data, weights or settings: one red line on stdout and exit code 2 (no traceback)."""
    from medimg.models import CheckpointError
    from pipelines.base import DatasetError

    try:
        yield
    except (DatasetError, CheckpointError, ValueError) as exc:
        raise error_exit(exc, to=console) from exc


def load_pipeline(name: str) -> Pipeline:
    """The pipeline called ``name``; an unknown name exits with code 2."""
    from pipelines import get_pipeline

    try:
        return get_pipeline(name)
    except KeyError as exc:
        raise error_exit(exc.args[0]) from exc


def csv_list(text: str | None) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``; None -> ``()``."""
    return tuple(t.strip() for t in (text or "").split(",") if t.strip())
