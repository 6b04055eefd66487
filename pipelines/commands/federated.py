"""``medimg federated simulate``: a federation across institutions on this machine (Flower),
compared with local-only and pooled training."""

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

federated_app = typer.Typer(
    help="Federated training across institutions (Flower): simulation, baselines, cross-site evaluation.",
    no_args_is_help=True,
)


@federated_app.command("simulate")
def federated_simulate(
    pipeline: Annotated[str, typer.Argument(help="2-D classification pipeline, e.g. density.")],
    site: Annotated[
        list[Path], typer.Option("--site", exists=True, file_okay=False, help="A site folder (repeat). " + SITE_HELP)
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
        typer.Option(
            exists=True,
            help="Initial model of every site and round (default: a fresh network). "
            + WEIGHTS_HELP
            + " torch.export (.pt2) models are refused (an exported graph cannot be trained).",
        ),
    ] = None,
    architecture: Annotated[str, typer.Option(help="Architecture of a fresh network.")] = "compact",
    seeds: Annotated[
        str, typer.Option(help="Comma-separated seeds; each trains the federation and the baselines again.")
    ] = "0,1,2",
    leave_one_out: Annotated[
        bool,
        typer.Option(help="Also federate every K-1 sites and score them on the held-out site (generalization)."),
    ] = False,
    n_boot: Annotated[int, typer.Option(min=1, help="Bootstrap replicates of the 95% intervals.")] = 1000,
    engine: Annotated[
        str, typer.Option(help="flower (Flower's simulation engine) or inprocess (no engine).")
    ] = "flower",
    baselines: Annotated[bool, typer.Option(help="Also train local-only and pooled models (same budget).")] = True,
    trust_model_code: TrustModelCodeOption = False,
    model_card: ModelCardOption = None,
) -> None:
    """Simulate a federation on this machine; compare it with local-only and pooled training across sites."""
    from pipelines.federated import simulate_federation
    from pipelines.federated_eval import summary_lines

    with input_errors():
        try:
            seed_list = [int(v) for v in csv_list(seeds)]
        except ValueError as exc:
            raise ValueError(f"--seeds must be comma-separated integers, got {seeds!r}") from exc
        summary = simulate_federation(
            pipeline, site, out, rounds=rounds, local_epochs=local_epochs, batch_size=batch_size, lr=lr,
            proximal_mu=proximal_mu, bn_policy=bn_policy, weights=weights, architecture=architecture,
            seeds=seed_list, leave_one_out=leave_one_out, n_boot=n_boot, engine=engine, baselines=baselines,
            trust_code=trust_model_code, card=model_card,
        )  # fmt: skip
    for line in summary_lines(summary):
        console.print(terminal_text(line), highlight=False)
    console.print(terminal_text(f"wrote {out / 'cross_site.csv'}, {out / 'summary.json'}, {out / 'report.html'}"))
