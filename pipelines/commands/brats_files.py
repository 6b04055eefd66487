"""``medimg evaluate brats --predictions DIR --truth DIR``: the command side of
:func:`pipelines.brats_evaluation.evaluate_brats_files` (checks, progress, summary, exit code)."""

from __future__ import annotations

import math
from pathlib import Path

from medimg.progress import tracked
from medimg.untrusted import terminal_text
from pipelines.commands.app import console, err_console, error_exit

__all__ = ["evaluate_files"]

# The summary columns printed after a run, per region.
_SHOWN = ("lesionwise_dsc_mean", "lesionwise_hd95_mean", "all_instance_f1", "legacy_dice", "legacy_hd95")


def evaluate_files(
    pipeline: str,
    predictions: Path | None,
    truth: Path | None,
    out: Path,
    metrics: str | None,
    challenge: str,
    header_spacing: bool,
    penalise_unmatched: bool,
) -> None:
    """Score the files, print the means and the failures; exit 1 when any file failed."""
    import typer

    from pipelines.brats_evaluation import evaluate_brats_files

    if pipeline != "brats":
        raise error_exit(
            f"--predictions/--truth score BraTS segmentations: use `medimg evaluate brats`, not {pipeline}"
        )
    if predictions is None or truth is None:
        raise error_exit("give both --predictions and --truth")
    chosen = [m.strip() for m in (metrics or "lesionwise").split(",") if m.strip()]
    context, update = tracked(True, "scoring cases")
    try:
        with context:
            result = evaluate_brats_files(
                predictions,
                truth,
                out,
                metrics=chosen,
                challenge=challenge.lower(),
                official_spacing=not header_spacing,
                penalise_unmatched=penalise_unmatched,
                on_case=update,
            )
    except ValueError as exc:
        raise error_exit(exc) from exc
    mean = result["summary"].get("mean", {})
    for key, value in mean.items():
        if key.rsplit("_", 1)[0] in _SHOWN and isinstance(value, float) and not math.isnan(value):
            console.print(f"{key}: {value:.4f}")
    console.print(
        terminal_text(f"scored {result['n_cases']} case(s); wrote metrics.json, cases.csv, errors.csv in {out}")
    )
    if result["errors"]:
        for error in result["errors"]:
            err_console.print(f"[red]failed:[/red] {terminal_text(error['problem'])}")
        err_console.print(terminal_text(f"{len(result['errors'])} file(s) failed: see {out / 'errors.csv'}"))
        raise typer.Exit(1)
