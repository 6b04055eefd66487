"""Incremental folder scan: each file's header-read result kept in an SQLite index, reread only on change.

:func:`scan_folder_indexed` returns what :func:`medimg.dicom.scan.scan_folder` returns for the same
folder, but remembers, per file, the result of :func:`medimg.dicom.header.read_instance_header`
in an SQLite file (WAL mode) keyed by the path relative to the folder together with the file's
size, modification time (ns) and inode. A rescan stats every file and reads only those that are
new or whose (size, mtime_ns, inode) changed; rows of files that disappeared are dropped. Studies,
series and their validation are rebuilt from the headers on every scan, so they are never stale.

What is stored is data, never code: the header fields as JSON (:class:`InstanceHeader` less its
path) or the quarantine reason as text. Results that depend on the environment rather than on
the file's bytes (``unreadable``, ``broken symbolic link``, ``not a regular file``) are not
stored, so a permission fixed later is seen without a content change.

The index file is treated as untrusted input. Everything read back is checked (the file's
format marker and schema version, the tables it holds, every row's JSON shape and types); an
index that fails a check raises :class:`ScanIndexError` naming the index file and the problem, and
is never deleted or rewritten: a wrong ``--index`` path must not destroy somebody's database. The
one exception is an index written by another header reader (another medimg or pydicom version):
its stored results are discarded and the files reread, with a note in :attr:`ScanIndexStats.notes`.

An index records the real path of the folder it was made for and refuses any other folder.
Results are committed every :data:`COMMIT_EVERY` files, so an interrupted scan keeps what it read
and the next one resumes from there. Several processes may scan with the same index at once: every
write is a short ``BEGIN IMMEDIATE`` transaction under a busy timeout, and a row always pairs a
file's (size, mtime_ns, inode) with the result read from exactly that file state, so the worst a
race can cause is a file read twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

from medimg.dicom.header import read_instance_header
from medimg.dicom.index import InstanceHeader, QuarantineEntry, ScanResult
from medimg.dicom.scan import PARALLEL_THRESHOLD, group_instances, list_files
from medimg.parallel import ProgressCallback, pool_context

__all__ = [
    "COMMIT_EVERY",
    "SCHEMA_VERSION",
    "IndexedScan",
    "ScanIndexError",
    "ScanIndexStats",
    "decode_result",
    "encode_result",
    "reader_fingerprint",
    "scan_folder_indexed",
    "scan_with_index",
]

#: Version of the tables and of the row format; an index of another version is refused.
SCHEMA_VERSION = 1
#: ``PRAGMA application_id`` of a scan index ("MDIX"): tells our files from other SQLite files.
APPLICATION_ID = 0x4D444958
#: Files read between two commits: what an interrupted scan keeps at most loses.
COMMIT_EVERY = 256
#: Seconds a writer waits for another process's transaction before giving up.
BUSY_TIMEOUT_S = 60.0

#: Quarantine reasons that describe the environment, not the file's bytes: never stored.
_UNSTORED_REASONS = ("unreadable", "broken symbolic link", "not a regular file")
_HEADER_FIELDS = frozenset(
    {"attributes", "transfer_syntax", "frame_positions", "frame_orientation", "pixel_spacing", "slice_spacing_hint"}
)
_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,"
    " inode INTEGER NOT NULL, kind TEXT NOT NULL, data TEXT NOT NULL) WITHOUT ROWID",
)
_OBJECTS = {("table", "meta"), ("table", "files"), ("index", "sqlite_autoindex_meta_1")}
_SUFFIXES = ("", "-wal", "-shm", "-journal")

FileState = tuple[int, int, int]  # (size, mtime_ns, inode as a signed 64-bit integer)


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
        results, stale = _reusable_results(conn, index_path, files, keys)
        stats.reused = len(results)
        to_read = [i for i in range(len(files)) if i not in results]
        if progress:
            progress(stats.reused, len(files))
        for i, read in _read_and_store(conn, index_path, files, keys, to_read, workers, progress):
            results[i] = read
            stats.read += 1
        stats.dropped = _drop_rows(conn, index_path, stale)
    finally:
        conn.close()
    ordered = [results[i] for i in range(len(files))]
    headers = [r for r in ordered if isinstance(r, InstanceHeader)]
    quarantine.extend(r for r in ordered if isinstance(r, QuarantineEntry))
    studies, duplicates = group_instances(headers)
    quarantine.extend(duplicates)
    quarantine.sort(key=lambda q: q.path)
    result = ScanResult(root=os.fspath(Path(root_str)), studies=studies, quarantine=quarantine)
    return IndexedScan(result, stats)


# ------------------------------------------------------------------------------------------
# the index file


@cache
def reader_fingerprint() -> str:
    """Identify the header reader: stored results of another reader are not reused.

    Hashes the source of :mod:`medimg.dicom.header` (what is read and how) with the pydicom
    version (which transfer syntaxes have a decoder) and :data:`SCHEMA_VERSION`.
    """
    import pydicom

    import medimg.dicom.header as header_module

    digest = hashlib.sha256(f"{SCHEMA_VERSION} {pydicom.__version__}".encode())
    try:
        with open(header_module.__file__, "rb") as fp:
            digest.update(fp.read())
    except (OSError, TypeError):  # no source file (frozen or compiled-only install)
        import medimg

        digest.update(medimg.__version__.encode())
    return digest.hexdigest()[:16]


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
                    [("format", "medimg scan index"), ("root", root_real), ("reader", reader_fingerprint())],
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
    objects = {(str(t), str(n)) for t, n in conn.execute("SELECT type, name FROM sqlite_master")}
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
        unexpected = sorted(f"{t} {n}" for t, n in objects ^ _OBJECTS)
        raise ScanIndexError(
            f"{index_path}: corrupt or edited scan index (unexpected or missing {', '.join(unexpected)}); "
            "delete the index to rebuild it"
        )
    return "ours"


def _check_meta(conn: sqlite3.Connection, index_path: str, root_real: str, notes: list[str]) -> None:
    """Refuse another folder's index; discard results of another header reader (inside a write)."""
    meta = {str(k): v for k, v in conn.execute("SELECT key, value FROM meta")}
    if meta.get("format") != "medimg scan index" or not isinstance(meta.get("root"), str):
        raise ScanIndexError(f"{index_path}: corrupt or edited scan index (bad meta table); delete it to rebuild it")
    if meta["root"] != root_real:
        raise ScanIndexError(
            f"{index_path}: this scan index was made for the folder {meta['root']}, not for {root_real}; "
            "use another index file for this folder"
        )
    reader = reader_fingerprint()
    if meta.get("reader") != reader:
        dropped = conn.execute("DELETE FROM files").rowcount
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


