"""The overlapped stages of a run (pipelines.run_stages): worker processes load and write, results and
errors as with everything in one process, a dying worker costs only its own batch."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from medimg.synth import generate_sample_data
from pipelines import get_pipeline, run_stages
from pipelines.run_stages import DIED, StagePool, load_batch
from pipelines.runner import run_pipeline


class Numbers:
    """A stand-in task: ``load`` gives the item's value as a tensor; a ``die`` item ends its process
    (as a crashing decoder or the out-of-memory killer would); a ``bad`` item raises."""

    def load(self, item: dict[str, Any], transform: Any) -> Any:
        if item.get("die"):
            if os.getpid() != item["parent"]:
                os._exit(3)
            raise RuntimeError("would end the test process")
        if item.get("bad"):
            raise ValueError(f"{item['value']}: not a number")
        if item.get("odd"):
            logging.getLogger("medimg.test.numbers").warning("%s: an odd number", item["value"])
        return torch.tensor([float(item["value"])])


def _written(task: Any) -> Any:
    return ("written", task, os.getpid())


def _died(task: Any) -> Any:
    return ("died", task)


def _batches(n: int, size: int, **special: dict[str, Any]) -> list[list[tuple[int, dict[str, Any]]]]:
    items = [(i, {"value": i, "parent": os.getpid(), **special.get(str(i), {})}) for i in range(n)]
    return [items[b : b + size] for b in range(0, n, size)]


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_come_back_in_order_with_their_failures(workers: int) -> None:
    batches = _batches(20, 3, **{"4": {"bad": True}})
    with StagePool(Numbers(), None, _written, workers, died=_died) as pool:
        loaded = list(pool.load(batches))
    assert [[j for j, _ in b.ok] for b in loaded] == [[j for j, _ in b if j != 4] for b in batches]
    assert [float(t) for b in loaded for t in b.tensors] == [float(j) for j in range(20) if j != 4]
    ((work, reason),) = loaded[1].failed
    assert work[0] == 4 and reason == "cannot load: 4: not a number"


def test_a_worker_that_dies_costs_only_its_batch() -> None:
    batches = _batches(24, 2, **{"9": {"die": True}})
    with StagePool(Numbers(), None, _written, 2, died=_died) as pool:
        loaded = list(pool.load(batches))
    assert len(loaded) == len(batches)
    dead = [b for b in loaded if b.failed]
    assert len(dead) == 1 and [j for (j, _), _ in dead[0].failed] == [8, 9]  # the batch holding item 9
    assert {reason for _, reason in dead[0].failed} == {DIED}
    assert [j for b in loaded for j, _ in b.ok] == [j for j in range(24) if j not in (8, 9)]  # nothing else lost


def test_writes_are_recorded_in_order_in_the_callers_process() -> None:
    recorded: list[Any] = []
    with StagePool(Numbers(), None, _written, 2, died=_died) as pool:
        for task in range(12):
            pool.write(task, recorded.append)
    assert [r[1] for r in recorded] == list(range(12))
    assert {r[2] for r in recorded} - {os.getpid()}, "written by the worker processes"
    inline: list[Any] = []
    with StagePool(Numbers(), None, _written, 0, died=_died) as pool:
        pool.write("one", inline.append)
    assert inline == [("written", "one", os.getpid())]


def test_load_batch_never_raises() -> None:
    (batch,) = _batches(2, 2, **{"1": {"bad": True}})
    loaded = load_batch(Numbers(), batch, None)
    assert len(loaded.tensors) == 1 and loaded.failed[0][0][0] == 1


# --- whole runs ------------------------------------------------------------------------------


_WHEN = ("InstanceCreationTime", "InstanceCreationDate", "ContentTime", "ContentDate", "TimeOfSecondaryCapture")


def _content(path: Path) -> bytes:
    """A file's bytes; a DICOM object's without the times it was made at (they differ between runs)."""
    if path.suffix != ".dcm":
        return path.read_bytes()
    import pydicom

    ds = pydicom.dcmread(path)
    for keyword in (*_WHEN, "DateOfSecondaryCapture"):
        if keyword in ds:
            delattr(ds, keyword)
    for equipment in ds.get("ContributingEquipmentSequence", []):
        equipment.ContributionDateTime = ""
    return str(ds).encode() + ds.PixelData if "PixelData" in ds else str(ds).encode()


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` but the run's own record, by relative path: its SHA-256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(_content(p)).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("run.json", "report.html")
    }


@pytest.fixture(scope="module")
def cxr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stages")
    generate_sample_data(root, only=["cxr"], count=20, seed=21)
    folder = root / "in"
    shutil.copytree(root / "cxr" / "stage_2_train_images", folder)
    raw = sorted(folder.glob("*.dcm"))[0].read_bytes()
    (folder / "broken.dcm").write_bytes(raw[: len(raw) // 2])
    return folder


@pytest.mark.parametrize("threads_back", [False, True], ids=["shared-cores", "threads-given-back"])
def test_a_run_on_worker_processes_equals_a_run_in_one_process(
    cxr: Path,
    untrained_weights: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    threads_back: bool,
) -> None:
    if threads_back:  # the model gets every thread back after its second batch: the same results
        monkeypatch.setattr(run_stages, "BALANCE_BATCHES", 1)
        monkeypatch.setattr(run_stages, "BALANCE_WAIT", 1e9)
        monkeypatch.setattr(run_stages, "default_workers", lambda: 2)
        threads = torch.get_num_threads()
        torch.set_num_threads(3)
        monkeypatch.setattr(torch, "get_num_threads", lambda: 3)  # what the pool restores: checked below
    task = get_pipeline("pneumonia")
    weights = untrained_weights["pneumonia"]
    serial = run_pipeline(task, cxr, tmp_path / "serial", weights=weights, workers=0, batch_size=4)
    with caplog.at_level(logging.INFO, logger="pipelines.run_stages"):
        run_pipeline(task, cxr, tmp_path / "parallel", weights=weights, workers=2, batch_size=4)
    given_back = [r.getMessage() for r in caplog.records if "torch threads" in r.getMessage()]
    assert len(given_back) == int(threads_back)
    assert all(m.endswith("it gets all 3 torch threads") for m in given_back)
    assert serial.counts["images"] == 20 and serial.failed
    assert _tree(tmp_path / "serial") == _tree(tmp_path / "parallel")  # results, errors, overlays, DICOM objects
    runs = [json.loads((tmp_path / name / "run.json").read_text()) for name in ("serial", "parallel")]
    assert runs[0]["dicom_results"] == runs[1]["dicom_results"] and len(runs[1]["dicom_results"]) == 40
    assert runs[1]["settings"]["workers"] == 2 and runs[0]["settings"]["workers"] == 0
    # resumed on workers: nothing redone, the same results
    again = run_pipeline(task, cxr, tmp_path / "parallel", weights=weights, workers=2, batch_size=4)
    assert again.counts["studies_resumed"] == 20 and again.counts["images_processed"] == 0
    rows = [list(csv.DictReader(open(tmp_path / n / "results.csv"))) for n in ("serial", "parallel")]
    assert rows[0] == rows[1]
    if threads_back:
        monkeypatch.undo()
        assert torch.get_num_threads() == 3
        torch.set_num_threads(threads)


def test_a_model_that_keeps_the_workers_waiting_gets_every_thread_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_stages, "default_workers", lambda: 2)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for waited, expected in ((0.05, 2), (0.2, 1)):  # per batch, against 1 s of inference
            with StagePool(Numbers(), None, _written, 2, died=_died) as pool:
                assert torch.get_num_threads() == 1  # the workers' cores left to them
                pool.balance(1.0, 5.0)  # the first batch (warming up) is not counted
                for _ in range(run_stages.BALANCE_BATCHES - 1):
                    pool.balance(1.0, waited)
                    assert torch.get_num_threads() == 1
                pool.balance(1.0, waited)
                assert torch.get_num_threads() == expected
                pool.balance(1.0, 0.0)  # decided once
                assert torch.get_num_threads() == expected
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)


def test_a_study_whose_writer_dies_is_an_error_and_is_written_by_the_rerun(
    cxr: Path, untrained_weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipelines.pneumonia import PneumoniaPipeline

    parent = os.getpid()
    victim = sorted(p.name for p in cxr.glob("*.dcm") if p.name != "broken.dcm")[3]
    original = PneumoniaPipeline.write_image_outputs

    def dying(self: Any, study_dir: Path, result: Any) -> list[str]:
        if os.getpid() != parent and Path(result.row["source_file"]).name == victim:
            os._exit(9)
        return original(self, study_dir, result)

    monkeypatch.setattr(PneumoniaPipeline, "write_image_outputs", dying)
    weights = untrained_weights["pneumonia"]
    out = tmp_path / "out"
    summary = run_pipeline(get_pipeline("pneumonia"), cxr, out, weights=weights, workers=2, batch_size=4)
    died = [e for e in summary.errors if "writing process died" in e["reason"]]
    assert len(died) == 1 and Path(died[0]["path"]).name == victim
    assert summary.counts["images"] == 19  # the studies in flight when it died were written again
    monkeypatch.setattr(PneumoniaPipeline, "write_image_outputs", original)
    rerun = run_pipeline(get_pipeline("pneumonia"), cxr, out, weights=weights, workers=2, batch_size=4)
    assert rerun.counts["images"] == 20 and not [e for e in rerun.errors if "died" in e["reason"]]


def test_a_forkserver_pool_gets_everything_it_needs_pickled(
    cxr: Path, untrained_weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A threaded caller (a progress bar is a thread) gets forkserver workers: the task, its transform
    and the study writer then reach them pickled, and the run equals one in one process."""
    import multiprocessing

    import pipelines.run_stages as stages

    monkeypatch.setattr(stages, "pool_context", lambda preload=(): multiprocessing.get_context("forkserver"))
    task = get_pipeline("pneumonia")
    weights = untrained_weights["pneumonia"]
    run_pipeline(task, cxr, tmp_path / "serial", weights=weights, workers=0, batch_size=4)
    run_pipeline(task, cxr, tmp_path / "forkserver", weights=weights, workers=2, batch_size=4)
    assert _tree(tmp_path / "serial") == _tree(tmp_path / "forkserver")


