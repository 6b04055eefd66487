"""The one progress bar of medimg: rich, on stderr, transient (gone when the job ends).

Every long job (header scans, conversions, pipeline runs, scoring, training, saliency audits)
draws its bar through :func:`progress_bar`; jobs that report ``(done, total)`` through a
callback use :func:`tracked`.

The bar redraws when it is updated (at most ten times a second), not from a refresh thread of its
own: a process with a single thread can fork its worker pools, the cheapest way to start them
(:func:`medimg.parallel.pool_context`).
"""

from __future__ import annotations

import time
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

#: Seconds between two redraws of a bar.
REDRAW_EVERY = 0.1


class _Bar(Progress):
    """A rich ``Progress`` without a refresh thread: it redraws on :meth:`update` and :meth:`advance`."""

    _last_draw = 0.0

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._redraw()

    def advance(self, *args: Any, **kwargs: Any) -> None:
        super().advance(*args, **kwargs)
        self._redraw()

    def _redraw(self) -> None:
        now = time.monotonic()
        if now - self._last_draw >= REDRAW_EVERY:
            self._last_draw = now
            self.refresh()


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
    return _Bar(*columns, console=Console(stderr=True, soft_wrap=True), transient=True, auto_refresh=False)


def tracked(enabled: bool, description: str) -> tuple[AbstractContextManager[Any], ProgressCallback | None]:
    """A bar to enter and a ``(done, total)`` callback that drives it; ``(nullcontext(), None)`` if disabled."""
    bar = progress_bar(enabled)
    if bar is None:
        return nullcontext(), None
    task = bar.add_task(description, total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    return bar, update