def _keys(files: Sequence[str], root: str) -> list[str]:
    """The index keys of ``files``: their paths relative to ``root``."""
    prefix = os.path.join(root, "")
    return [path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, root) for path in files]


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


def _reusable_results(
    conn: sqlite3.Connection,
    index_path: str,
    files: Sequence[str],
    keys: Sequence[str],
) -> tuple[dict[int, InstanceHeader | QuarantineEntry], list[Any]]:
    """Stored results whose file is unchanged (by position in ``files``), and keys of vanished files.

    Only files with a row are stat'ed here; the others are stat'ed by the processes that read them.
    """
    position = {key: i for i, key in enumerate(keys)}
    reused: dict[int, InstanceHeader | QuarantineEntry] = {}
    stale: list[Any] = []
    try:
        rows = conn.execute("SELECT path, size, mtime_ns, inode, kind, data FROM files")
        for key, size, mtime_ns, inode, kind, data in rows:
            i = position.get(key) if isinstance(key, str) else None
            if i is None:
                stale.append(key)
            elif _state(files[i]) == (size, mtime_ns, inode):
                try:
                    reused[i] = decode_result(kind, data, files[i])
                except ValueError as exc:
                    raise ScanIndexError(
                        f"{index_path}: corrupt or edited scan index: the row of {key!r} is invalid ({exc}); "
                        "delete the index to rebuild it"
                    ) from exc
    except sqlite3.Error as exc:
        raise ScanIndexError(f"{index_path}: cannot read the scan index: {exc}") from exc
    return reused, stale


