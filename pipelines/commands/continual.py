"""``medimg continual``: expand a model to a new institution without forgetting the old one
(``fisher`` at the old site, ``expand`` at the new one, ``compare`` every method)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medimg.untrusted import terminal_text
from pipelines.commands.app import (
    SITE_HELP,
    WEIGHTS_HELP,
    ModelCardOption,
    TrustModelCodeOption,
    console,
    csv_list,
    input_errors,
)

#: ``--weights`` of every continual command: the old site's model.
_Weights = Annotated[
    Path,
    typer.Option(
        "--weights",
        exists=True,
        help="The old site's model. " + WEIGHTS_HELP + " torch.export (.pt2) models are refused (an exported "
        "graph cannot be trained); a TorchScript model is adapted into a 'torchscript' checkpoint.",
    ),
]

continual_app = typer.Typer(
    help="Expand a model to a new institution without forgetting the old one (EWC + the old site's BN statistics).",
    no_args_is_help=True,
)


@continual_app.command("fisher")
def continual_fisher(
    pipeline: Annotated[str, typer.Argument(help="2-D pipeline, e.g. density.")],
    data_a: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="The OLD site. " + SITE_HELP)],
    weights: _Weights,
    out: Annotated[Path, typer.Option("--out", "-o", help="fisher.pt to write (Fisher diagonal + metadata).")],
    mode: Annotated[
        str, typer.Option(help="empirical_logprob (default), true_fisher or qtim_logit_sum.")
    ] = "empirical_logprob",
    max_samples: Annotated[Optional[int], typer.Option(min=1, help="A seeded subset of the training split.")] = None,  # noqa: UP045
    seed: Annotated[int, typer.Option()] = 0,
    trust_model_code: TrustModelCodeOption = False,
    model_card: ModelCardOption = None,
) -> None:
    """Estimate the Fisher diagonal at the old site: only the model and this file leave it."""
    from pipelines.continual_expansion import estimate_site_fisher

    with input_errors():
        fisher = estimate_site_fisher(
            pipeline, data_a, weights, out, mode=mode, max_samples=max_samples, seed=seed,
            trust_code=trust_model_code, card=model_card,
        )  # fmt: skip
    console.print(terminal_text(f"wrote {out} ({fisher.meta.get('mode')}, {fisher.meta.get('n_samples')} samples)"))


@continual_app.command("expand")
def continual_expand(
    pipeline: Annotated[str, typer.Argument(help="2-D pipeline, e.g. density.")],
    data_b: Annotated[Path, typer.Argument(exists=True, file_okay=False, help="The NEW site. " + SITE_HELP)],
    weights: _Weights,
    out: Annotated[Path, typer.Option("--out", "-o", help="Run folder: best.pt, metrics.json, metrics.csv.")],
    fisher: Annotated[
        Optional[Path], typer.Option(exists=True, dir_okay=False, help="fisher.pt from `continual fisher` (EWC).")  # noqa: UP045
    ] = None,
    method: Annotated[str, typer.Option(help="ewc-gbn (proposed), ewc, finetune, finetune-gbn, bn-*, lwf, ...")] = (
        "ewc-gbn"
    ),
    lam: Annotated[float, typer.Option("--lambda", min=0.0, help="EWC lambda (mean-normalized Fisher).")] = 100.0,
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
    trust_model_code: TrustModelCodeOption = False,
    model_card: ModelCardOption = None,
    bundle_out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(
            "--bundle-out", file_okay=False, help="Also write the adapted model as a MONAI bundle folder here."
        ),
    ] = None,
) -> None:
    """Adapt the old site's model to the new site with one method; new weights and metrics.json."""
    from pipelines.continual_expansion import expand_site

    with input_errors():
        metrics = expand_site(
            pipeline, data_b, weights, out, method=method, fisher=fisher, lam=lam, data_a=old, epochs=epochs,
            batch_size=batch_size, lr=lr, seed=seed, select=select, trust_code=trust_model_code, card=model_card,
            bundle_out=bundle_out,
        )  # fmt: skip
    for key in ("new_before", "new_after", "old_before", "old_after"):
        if key in metrics:
            console.print(terminal_text(f"{key}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[key].items())))
    bundle = f", {metrics['bundle']['path']}" if metrics.get("bundle") else ""
    console.print(terminal_text(f"wrote {metrics['checkpoint']}, {out / 'metrics.json'}{bundle}"))


@continual_app.command("compare")
def continual_compare(
    pipeline: Annotated[str, typer.Argument(help="2-D pipeline, e.g. density.")],
    old: Annotated[Path, typer.Option(exists=True, file_okay=False, help="The OLD site. " + SITE_HELP)],
    new: Annotated[Path, typer.Option(exists=True, file_okay=False, help="The NEW site.")],
    weights: _Weights,
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
    trust_model_code: TrustModelCodeOption = False,
    model_card: ModelCardOption = None,
) -> None:
    """Run every arm (EWC arms at every lambda, every seed) and compare forgetting and plasticity."""
    from pipelines.continual_expansion import compare_arms

    with input_errors():
        rows = compare_arms(
            pipeline, old, new, weights, out, arms=csv_list(arms), lambdas=[float(v) for v in csv_list(lambdas)],
            seeds=[int(v) for v in csv_list(seeds)], epochs=epochs, batch_size=batch_size, lr=lr,
            fisher_mode=fisher_mode, select=select, trust_code=trust_model_code, card=model_card,
        )  # fmt: skip
    console.print(
        terminal_text(f"{len(rows)} run(s); wrote {out / 'arms.csv'}, {out / 'summary.csv'}, {out / 'report.html'}")
    )
