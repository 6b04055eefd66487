"""Incremental scan index: same result as scan_folder, rereads only what changed, reuses stored series
checks, resumes, survives concurrent scans, refuses foreign or edited index files, and never scans itself."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from dicom_factory import PYDICOM_TEST_FILES, write_series
from typer.testing import CliRunner

import medimg.dicom.scan_index as scan_index
from medimg.dicom import scan_folder
from medimg.dicom.header import read_instance_header
from medimg.dicom.index import InstanceHeader, QuarantineEntry
from medimg.dicom.scan import check_series_geometry
from medimg.dicom.scan_chunks import chunk_id, decode_chunk, encode_chunk
from medimg.dicom.scan_index import ScanIndexError, scan_folder_indexed, scan_with_index


@pytest.fixture
def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Paths whose header the indexed scan reads (in-process: use workers=1)."""
    reads: list[str] = []

    def counting(path: str) -> InstanceHeader | QuarantineEntry:
        reads.append(path)
        return read_instance_header(path)

    monkeypatch.setattr(scan_index, "read_instance_header", counting)
    return reads


def _rows(index: Path) -> set[tuple]:
    """(path, size, mtime_ns, inode, quarantine reason, whether a header is stored) per file row."""
    with sqlite3.connect(index) as conn:
        rows = conn.execute("SELECT path, size, mtime_ns, inode, reason, chunk IS NOT NULL FROM files").fetchall()
    conn.close()
    return {(os.fsdecode(path), *rest) for path, *rest in rows}


def _chunks(index: Path) -> tuple[set[str], set[str]]:
    """(ids of the stored chunks, ids that file rows refer to)."""
    with sqlite3.connect(index) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM chunks")}
        used = {row[0] for row in conn.execute("SELECT chunk FROM files WHERE chunk IS NOT NULL")}
    conn.close()
    return stored, used


def _edit_chunks(index: Path, edit: Any) -> None:
    """Rewrite every chunk's text with ``edit`` and give it the id of its new text (a consistent edit)."""
    with sqlite3.connect(index) as conn:
        for old, data in conn.execute("SELECT id, data FROM chunks").fetchall():
            new = edit(data)
            conn.execute("UPDATE chunks SET id = ?, data = ? WHERE id = ?", (chunk_id(new), new, old))
            conn.execute("UPDATE files SET chunk = ? WHERE chunk = ?", (chunk_id(new), old))
    conn.close()


@pytest.fixture
def count_geometry_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """SeriesInstanceUIDs whose geometry the indexed scan checks rather than takes from the index."""
    checked: list[str] = []

    def counting(series: Any) -> None:
        checked.append(series.SeriesInstanceUID)
        check_series_geometry(series)

    monkeypatch.setattr(scan_index, "check_series_geometry", counting)
    return checked


def _mixed_folder(root: Path) -> None:
    """Series, multi-frame objects, SR/RT files, DICOMDIRs, truncated and non-DICOM files, duplicates."""
    shutil.copytree(PYDICOM_TEST_FILES, root / "pydicom")
    paths, _ = write_series(root / "ok", n=4)
    (root / "ok" / "truncated.dcm").write_bytes(paths[0].read_bytes()[:-50])
    shutil.copy(paths[1], root / "copy_of_slice")
    (root / "notes.txt").write_text("not dicom")
    (root / "empty").write_bytes(b"")


def test_first_scan_and_rescan_equal_scan_folder(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _mixed_folder(root)
    expected = scan_folder(root, workers=1)
    first, stats = scan_with_index(root, tmp_path / "index.sqlite", workers=1)
    again, stats2 = scan_with_index(root, tmp_path / "index.sqlite", workers=1)
    assert first == expected and again == expected
    assert again.to_dict() == expected.to_dict()
    assert stats.read == stats.files == expected.num_files and stats.reused == 0
    assert stats2.read == 0 and stats2.reused == stats.files
    assert len(_rows(tmp_path / "index.sqlite")) == stats.files  # every result was storable
    assert len(expected.quarantine) > 50 and sum(len(s.instances) for _, s in expected.iter_series()) > 50


def test_parallel_scan_commits_in_chunks_and_equals_scan_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan_index, "COMMIT_EVERY", 50)
    for i in range(5):
        write_series(tmp_path / "data" / f"s{i}", n=90, shape=(4, 4), patient_id=f"P{i}")
    (tmp_path / "data" / "junk.bin").write_bytes(b"\x00" * 300)
    done: list[tuple[int, int]] = []
    result, stats = scan_with_index(
        tmp_path / "data", tmp_path / "index.sqlite", workers=2, progress=lambda d, t: done.append((d, t))
    )
    assert result == scan_folder(tmp_path / "data", workers=1)
    assert stats.read == 451 and len(_rows(tmp_path / "index.sqlite")) == 451
    assert done[0] == (0, 451) and done[-1] == (451, 451) and len(done) >= 1 + 451 // 50


