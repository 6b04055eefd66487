"""``medimg saliency audit``: the saliency-map trust audit (Arun et al. 2020) of a trained model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from medimg.untrusted import terminal_text
from pipelines.commands.app import (
    WEIGHTS_HELP,
    ModelCardOption,
    QuietOption,
    RayOption,
    TrustModelCodeOption,
    console,
    csv_list,
    error_exit,
)

if TYPE_CHECKING:
    from saliency.audit import AuditResult

saliency_app = typer.Typer(
    help="Saliency-map trust audits (Arun et al. 2020): eight methods, four criteria.", no_args_is_help=True
)

# The audit's options with long help texts, kept out of the command's signature.
_Preset = Annotated[
    str,
    typer.Option(
        help="Protocol: paper (the paper's SSIM range 2, statistics, rules; default) or calibrated "
        "(range 1, tested rules, the paper's line calibrated to range 1)."
    ),
]
_Replica = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Option(
        exists=True, dir_okay=False, help="Same architecture, another seed (repeatable; the presets use 3 models)."
    ),
]
_OtherArch = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option("--other-arch", exists=True, dir_okay=False, help="Another architecture (reproducibility)."),
]
_TrainReplicas = Annotated[
    bool, typer.Option("--train-replicas", help="Train the missing replicates and the second architecture.")
]
_OtherArchitecture = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Architecture --train-replicas trains for reproducibility (default: densenet121 <-> "
        "inception_v3, the paper's pair; compact <-> resnet-compact)."
    ),
]
_TrainData = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(file_okay=False, help="Training data for --train-replicas and the prior (default: the weights')."),
]
_Prior = Annotated[str, typer.Option(help="Average-mask prior: training (train + validation masks) or leave-one-out.")]
_PriorData = Annotated[
    Optional[Path],  # noqa: UP045
    typer.Option(file_okay=False, help="Folder whose training + validation boxes make the prior."),
]
_Methods = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        help="Comma-separated: gradient,smoothgrad,integrated_gradients,smoothgrad_ig,gradcam,"
        "guided_backprop,guided_gradcam,xrai (default: all). The two controls always run."
    ),
]
_Criteria = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(help="Comma-separated: localization,randomization,repeatability,reproducibility (default: all)."),
]
_MethodSettings = Annotated[
    str, typer.Option(help="Method settings: paper (the paper code's) or captum (captum's defaults).")
]
_IncludeStem = Annotated[bool, typer.Option("--include-stem", help="Randomize the stem too (the paper never does).")]
_Localizer = Annotated[
    Optional[list[Path]],  # noqa: UP045
    typer.Option(exists=True, dir_okay=False, help="Saved supervised localizer (twice: the repeatability pair)."),
]
_TrainLocalizer = Annotated[
    bool, typer.Option("--train-localizer", help="Train two supervised localizers (seeds) on the training boxes.")
]
_Variant = Annotated[
    Optional[list[str]],  # noqa: UP045
    typer.Option(help="LABEL=WEIGHTS: another model whose maps are scored for localization (repeatable)."),
]


def _variants(values: list[str]) -> dict[str, str]:
    """``["LABEL=WEIGHTS", ...]`` -> ``{LABEL: WEIGHTS}``; a bad value or a missing file is a usage error."""
    out = {}
    for value in values:
        label, sep, path = value.partition("=")
        if not sep or not label or not Path(path).is_file():
            raise typer.BadParameter(f"--variant {value!r}: expected LABEL=WEIGHTS with an existing file")
        out[label] = path
    return out


@saliency_app.command("audit")
def saliency_audit(
    pipeline: Annotated[str, typer.Argument(help="2-D pipeline: pneumonia (boxes: all criteria) or density.")],
    data: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="The pipeline's dataset folder.")],
    weights: Annotated[Path, typer.Option("--weights", exists=True, help=WEIGHTS_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (report, CSVs, map cache).")],
    preset: _Preset = "paper",
    replica: _Replica = None,
    other_arch: _OtherArch = None,
    train_replicas: _TrainReplicas = False,
    other_architecture: _OtherArchitecture = None,
    train_data: _TrainData = None,
    prior: _Prior = "training",
    prior_data: _PriorData = None,
    methods: _Methods = None,
    criteria: _Criteria = None,
    method_settings: _MethodSettings = "paper",
    include_stem: _IncludeStem = False,
    max_images: Annotated[int, typer.Option(min=1, help="At most this many images (positives first).")] = 100,
    seed: Annotated[int, typer.Option(help="Seeds noise, randomization, baseline pairs, replicas.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1, help="Images x samples per forward/backward chunk.")] = 32,
    localizer: _Localizer = None,
    train_localizer: _TrainLocalizer = False,
    localizer_epochs: Annotated[int, typer.Option(min=1, help="Epochs of --train-localizer.")] = 30,
    variant: _Variant = None,
    trust_model_code: TrustModelCodeOption = False,
    model_card: ModelCardOption = None,
    ray: RayOption = None,
    quiet: QuietOption = False,
) -> None:
    """Audit a model's saliency maps: localization, randomization, repeatability, reproducibility.

    Two model-blind controls (an edge detector, the input image) are judged beside the methods;
    a criterion they pass is reported as not discriminating. A model with the trainable attention
    gate adds "attention" as a ninth method. --weights may be a bundle or a TorchScript/torch.export
    model too: methods it cannot support (Grad-CAM on TorchScript) are left out and the report says why."""

    from medimg.models import CheckpointError
    from pipelines.base import DatasetError
    from pipelines.ray_runs import RayUnavailable
    from pipelines.saliency_audit import audit_pipeline

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
            methods=csv_list(methods),
            criteria=csv_list(criteria),
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
            trust_code=trust_model_code,
            card=model_card,
            ray=ray,
        )
    except (DatasetError, CheckpointError, ValueError, KeyError, RayUnavailable) as exc:
        raise error_exit(exc, to=console) from exc
    _print_audit(result)


def _print_audit(result: AuditResult) -> None:
    """The pass/fail matrix, the audit's notes and the files written."""
    from rich.table import Table

    from saliency.audit_report import pass_matrix_rows

    rows = pass_matrix_rows(result.matrix, result.criteria, result.non_discriminating)
    if rows:
        table = Table(title="Pass/fail matrix")
        for column in rows[0]:
            table.add_column(terminal_text(column))
        for row in rows:
            table.add_row(*(terminal_text(v) for v in row.values()))
        console.print(table)
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {terminal_text(note)}")
    console.print("wrote " + terminal_text(", ".join(str(p) for p in result.files.values())))
