"""The progress bar draws without a thread of its own, so worker pools started under it fork."""

from __future__ import annotations

import threading

from medimg.parallel import pool_context
from medimg.progress import progress_bar, tracked


def test_a_shown_bar_leaves_the_process_single_threaded() -> None:
    bar, update = tracked(True, "work")
    assert update is not None
    with bar:
        update(1, 3)
        assert threading.active_count() == 1
        assert pool_context().get_start_method() == "fork"
    training = progress_bar(True, status=True)
    assert training is not None
    task = training.add_task("epochs", total=2, status="")
    with training:
        training.advance(task)
        assert threading.active_count() == 1
        assert training.tasks[0].completed == 1