def test_rescan_reads_only_new_and_changed_files(tmp_path: Path, count_reads: list[str]) -> None:
    root = tmp_path / "data"
    paths, _ = write_series(root / "a", n=6)
    index = tmp_path / "index.sqlite"
    scan_folder_indexed(root, index, workers=1)
    assert len(count_reads) == 6
    count_reads.clear()

    new, _ = write_series(root / "b", n=2, patient_id="P2")
    paths[0].write_text("now a note, same name")  # content and size change
    st = paths[1].stat()  # mtime change only
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    copy = tmp_path / "copy"  # inode change only: same bytes, size and mtime
    shutil.copy2(paths[2], copy)
    os.replace(copy, paths[2])
    paths[3].unlink()

    result, stats = scan_with_index(root, index, workers=1)
    assert sorted(count_reads) == sorted(map(str, [*new, paths[0], paths[1], paths[2]]))
    assert (stats.read, stats.reused, stats.dropped) == (5, 2, 1)
    assert result == scan_folder(root, workers=1)
    assert any(q.path == str(paths[0]) and q.reason.startswith("not DICOM") for q in result.quarantine)
    keys = {row[0] for row in _rows(index)}
    assert len(keys) == 7 and os.path.relpath(paths[3], root) not in keys


def test_a_file_changing_while_it_is_read_is_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, _ = write_series(tmp_path / "data", n=3)

    def growing(path: str) -> InstanceHeader | QuarantineEntry:
        result = read_instance_header(path)
        if path == str(paths[1]):
            with open(path, "ab") as fp:  # still being copied in
                fp.write(b"\0" * 10)
        return result

    monkeypatch.setattr(scan_index, "read_instance_header", growing)
    scan_folder_indexed(tmp_path / "data", tmp_path / "index.sqlite", workers=1)
    assert {row[0] for row in _rows(tmp_path / "index.sqlite")} == {paths[0].name, paths[2].name}
    monkeypatch.setattr(scan_index, "read_instance_header", read_instance_header)
    assert scan_with_index(tmp_path / "data", tmp_path / "index.sqlite", workers=1).stats.read == 1


def test_interrupted_scan_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan_index, "COMMIT_EVERY", 5)
    root = tmp_path / "data"
    write_series(root, n=12)
    index = tmp_path / "index.sqlite"
    reads: list[str] = []

    def interrupted(path: str) -> InstanceHeader | QuarantineEntry:
        if len(reads) == 7:
            raise KeyboardInterrupt
        reads.append(path)
        return read_instance_header(path)

    monkeypatch.setattr(scan_index, "read_instance_header", interrupted)
    with pytest.raises(KeyboardInterrupt):
        scan_folder_indexed(root, index, workers=1)
    assert len(_rows(index)) == 5  # the first chunk was committed, the second was not

    monkeypatch.setattr(scan_index, "read_instance_header", read_instance_header)
    result, stats = scan_with_index(root, index, workers=1)
    assert (stats.read, stats.reused) == (7, 5)
    assert result == scan_folder(root, workers=1)


def _scan_in_child(root: str, index: str, out: str, barrier: multiprocessing.synchronize.Barrier) -> None:
    scan_index.COMMIT_EVERY = 4  # many small transactions, so that the two processes interleave
    barrier.wait(timeout=30)
    result = scan_folder_indexed(root, index, workers=1)
    Path(out).write_text(json.dumps(result.to_dict()))