def test_a_run_with_a_scan_index_reads_only_the_new_files_again(
    cxr: Path, untrained_weights: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medimg.dicom.scan_index as scan_index

    folder = tmp_path / "archive"
    shutil.copytree(cxr, folder, ignore=shutil.ignore_patterns("broken.dcm"))
    newest = sorted(folder.glob("*.dcm"))[-1]
    parked = newest.rename(tmp_path / newest.name)  # arrives later
    read: list[str] = []
    original = scan_index.read_instance_header
    monkeypatch.setattr(scan_index, "read_instance_header", lambda path: read.append(path) or original(path))
    index, weights = tmp_path / "archive.sqlite", untrained_weights["pneumonia"]
    task = get_pipeline("pneumonia")
    first = run_pipeline(task, folder, tmp_path / "out", weights=weights, scan_index=index, workers=0)
    assert first.counts["images"] == 19 and len(read) == 19 and index.is_file()
    parked.rename(newest)
    read.clear()
    second = run_pipeline(task, folder, tmp_path / "out", weights=weights, scan_index=index, workers=0)
    assert [Path(p).name for p in read] == [newest.name]  # the other 19 headers came from the index
    assert second.counts["studies_resumed"] == 19 and second.counts["images_processed"] == 1
    run_pipeline(task, folder, tmp_path / "plain", weights=weights, workers=0)
    assert _tree(tmp_path / "plain") == _tree(tmp_path / "out")


def test_whole_cases_in_flight_are_capped_whatever_the_workers() -> None:
    from pipelines.run_stages import CASES_AHEAD, WRITE_QUEUE

    class Cases(Numbers):
        unit = "study"

    images, cases = (
        StagePool(Numbers(), None, _written, 16, died=_died),
        StagePool(Cases(), None, _written, 16, died=_died),
    )
    assert (images.ahead, images.writing) == (32, 16 * WRITE_QUEUE)
    assert (cases.ahead, cases.writing) == (CASES_AHEAD, CASES_AHEAD) == (4, 4)
    assert StagePool(Cases(), None, _written, 1, died=_died).ahead == 2


def test_what_a_worker_logs_is_logged_in_the_runs_process(caplog: pytest.LogCaptureFixture) -> None:
    batches = _batches(6, 2, **{"3": {"odd": True}})
    with caplog.at_level(logging.WARNING), StagePool(Numbers(), None, _written, 2, died=_died) as pool:
        list(pool.load(batches))
    assert [(r.name, r.getMessage()) for r in caplog.records] == [("medimg.test.numbers", "3: an odd number")]
