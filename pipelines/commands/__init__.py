"""The ``medimg`` command (Typer + rich): one Typer app, one module per command group.

- :mod:`pipelines.commands.app`: the app, the consoles, the version option and the helpers the commands share
- :mod:`pipelines.commands.data`: ``sample-data``, ``scan``, ``convert``, ``demo``
- :mod:`pipelines.commands.run`: ``run``
- :mod:`pipelines.commands.train`: ``train``, ``evaluate``
- :mod:`pipelines.commands.export`: ``export`` (a model as a MONAI bundle or TorchScript)
- :mod:`pipelines.commands.listen`: ``listen`` (a DICOM storage SCP running a pipeline per received study)
- :mod:`pipelines.commands.uncertainty`: ``uncertainty score``, ``uncertainty rank``
- :mod:`pipelines.commands.saliency`: ``saliency audit``
- :mod:`pipelines.commands.continual`: ``continual fisher``, ``continual expand``, ``continual compare``
- :mod:`pipelines.commands.federated`: ``federated simulate``

Start-up imports nothing heavy: torch, monai, pydicom and the job packages are imported inside
the commands that need them, so ``medimg --help`` answers at once.

``click_command`` is the click group behind ``app`` (built on first access), for tools that read
click; :mod:`pipelines.commands.reference` names each command's click object for the docs' mkdocs-click
blocks (``medimg`` itself never imports it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from pipelines.commands import data, run, train  # noqa: F401  (importing them adds their commands to ``app``, in this order)

# isort: split
from pipelines.commands import export, listen  # noqa: F401  (after run, train and evaluate in --help)
from pipelines.commands.app import app
from pipelines.commands.continual import continual_app
from pipelines.commands.federated import federated_app
from pipelines.commands.saliency import saliency_app
from pipelines.commands.uncertainty import uncertainty_app

if TYPE_CHECKING:
    import click

__all__ = ["app", "click_command", "main"]

app.add_typer(uncertainty_app, name="uncertainty")
app.add_typer(saliency_app, name="saliency")
app.add_typer(continual_app, name="continual")
app.add_typer(federated_app, name="federated")


def main() -> None:
    """Console-script entry point."""
    app()


def __getattr__(name: str) -> click.Group:
    # ``click_command`` is built on demand: the console script does not pay for it twice.
    if name == "click_command":
        command = typer.main.get_command(app)
        assert isinstance(command, typer.core.TyperGroup)
        return command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