def test_two_processes_scanning_at_once(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for i in range(4):
        write_series(root / f"s{i}", n=25, shape=(4, 4), patient_id=f"P{i}")
    (root / "notes.txt").write_text("not dicom")
    index = tmp_path / "shared.sqlite"
    context: Any = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    barrier = context.Barrier(2)
    outs = [tmp_path / f"out{k}.json" for k in range(2)]
    children = [context.Process(target=_scan_in_child, args=(str(root), str(index), str(out), barrier)) for out in outs]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0, 0]

    expected = scan_folder(root, workers=1).to_dict()
    assert all(json.loads(out.read_text()) == expected for out in outs)
    with sqlite3.connect(index) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    scan_folder_indexed(root, tmp_path / "fresh.sqlite", workers=1)
    assert _rows(index) == _rows(tmp_path / "fresh.sqlite") and len(_rows(index)) == 101
    stored, used = _chunks(index)
    assert used <= stored  # every header a row points to is there


def test_index_inside_the_folder_is_not_scanned(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n=3)
    expected = scan_folder(tmp_path, workers=1)
    index = tmp_path / "s" / "scan.sqlite"
    for _ in range(2):
        result, stats = scan_with_index(tmp_path, index, workers=1)
        assert result == expected and stats.files == 3
    assert index.exists()


def test_the_same_folder_by_another_path_is_accepted(tmp_path: Path) -> None:
    write_series(tmp_path / "data", n=3)
    (tmp_path / "link").symlink_to(tmp_path / "data", target_is_directory=True)
    scan_folder_indexed(tmp_path / "data", tmp_path / "index.sqlite", workers=1)
    result, stats = scan_with_index(str(tmp_path / "link") + "/", tmp_path / "index.sqlite", workers=1)
    assert stats.reused == 3 and result == scan_folder(str(tmp_path / "link") + "/", workers=1)


def test_index_of_another_folder_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "a", n=2)
    write_series(tmp_path / "b", n=2)
    index = tmp_path / "index.sqlite"
    scan_folder_indexed(tmp_path / "a", index, workers=1)
    with pytest.raises(ScanIndexError, match="made for the folder") as caught:
        scan_folder_indexed(tmp_path / "b", index, workers=1)
    assert str(index) in str(caught.value)
    assert str(tmp_path / "a") in str(caught.value) and str(tmp_path / "b") in str(caught.value)


def _other_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE patients (name TEXT)")
        conn.execute("INSERT INTO patients VALUES ('somebody')")
    conn.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_text("patient list, not a database\n" * 100), "not a usable medimg scan index"),
        (_other_sqlite, "not a medimg scan index"),
    ],
)
def test_foreign_file_is_refused_and_left_untouched(tmp_path: Path, make, message: str) -> None:
    write_series(tmp_path / "data", n=2)
    index = tmp_path / "index.sqlite"
    make(index)
    before = index.read_bytes()
    with pytest.raises(ScanIndexError, match=message) as caught:
        scan_folder_indexed(tmp_path / "data", index, workers=1)
    assert str(index) in str(caught.value)
    assert index.read_bytes() == before


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("UPDATE chunks SET data = data || ' '", "chunk .* is invalid .its content does not match its id"),
        ("UPDATE files SET chunk = 'abc' WHERE chunk IS NOT NULL", "chunk 'abc' is missing"),
        ("UPDATE files SET entry = 99 WHERE chunk IS NOT NULL", "the row of .* is invalid .no entry 99"),
        ("UPDATE files SET reason = 'x' WHERE chunk IS NOT NULL", "both a header and a reason"),
        ("UPDATE files SET reason = 'unreadable: yes', chunk = NULL, entry = NULL", "bad quarantine reason"),
        ("UPDATE series_checks SET data = '{\"problems\": 1}'", "a stored series check is invalid"),
        ("UPDATE series_checks SET data = '[[[['", "a stored series check is invalid"),
        ("UPDATE series_checks SET data = replace(data, '\"axial\"', '\"\"')", "a stored series check is invalid"),
        ("UPDATE series_checks SET data = replace(data, '2.0', '1e400')", "a stored series check is invalid"),
        (
            "UPDATE series_checks SET data = replace(data, '2.0', '1' || printf('%.400c', '0'))",
            "series check is invalid",
        ),
        ("UPDATE series_checks SET data = replace(data, '2.0', 'true')", "a stored series check is invalid"),
        ("ALTER TABLE files ADD COLUMN extra", "unexpected or missing table files"),
        ("CREATE INDEX by_size ON files (size)", "unexpected or missing index by_size"),
        ("PRAGMA user_version = 7", "schema version 7"),
        ("CREATE TRIGGER t AFTER INSERT ON files BEGIN DELETE FROM meta; END", "unexpected or missing trigger t"),
        ("UPDATE meta SET value = 'something else' WHERE key = 'format'", "bad meta table"),
    ],
)
def test_edited_index_is_refused(tmp_path: Path, edit: str, message: str) -> None:
    root = tmp_path / "data"
    write_series(root, n=3)
    index = tmp_path / "index.sqlite"
    scan_folder_indexed(root, index, workers=1)
    with sqlite3.connect(index) as conn:
        assert conn.execute(edit).rowcount != 0 or edit.startswith(("PRAGMA", "CREATE"))
    conn.close()
    with pytest.raises(ScanIndexError, match=message) as caught:
        scan_folder_indexed(root, index, workers=1)
    assert str(index) in str(caught.value)


