"""``medimg train`` and ``medimg evaluate``: a pipeline's network on a labelled dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medimg.untrusted import terminal_text
from pipelines.commands.app import PipelineArgument, app, console, error_exit, load_pipeline

if TYPE_CHECKING:
    from medimg.training import TrainResult
    from pipelines.base import Pipeline


# The options of ``train`` with long help texts, kept out of its signature.
_TrainingData = Annotated[
    Path,
    typer.Argument(
        exists=True,
        file_okay=False,
        help="RSNA layout (pneumonia), VinDr-like site folder(s) (density) or BraTS NIfTI folder (brats).",
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
) -> None:
    """Train a pipeline's network (patient-level split, best checkpoint, resume; DDP under torchrun)."""
    from pipelines import DatasetError
    from pipelines.training import TrainPipelineConfig, train_pipeline

    task = load_pipeline(pipeline)
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


@app.command()
def evaluate(
    pipeline: PipelineArgument,
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

    task = load_pipeline(pipeline)
    if hasattr(task, "configure"):
        task.configure(naming=naming, uncertainty=uncertainty, samples=samples)
    try:
        metrics = evaluate_pipeline(task, data, weights, out, seed=seed, n_boot=n_boot)
    except (DatasetError, CheckpointError) as exc:
        raise error_exit(exc) from exc
    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
    ci = metrics.get("ci95", {})
    for key, value in shown.items():
        interval = f" (95% CI {ci[key][0]:.3f}-{ci[key][1]:.3f})" if key in ci else ""
        console.print(f"{key}: {value:.4f}{interval}")
    console.print(terminal_text(f"wrote {', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))} in {out}"))
