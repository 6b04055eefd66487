"""The load and infer stages of a run on a Ray cluster (``medimg run --ray``), with Ray Data.

:func:`pipelines.runner.run_pipeline` calls :func:`ray_outcomes` instead of
:func:`pipelines.run_stages.local_outcomes` when it is given ``ray=``. Scanning, selection and every
output (study folders, ``results.csv``, ``errors.csv``, ``run.json``, the report) stay in the calling
process (the driver); the cluster only loads and infers:

1. **load**: a Ray task per batch (one CPU each) runs :func:`pipelines.run_stages.load_batch`;
2. **infer**: a pool of actors, each with the model loaded once
   (:func:`medimg.model_sources.load_model` and ``Pipeline.load_extra_models``), runs
   :func:`pipelines.run_stages.infer_loaded`: one actor per GPU of the cluster with a CUDA ``device``,
   else CPU actors (one CPU each, up to half the cluster's CPUs);
3. the outcomes stream back to the driver batch by batch, in whatever order they finish (the runner
   matches them to studies by job index).

:func:`ray_predict` does the same for ``medimg evaluate --ray`` (2-D pipelines): labels and softmax
probabilities of a labelled dataset's images, as :func:`pipelines.training.predict_items` computes
them here; there a batch that fails stops the evaluation (it needs every image).

The inputs (DICOM/NIfTI files) and the weights are read by the cluster's workers at the paths the
driver sees: they must be on a filesystem shared by every node at the same path.

Faults: a task whose worker process dies (killed, out of memory, a decoder crashing) is run again, up
to :data:`RETRIES` times; an actor that dies is restarted and its batches are inferred again (up to
:data:`RETRIES` times each). A batch the cluster still gives up on does not stop the run: each of its
images becomes an error line (:data:`GAVE_UP`), as a dead loading process does in a local run.

Data crosses between the stages as bytes pickled by this run's own code (the driver pickles each
batch's work items, a load task its :class:`~pipelines.run_stages.LoadedBatch`, an actor its outcomes):
Ray Data's rows hold Arrow-friendly values only (tensors, ``ImageResult`` objects and the items' header
values are not), and nothing read from a file is ever unpickled.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import time
import warnings
from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

from pipelines.run_stages import LoadedBatch, Outcome, WorkItem, infer_loaded, load_batch
from pipelines.run_state import describe_error

__all__ = ["GAVE_UP", "INSTALL_HINT", "RETRIES", "RayUnavailable", "connect", "ray_outcomes", "ray_predict"]

#: What to install when Ray (Ray Data) is missing.
INSTALL_HINT = "Ray is not installed: pip install 'medimg[cluster]' (ray[data] 2.55.1)"

#: Times a batch is run again after its worker process or actor died.
RETRIES = 3

#: Why a batch's images are error lines when the cluster gave up on it.
GAVE_UP = (
    "cannot process on the Ray cluster: its worker died on this batch on every try "
    "(killed, out of memory, or a decoder crashed)"
)

#: Seconds to wait for the head node's port before giving up on an address.
CONNECT_TIMEOUT = 5.0


class RayUnavailable(RuntimeError):
    """The run cannot use Ray: it is not installed (the ``cluster`` extra), or no cluster answers at
    the address, or the cluster lacks what the run asks for (GPUs)."""


def _import_ray() -> Any:
    """The ``ray`` module with Ray Data; :class:`RayUnavailable` saying what to install otherwise."""
    try:
        import ray
        import ray.data  # noqa: F401 - needs pandas and pyarrow, which the cluster extra brings
    except ImportError as exc:
        raise RayUnavailable(f"{INSTALL_HINT} ({exc})") from exc
    return ray


def _check_reachable(address: str) -> None:
    """Raise :class:`RayUnavailable` naming ``address`` unless something listens at ``host:port``
    (``ray.init`` would otherwise retry for minutes)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise RayUnavailable(
            f"not a Ray cluster address: {address!r} (expected HOST:PORT, e.g. 10.0.0.5:6379, or auto)"
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT):
            pass
    except OSError as exc:
        raise RayUnavailable(
            f"cannot reach the Ray cluster at {address}: {exc}; start it there with `ray start --head` "
            "or give the head node's address (HOST:PORT, default port 6379)"
        ) from exc