#: An integer no float can hold (JSON reads it; converting it to a float overflows).
_HUGE = "1" + "0" * 400


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('"pairs"', '"pears"', "not a chunk"),
        ("{", "[[[[{", "chunk .* is invalid"),
        ('["Rows",8]', '["Rows","eight"]', "bad keyword-value pair .'Rows', 'eight'"),
        ('["Rows",8]', '["Rows",{"a":1}]', "bad keyword-value pair"),
        ('["Rows",8]', '["Rows",true]', "bad keyword-value pair"),
        ('["Rows",8]', '["Rows",8],["NumberOfFrames",2]', "frame_positions do not match NumberOfFrames"),
        ('["Rows",8]', '["Rows",8],["Oops",1]', "bad keyword-value pair .'Oops'"),
        ('["Rows",8]', '["Rows",8],["EchoTime",1e400]', "bad keyword-value pair .'EchoTime', inf"),
        (
            '["Rows",8]',
            '["Rows",8],["EchoTime",' + _HUGE + "]",
            "bad keyword-value pair",
        ),
        ('"SOPInstanceUID","', '"SOPInstanceUID",["x"],"', "bad keyword-value pair"),
        ("[-10.0,20.0,30.0]", "[-10.0,20.0]", "bad frame_positions"),
        ("[-10.0,20.0,30.0]", "[-10.0,20.0,NaN]", "non-finite number NaN"),
        ("[-10.0,20.0,30.0]", "[-10.0,20.0,1e400]", "bad frame_positions"),
        (
            "[-10.0,20.0,30.0]",
            "[-10.0,20.0," + _HUGE + "]",
            "bad frame_positions",
        ),
        ('"1.2.840.10008.1.2.1"', "17", "bad transfer syntax, orientation or pixel spacing"),
        ("],0,[[", "],-1,[[", "bad shared value index"),
        ("],0,[[", "],true,[[", "bad shared value index|bad transfer syntax"),
        ('"files":[[[', '"files":[[[-1,', "attribute index out of range"),
    ],
)
def test_edited_chunk_is_refused_even_under_its_new_id(tmp_path: Path, old: str, new: str, message: str) -> None:
    root = tmp_path / "data"
    write_series(root, n=3)
    index = tmp_path / "index.sqlite"
    scan_folder_indexed(root, index, workers=1)
    _edit_chunks(index, lambda data: data.replace(old, new, 1) if old in data else pytest.fail(f"{old} not in {data}"))
    with pytest.raises(ScanIndexError, match=message) as caught:
        scan_folder_indexed(root, index, workers=1)
    assert str(index) in str(caught.value)


