"""The stages of a run, overlapped: worker processes load and write while the model runs here.

:func:`pipelines.runner.run_pipeline` puts a run's work items through three stages:

1. **load** — decode and preprocess (``Pipeline.load``), a batch per task, handed back in order;
2. **infer** — batched inference in the calling process (where the model and the GPU are);
3. **write** — each finished study's files (PNG overlays, NIfTI, DICOM objects, ``study.json``,
   :func:`pipelines.study_outputs.write_study`).

:class:`StagePool` runs the load and write stages on ``workers`` processes (one pool, forked
before any thread starts, see :func:`medimg.parallel.pool_context`), with bounded queues: at most
two batches per worker loaded ahead and :data:`WRITE_QUEUE` studies per worker being written (at
most :data:`CASES_AHEAD` whole cases each way for a study-level pipeline), so memory stays flat
whatever the number of images. With ``workers`` 0 everything runs in this process, one step after the other.

A worker that dies (killed, out of memory, a decoder crashing) costs only its own task: the
tasks then in flight are done again one at a time in a fresh pool; a batch that kills a worker
again becomes an error line of each of its images, a study an error line (and no ``study.json``,
so a rerun writes it).

Tasks and results cross between processes as bytes pickled by this run itself (its own child
processes, never a file), so tensors are copied through the pipe and need no shared memory
(``/dev/shm`` is often small in containers).
"""

from __future__ import annotations

import logging
import os
import pickle
import time
from collections import deque
from collections.abc import Callable, Generator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

from medimg.parallel import pool_context
from pipelines.run_state import describe_error

__all__ = [
    "CASES_AHEAD",
    "DIED",
    "WRITE_QUEUE",
    "LoadedBatch",
    "Outcome",
    "StagePool",
    "WorkItem",
    "default_workers",
    "infer_loaded",
    "load_batch",
    "local_outcomes",
]

#: ``(job index, item)``: one image (or, for a study-level pipeline, one case) of a run's job.
WorkItem = tuple[int, dict[str, Any]]

#: What became of a work item: its result, or None and why (the reason of its ``errors.csv`` line).
Outcome = tuple[WorkItem, Any, str]

#: Studies per worker that may be being written before inference waits for the writing.
WRITE_QUEUE = 4

#: Cases (study-level batches) loaded ahead of the inference at most (see :attr:`StagePool.ahead`).
CASES_AHEAD = 4

#: Batches measured (after the first, which warms the model up) before :meth:`StagePool.balance`
#: decides how many torch threads the inference keeps.
BALANCE_BATCHES = 4

#: The inference is the slowest stage when it waits for loading and writing less than this
#: fraction of its own time (:meth:`StagePool.balance`).
BALANCE_WAIT = 0.1

log = logging.getLogger(__name__)

#: Why a batch's images are error lines when the loading process died on them twice.
DIED = "cannot load: the loading process died on this batch (killed, out of memory, or a decoder crashed)"


def default_workers() -> int:
    """Loading processes when none are asked for: one per CPU core this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class LoadedBatch:
    """A batch after the load stage: the tensors of the items that loaded, in order, and the reason
    for each item that did not."""

    tensors: list[Any] = field(default_factory=list)
    ok: list[WorkItem] = field(default_factory=list)
    failed: list[tuple[WorkItem, str]] = field(default_factory=list)
    #: Seconds the loading took (in the process that loaded it).
    seconds: float = 0.0


def load_batch(pipeline: Any, batch: Sequence[WorkItem], transform: Any) -> LoadedBatch:
    """Decode and preprocess ``batch``; an item that fails is a reason in ``failed``, never raised."""
    start = time.perf_counter()
    loaded = LoadedBatch()
    for work in batch:
        try:
            loaded.tensors.append(pipeline.load(work[1], transform))
            loaded.ok.append(work)
        except Exception as exc:  # noqa: BLE001 - one bad image never stops the run
            loaded.failed.append((work, f"cannot load: {describe_error(exc)}"))
    loaded.seconds = time.perf_counter() - start
    return loaded


# --- the worker processes --------------------------------------------------------------------

_worker_state: dict[str, Any] = {}


class _LogRecords(logging.Handler):
    """Keeps a worker's log records as ``(logger, level, message)`` for the run's process to log."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((record.name, record.levelno, record.getMessage()))