def decode_result(kind: Any, data: Any, path: str) -> InstanceHeader | QuarantineEntry:
    """Rebuild a stored result for ``path``, checking every field's type.

    Args:
        kind: ``"header"`` or ``"quarantine"``.
        data: the header fields as JSON, or the quarantine reason.
        path: the file the result is for.

    Raises:
        ValueError: the stored data is not what :func:`encode_result` writes.
    """
    if kind == "quarantine":
        if not isinstance(data, str) or not data or data.startswith(_UNSTORED_REASONS):
            raise ValueError("bad quarantine reason")
        return QuarantineEntry(path, data)
    if kind != "header" or not isinstance(data, str):
        raise ValueError(f"unknown kind {kind!r}")
    try:
        fields = _DECODER.decode(data)
    except RecursionError as exc:
        raise ValueError("JSON nested too deeply") from exc
    if type(fields) is not dict or fields.keys() != _HEADER_FIELDS:
        raise ValueError("not a header record")
    positions = fields["frame_positions"]
    if positions is not None:
        if type(positions) is not list:
            raise ValueError("bad frame_positions")
        positions = [_floats(p, 3, "frame_positions") for p in positions]
    hint = fields["slice_spacing_hint"]
    if hint is not None and type(hint) not in _NUMBERS:
        raise ValueError("bad slice_spacing_hint")
    header = InstanceHeader(
        path=path,
        attributes=fields["attributes"],
        transfer_syntax=fields["transfer_syntax"],
        frame_positions=positions,
        frame_orientation=_floats(fields["frame_orientation"], 6, "frame_orientation"),
        pixel_spacing=_floats(fields["pixel_spacing"], 2, "pixel_spacing"),
        slice_spacing_hint=None if hint is None else float(hint),
    )
    _check_header(header, geometry_types=False)
    return header


def encode_result(result: InstanceHeader | QuarantineEntry) -> tuple[str, str] | None:
    """``(kind, data)`` to store for a read result, or None when it must not be stored.

    Not stored: environment-dependent quarantine reasons (see the module docstring) and headers
    that would not come back identical from :func:`decode_result` (values of other types than
    JSON's, non-finite numbers): those files are simply read again on the next scan.
    """
    if isinstance(result, QuarantineEntry):
        return None if result.reason.startswith(_UNSTORED_REASONS) else ("quarantine", result.reason)
    try:
        _check_header(result)
        if not all(type(key) is str for key in result.attributes):  # JSON keys are always text
            return None
        data = _ENCODER.encode(
            {
                "attributes": result.attributes,
                "transfer_syntax": result.transfer_syntax,
                "frame_positions": result.frame_positions,
                "frame_orientation": result.frame_orientation,
                "pixel_spacing": result.pixel_spacing,
                "slice_spacing_hint": result.slice_spacing_hint,
            }
        )
    except (TypeError, ValueError):
        return None
    return "header", data


def _check_header(header: InstanceHeader, *, geometry_types: bool = True) -> None:
    """Check what :func:`decode_result` builds (and what :func:`encode_result` may store).

    Only exact types that come back unchanged from JSON pass: text, integers, floats, booleans,
    None and lists of them in the attributes; tuples of floats in the geometry fields.

    Args:
        header: the header to check.
        geometry_types: also check the geometry fields' types (:func:`decode_result` built them
            as tuples of floats already).

    Raises:
        ValueError: naming the first field that is not as the header reader makes it.
    """
    attributes = header.attributes
    if type(attributes) is not dict:
        raise ValueError("attributes are not keyword: value pairs")
    if not all(map(_SCALARS.__contains__, map(type, attributes.values()))):  # fast path: no lists
        for value in attributes.values():
            if not _is_value(value):
                raise ValueError(f"attribute value of type {type(value).__name__}")
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns"):
        if not attributes.get(keyword):
            raise ValueError(f"no {keyword}")
    if type(header.transfer_syntax) is not str or not header.transfer_syntax:
        raise ValueError("bad transfer_syntax")
    try:
        frames = header.frames
        _ = header.rows, header.columns
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError("Rows, Columns or NumberOfFrames is not an integer") from exc
    positions = header.frame_positions
    if positions is not None:
        if type(positions) is not list or len(positions) != frames:
            raise ValueError("frame_positions do not match NumberOfFrames")
    if (positions is None) != (header.frame_orientation is None):
        raise ValueError("frame_positions without frame_orientation or the reverse")
    if geometry_types:
        for point in positions or ():
            _check_floats(point, 3, "frame_positions")
        _check_floats(header.frame_orientation, 6, "frame_orientation")
        _check_floats(header.pixel_spacing, 2, "pixel_spacing")
        if header.slice_spacing_hint is not None and type(header.slice_spacing_hint) is not float:
            raise ValueError("bad slice_spacing_hint")


