"""``medimg export``: a model as a MONAI bundle, or as TorchScript with its model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medimg.untrusted import terminal_text
from pipelines.commands.app import (
    WEIGHTS_HELP,
    ModelCardOption,
    TrustModelCodeOption,
    app,
    console,
    error_exit,
    input_errors,
)


@app.command("export")
def export(
    weights: Annotated[Path, typer.Option("--weights", help=WEIGHTS_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write (a bundle, or model.ts + model.yaml).")],
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            help="bundle: a MONAI bundle folder (MONAI network classes only); torchscript: model.ts and its "
            "model card model.yaml.",
        ),
    ] = "bundle",
    pipeline: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional on 3.10
        typer.Option(help="The model's pipeline (pneumonia, density, brats); a medimg checkpoint states its own."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT when it exists and is not empty.")
    ] = False,
    trust_model_code: TrustModelCodeOption = False,
    model_card: ModelCardOption = None,
) -> None:
    """Export a model for use outside medimg: a MONAI bundle, or TorchScript with a model card.

    The export is loaded back as `medimg run` would load it and its outputs are compared with the
    model's on a random input; OUT is written only when they agree (within 1e-5).
    """
    import saliency.attention  # noqa: F401  (registers the attention wrapper, so gated checkpoints load)
    from medimg.model_sources.export import TOLERANCE, export_model

    with input_errors():
        try:
            result = export_model(
                weights, out, fmt=fmt, pipeline=pipeline, overwrite=overwrite, trust_code=trust_model_code,
                card=model_card,
            )  # fmt: skip
        except OSError as exc:
            raise error_exit(f"cannot write {out}: {exc}", to=console) from exc
    console.print(terminal_text(f"wrote {result.path} ({result.format}, {result.how}): {', '.join(result.files)}"))
    console.print(
        terminal_text(
            f"round trip through medimg's loader: largest output difference {result.max_difference:.3g} "
            f"(tolerance {TOLERANCE:g})"
        )
    )