def connect(address: str) -> Any:
    """Connect this process to the Ray cluster at ``address`` and return the ``ray`` module.

    Args:
        address: ``"auto"``: the cluster in ``RAY_ADDRESS``, else the one started on this machine with
            ``ray start``, else a new local one; or a head node's ``HOST:PORT``.

    Raises:
        RayUnavailable: Ray is not installed, or no cluster answers at the address (named).
    """
    ray = _import_ray()
    wanted = (os.environ.get("RAY_ADDRESS") or None) if address == "auto" else address
    if wanted is not None:
        _check_reachable(wanted)
    if ray.is_initialized():
        if wanted is None or _same_address(ray, wanted):
            return ray
        ray.shutdown()  # connected elsewhere earlier in this process
    local = {"include_dashboard": False} if wanted is None else {}  # a new local cluster: no dashboard
    try:
        with warnings.catch_warnings():  # Ray's notice of a future change in GPU visibility: not ours to act on
            warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", category=FutureWarning)
            ray.init(
                address=wanted, ignore_reinit_error=True, log_to_driver=False, logging_level=logging.WARNING, **local
            )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RayUnavailable(f"cannot connect to the Ray cluster at {wanted or 'auto'}: {describe_error(exc)}") from exc
    return ray


def _same_address(ray: Any, address: str) -> bool:
    """Whether this process is connected to the cluster whose head is at ``address``."""
    try:
        current = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - unknown: connect again
        return False
    host, _, port = address.rpartition(":")
    current_host, _, current_port = str(current).rpartition(":")
    if port != current_port:
        return False
    local = {"127.0.0.1", "localhost", "::1"}
    return host == current_host or host in local or current_host in local or _resolve(host) == _resolve(current_host)


def _resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return host


def _quiet_ray_data(context: Any) -> None:
    """No progress bars or execution banners from Ray Data; only its errors reach the console (the
    details stay in the session's ``ray-data.log``)."""
    context.enable_progress_bars = False
    context.enable_operator_progress_bars = False
    context.print_on_execution_start = False
    context.enable_auto_log_stats = False
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler) and "File" not in type(handler).__name__:
            handler.setLevel(logging.ERROR)


