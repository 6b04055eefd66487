"""Incremental folder scan: each file's header-read result kept in an SQLite index, reread only on change.

:func:`scan_folder_indexed` returns what :func:`medimg.dicom.scan.scan_folder` returns for the same
folder, but remembers, per file, the result of :func:`medimg.dicom.header.read_instance_header`
in an SQLite file (WAL mode) keyed by the path relative to the folder together with the file's
size, modification time (ns) and inode. A rescan stats every file and reads only those that are
new or whose (size, mtime_ns, inode) changed; rows of files that disappeared are dropped.

Three tables: ``files`` (one row per file: its state, and either the quarantine reason or where
its header is stored), ``chunks`` (the headers of one read batch as one compact JSON text, see
:mod:`medimg.dicom.scan_chunks`) and ``series_checks`` (a series' geometry checks: orientation,
slice spacing, problems, keyed by a digest of its files and their stored headers). Studies and
series are regrouped on every scan; a series whose files and headers are those of a stored check
takes that check instead of recomputing it, and what the installed codecs decode is always
checked again. Results that depend on the environment rather than on the file's bytes
(``unreadable``, ``broken symbolic link``, ``not a regular file``, a reason naming a passing
error such as ``MemoryError``) are not stored, so a permission fixed later is seen without a
content change. Paths are stored as the file system's bytes.

What is stored is data, never code: JSON and text. The index file is treated as untrusted
input. Everything read back is checked (the file's format marker and schema version, the tables
it holds, every row's types, every chunk against its id and its JSON shape); an index that fails
a check raises :class:`ScanIndexError` naming the index file and the problem, and is never
deleted or rewritten: a wrong ``--index`` path must not destroy somebody's database. An edit
within those bounds (another orientation, say) is reported as if the files said it, as an edit of
the files would be; loading a series reads its headers from the files again. The one
exception is an index written by another header reader or series checker (another medimg or
pydicom version): its stored results are discarded and the files reread, with a note in
:attr:`ScanIndexStats.notes`.

An index records the real path of the folder it was made for and refuses any other folder.
Each read batch (at most :data:`COMMIT_EVERY` files) is committed with its chunk, so an
interrupted scan keeps what it read and the next one resumes from there. Several processes may
scan with the same index at once: every write is a short ``BEGIN IMMEDIATE`` transaction under a
busy timeout, everything is read back in one read transaction, and a row always pairs a file's
(size, mtime_ns, inode) with the header read from exactly that file state, so the worst a race
can cause is a file read twice.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Generator, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from medimg.dicom.header import read_instance_header
from medimg.dicom.index import InstanceHeader, QuarantineEntry, ScanResult, Series
from medimg.dicom.scan import (
    PARALLEL_THRESHOLD,
    check_series_decoding,
    check_series_geometry,
    group_instances,
    list_files,
)
from medimg.dicom.scan_chunks import Chunk, apply_series_check, decode_chunk, encode_chunk, encode_series_check
from medimg.parallel import ProgressCallback, gc_paused, pool_context

__all__ = [
    "COMMIT_EVERY",
    "SCHEMA_VERSION",
    "IndexedScan",
    "ScanIndexError",
    "ScanIndexStats",
    "reader_fingerprint",
    "scan_folder_indexed",
    "scan_with_index",
]

#: Version of the tables and of the row format; an index of another version is refused.
SCHEMA_VERSION = 2
#: ``PRAGMA application_id`` of a scan index ("MDIX"): tells our files from other SQLite files.
APPLICATION_ID = 0x4D444958
#: Files read between two commits: what an interrupted scan keeps at most loses.
COMMIT_EVERY = 256
#: Seconds a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_S = 60.0

#: Quarantine reasons that describe the environment, not the file's bytes: never stored.
_UNSTORED_REASONS = ("unreadable", "broken symbolic link", "not a regular file")
#: Errors in a quarantine reason that tell of the moment, not of the file (a reason naming one is
#: not stored either: the next scan reads the file again).
_PASSING_ERRORS = ("MemoryError", "PermissionError", "OSError", "TimeoutError", "InterruptedError", "BlockingIOError")
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # A header file has chunk + entry (its place in the chunk); a quarantined file has reason.
    "CREATE TABLE files (path BLOB PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
    " inode INTEGER NOT NULL, chunk TEXT, entry INTEGER, reason TEXT) WITHOUT ROWID",
    "CREATE TABLE chunks (id TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE series_checks (digest TEXT PRIMARY KEY, data TEXT NOT NULL) WITHOUT ROWID",
)
#: What sqlite_master of a scan index holds: (type, name, the statement that made it).
_OBJECTS = {
    *(("table", statement.split()[2], statement) for statement in _SCHEMA),
    ("index", "sqlite_autoindex_meta_1", None),
}
_SUFFIXES = ("", "-wal", "-shm", "-journal")

FileState = tuple[int, int, int]  # (size, mtime_ns, inode as a signed 64-bit integer)
_Origin = tuple[bytes, str, int]  # where a stored header is: (file key, chunk id, entry in the chunk)


class ScanIndexError(ValueError):
    """The scan index cannot be used: not ours, another folder's, another schema, or corrupt."""