def _start_worker(pipeline: Any, transform: Any, write: Callable[[Any], Any] | None) -> None:
    """Worker initializer: keep the run's task, transform and study writer; one torch thread per
    worker (the workers together use the cores, as torch's DataLoader does); log records kept for
    the run's process (:func:`_relog`), where the caller's logging set-up sees them."""
    import torch

    torch.set_num_threads(1)
    root = logging.getLogger()
    for handler in list(root.handlers):  # inherited by fork: the run's process logs them instead
        root.removeHandler(handler)
    records = _LogRecords()
    root.addHandler(records)
    _worker_state.update(pipeline=pipeline, transform=transform, write=write, logs=records)


def _in_worker(work: Callable[[], Any]) -> bytes:
    """``work()`` and the log records it made, pickled here (see the module docstring)."""
    logs = _worker_state["logs"]
    logs.records.clear()
    result = work()
    return pickle.dumps((result, list(logs.records)), protocol=pickle.HIGHEST_PROTOCOL)


def _load_in_worker(batch: Sequence[WorkItem]) -> bytes:
    """:func:`load_batch` in a worker."""
    return _in_worker(lambda: load_batch(_worker_state["pipeline"], batch, _worker_state["transform"]))


def _write_in_worker(task: bytes) -> bytes:
    """The run's study writer on one pickled task."""
    return _in_worker(lambda: _worker_state["write"](pickle.loads(task)))  # noqa: S301 - made by this run


def _relog(payload: bytes) -> Any:
    """The result of a worker's task; the log records it made are logged here, by their loggers."""
    result, records = pickle.loads(payload)  # noqa: S301 - bytes made by this run's own worker process
    for name, level, message in records:
        logging.getLogger(name).log(level, "%s", message)
    return result


