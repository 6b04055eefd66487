"""``medimg train`` and ``medimg evaluate``: a pipeline's network on a labelled dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medimg.untrusted import terminal_text
from pipelines.commands.app import (
    WEIGHTS_HELP,
    ModelCardOption,
    PipelineArgument,
    RayOption,
    TrustModelCodeOption,
    app,
    console,
    error_exit,
    load_pipeline,
)

if TYPE_CHECKING:
    from medimg.training import TrainResult
    from pipelines.base import Pipeline


# The options of ``train`` with long help texts, kept out of its signature.
_TrainingData = Annotated[
    Path,
    typer.Argument(
        exists=True,
        file_okay=False,
        help="RSNA layout or NIH ChestX-ray14 / CheXpert PNG-JPEG folder (pneumonia), VinDr-like site folder(s) "
        "(density) or BraTS NIfTI folder (brats).",
    ),
]
_Architecture = Annotated[
    str | None,
    typer.Option(
        help="densenet121 (default, paper-faithful), compact (CPU), resnet18, resnet-compact (CPU), "
        "inception_v3 (the saliency paper's classifier, 320x320); "
        "brats: segresnet (default), segresnet-compact."
    ),
]
_UncertainLabels = Annotated[
    str,
    typer.Option(
        help="pneumonia, CheXpert-style CSV: what -1 (uncertain) becomes: ignore (left out), zeros or ones; "
        "blank is negative (docs: PNG and JPEG chest X-rays)."
    ),
]


def _set_label_policy(task: Pipeline, uncertain: str) -> None:
    """The CheXpert uncertain-label policy on a pipeline that reads PNG/JPEG tables; exit 2 when unknown."""
    if hasattr(task, "label_policy"):
        from dataclasses import replace

        try:
            task.label_policy = replace(task.label_policy, uncertain=uncertain)
        except ValueError as exc:
            raise error_exit(exc) from exc


@app.command()
def train(
    pipeline: PipelineArgument,
    data: _TrainingData,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Run folder: best.pt, last.pt, metrics.csv, learning_curve.png.")
    ],
    architecture: _Architecture = None,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    batch_size: Annotated[int, typer.Option(min=1)] = 16,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option(help="Seed of the patient split, initialization and augmentation.")] = 0,
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
        str, typer.Option(help="softmax (spatial; default) or sigmoid (measured: docs/results).")
    ] = "softmax",
    attention_regularizer: Annotated[
        str,
        typer.Option(
            "--attention-regularizer", "--attention-regulariser", help="none, sparsity or tv (old spelling accepted)."
        ),
    ] = "none",
    attention_regularizer_weight: Annotated[
        float, typer.Option("--attention-regularizer-weight", "--attention-regulariser-weight", min=0.0)
    ] = 0.0,
    box_fraction: Annotated[
        float,
        typer.Option(min=0.0, max=1.0, help="Fraction of positive training images whose boxes supervise the map."),
    ] = 0.0,
    box_weight: Annotated[float, typer.Option(min=0.0, help="Weight of the box-supervision loss.")] = 1.0,
    uncertain_labels: _UncertainLabels = "ignore",
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train a pipeline's network (patient-level split, best checkpoint, resume; DDP under torchrun)."""
    from pipelines import DatasetError
    from pipelines.training import TrainPipelineConfig, train_pipeline

    task = load_pipeline(pipeline)
    _set_label_policy(task, uncertain_labels)
    config = TrainPipelineConfig(
        architecture=architecture or task.default_architecture,
        image_size=tuple(int(v) for v in image_size.lower().split("x")) if image_size else None,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        cache=not no_cache,
        note=note,
        loss=loss,
        attention=_attention_settings(
            attention,
            heads=attention_heads,
            activation=attention_activation,
            regularizer=attention_regularizer,
            regularizer_weight=attention_regularizer_weight,
            box_fraction=box_fraction,
            box_weight=box_weight,
        ),
        quiet=quiet,
    )
    try:
        result = train_pipeline(task, data, out, config)
    except (DatasetError, ValueError) as exc:
        raise error_exit(exc) from exc
    _print_train_result(task, result)


def _attention_settings(enabled: bool, **settings: Any) -> dict[str, Any] | None:
    """The ``--attention-*`` and ``--box-*`` options as the attention gate's settings
    (``TrainPipelineConfig.attention``); None without ``--attention``."""
    return dict(settings) if enabled else None


def _print_train_result(task: Pipeline, result: TrainResult) -> None:
    """The best epoch and checkpoint (rank 0 only under torchrun)."""
    from medimg.training import rank

    if rank() != 0:
        return
    if result.best_value is None:
        console.print(
            f"[yellow]no finite validation {task.monitor} in {result.last_epoch} epoch(s) (too few validation images "
            f"of each class?); the last weights are in {terminal_text(result.last_checkpoint)}[/yellow]"
        )
    else:
        console.print(
            f"best {task.monitor} {result.best_value:.4f} at epoch {result.best_epoch}; "
            f"checkpoint {terminal_text(result.best_checkpoint)}"
        )