@dataclass(slots=True)
class ScanIndexStats:
    """What an indexed scan did.

    Attributes:
        index: the index file.
        files: files listed under the folder (the index's own files excluded).
        read: headers read from the files in this scan.
        reused: results taken from the index without reading the file.
        dropped: index rows removed because their file is gone.
        notes: remarks for the user (e.g. results discarded after a reader upgrade).
    """

    index: str
    files: int = 0
    read: int = 0
    reused: int = 0
    dropped: int = 0
    notes: list[str] = field(default_factory=list)


class IndexedScan(NamedTuple):
    """:func:`scan_with_index`'s answer: the scan and what the index saved."""

    result: ScanResult
    stats: ScanIndexStats


def scan_folder_indexed(
    root: str | os.PathLike[str],
    index: str | os.PathLike[str],
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> ScanResult:
    """:func:`medimg.dicom.scan.scan_folder`, reading only files that are new or changed since ``index``.

    Args:
        root: the folder to scan (recursively; any file name).
        index: the SQLite index file of ``root``; created when missing. When it lies inside
            ``root``, it (and its ``-wal``/``-shm`` files) is left out of the scan.
        workers: processes reading headers; default: one per CPU core.
        progress: called as ``progress(done, total)`` over all files, reused ones counted at once.

    Returns:
        The same :class:`ScanResult` as ``scan_folder(root)`` (less the index's own files).

    Raises:
        NotADirectoryError: ``root`` is not a folder.
        ScanIndexError: ``index`` is not a scan index, belongs to another folder, has another
            schema version, or is corrupt (see the module docstring). Bad DICOM files never raise.
    """
    return scan_with_index(root, index, workers=workers, progress=progress).result


def scan_with_index(
    root: str | os.PathLike[str],
    index: str | os.PathLike[str],
    *,
    workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> IndexedScan:
    """:func:`scan_folder_indexed`, also telling how many files were read and reused.

    Args:
        root: the folder to scan.
        index: the SQLite index file of ``root``; created when missing.
        workers: processes reading headers; default: one per CPU core.
        progress: called as ``progress(done, total)`` over all files.

    Returns:
        ``(result, stats)``: the :class:`ScanResult` and the :class:`ScanIndexStats`.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
        ScanIndexError: the index cannot be used (see :func:`scan_folder_indexed`).
    """
    root_str = os.fspath(root)
    if not os.path.isdir(root_str):
        raise NotADirectoryError(f"{root_str}: not a folder")
    index_path = os.path.abspath(os.fspath(index))
    stats = ScanIndexStats(index=index_path)
    conn = _open_index(index_path, os.path.realpath(root_str), stats.notes)
    try:
        files, quarantine = list_files(root_str)
        files = _without_index_files(files, index_path)
        stats.files = len(files)
        keys = _keys(files, root_str)
        with gc_paused():
            stored = _read_back(conn, index_path, files, keys)
        results, origins = stored.results, stored.origins
        stats.reused = len(results)
        to_read = [i for i in range(len(files)) if i not in results]
        if progress:
            progress(stats.reused, len(files))
        with closing(_read_and_store(conn, index_path, files, keys, to_read, workers, progress)) as reading:
            for i, read, origin in reading:  # closing: the worker pool stops at once on an error here
                results[i] = read
                if origin is not None:
                    origins[i] = origin
                stats.read += 1
        stats.dropped = _drop_rows(conn, index_path, stored.stale, prune=stored.changed > 0)
        ordered = [results[i] for i in range(len(files))]
        headers = [r for r in ordered if isinstance(r, InstanceHeader)]
        quarantine.extend(r for r in ordered if isinstance(r, QuarantineEntry))
        checks = _SeriesChecks(index_path, stored.checks, {id(results[i]): o for i, o in origins.items()})
        with gc_paused():
            studies, duplicates = group_instances(headers, checks)
        checks.save(conn)
    finally:
        conn.close()
    quarantine.extend(duplicates)
    quarantine.sort(key=lambda q: q.path)
    result = ScanResult(root=os.fspath(Path(root_str)), studies=studies, quarantine=quarantine)
    return IndexedScan(result, stats)


# ------------------------------------------------------------------------------------------
# the index file


@cache
def reader_fingerprint() -> str:
    """Identify the header reader and the series checks: stored results of others are not reused.

    Hashes the source of the modules that decide what is stored (:data:`_STORED_BY`: what is read
    and how, how it is stored, how a series' geometry is checked) with the pydicom and numpy
    versions and :data:`SCHEMA_VERSION`.
    """
    import importlib

    import numpy
    import pydicom

    digest = hashlib.sha256(f"{SCHEMA_VERSION} {pydicom.__version__} {numpy.__version__}".encode())
    for name in _STORED_BY:
        try:
            with open(importlib.import_module(name).__file__ or "", "rb") as fp:
                digest.update(fp.read())
        except OSError:  # no source file (frozen or compiled-only install)
            import medimg

            digest.update(f"{name} {medimg.__version__}".encode())
    return digest.hexdigest()[:16]


#: Modules whose source is part of :func:`reader_fingerprint`.
_STORED_BY = (
    "medimg.dicom.header",
    "medimg.dicom.index",
    "medimg.dicom.scan",
    "medimg.dicom.scan_chunks",
    "medimg.dicom.series4d",
    "medimg.dicom.geometry",
)


def _open_index(index_path: str, root_real: str, notes: list[str]) -> sqlite3.Connection:
    """Open (or create) the index of ``root_real`` and check it is ours, current and for that folder."""
    if os.path.exists(index_path) and not os.path.isfile(index_path):
        raise ScanIndexError(f"{index_path}: the scan index path is not a file")
    os.makedirs(os.path.dirname(index_path), exist_ok=True)
    try:
        conn = sqlite3.connect(index_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    except sqlite3.Error as exc:
        raise ScanIndexError(f"{index_path}: cannot open the scan index: {exc}") from exc
    try:
        conn.execute("PRAGMA trusted_schema = OFF")
        # Checked before anything is written, so that a foreign file is left exactly as it was
        # (in one read transaction: another process may be creating the index right now).
        conn.execute("BEGIN")
        try:
            _check_ours(conn, index_path)
        finally:
            conn.execute("COMMIT")
        mode = _switch_to_wal(conn)
        if str(mode).lower() != "wal":
            raise ScanIndexError(f"{index_path}: cannot switch the scan index to WAL mode (got {mode!r})")
        conn.execute("PRAGMA synchronous = NORMAL")
        with _write(conn):
            if _check_ours(conn, index_path) == "new":
                for statement in _SCHEMA:
                    conn.execute(statement)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [
                        ("format", "medimg scan index"),
                        ("root", os.fsencode(root_real)),
                        ("reader", reader_fingerprint()),
                    ],
                )
            _check_meta(conn, index_path, root_real, notes)
    except sqlite3.Error as exc:
        conn.close()
        raise ScanIndexError(f"{index_path}: not a usable medimg scan index: {exc}") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _switch_to_wal(conn: sqlite3.Connection) -> Any:
    """``PRAGMA journal_mode = WAL``, retried while another process holds the lock it needs.

    The busy timeout does not cover this pragma when two processes create the index at once.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            return _pragma(conn, "journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _pragma(conn: sqlite3.Connection, statement: str) -> Any:
    """The value of ``PRAGMA statement``, with the statement finished (no read lock left behind)."""
    rows = conn.execute(f"PRAGMA {statement}").fetchall()
    return rows[0][0] if rows else None


def _check_ours(conn: sqlite3.Connection, index_path: str) -> str:
    """``"new"`` for an empty database, ``"ours"`` for a scan index of this schema; else raise."""
    app_id = _pragma(conn, "application_id")
    objects = {(str(t), str(n), sql) for t, n, sql in conn.execute("SELECT type, name, sql FROM sqlite_master")}
    if app_id == 0 and not objects:
        return "new"
    if app_id != APPLICATION_ID:
        raise ScanIndexError(
            f"{index_path}: not a medimg scan index (another SQLite database); "
            "choose another index file (this one is left untouched)"
        )
    version = _pragma(conn, "user_version")
    if version != SCHEMA_VERSION:
        raise ScanIndexError(
            f"{index_path}: scan index schema version {version}, this medimg reads version {SCHEMA_VERSION}; "
            "delete the index to rebuild it"
        )
    if objects != _OBJECTS:
        unexpected = sorted({f"{t} {n}" for t, n, _ in objects ^ _OBJECTS})
        raise ScanIndexError(
            f"{index_path}: corrupt or edited scan index (unexpected or missing {', '.join(unexpected)}); "
            "delete the index to rebuild it"
        )
    return "ours"


def _check_meta(conn: sqlite3.Connection, index_path: str, root_real: str, notes: list[str]) -> None:
    """Refuse another folder's index; discard results of another header reader (inside a write)."""
    meta = {str(k): v for k, v in conn.execute("SELECT key, value FROM meta")}
    if meta.get("format") != "medimg scan index" or type(meta.get("root")) is not bytes:
        raise ScanIndexError(f"{index_path}: corrupt or edited scan index (bad meta table); delete it to rebuild it")
    if meta["root"] != os.fsencode(root_real):
        raise ScanIndexError(
            f"{index_path}: this scan index was made for the folder {os.fsdecode(meta['root'])}, not for {root_real}; "
            "use another index file for this folder"
        )
    reader = reader_fingerprint()
    if meta.get("reader") != reader:
        dropped = conn.execute("DELETE FROM files").rowcount
        conn.execute("DELETE FROM chunks")
        conn.execute("DELETE FROM series_checks")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('reader', ?)", (reader,))
        notes.append(
            f"{index_path}: written by another header reader (medimg or pydicom version); "
            f"{dropped} stored result(s) discarded, every file is read again"
        )


class _write:
    """``with _write(conn):`` one ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        elif self.conn.in_transaction:  # SQLite may already have rolled back after an error
            self.conn.execute("ROLLBACK")


def _without_index_files(files: list[str], index_path: str) -> list[str]:
    """``files`` less the index and its ``-wal``/``-shm``/``-journal`` files (by real path)."""
    names = {os.path.basename(index_path) + s for s in _SUFFIXES}
    real = os.path.realpath(index_path)
    excluded = {real + s for s in _SUFFIXES}
    return [f for f in files if os.path.basename(f) not in names or os.path.realpath(f) not in excluded]


def _keys(files: Sequence[str], root: str) -> list[bytes]:
    """The index keys of ``files``: their paths relative to ``root``, as the file system's bytes
    (a name need not be UTF-8 text)."""
    prefix = os.path.join(root, "")
    relative = (path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root) for path in files)
    return [os.fsencode(path) for path in relative]


def _state(path: str) -> FileState | None:
    """(size, mtime_ns, inode) of ``path``, or None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    inode = st.st_ino if st.st_ino < 1 << 63 else st.st_ino - (1 << 64)  # SQLite integers are signed
    return (st.st_size, st.st_mtime_ns, inode)


# ------------------------------------------------------------------------------------------
# reading back


@dataclass(slots=True)
class _Stored:
    """What the index holds for the listed files.

    Attributes:
        results: stored results of unchanged files, by position in the file list.
        origins: per stored header (by position), where it comes from: (key, chunk, entry).
        stale: keys of rows whose file is no longer listed.
        changed: rows whose file changed since (they are replaced when the file is read).
        checks: stored series checks, digest -> JSON text (checked when used).
    """

    results: dict[int, InstanceHeader | QuarantineEntry] = field(default_factory=dict)
    origins: dict[int, _Origin] = field(default_factory=dict)
    stale: list[Any] = field(default_factory=list)
    changed: int = 0
    checks: dict[Any, Any] = field(default_factory=dict)


def _read_back(conn: sqlite3.Connection, index_path: str, files: Sequence[str], keys: Sequence[bytes]) -> _Stored:
    """The stored results of the files that did not change, read in one transaction.

    Only files with a row are stat'ed here; the others are stat'ed by the processes that read them.
    """
    position = {key: i for i, key in enumerate(keys)}
    stored = _Stored()
    in_chunk: dict[Any, list[tuple[int, Any]]] = {}
    try:
        conn.execute("BEGIN")  # one snapshot: another process may commit meanwhile
        try:
            for key, size, mtime_ns, inode, chunk, entry, reason in conn.execute(
                "SELECT path, size, mtime_ns, inode, chunk, entry, reason FROM files"
            ):
                i = position.get(key) if type(key) is bytes else None
                if i is None:
                    stored.stale.append(key)
                elif _state(files[i]) != (size, mtime_ns, inode):
                    stored.changed += 1
                elif chunk is None and entry is None:
                    stored.results[i] = _quarantined(index_path, files[i], reason)
                elif reason is None:
                    in_chunk.setdefault(chunk, []).append((i, entry))
                else:
                    raise _corrupt(index_path, f"the row of {files[i]} is invalid (both a header and a reason)")
            chunks = dict(conn.execute("SELECT id, data FROM chunks").fetchall())
            stored.checks = dict(conn.execute("SELECT digest, data FROM series_checks").fetchall())
        finally:
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise ScanIndexError(f"{index_path}: cannot read the scan index: {exc}") from exc
    for chunk_key, members in in_chunk.items():
        decoded = _chunk(index_path, chunk_key, chunks.get(chunk_key))
        for i, entry in members:
            try:
                stored.results[i] = decoded.header(entry, files[i])
            except ValueError as exc:
                raise _corrupt(index_path, f"the row of {files[i]} is invalid ({exc})") from exc
            stored.origins[i] = (keys[i], chunk_key, entry)
    return stored


def _corrupt(index_path: str, what: str) -> ScanIndexError:
    return ScanIndexError(f"{index_path}: corrupt or edited scan index: {what}; delete the index to rebuild it")


def _quarantined(index_path: str, path: str, reason: Any) -> QuarantineEntry:
    if type(reason) is not str or not _storable_reason(reason):
        raise _corrupt(index_path, f"the row of {path} is invalid (bad quarantine reason)")
    return QuarantineEntry(path, reason)


def _storable_reason(reason: str) -> bool:
    """Whether a quarantine reason tells of the file's bytes (stored) rather than of the moment."""
    return bool(reason) and not reason.startswith(_UNSTORED_REASONS) and not any(e in reason for e in _PASSING_ERRORS)


def _chunk(index_path: str, chunk_key: Any, data: Any) -> Chunk:
    if data is None:
        raise _corrupt(index_path, f"chunk {chunk_key!r} is missing")
    try:
        return decode_chunk(chunk_key, data)
    except ValueError as exc:
        raise _corrupt(index_path, f"chunk {chunk_key!r} is invalid ({exc})") from exc


class _SeriesChecks:
    """:func:`group_instances`' ``validate``: a stored geometry check where one fits, else a new one.

    A check fits a series when the series holds exactly the files and stored headers it was made
    for (a digest of their keys, chunks and entries, in order). What the installed codecs decode
    is checked every time. :meth:`save` stores the new checks and drops those no series used.
    """

    def __init__(self, index_path: str, stored: dict[Any, Any], origins: dict[int, _Origin]) -> None:
        self.index_path = index_path
        self.stored = stored
        self.origins = origins
        self.used: set[str] = set()
        self.new: dict[str, str] = {}

    def __call__(self, series: Series) -> None:
        parts = [self.origins.get(id(inst)) for inst in series.instances]
        # repr of (bytes, text, int) tuples: unambiguous whatever the file names hold
        digest = None if None in parts else hashlib.sha256(repr(parts).encode()).hexdigest()[:32]
        data = self.stored.get(digest) if digest is not None else None
        if data is not None:
            self._apply(series, data)
            self.used.add(digest)  # type: ignore[arg-type]
        else:
            check_series_geometry(series)
            text = encode_series_check(series)
            if digest is not None and text is not None:  # else: checked again next time
                self.new[digest] = text
        check_series_decoding(series)

    def _apply(self, series: Series, data: Any) -> None:
        try:
            apply_series_check(series, data)
        except ValueError as exc:
            raise _corrupt(
                self.index_path, f"a stored series check is invalid (series {series.SeriesInstanceUID})"
            ) from exc

    def save(self, conn: sqlite3.Connection) -> None:
        unused = [digest for digest in self.stored if digest not in self.used]
        if not self.new and not unused:
            return
        try:
            with _write(conn):
                conn.executemany("INSERT OR REPLACE INTO series_checks VALUES (?, ?)", self.new.items())
                conn.executemany("DELETE FROM series_checks WHERE digest = ?", [(d,) for d in unused])
        except sqlite3.Error as exc:
            raise ScanIndexError(f"{self.index_path}: cannot write the scan index: {exc}") from exc


# ------------------------------------------------------------------------------------------
# reading files and storing results


_Read = tuple[list[InstanceHeader | QuarantineEntry], list[FileState | None], tuple[str, str], list[int | None]]


def _read_batch(batch: list[str]) -> _Read:
    """Worker: stat, read and stat again each file, then store the headers read as one chunk.

    Returns ``(results, states, (chunk id, chunk text), entries)``: a file's state is None when
    it differed before and after the read (it is read again next time), its entry None when its
    result is not stored in the chunk.
    """
    results: list[InstanceHeader | QuarantineEntry] = []
    states: list[FileState | None] = []
    for path in batch:
        before = _state(path)
        results.append(read_instance_header(path))
        states.append(before if before == _state(path) else None)
    kept = [k for k, r in enumerate(results) if isinstance(r, InstanceHeader) and states[k] is not None]
    identifier, text, in_chunk = encode_chunk([results[k] for k in kept])  # type: ignore[misc]
    entries: list[int | None] = [None] * len(batch)
    for k, entry in zip(kept, in_chunk, strict=True):
        entries[k] = entry
    return results, states, (identifier, text), entries


def _batches(to_read: list[int], workers: int) -> tuple[list[list[int]], int]:
    """Split ``to_read`` into batches (at most :data:`COMMIT_EVERY` files); and the workers to use."""
    total = len(to_read)
    if workers <= 1 or total < PARALLEL_THRESHOLD:
        size, workers = min(64, COMMIT_EVERY), 1
    else:  # a few batches per worker balances the load, as scan_folder does
        size = max(1, min(COMMIT_EVERY, -(-total // (workers * 4))))
    return [to_read[k : k + size] for k in range(0, total, size)], workers


def _read_and_store(
    conn: sqlite3.Connection,
    index_path: str,
    files: Sequence[str],
    keys: Sequence[bytes],
    to_read: list[int],
    workers: int | None,
    progress: ProgressCallback | None,
) -> Generator[tuple[int, InstanceHeader | QuarantineEntry, _Origin | None], None, None]:
    """Read the files at ``to_read`` (in parallel) and commit their results batch by batch.

    Yields ``(position, result, origin)``; origin (key, chunk, entry) for a stored header, else None.
    """
    batches, n_workers = _batches(to_read, workers or os.cpu_count() or 1)
    done, total = len(files) - len(to_read), len(files)
    for batch, read in zip(batches, _map_batches([[files[i] for i in b] for b in batches], n_workers), strict=True):
        results, states, (chunk_key, text), entries = read
        rows: list[tuple[Any, ...]] = []
        for i, result, state, entry in zip(batch, results, states, entries, strict=True):
            origin = None
            if state is None:
                pass
            elif entry is not None:
                rows.append((keys[i], *state, chunk_key, entry, None))
                origin = (keys[i], chunk_key, entry)
            elif isinstance(result, QuarantineEntry) and _storable_reason(result.reason):
                rows.append((keys[i], *state, None, None, result.reason))
            yield i, result, origin
        try:
            with _write(conn):
                if any(entry is not None for entry in entries):
                    conn.execute("INSERT OR IGNORE INTO chunks VALUES (?, ?)", (chunk_key, text))
                conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise ScanIndexError(f"{index_path}: cannot write the scan index: {exc}") from exc
        done += len(batch)
        if progress:
            progress(done, total)


def _map_batches(batches: list[list[str]], workers: int) -> Iterator[_Read]:
    """:func:`_read_batch` over ``batches``, in order, as each finishes (in this process for 1 worker)."""
    if workers <= 1:
        for batch in batches:
            yield _read_batch(batch)
        return
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(["medimg.dicom.scan_index"]))
    try:
        yield from pool.map(_read_batch, batches)
    finally:  # on an interruption, do not wait for the batches not yet started
        pool.shutdown(wait=True, cancel_futures=True)


def _drop_rows(conn: sqlite3.Connection, index_path: str, stale: list[Any], *, prune: bool) -> int:
    """Delete the rows of files that are no longer listed, and chunks no row refers to; how many rows.

    Args:
        prune: also look for unreferenced chunks when no row was deleted (rows were replaced).
    """
    if not stale and not prune:
        return 0
    try:
        with _write(conn):
            conn.executemany("DELETE FROM files WHERE path = ?", [(key,) for key in stale])
            conn.execute("DELETE FROM chunks WHERE id NOT IN (SELECT chunk FROM files WHERE chunk IS NOT NULL)")
    except sqlite3.Error as exc:
        raise ScanIndexError(f"{index_path}: cannot write the scan index: {exc}") from exc
    return len(stale)