def test_results_of_another_reader_are_discarded_with_a_note(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_series(root, n=3)
    index = tmp_path / "index.sqlite"
    scan_folder_indexed(root, index, workers=1)
    with sqlite3.connect(index) as conn:
        conn.execute("UPDATE meta SET value = 'older' WHERE key = 'reader'")
    conn.close()
    result, stats = scan_with_index(root, index, workers=1)
    assert (stats.read, stats.reused) == (3, 0) and "3 stored result(s) discarded" in stats.notes[0]
    assert result == scan_folder(root, workers=1)
    assert scan_with_index(root, index, workers=1).stats.reused == 3


def test_what_is_stored(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path, n=3)
    headers = [read_instance_header(str(p)) for p in paths]
    assert all(isinstance(h, InstanceHeader) for h in headers)
    identifier, text, entries = encode_chunk(headers)  # type: ignore[arg-type]
    assert entries == [0, 1, 2] and identifier == chunk_id(text)
    stored = json.loads(text)
    assert stored["shared"][0] == headers[0].transfer_syntax
    assert ["StudyInstanceUID", headers[0].get("StudyInstanceUID")] in stored["pairs"]
    assert len(stored["pairs"]) < 3 * len(headers[0].attributes)  # what the three share is stored once
    chunk = decode_chunk(identifier, text)
    assert [chunk.header(e, h.path) for e, h in zip(entries, headers, strict=True)] == headers
    assert list(chunk.header(0, "x").attributes) == list(headers[0].attributes)  # key order too

    nan, ints = headers[1], headers[2]
    nan.attributes["EchoTime"] = float("nan")  # would not come back equal: read again instead
    ints.pixel_spacing = (1, 1.0)  # type: ignore[assignment]  # would come back as floats
    assert encode_chunk(headers)[2] == [0, None, None]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-finite"):
        decode_chunk(chunk_id(text.replace("1.0", "NaN", 1)), text.replace("1.0", "NaN", 1))


def test_a_file_name_that_is_not_utf8_is_indexed(tmp_path: Path) -> None:
    root = tmp_path / "data"
    paths, _ = write_series(root, n=3)
    odd = os.fsencode(paths[0]) + b"\xff"
    try:
        os.rename(os.fsencode(paths[0]), odd)
    except OSError as exc:  # a file system that keeps names as UTF-8
        pytest.skip(f"the file system refuses a name that is not UTF-8: {exc}")
    index = tmp_path / "index.sqlite"
    first, stats = scan_with_index(root, index, workers=1)
    again, stats2 = scan_with_index(root, index, workers=1)
    assert first == again == scan_folder(root, workers=1) and stats2.reused == stats.read == 3
    assert os.fsdecode(odd) in {f for _, s in again.iter_series() for f in s.files}


def test_a_table_rebuilt_without_its_primary_key_is_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "data", n=2)
    index = tmp_path / "index.sqlite"
    scan_folder_indexed(tmp_path / "data", index, workers=1)
    with sqlite3.connect(index) as conn:  # the same name and columns, but duplicate rows allowed
        conn.executescript(
            "CREATE TABLE f2 AS SELECT * FROM files; DROP TABLE files; ALTER TABLE f2 RENAME TO files;"
            "INSERT INTO files SELECT path, size, mtime_ns, inode, NULL, NULL, 'not DICOM: fake' FROM files;"
        )
    conn.close()
    with pytest.raises(ScanIndexError, match="unexpected or missing table files"):
        scan_folder_indexed(tmp_path / "data", index, workers=1)


def test_a_list_value_is_never_shared_between_two_headers(tmp_path: Path) -> None:
    paths, _ = write_series(tmp_path, n=2)
    headers = [read_instance_header(str(p)) for p in paths]
    identifier, text, _ = encode_chunk(headers)  # type: ignore[arg-type]
    chunk = decode_chunk(identifier, text)
    first, second = chunk.header(0, "a"), chunk.header(1, "b")
    assert first.attributes["PixelSpacing"] == second.attributes["PixelSpacing"]
    first.attributes["PixelSpacing"].append(9.0)
    assert second.attributes["PixelSpacing"] == headers[1].attributes["PixelSpacing"]


