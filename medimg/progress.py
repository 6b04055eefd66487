"""The one progress bar of medimg: rich, on stderr, transient (gone when the job ends).

Every long job (header scans, conversions, pipeline runs, scoring, training, saliency audits)
draws its bar through :func:`progress_bar`; jobs that report ``(done, total)`` through a
callback use :func:`tracked`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

ProgressCallback = Callable[[int, int], None]


def progress_bar(enabled: bool, *, status: bool = False) -> Progress | None:
    """A transient rich bar on stderr, or None when ``enabled`` is false.

    ``status=True`` adds a time-remaining column and a free-text ``status`` field that each task
    must set (the training loop shows the loss and the validation metric there).
    """
    if not enabled:
        return None
    columns: list[ProgressColumn] = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    if status:
        columns += [TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    return Progress(*columns, console=Console(stderr=True, soft_wrap=True), transient=True)


def tracked(enabled: bool, description: str) -> tuple[AbstractContextManager[Any], ProgressCallback | None]:
    """A bar to enter and a ``(done, total)`` callback that drives it; ``(nullcontext(), None)`` if disabled."""
    bar = progress_bar(enabled)
    if bar is None:
        return nullcontext(), None
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update