def _load_stage(pipeline: Any, transform: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The function of the load stage: a row's batch (pickled by the driver) -> its LoadedBatch,
    pickled here (see the module docstring)."""

    def load(row: dict[str, Any]) -> dict[str, Any]:
        batch = pickle.loads(row["batch"])  # noqa: S301 - bytes made by this run's driver
        loaded = load_batch(pipeline, batch, transform)
        try:
            payload = pickle.dumps(loaded, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # noqa: BLE001 - one bad batch never stops the run
            reason = f"cannot load: the loaded image cannot be sent on: {describe_error(exc)}"
            failed = LoadedBatch(failed=[*loaded.failed, *((work, reason) for work in loaded.ok)])
            payload = pickle.dumps(failed, protocol=pickle.HIGHEST_PROTOCOL)
        return {"index": row["index"], "loaded": payload, "load_seconds": loaded.seconds}

    return load


class _InferActor:
    """An actor of the infer stage: loads the model once, then infers batch after batch."""

    def __init__(
        self, pipeline: Any, meta: Mapping[str, Any], weights: str, card: str | None, trust_code: bool, device: str
    ) -> None:
        from medimg.model_sources import load_model

        self.pipeline, self.meta, self.device = pipeline, meta, device
        self.model: Any = None
        self.error = ""
        try:
            self.model, loaded = load_model(
                weights, pipeline=pipeline.name, map_location=device, trust_code=trust_code, card=card
            )
            pipeline.load_extra_models(loaded, device=device, trust_code=trust_code)
        except Exception as exc:  # noqa: BLE001 - each image of each batch says why
            self.error = f"cannot load the model on the Ray worker {socket.gethostname()}: {describe_error(exc)}"

    def __call__(self, rows: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"index": [], "outcomes": [], "load_seconds": []}
        for index, payload, seconds in zip(rows["index"], rows["loaded"], rows["load_seconds"], strict=True):
            loaded: LoadedBatch = pickle.loads(payload)  # noqa: S301 - bytes made by this run's load task
            out["index"].append(int(index))
            out["outcomes"].append(_pickled_outcomes(self._infer(loaded)))
            out["load_seconds"].append(float(seconds))
        return out

    def _infer(self, loaded: LoadedBatch) -> list[Outcome]:
        if self.error:
            failed: list[Outcome] = [(work, None, reason) for work, reason in loaded.failed]
            return failed + [(work, None, self.error) for work in loaded.ok]
        timings: dict[str, float] = {}
        return infer_loaded(self.pipeline, self.model, loaded, self.meta, device=self.device, timings=timings)


def _pickled_outcomes(outcomes: list[Outcome]) -> bytes:
    """``outcomes`` pickled; when a result cannot be, its item's reason says so (never raised)."""
    try:
        return pickle.dumps(outcomes, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # noqa: BLE001 - one bad batch never stops the run
        reason = f"inference failed: the result cannot be sent back from the Ray worker: {describe_error(exc)}"
        return pickle.dumps([(work, None, why if result is None else reason) for work, result, why in outcomes])


def _infer_resources(ray: Any, device: str) -> tuple[dict[str, Any], str]:
    """The infer stage's ``map_batches`` arguments (pool, resources, retries) and the actors' device.

    Raises:
        RayUnavailable: a CUDA ``device`` and no GPU in the cluster.
    """
    from ray.data import ActorPoolStrategy

    resources = ray.cluster_resources()
    retries = {"max_restarts": -1, "max_task_retries": RETRIES}
    if device.startswith("cuda"):
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise RayUnavailable(f"device {device} asked for, but the Ray cluster has no GPU")
        # Ray gives each actor its own GPU (CUDA_VISIBLE_DEVICES): "cuda" is that one.
        return {"compute": ActorPoolStrategy(size=gpus), "num_gpus": 1, **retries}, "cuda"
    cpus = max(1, int(resources.get("CPU", 1)) // 2)
    return {"compute": ActorPoolStrategy(min_size=1, max_size=cpus), "num_cpus": 1, **retries}, device


def ray_outcomes(
    pipeline: Any,
    batches: Sequence[Sequence[WorkItem]],
    transform: Any,
    meta: Mapping[str, Any],
    *,
    weights: str | os.PathLike[str],
    card: str | os.PathLike[str] | None,
    trust_code: bool,
    device: str,
    address: str,
    timings: dict[str, float],
) -> Generator[list[Outcome], None, None]:
    """The outcomes of each batch, loaded and inferred on the Ray cluster at ``address``, in the order
    they finish (see the module docstring). Never raises for a bad item or a dead worker.

    Adds to ``timings``: ``inference``, the seconds this process waited for results; ``load_transform``,
    the seconds the load tasks took (on the workers).

    Args:
        pipeline: the task; it is pickled to the workers with ``transform``.
        batches: the work items, a batch per element.
        transform: the pipeline's preprocessing.
        meta: the model's metadata (as loaded by the driver).
        weights: the model file, at a path every node can read.
        card: its model card, if not beside it.
        trust_code: let a bundle's config run code.
        device: torch device of the inference (``cuda``: one actor per GPU of the cluster).
        address: ``"auto"`` or the head node's ``HOST:PORT`` (:func:`connect`).
        timings: seconds per stage, added to.

    Raises:
        RayUnavailable: Ray is not installed, the cluster cannot be reached (the address is named), or
            a CUDA device without GPUs in the cluster.
    """
    for key in ("load_transform", "inference"):
        timings.setdefault(key, 0.0)
    if not batches:
        return
    ray = connect(address)
    infer_args, actor_device = _infer_resources(ray, device)
    rows = [
        {"index": i, "batch": pickle.dumps(list(b), protocol=pickle.HIGHEST_PROTOCOL)} for i, b in enumerate(batches)
    ]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    dataset = dataset.map(_load_stage(pipeline, transform), num_cpus=1, max_retries=RETRIES)
    dataset = dataset.map_batches(
        _InferActor,
        fn_constructor_args=(
            pipeline,
            dict(meta),
            str(weights),
            None if card is None else str(card),
            trust_code,
            actor_device,
        ),
        batch_size=1,
        batch_format="numpy",
        **infer_args,
    )
    dataset.context.max_errored_blocks = -1  # a batch given up on is dropped; its items become GAVE_UP below
    _quiet_ray_data(dataset.context)
    seen: set[int] = set()
    reason = GAVE_UP
    try:
        yield from _stream(dataset, seen, timings)
    except Exception as exc:  # noqa: BLE001 - the run finishes its bookkeeping: the rest are error lines
        reason = f"cannot process on the Ray cluster: {describe_error(exc)}"
    for index in sorted(set(range(len(batches))) - seen):
        yield [(work, None, reason) for work in batches[index]]


def _stream(dataset: Any, seen: set[int], timings: dict[str, float]) -> Generator[list[Outcome], None, None]:
    """Each result row of ``dataset`` as the outcome list of its batch; the batch index goes to ``seen``."""
    rows = iter(dataset.iter_rows())
    try:
        while True:
            start = time.perf_counter()
            row = next(rows, None)
            timings["inference"] += time.perf_counter() - start
            if row is None:
                return
            index = int(row["index"])
            if index in seen:  # a batch run again after its first result arrived: already counted
                continue
            seen.add(index)
            timings["load_transform"] += float(row["load_seconds"])
            yield pickle.loads(row["outcomes"])  # noqa: S301 - bytes made by this run's actor
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


# --- evaluate: predictions of a labelled dataset ----------------------------------------------


def _predict_load_stage(transform: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The load stage of :func:`ray_predict`: a batch of ``{"image", "label"}`` items (pickled by the
    driver) through the inference transforms, stacked as the DataLoader of a local evaluation does."""

    def load(row: dict[str, Any]) -> dict[str, Any]:
        import torch

        start = time.perf_counter()
        items = pickle.loads(row["items"])  # noqa: S301 - bytes made by this run's driver
        images, labels = [], []
        for item in items:
            data = transform(dict(item))
            image = data["image"]
            images.append(image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image))
            labels.append(int(data["label"]))
        payload = pickle.dumps((torch.stack(images), labels), protocol=pickle.HIGHEST_PROTOCOL)
        return {"index": row["index"], "loaded": payload, "load_seconds": time.perf_counter() - start}

    return load


class _PredictActor:
    """An actor of :func:`ray_predict`: loads the model once, then gives softmax probabilities."""

    def __init__(self, name: str, weights: str, card: str | None, trust_code: bool) -> None:
        from medimg.model_sources import load_model

        self.model, _ = load_model(weights, pipeline=name, map_location="cpu", trust_code=trust_code, card=card)
        with contextlib.suppress(NotImplementedError):  # a torch.export program refuses eval()
            self.model.eval()

    def __call__(self, rows: dict[str, Any]) -> dict[str, list[Any]]:
        import torch

        out: dict[str, list[Any]] = {"index": [], "predicted": []}
        for index, payload in zip(rows["index"], rows["loaded"], strict=True):
            images, labels = pickle.loads(payload)  # noqa: S301 - bytes made by this run's load task
            with torch.no_grad():
                probs = torch.softmax(self.model(images), dim=1).numpy()
            out["index"].append(int(index))
            out["predicted"].append(pickle.dumps((labels, probs), protocol=pickle.HIGHEST_PROTOCOL))
        return out


def ray_predict(
    pipeline: Any,
    items: Sequence[Mapping[str, Any]],
    preprocessing: Mapping[str, Any],
    *,
    weights: str | os.PathLike[str],
    card: str | os.PathLike[str] | None,
    trust_code: bool,
    batch_size: int,
    address: str,
) -> tuple[Any, Any]:
    """Labels (N,) and softmax probabilities (N, K) of the model in ``weights`` on dataset ``items``
    (each with ``image`` and ``label``), computed on the Ray cluster at ``address`` in batches of
    ``batch_size``: CPU load tasks, CPU actors that load the model once (:func:`connect`). In the
    order of ``items``; equal to :func:`pipelines.training.predict_items` here.

    Raises:
        RayUnavailable: Ray is not installed or the cluster cannot be reached (the address is named).
        Exception: what stopped a batch (e.g. an image that cannot be read), raised by Ray.
    """
    import numpy as np

    ray = connect(address)
    from ray.data import ActorPoolStrategy

    plain = [{"image": item["image"], "label": int(item["label"])} for item in items]
    batches = [plain[b : b + batch_size] for b in range(0, len(plain), batch_size)]
    if not batches:
        raise ValueError("no items to predict")
    rows = [{"index": i, "items": pickle.dumps(b, protocol=pickle.HIGHEST_PROTOCOL)} for i, b in enumerate(batches)]
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)) // 2)
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    transform = pipeline.transforms(dict(preprocessing), train=False)
    dataset = dataset.map(_predict_load_stage(transform), num_cpus=1, max_retries=RETRIES)
    dataset = dataset.map_batches(
        _PredictActor,
        fn_constructor_args=(pipeline.name, str(weights), None if card is None else str(card), trust_code),
        batch_size=1,
        batch_format="numpy",
        compute=ActorPoolStrategy(min_size=1, max_size=cpus),
        num_cpus=1,
        max_restarts=-1,
        max_task_retries=RETRIES,
    )
    _quiet_ray_data(dataset.context)
    done: dict[int, tuple[list[int], Any]] = {}
    for row in dataset.iter_rows():
        done[int(row["index"])] = pickle.loads(row["predicted"])  # noqa: S301 - bytes made by this run's actor
    labels = np.concatenate([np.asarray(done[i][0]) for i in range(len(batches))])
    return labels, np.concatenate([done[i][1] for i in range(len(batches))])