def test_quarantine_reasons_are_stored_but_not_those_of_the_environment(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_series(root, n=2)
    (root / "notes.txt").write_text("not dicom")
    (root / "dangling").symlink_to(root / "gone")
    index = tmp_path / "index.sqlite"
    result, _ = scan_with_index(root, index, workers=1)
    reasons = {row[0]: row[4] for row in _rows(index)}
    assert reasons["notes.txt"].startswith("not DICOM") and "dangling" not in reasons
    assert any(q.path.endswith("dangling") for q in result.quarantine)


def test_a_passing_failure_is_not_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths, _ = write_series(tmp_path / "data", n=2)

    def out_of_memory(path: str) -> InstanceHeader | QuarantineEntry:
        if path == str(paths[0]):
            return QuarantineEntry(path, "corrupt header: MemoryError: ")
        return read_instance_header(path)

    monkeypatch.setattr(scan_index, "read_instance_header", out_of_memory)
    index = tmp_path / "index.sqlite"
    scan_folder_indexed(tmp_path / "data", index, workers=1)
    assert {row[0] for row in _rows(index)} == {paths[1].name}
    monkeypatch.setattr(scan_index, "read_instance_header", read_instance_header)
    assert scan_folder_indexed(tmp_path / "data", index, workers=1) == scan_folder(tmp_path / "data", workers=1)


def test_every_header_the_reader_makes_is_stored_and_comes_back_equal() -> None:
    headers = [read_instance_header(str(p)) for p in sorted(PYDICOM_TEST_FILES.rglob("*")) if p.is_file()]
    headers = [h for h in headers if isinstance(h, InstanceHeader)]
    assert len(headers) > 50 and any(h.frames > 1 and h.frame_positions for h in headers)
    identifier, text, entries = encode_chunk(headers)
    assert None not in entries
    chunk = decode_chunk(identifier, text)
    for header, entry in zip(headers, entries, strict=True):
        assert chunk.header(entry, header.path) == header, header.path  # type: ignore[arg-type]


def test_stored_series_checks_are_reused_until_a_series_changes(
    tmp_path: Path, count_geometry_checks: list[str]
) -> None:
    root = tmp_path / "data"
    for i in range(3):
        write_series(root / f"s{i}", n=4, shape=(4, 4), patient_id=f"P{i}")
    index = tmp_path / "index.sqlite"
    first = scan_folder_indexed(root, index, workers=1)
    assert len(count_geometry_checks) == 3
    count_geometry_checks.clear()
    assert scan_folder_indexed(root, index, workers=1) == first and count_geometry_checks == []

    changed = sorted((root / "s1").iterdir())
    changed[-1].unlink()  # the series now misses a slice: its check must be made again
    result = scan_folder_indexed(root, index, workers=1)
    series = next(s for _, s in result.iter_series() if s.files[0].startswith(str(root / "s1")))
    assert count_geometry_checks == [series.SeriesInstanceUID]
    assert result == scan_folder(root, workers=1)
    stored, used = _chunks(index)
    assert stored == used  # the chunk of the deleted file's batch still holds the others
    with sqlite3.connect(index) as conn:
        assert conn.execute("SELECT count(*) FROM series_checks").fetchone() == (3,)  # the old one dropped
    conn.close()


def test_chunks_no_file_refers_to_are_dropped(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_series(root / "a", n=3)
    paths, _ = write_series(root / "b", n=3, patient_id="P2")
    index = tmp_path / "index.sqlite"
    scan_folder_indexed(root, index, workers=1)
    assert len(_chunks(index)[0]) == 1
    shutil.rmtree(root / "a")
    paths[0].write_bytes(paths[0].read_bytes() + b"\0\0")  # b's files now come from two chunks
    scan_folder_indexed(root, index, workers=1)
    stored, used = _chunks(index)
    assert stored == used and len(stored) == 2
    for path in paths:
        path.unlink()
    scan_folder_indexed(root, index, workers=1)
    assert _chunks(index) == (set(), set())


def test_not_a_folder_raises_before_creating_an_index(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        scan_folder_indexed(tmp_path / "missing", tmp_path / "index.sqlite")
    assert not (tmp_path / "index.sqlite").exists()


def test_cli_scan_with_index(tmp_path: Path) -> None:
    from medimg.cli import app

    runner = CliRunner()
    write_series(tmp_path / "data", n=3)
    index = tmp_path / "index.sqlite"
    first = runner.invoke(app, ["scan", str(tmp_path / "data"), "--index", str(index), "--quiet"])
    assert first.exit_code == 0, first.output
    assert "3 file(s) read, 0 reused from the index" in first.output
    again = runner.invoke(app, ["scan", str(tmp_path / "data"), "--index", str(index), "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == scan_folder(tmp_path / "data", workers=1).to_dict()
    assert "0 file(s) read, 3 reused from the index" in again.stderr
    other = runner.invoke(app, ["scan", str(tmp_path), "--index", str(index), "--quiet"])
    assert other.exit_code == 2 and "made for the folder" in other.output
