"""Runs on a Ray cluster (``run_pipeline(..., ray=ADDRESS)``, ``medimg run --ray``): the same outputs as a
local run, a killed worker's batches redone, a batch the cluster gives up on as error lines, resume, and
clear errors without Ray or without a cluster.

The cluster is local: a head node and one worker node, one CPU each (``ray.cluster_utils.Cluster``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from medimg.cli import app
from medimg.synth import generate_sample_data
from pipelines import get_pipeline
from pipelines.runner import default_weights, run_pipeline

ray_data = pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'medimg[cluster]')")

from pipelines import ray_runs  # noqa: E402
from pipelines.ray_runs import GAVE_UP, RayUnavailable, connect, ray_outcomes  # noqa: E402

pytestmark = pytest.mark.slow

runner = CliRunner()
ACTOR = "ray::MapWorker(MapBatches(_InferActor))"
BATCH = 2


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head node and a worker node on this machine, one CPU each; this process connected to it."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=1)
    connect(nodes.address)
    yield nodes
    ray.shutdown()
    nodes.shutdown()


@pytest.fixture(scope="module")
def cxr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 generated chest X-ray studies (read only)."""
    root = tmp_path_factory.mktemp("ray-data")
    generate_sample_data(root, only=["cxr"], count=12, seed=11)
    return root / "cxr" / "stage_2_train_images"