# ``evaluate --weights``: the model kinds (medimg.model_sources), without the first word of WEIGHTS_HELP.
_WEIGHTS_KINDS = WEIGHTS_HELP.split(": ", 1)[-1]

# The options of ``evaluate brats --predictions --truth`` (scoring files without a model).
_Predictions = Annotated[
    Path | None,
    typer.Option(exists=True, file_okay=False, help="brats without a model: folder of predicted label maps."),
]
_Truth = Annotated[
    Path | None,
    typer.Option(exists=True, file_okay=False, help="brats without a model: folder of reference label maps."),
]
_Metrics = Annotated[
    str | None,
    typer.Option(
        "--metrics",
        help="brats: legacy (whole-region Dice, HD95), lesionwise (BraTS 2023+) or legacy,lesionwise "
        "(default: legacy with a model, lesionwise with --predictions).",
    ),
]
_Challenge = Annotated[str, typer.Option(help="brats lesion-wise regions: mets, gli, gli2023, goat, men, ped, menrt.")]
_HeaderSpacing = Annotated[
    bool,
    typer.Option(
        "--header-spacing",
        help="Apply the voxel spacing in header order (physically right) instead of the official evaluation's "
        "reversed order; changes HD95/NSD on anisotropic grids only.",
    ),
]
_Penalise = Annotated[
    bool,
    typer.Option(
        "--penalise-unmatched",
        help="mets: count missed large lesions and false positives as Dice 0, HD95 373 in the lesion-wise means.",
    ),
]


@app.command()
def evaluate(
    pipeline: PipelineArgument,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder: metrics.json, predictions.csv, report.html.")
    ],
    data: Annotated[
        Path | None,
        typer.Argument(exists=True, file_okay=False, help="Dataset in the pipeline's public layout."),
    ] = None,
    weights: Annotated[Path | None, typer.Option(exists=True, help=f"The model to evaluate: {_WEIGHTS_KINDS}")] = None,
    trust_model_code: TrustModelCodeOption = False,
    model_card: ModelCardOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    n_boot: Annotated[int, typer.Option(min=1, help="Bootstrap resamples for the 95% intervals.")] = 1000,
    uncertainty: Annotated[
        str | None, typer.Option(help="brats: also score uncertainty maps (tta, mc-dropout) with QU-BraTS.")
    ] = None,
    samples: Annotated[int, typer.Option(min=1, help="brats: samples for the uncertainty method.")] = 8,
    naming: Annotated[
        str, typer.Option(help="brats: NIfTI naming, brats2021, brats2023 or plain (t1/t1ce/t2/flair per case folder).")
    ] = "brats2021",
    predictions: _Predictions = None,
    truth: _Truth = None,
    metric_sets: _Metrics = None,
    challenge: _Challenge = "mets",
    header_spacing: _HeaderSpacing = False,
    penalise_unmatched: _Penalise = False,
    uncertain_labels: _UncertainLabels = "ignore",
    ray: RayOption = None,
) -> None:
    """Evaluate a model (any --weights kind) on a labelled dataset (classification: bootstrap 95% intervals;
    brats: Dice and HD95 per region, QU-BraTS scores with --uncertainty), or, for brats, score
    segmentation files without a model (--predictions, --truth: BraTS lesion-wise metrics)."""
    from medimg.models import CheckpointError
    from pipelines import DatasetError
    from pipelines.ray_runs import RayUnavailable
    from pipelines.training import evaluate_pipeline

    if predictions is not None or truth is not None:
        from pipelines.commands.brats_files import evaluate_files

        evaluate_files(pipeline, predictions, truth, out, metric_sets, challenge, header_spacing, penalise_unmatched)
        return
    if data is None or weights is None:
        raise error_exit("give DATA and --weights (a model to evaluate), or --predictions and --truth (brats)")
    task = load_pipeline(pipeline)
    if ray is not None and task.unit == "study":
        raise error_exit(f"--ray: evaluate {task.name} runs here only (a Ray cluster evaluates the 2-D pipelines)")
    _set_label_policy(task, uncertain_labels)
    if hasattr(task, "configure"):
        task.configure(naming=naming, uncertainty=uncertainty, samples=samples)
    try:
        chosen = tuple(m.strip() for m in (metric_sets or "legacy").split(",") if m.strip())
        if not chosen or set(chosen) - {"legacy", "lesionwise"}:
            raise error_exit(f"unknown --metrics {metric_sets!r}; choose legacy, lesionwise or legacy,lesionwise")
        metrics = evaluate_pipeline(
            task,
            data,
            weights,
            out,
            seed=seed,
            n_boot=n_boot,
            segmentation_metrics=chosen,
            challenge=challenge.lower(),
            trust_code=trust_model_code,
            card=model_card,
            ray=ray,
        )
    except (DatasetError, CheckpointError, RayUnavailable) as exc:
        raise error_exit(exc) from exc
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    ci = metrics.get("ci95", {})
    for key, value in shown.items():
        interval = f" (95% CI {ci[key][0]:.3f}-{ci[key][1]:.3f})" if key in ci else ""
        console.print(f"{key}: {value:.4f}{interval}")
    console.print(terminal_text(f"wrote {', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))} in {out}"))
