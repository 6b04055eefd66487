"""The click objects behind ``medimg``, one per command or command group, for tools that read
click: the documentation renders each with mkdocs-click, e.g.

    ::: mkdocs-click
        :module: pipelines.commands.reference
        :command: sample_data
        :prog_name: medimg sample-data

Importing this module builds the whole click tree; ``medimg`` itself never imports it.
"""

from __future__ import annotations

import click

from pipelines.commands import click_command

__all__ = [
    "click_command",
    "continual",
    "convert",
    "demo",
    "evaluate",
    "export",
    "federated",
    "listen",
    "run",
    "saliency",
    "sample_data",
    "scan",
    "train",
    "uncertainty",
]

_commands = click_command.commands

sample_data: click.Command = _commands["sample-data"]
scan: click.Command = _commands["scan"]
convert: click.Command = _commands["convert"]
demo: click.Command = _commands["demo"]
run: click.Command = _commands["run"]
train: click.Command = _commands["train"]
evaluate: click.Command = _commands["evaluate"]
export: click.Command = _commands["export"]
listen: click.Command = _commands["listen"]
uncertainty: click.Command = _commands["uncertainty"]
saliency: click.Command = _commands["saliency"]
continual: click.Command = _commands["continual"]
federated: click.Command = _commands["federated"]
