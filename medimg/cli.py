"""The ``medimg`` command: the door of the house.

The core (``medimg``) never imports the packages above it; this module is the one exception. The
commands themselves live in :mod:`pipelines.commands`, one module per command group, at the top
of the import graph beside the pipelines they drive; this module only opens the door to them.
Start-up stays light: torch, MONAI and pydicom are imported inside the commands that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipelines.commands import app, main

if TYPE_CHECKING:
    import click

__all__ = ["app", "click_command", "main"]  # noqa: F822 - click_command comes from __getattr__


def __getattr__(name: str) -> click.Group:
    # The click group behind ``app``, for tools that read click (built on first access).
    if name == "click_command":
        import pipelines.commands

        return pipelines.commands.click_command
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":  # python -m medimg.cli
    main()
