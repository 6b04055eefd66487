"""Run independent work items in worker processes on every core, with progress.

One place for the process-pool policy that every batch job shares (folder scans, scoring
cases, a run's load and write stages): fork when the calling process has a single Python
thread (cheapest, and it works when ``__main__`` is not a file, e.g. stdin or a notebook),
forkserver otherwise (forking a threaded process can deadlock; a progress bar is a thread),
spawn where neither exists. The forkserver imports :data:`FORKSERVER_PRELOAD` once, when the
first pool of the process starts it (later preloads are ignored by multiprocessing), so that its
workers start with torch and MONAI already imported.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from typing import TypeVar

__all__ = ["FORKSERVER_PRELOAD", "ProgressCallback", "gc_paused", "parallel_map", "pool_context"]

T = TypeVar("T")
R = TypeVar("R")
ProgressCallback = Callable[[int, int], None]

#: Modules the forkserver imports before forking any worker (see the module docstring).
FORKSERVER_PRELOAD = ("numpy", "pydicom", "torch", "monai.transforms", "medimg.dicom.header")


def pool_context(preload: Sequence[str] = ()) -> BaseContext:
    """The multiprocessing context to start workers with (see the module docstring).

    Args:
        preload: modules a forkserver imports once before forking workers, besides
            :data:`FORKSERVER_PRELOAD`.
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([*FORKSERVER_PRELOAD, *preload])
        return context
    return multiprocessing.get_context("spawn")


def parallel_map(
    func: Callable[[T], R],
    items: Sequence[T],
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
    min_items: int = 2,
    preload: Sequence[str] = (),
) -> list[R]:
    """``[func(item) for item in items]`` on ``workers`` processes, results in input order.

    Args:
        func: a picklable (module-level) function; it should catch its own errors and return
            them, so that one bad item never stops the others.
        items: the work items.
        workers: processes; default one per CPU core. 1 runs in this process.
        progress: called as ``progress(done, total)`` after each item.
        min_items: below this many items the work runs in this process.
        preload: modules for a forkserver to import once.

    Returns:
        The results, in the order of ``items``.
    """
    workers = min(workers or os.cpu_count() or 1, len(items)) or 1
    total = len(items)
    if workers <= 1 or total < min_items:
        out = []
        for i, item in enumerate(items, start=1):
            out.append(func(item))
            if progress:
                progress(i, total)
        return out
    out = []
    with ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(preload)) as pool:
        for result in pool.map(func, items):
            out.append(result)
            if progress:
                progress(len(out), total)
    return out


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a batch job builds many objects without cycles.

    Gathering the results of a batch job (tens of thousands of headers, each a dict or two)
    triggers full collections that walk every object alive, more of them the more the caller
    holds: a rescan of 10,000 files took 0.55 s with the collector, 0.35 s without. Reference
    counting still frees everything; the collector resumes (if it was on) when the block ends.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