class StagePool:
    """The processes of a run's load and write stages (see the module docstring).

    Args:
        pipeline: the run's task (``load``).
        transform: its preprocessing.
        write: ``write(task)`` writes one study and returns what the caller records (a picklable,
            module-level function or a ``functools.partial`` of one); it should not raise.
        workers: processes; 0 runs both stages in this process.
        died: ``died(task)``: what :meth:`write` hands back for a task whose writing process died.
    """

    def __init__(
        self,
        pipeline: Any,
        transform: Any,
        write: Callable[[Any], Any],
        workers: int,
        *,
        died: Callable[[Any], Any],
    ) -> None:
        self.pipeline, self.transform, self.write_study, self.died = pipeline, transform, write, died
        self.workers = workers
        self.write_seconds = 0.0
        self.generation = 0
        #: A study-level pipeline (a batch is a whole case): fewer in flight, every torch thread here.
        self.cases = getattr(pipeline, "unit", "image") == "study"
        self._threads: int | None = None  # torch's threads before _share_cores, restored on exit
        self._balance: tuple[int, float, float] | None = None  # (batches seen, inference s, waiting s) until decided
        self._executor: ProcessPoolExecutor | None = None
        self._writes: deque[tuple[Any, int, Future[bytes], Callable[[Any], None]]] = deque()

    def __enter__(self) -> StagePool:
        if self.workers > 0:
            self._executor = self._new()
            self._executor.submit(int).result()  # all workers forked now, before any thread starts
            self._share_cores()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        finally:
            if self._threads is not None:
                import torch

                torch.set_num_threads(self._threads)

    def _share_cores(self) -> None:
        """For an image-level pipeline, leave the workers their cores: the inference here uses the
        others (at least one). There, decoding and writing cost as much as the model, and torch's
        threads spinning on cores the workers need cost more than they bring (measured: the compact
        network's forward took 9x longer beside two busy workers on two cores with two threads). A
        study-level pipeline keeps every thread: its 3-D inference dwarfs loading and writing a case
        (brats on two cores: 12.6 cases/h with one thread against 17.1 with two)."""
        import torch

        if self.cases:
            return
        self._threads = torch.get_num_threads()
        shared = max(1, min(self._threads, default_workers() - self.workers))
        torch.set_num_threads(shared)
        if shared < self._threads:
            self._balance = (0, 0.0, 0.0)

    def balance(self, inferred: float, waited: float) -> None:
        """After each batch: how long the inference took and how long it waited for the workers
        (loading the batch, writing earlier studies). Once, after :data:`BALANCE_BATCHES` batches
        (the first not counted), a model that kept the workers waiting rather than the reverse
        (it waited less than :data:`BALANCE_WAIT` of its own time) gets every torch thread back:
        a large network (DenseNet121 on two cores: 0.11 s per image on one thread) is then the
        slowest stage by far, and the workers' few milliseconds per image fit beside it.

        Results do not depend on it: the outputs are the same with any number of threads (tested).
        """
        if self._balance is None or self._threads is None:
            return
        seen, inference, waiting = self._balance
        if seen >= 1:  # the first batch warms the model up
            inference, waiting = inference + inferred, waiting + waited
        self._balance = (seen + 1, inference, waiting)
        if seen < BALANCE_BATCHES:
            return
        self._balance = None  # decided, once
        if waiting < BALANCE_WAIT * inference:
            import torch

            torch.set_num_threads(self._threads)
            log.info(
                "the model is the slowest stage (%.0f ms per batch, %.0f ms waiting for the workers): "
                "it gets all %d torch threads",
                1e3 * inference / BALANCE_BATCHES,
                1e3 * waiting / BALANCE_BATCHES,
                self._threads,
            )

    def _new(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=pool_context(["pipelines.run_stages"]),
            initializer=_start_worker,
            initargs=(self.pipeline, self.transform, self.write_study),
        )

    def submit(self, func: Callable[[Any], bytes], arg: Any) -> tuple[int, Future[bytes]]:
        """Run ``func(arg)`` on a worker: ``(the pool's generation, the future)``."""
        assert self._executor is not None
        return self.generation, self._executor.submit(func, arg)

    def replace(self, generation: int) -> None:
        """A worker died: start a fresh pool, unless that was done since ``generation``'s."""
        if generation != self.generation or self._executor is None:
            return
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = self._new()
        self.generation += 1

    # --- write stage ---------------------------------------------------------------------

    def write(self, task: Any, record: Callable[[Any], None]) -> None:
        """Write ``task`` on a worker; ``record(result)`` is called here, in the order of the tasks,
        once it is written (at once with no workers). Waits while too many are being written."""
        if self._executor is None:
            start = time.perf_counter()
            result = self.write_study(task)
            self.write_seconds += time.perf_counter() - start
            record(result)
            return
        generation, future = self.submit(_write_in_worker, pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
        self._writes.append((task, generation, future, record))
        while len(self._writes) > self.writing:
            self._finish_oldest()

    def _finish_oldest(self) -> None:
        task, generation, future, record = self._writes.popleft()
        start = time.perf_counter()
        try:
            result = _relog(future.result())
        except BrokenProcessPool:  # a worker died: each task of the dead pool is written again alone
            self.replace(generation)
            result = self._write_alone(task)
        self.write_seconds += time.perf_counter() - start  # time the inference waited for writing
        record(result)

    def _write_alone(self, task: Any) -> Any:
        """``task`` on a fresh worker, waiting for it: a task that kills its worker again is
        :attr:`died`'s result."""
        generation, future = self.submit(_write_in_worker, pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL))
        try:
            return _relog(future.result())
        except BrokenProcessPool:
            self.replace(generation)
            return self.died(task)

    def close(self) -> None:
        """Wait for every write (recording each), then stop the workers."""
        try:
            while self._writes:
                self._finish_oldest()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
                self._executor = None

    # --- load stage ----------------------------------------------------------------------

    @property
    def writing(self) -> int:
        """Studies being written at most before the inference waits: :data:`WRITE_QUEUE` per worker;
        for a study-level pipeline at most :data:`CASES_AHEAD` (a case's label and uncertainty volumes)."""
        if self.cases:
            return min(WRITE_QUEUE * self.workers, CASES_AHEAD)
        return WRITE_QUEUE * self.workers

    @property
    def ahead(self) -> int:
        """Batches loaded ahead of the inference: two per worker; for a study-level pipeline (a batch
        is a whole case: four MRI volumes and their preprocessed copy, about 300 MB at 240x240x155)
        at most :data:`CASES_AHEAD`, whatever the number of workers."""
        if self.cases:
            return min(2 * self.workers, CASES_AHEAD)
        return 2 * self.workers

    def load(self, batches: Sequence[Sequence[WorkItem]]) -> Generator[LoadedBatch, None, None]:
        """Each batch loaded (:func:`load_batch`), in order, the workers working :attr:`ahead` of the
        consumer (in this process, one batch when asked for, with no workers). Never raises for a
        bad item or a dead worker."""
        if self._executor is None:
            for batch in batches:
                yield load_batch(self.pipeline, batch, self.transform)
            return
        pending: deque[tuple[int, int, Future[bytes]]] = deque()
        following = 0
        while pending or following < len(batches):
            while following < len(batches) and len(pending) < self.ahead:
                pending.append((following, *self.submit(_load_in_worker, batches[following])))
                following += 1
            index, generation, future = pending.popleft()
            try:
                payload = future.result()
            except BrokenProcessPool:
                again = [index] + [i for i, _, _ in pending]
                pending.clear()
                self.replace(generation)
                yield from self._one_at_a_time([batches[i] for i in again])
                continue
            yield _relog(payload)

    def _one_at_a_time(self, batches: Sequence[Sequence[WorkItem]]) -> Generator[LoadedBatch, None, None]:
        """After a worker died: each batch alone, so that the one that kills a worker is known; its
        items become failures (:data:`DIED`) and the pool is replaced."""
        for batch in batches:
            generation, future = self.submit(_load_in_worker, batch)
            try:
                payload = future.result()
            except BrokenProcessPool:
                self.replace(generation)
                yield LoadedBatch(failed=[(work, DIED) for work in batch])
                continue
            yield _relog(payload)