@pytest.fixture(scope="module")
def data(cxr: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The studies of ``cxr`` and a study of its own whose JPEG pixel data is garbage (the scan accepts
    its header, the load fails: an error line from the workers)."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import generate_uid

    folder = tmp_path_factory.mktemp("ray-input") / "in"
    shutil.copytree(cxr, folder)
    broken = pydicom.dcmread(sorted(folder.glob("*.dcm"))[0])
    broken.PixelData = encapsulate([b"\xff\xd8" + bytes(64) + b"\xff\xd9"])
    broken.StudyInstanceUID, broken.SeriesInstanceUID = generate_uid(), generate_uid()
    broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    broken.PatientID = "BROKEN"
    broken.save_as(folder / "broken.dcm")
    return folder


@pytest.fixture(scope="module")
def local_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ray-local") / "out"
    run_pipeline(get_pipeline("pneumonia"), data, out, weights=_weights(), workers=0, batch_size=BATCH)
    return out


@pytest.fixture(scope="module")
def ray_run(cluster: Any, data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("ray-run") / "out"
    summary = run_pipeline(
        get_pipeline("pneumonia"), data, out, weights=_weights(), ray=cluster.address, batch_size=BATCH
    )
    return out, summary


def _weights() -> Path:
    weights = default_weights("pneumonia")
    assert weights is not None, "sample_data/weights/pneumonia.pt is missing"
    return weights


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return sorted(csv.DictReader(handle), key=lambda row: sorted(row.items()))


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_outputs(ray_out: Path, local_out: Path) -> None:
    """results.csv (probabilities within 1e-6), errors.csv and the study folders as in the local run."""
    got, want = _csv(ray_out / "results.csv"), _csv(local_out / "results.csv")
    assert len(got) == len(want) > 0
    for a, b in zip(got, want, strict=True):
        assert abs(float(a.pop("probability")) - float(b.pop("probability"))) < 1e-6
        assert a == b
    errors = _csv(ray_out / "errors.csv")
    assert errors == _csv(local_out / "errors.csv")
    broken = [e for e in errors if Path(e["path"]).name == "broken.dcm"]
    assert [(e["kind"], e["reason"].split(":")[0]) for e in broken] == [("error", "cannot load")]
    assert _files(ray_out / "studies") == _files(local_out / "studies")
    assert sorted(_files(ray_out / "dicom")) == sorted(_files(local_out / "dicom"))  # UIDs; dates differ


def test_ray_run_equals_local_run(ray_run: tuple[Path, Any], local_run: Path) -> None:
    out, summary = ray_run
    assert_same_outputs(out, local_run)
    assert summary.counts["images"] == 12 and summary.counts["errors"] == 1
    assert summary.timings["inference"] > 0 and summary.timings["load_transform"] > 0
    assert (out / "report.html").is_file()


def test_rerun_with_ray_resumes(
    cluster: Any, data: Path, ray_run: tuple[Path, Any], local_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    shutil.copytree(ray_run[0], out)
    summary = run_pipeline(
        get_pipeline("pneumonia"), data, out, weights=_weights(), ray=cluster.address, batch_size=BATCH
    )
    # the study with the broken file has no study.json: it is the one run again
    assert summary.counts["studies_resumed"] == 12 and summary.counts["studies_processed"] == 1
    assert_same_outputs(out, local_run)


def _ray_processes(title: str) -> list[int]:
    """Ids of this test's Ray worker processes (children of its nodes' raylets) whose title starts
    with ``title``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            grandparent = int(Path(f"/proc/{parent}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if command.startswith(title) and grandparent == os.getpid():
            found.append(int(pid))
    return found


def test_killed_actor_is_restarted_and_its_batches_redone(
    cluster: Any, data: Path, local_run: Path, tmp_path: Path
) -> None:
    killed: list[int] = []

    def kill_the_actor(done: int, total: int) -> None:
        if not killed and done < total:  # after the first batch: the actor holds the others
            killed.extend(_ray_processes(ACTOR))
            for pid in killed:
                os.kill(pid, signal.SIGKILL)

    out = tmp_path / "out"
    summary = run_pipeline(
        get_pipeline("pneumonia"), data, out, weights=_weights(), ray=cluster.address, batch_size=BATCH,
        progress=kill_the_actor,
    )  # fmt: skip
    assert killed, f"no {ACTOR} process of this test's cluster was found"
    assert summary.counts["images"] == 12
    assert_same_outputs(out, local_run)


def test_a_batch_that_kills_its_worker_becomes_error_lines(
    cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A load whose process dies once is run again; one that dies every time is given up on after the
    retries, as error lines of its items; a result that cannot be sent back is an error line too; the
    other batches are done."""
    monkeypatch.setattr(ray_runs, "RETRIES", 1)  # two tries: "once" succeeds at the second, "always" never
    marker = tmp_path / "died-once"

    def load(item: dict[str, Any], transform: Any) -> float:
        if item["name"] == "always" or (item["name"] == "once" and not marker.exists()):
            marker.touch()
            os._exit(1)  # the worker process dies, as with a decoder crashing
        return float(item["value"])

    def infer(model: Any, tensors: list[float], items: list[dict], meta: Any, **_: Any) -> list[Any]:
        return [
            (lambda t=t: t) if item["name"] == "unpicklable" else 2 * t for t, item in zip(tensors, items, strict=True)
        ]

    def no_extra_models(meta: Any, **_: Any) -> None:
        return None

    task = SimpleNamespace(name="pneumonia", load=load, infer=infer, load_extra_models=no_extra_models)
    names = ["a", "once", "always", "b", "unpicklable"]
    batches = [[(j, {"name": name, "value": j})] for j, name in enumerate(names)]
    timings: dict[str, float] = {}
    outcomes = ray_outcomes(
        task, batches, None, {}, weights=_weights(), card=None, trust_code=False, device="cpu",
        address=cluster.address, timings=timings,
    )  # fmt: skip
    got = {work[1]["name"]: (result, reason) for batch in outcomes for work, result, reason in batch}
    unpicklable = got.pop("unpicklable")
    assert got == {"a": (0.0, ""), "once": (2.0, ""), "always": (None, GAVE_UP), "b": (6.0, "")}
    assert unpicklable[0] is None and "cannot be sent back from the Ray worker" in unpicklable[1]
    assert marker.exists() and timings["inference"] > 0


def test_cli_run_on_the_cluster(cluster: Any, cxr: Path, tmp_path: Path) -> None:
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    for path in sorted(cxr.glob("*.dcm"))[:3]:
        shutil.copy(path, folder)
    result = runner.invoke(app, ["run", "pneumonia", str(folder), "-o", str(out), "--ray", cluster.address, "-q"])
    assert result.exit_code == 0, result.output
    assert len(_csv(out / "results.csv")) == 3
    assert json.loads((out / "run.json").read_text())["settings"]["ray"] == cluster.address


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_unreachable_cluster_is_a_clear_error(
    data: Path, cxr: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    address = f"127.0.0.1:{_free_port()}"
    start = time.perf_counter()
    with pytest.raises(RayUnavailable, match=f"cannot reach the Ray cluster at {address}"):
        run_pipeline(get_pipeline("pneumonia"), data, tmp_path / "out", weights=_weights(), ray=address, workers=0)
    assert time.perf_counter() - start < 30
    args = ["evaluate", "pneumonia", str(cxr.parent), "-o", str(tmp_path / "eval"), "--weights", str(_weights())]
    result = runner.invoke(app, [*args, "--ray", address])
    assert result.exit_code == 2 and "cannot reach the Ray cluster at" in result.output, result.output
    assert not (tmp_path / "eval").exists()
    with pytest.raises(RayUnavailable, match="not a Ray cluster address"):
        connect("head-without-port")
    monkeypatch.setenv("RAY_ADDRESS", address)  # auto: the cluster RAY_ADDRESS names
    with pytest.raises(RayUnavailable, match=f"cannot reach the Ray cluster at {address}"):
        connect("auto")


def test_without_ray_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(RayUnavailable, match=r"pip install 'medimg\[cluster\]'"):
        connect("auto")


def test_evaluate_on_the_cluster_equals_a_local_evaluation(cluster: Any, cxr: Path, tmp_path: Path) -> None:
    from pipelines.training import evaluate_pipeline

    here, there = tmp_path / "here", tmp_path / "there"
    evaluate_pipeline(get_pipeline("pneumonia"), cxr.parent, _weights(), here)
    args = ["evaluate", "pneumonia", str(cxr.parent), "-o", str(there), "--weights", str(_weights())]
    result = runner.invoke(app, [*args, "--ray", cluster.address])
    assert result.exit_code == 0, result.output
    got, want = _csv(there / "predictions.csv"), _csv(here / "predictions.csv")
    assert len(got) == len(want) == 12
    for a, b in zip(got, want, strict=True):
        assert a["image"] == b["image"] and a["label"] == b["label"]
        assert all(abs(float(a[k]) - float(b[k])) < 1e-6 for k in a if k.startswith("prob_"))
    got_metrics, want_metrics = (json.loads((d / "metrics.json").read_text()) for d in (there, here))
    assert got_metrics["n_images"] == 12 and got_metrics["ci95"] == want_metrics["ci95"]
    scores = {k for k, v in want_metrics.items() if isinstance(v, float)}
    assert {"roc_auc", "sensitivity"} <= scores
    assert {k: got_metrics[k] for k in scores} == pytest.approx({k: want_metrics[k] for k in scores}, abs=1e-6)


def test_cli_unreachable_cluster_exits_2_before_writing(data: Path, tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    out = tmp_path / "out"
    result = runner.invoke(app, ["run", "pneumonia", str(data), "-o", str(out), "--ray", address, "-q"])
    assert result.exit_code == 2 and "cannot reach the Ray cluster at" in result.output, result.output
    assert not out.exists()


def test_saliency_maps_on_the_cluster_equal_a_local_audit(cluster: Any, tmp_path: Path) -> None:
    """`saliency audit --ray`: every map set (randomized states included) computed on the cluster;
    the audit's tables equal a local audit's."""
    from pipelines.saliency_audit import audit_pipeline

    sample = Path(__file__).resolve().parents[2] / "sample_data" / "cxr"
    options = {
        "replicas": [_weights()],
        "methods": ("gradient", "gradcam"),
        "criteria": ("localization", "randomization", "repeatability"),
        "max_images": 4,
        "progress": False,
    }
    local = audit_pipeline("pneumonia", sample, _weights(), tmp_path / "local", **options)
    on_ray = audit_pipeline("pneumonia", sample, _weights(), tmp_path / "ray", ray=cluster.address, **options)
    assert on_ray.settings["cache"]["computed"] == local.settings["cache"]["computed"] > 4
    for name in ("summary.csv", "localization.csv", "randomization.csv", "repeatability.csv"):
        got, want = _csv(tmp_path / "ray" / name), _csv(tmp_path / "local" / name)
        assert len(got) == len(want) > 0, name
        for a, b in zip(got, want, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                try:
                    x, y = float(a[key]), float(b[key])
                except ValueError:
                    assert a[key] == b[key], (name, key)
                    continue
                assert (math.isnan(x) and math.isnan(y)) or abs(x - y) <= 1e-5, (name, key)
    assert json.loads((tmp_path / "ray" / "settings.json").read_text())["ray"] == cluster.address