def _no_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


_DECODER = json.JSONDecoder(parse_constant=_no_constant)
_ENCODER = json.JSONEncoder(allow_nan=False, separators=(",", ":"))
_SCALARS = frozenset({str, int, float, bool, type(None)})
_NUMBERS = frozenset({int, float})


def _is_value(value: Any, depth: int = 0) -> bool:
    """A JSON scalar, or a (shallow) list of them: what :func:`medimg.dicom.header.jsonable` gives."""
    if type(value) in _SCALARS:
        return True
    if type(value) is not list or depth >= 2:
        return False
    return all(map(_SCALARS.__contains__, map(type, value))) or all(_is_value(v, depth + 1) for v in value)


def _floats(value: Any, n: int, name: str) -> Any:
    """A JSON list of ``n`` numbers as a tuple of floats (None stays None)."""
    if value is None:
        return None
    if type(value) is not list or len(value) != n or not all(map(_NUMBERS.__contains__, map(type, value))):
        raise ValueError(f"bad {name}")
    return tuple(map(float, value))


def _check_floats(value: Any, n: int, name: str) -> None:
    """None, or a tuple of ``n`` floats."""
    if value is not None and (type(value) is not tuple or len(value) != n or not all(type(v) is float for v in value)):
        raise ValueError(f"bad {name}")


# ------------------------------------------------------------------------------------------
# reading files and storing results


def _read_batch(batch: list[str]) -> list[tuple[InstanceHeader | QuarantineEntry, tuple[str, str] | None, Any]]:
    """Worker: stat, read, encode and stat again each file; the state is None when the two differ.

    A result is stored with the state the file had before and after the read, so that a file that
    changes while it is read is read again next time.
    """
    out = []
    for path in batch:
        before = _state(path)
        result = read_instance_header(path)
        out.append((result, encode_result(result), before if before == _state(path) else None))
    return out


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
    keys: Sequence[str],
    to_read: list[int],
    workers: int | None,
    progress: ProgressCallback | None,
) -> Iterator[tuple[int, InstanceHeader | QuarantineEntry]]:
    """Read the files at ``to_read`` (in parallel) and commit their results batch by batch.

    A result is stored only when the file's state after the read equals its state before, so a
    file that changed while being read is read again next time.
    """
    batches, n_workers = _batches(to_read, workers or os.cpu_count() or 1)
    done, total = len(files) - len(to_read), len(files)
    for batch, results in zip(batches, _map_batches([[files[i] for i in b] for b in batches], n_workers), strict=True):
        rows = []
        for i, (result, encoded, state) in zip(batch, results, strict=True):
            yield i, result
            if encoded is not None and state is not None:
                rows.append((keys[i], *state, *encoded))
        try:
            with _write(conn):
                conn.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)", rows)
        except sqlite3.Error as exc:
            raise ScanIndexError(f"{index_path}: cannot write the scan index: {exc}") from exc
        done += len(batch)
        if progress:
            progress(done, total)


def _map_batches(batches: list[list[str]], workers: int) -> Iterator[list[Any]]:
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


def _drop_rows(conn: sqlite3.Connection, index_path: str, stale: list[Any]) -> int:
    """Delete the rows of files that are no longer listed; how many were deleted."""
    if not stale:
        return 0
    try:
        with _write(conn):
            conn.executemany("DELETE FROM files WHERE path = ?", [(key,) for key in stale])
    except sqlite3.Error as exc:
        raise ScanIndexError(f"{index_path}: cannot write the scan index: {exc}") from exc
    return len(stale)