# --- the infer stage -------------------------------------------------------------------------


def infer_loaded(
    pipeline: Any, model: Any, loaded: LoadedBatch, meta: Mapping[str, Any], *, device: str, timings: dict[str, float]
) -> list[Outcome]:
    """The outcome of each item of a loaded batch: its load failure, or ``Pipeline.infer``'s result.
    When the batch fails, each image is tried alone; an image that still fails is an ``inference
    failed`` outcome, never raised."""
    done: list[Outcome] = [(work, None, reason) for work, reason in loaded.failed]
    if not loaded.tensors:
        return done
    items = [item for _, item in loaded.ok]
    try:
        results = pipeline.infer(model, loaded.tensors, items, meta, device=device, timings=timings)
        return done + [(work, result, "") for work, result in zip(loaded.ok, results, strict=True)]
    except Exception as exc:  # noqa: BLE001 - one bad image never stops the run
        if len(loaded.ok) == 1:
            return done + [(loaded.ok[0], None, f"inference failed: {describe_error(exc)}")]
    for work, tensor in zip(loaded.ok, loaded.tensors, strict=True):
        alone = LoadedBatch(tensors=[tensor], ok=[work])
        done += infer_loaded(pipeline, model, alone, meta, device=device, timings=timings)
    return done


def local_outcomes(
    pool: StagePool,
    batches: Sequence[Sequence[WorkItem]],
    model: Any,
    meta: Mapping[str, Any],
    *,
    device: str,
    timings: dict[str, float],
) -> Generator[list[Outcome], None, None]:
    """The outcomes of each batch, in order: loaded by ``pool`` (:meth:`StagePool.load`), inferred in
    this process. Adds the seconds of each stage to ``timings`` (``load_transform``: in the loading
    processes; ``wait_load``: inference waiting for them)."""
    for key in ("load_transform", "wait_load", "inference", "postprocess"):
        timings.setdefault(key, 0.0)
    pipeline = pool.pipeline
    loaded_batches = pool.load(batches)
    try:
        while True:
            writes_before = pool.write_seconds
            start = time.perf_counter()
            loaded = next(loaded_batches, None)
            waited = time.perf_counter() - start
            timings["wait_load"] += waited
            if loaded is None:
                return
            timings["load_transform"] += loaded.seconds
            start = time.perf_counter()
            outcomes = infer_loaded(pipeline, model, loaded, meta, device=device, timings=timings)
            inferred = time.perf_counter() - start
            yield outcomes  # the caller hands the finished studies to pool.write
            pool.balance(inferred, waited + pool.write_seconds - writes_before)
    finally:
        loaded_batches.close()
