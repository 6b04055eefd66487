"""DICOM networking as a service class user (pynetdicom): C-ECHO, C-FIND (Study Root), C-GET with
the storage SCP role in the same association, C-MOVE to a temporary storage SCP, and C-STORE.

Received instances are written by :func:`save_instance` as ``ROOT/<study>/<series>/<SOP>.dcm``
(each UID through :func:`medimg.safepath.safe_name`), atomically: the layout of
``medimg listen``'s ``incoming/`` folder and of ``medimg run --from-pacs``'s cache. Every failure
is a :class:`DimseError` naming the peer and the operation.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medimg.pacs.aet import RemoteAE, check_ae_title
from medimg.pacs.dicomweb import PacsError
from medimg.safepath import inside, safe_name
from medimg.writers import write_bytes

__all__ = [
    "DimseDestination",
    "DimseError",
    "RetrieveResult",
    "echo",
    "find",
    "instance_path",
    "retrieve_series",
    "save_instance",
    "store_datasets",
    "store_files",
]

LOG = logging.getLogger("medimg.pacs")

#: Transfer syntaxes offered for each storage SOP class when retrieving (one presentation context
#: each), so the PACS can send what it stores without transcoding: JPEG baseline, JPEG lossless,
#: JPEG 2000 (lossless and lossy), RLE, deflated, explicit and implicit little endian.
RETRIEVE_SYNTAXES = (
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.90",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2",
)
_MAX_CONTEXTS = 128
#: Study Root Query/Retrieve Information Model FIND, MOVE and GET (PS3.4 C.6.2).
FIND, MOVE, GET = "1.2.840.10008.5.1.4.1.2.2.1", "1.2.840.10008.5.1.4.1.2.2.2", "1.2.840.10008.5.1.4.1.2.2.3"
_STATUS_SUCCESS = 0x0000
#: C-STORE statuses meaning stored: success, and the warnings "coercion of data elements",
#: "elements discarded" and "data set does not match SOP class" (PS3.4 B.2.3).
_STORED = (0x0000, 0xB000, 0xB007, 0xB006)
#: C-STORE "Error: cannot understand" (PS3.4 B.2.3): an instance without usable UIDs.
STATUS_CANNOT_UNDERSTAND = 0xC000
#: C-STORE "Refused: out of resources" (PS3.4 B.2.3): the instance could not be written.
STATUS_OUT_OF_RESOURCES = 0xA700


class DimseError(PacsError):
    """A DICOM network operation that failed (no association, refused, failed status)."""


@dataclass
class RetrieveResult:
    """What :func:`retrieve_series` received: the files written and the instances not written."""

    files: list[Path] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    method: str = ""
    #: SOPInstanceUIDs the PACS sent from other studies or series than the one asked for (not written).
    ignored: list[str] = field(default_factory=list)


def _application_entity(calling_ae: str, timeout: float) -> Any:
    from pynetdicom import AE

    ae = AE(ae_title=check_ae_title(calling_ae))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    return ae


def _associate(ae: Any, remote: RemoteAE, what: str, **kwargs: Any) -> Any:
    assoc = ae.associate(remote.host, remote.port, ae_title=remote.ae_title, **kwargs)
    if not assoc.is_established:
        reason = "association rejected" if assoc.is_rejected else "no association (refused, aborted or no answer)"
        raise DimseError(f"{what} with {remote}: {reason}")
    return assoc


def _status_of(status: Any, what: str, remote: RemoteAE) -> int:
    if not status or "Status" not in status:
        raise DimseError(
            f"{what} with {remote}: no answer (timeout, or the association was aborted; a PACS answers only "
            "calling AE titles it knows: is medimg's --calling-ae registered there?)"
        )
    return int(status.Status)


def echo(remote: RemoteAE, calling_ae: str = "MEDIMG", *, timeout: float = 30) -> None:
    """C-ECHO ``remote``; DimseError when it does not answer with success."""
    ae = _application_entity(calling_ae, timeout)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = _associate(ae, remote, "C-ECHO")
    try:
        code = _status_of(assoc.send_c_echo(), "C-ECHO", remote)
    finally:
        assoc.release()
    if code != _STATUS_SUCCESS:
        raise DimseError(f"C-ECHO with {remote}: status 0x{code:04X}")


def find(
    remote: RemoteAE,
    level: str,
    keys: Mapping[str, str],
    *,
    calling_ae: str = "MEDIMG",
    timeout: float = 30,
) -> list[Any]:
    """Study Root C-FIND at ``level`` (STUDY, SERIES, IMAGE): one dataset per match. ``keys`` are
    keywords with their match values; an empty value asks for the attribute back."""
    from pydicom.dataset import Dataset

    query = Dataset()
    query.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        try:
            setattr(query, keyword, value)
        except (ValueError, TypeError, AttributeError) as exc:
            raise DimseError(f"C-FIND query key {keyword}={value!r}: {exc}") from exc
        if keyword not in query:
            raise DimseError(f"C-FIND query key {keyword!r} is not a DICOM keyword")
    ae = _application_entity(calling_ae, timeout)
    ae.add_requested_context(FIND)
    assoc = _associate(ae, remote, "C-FIND")
    found = []
    try:
        for status, identifier in assoc.send_c_find(query, FIND):
            code = _status_of(status, "C-FIND", remote)
            if code in (0xFF00, 0xFF01) and identifier is not None:
                found.append(identifier)
            elif code != _STATUS_SUCCESS:
                raise DimseError(f"C-FIND ({level}) with {remote}: status 0x{code:04X}")
    finally:
        assoc.release()
    return found


def instance_path(root: str | os.PathLike[str], study: str, series: str, sop: str) -> Path:
    """``ROOT/<study>/<series>/<SOP>.dcm`` with each UID made a safe name, checked to be under ROOT."""
    path = Path(root) / safe_name(study) / safe_name(series) / f"{safe_name(sop)}.dcm"
    return inside(root, path)


def save_instance(root: str | os.PathLike[str], event: Any) -> tuple[int, Path | None]:
    """Write the instance of a pynetdicom C-STORE ``event`` under ``root`` (atomically; an existing
    copy is replaced). Returns the C-STORE status and the file (None when not written)."""
    try:
        dataset = event.dataset
        study, series = str(dataset.StudyInstanceUID), str(dataset.SeriesInstanceUID)
        sop = str(event.request.AffectedSOPInstanceUID)
        path = instance_path(root, study, series, sop)
    except Exception as exc:  # noqa: BLE001 - a bad instance is refused, never raised into pynetdicom
        LOG.warning("C-STORE from %s refused: cannot read its UIDs (%s)", _caller(event), exc)
        return STATUS_CANNOT_UNDERSTAND, None
    try:
        write_bytes(path, bytes(event.encoded_dataset()))
    except OSError as exc:
        LOG.error("C-STORE from %s: cannot write %s (%s)", _caller(event), path, exc)
        return STATUS_OUT_OF_RESOURCES, None
    return _STATUS_SUCCESS, path


def _caller(event: Any) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.ae_title}@{requestor.address}"


def _storage_contexts(sop_classes: Iterable[str], reserved: int) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) pairs for one context each, within the 128-context limit."""
    pairs = [(uid, syntax) for uid in sorted(set(sop_classes)) for syntax in RETRIEVE_SYNTAXES]
    if len(pairs) > _MAX_CONTEXTS - reserved:
        # Too many classes for one context per syntax: one context per class with all the syntaxes.
        return [(uid, "") for uid in sorted(set(sop_classes))][: _MAX_CONTEXTS - reserved]
    return pairs


def _add_storage(ae: Any, sop_classes: Sequence[str], reserved: int, *, requested: bool) -> list[Any]:
    """Add storage contexts (requested for C-GET, supported for a C-MOVE destination); the role items."""
    from pynetdicom import build_role

    roles = []
    for uid, syntax in _storage_contexts(sop_classes, reserved):
        syntaxes = [syntax] if syntax else list(RETRIEVE_SYNTAXES)
        if requested:
            ae.add_requested_context(uid, syntaxes)
        else:
            ae.add_supported_context(uid, syntaxes)
    if requested:
        roles = [build_role(uid, scp_role=True) for uid in sorted(set(sop_classes))]
    return roles


def _belongs(event: Any, expected: tuple[str, str]) -> bool:
    """Whether a received instance is of the study and series asked for (a PACS that matches a
    C-GET on the series UID alone may send another patient's study that shares it)."""
    try:
        ds = event.dataset
        return (str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", ""))) == expected
    except Exception:  # noqa: BLE001 - an instance that cannot be read is left to save_instance's checks
        return True


def _receiver(
    root: Path, result: RetrieveResult, lock: threading.Lock, expected: tuple[str, str]
) -> Callable[[Any], int]:
    def handle(event: Any) -> int:
        if not _belongs(event, expected):
            with lock:
                result.ignored.append(str(event.request.AffectedSOPInstanceUID))
            return 0x0000  # taken and dropped: not written, never another study's data on disk
        code, path = save_instance(root, event)
        with lock:
            if path is not None:
                result.files.append(path)
            else:
                result.failures.append(f"{event.request.AffectedSOPInstanceUID}: status 0x{code:04X}")
        return code

    return handle


def _check_retrieve(responses: Iterable[tuple[Any, Any]], what: str, remote: RemoteAE) -> None:
    final = None
    for status, _identifier in responses:
        code = _status_of(status, what, remote)
        if code not in (0xFF00,):
            final = (code, status)
    if final is None:
        raise DimseError(f"{what} with {remote}: no final status")
    code, status = final
    if code == 0xB000 or code != _STATUS_SUCCESS:
        failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
        raise DimseError(f"{what} with {remote}: status 0x{code:04X} ({failed} sub-operation(s) failed)")


def _identifier(study: str, series: str) -> Any:
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.QueryRetrieveLevel = "SERIES"
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    return ds


def _get(
    remote: RemoteAE, study: str, series: str, sop_classes: Sequence[str], root: Path, **opts: Any
) -> RetrieveResult:
    from pynetdicom import evt

    result, lock = RetrieveResult(method="C-GET"), threading.Lock()
    ae = _application_entity(opts["calling_ae"], opts["timeout"])
    ae.add_requested_context(GET)
    roles = _add_storage(ae, sop_classes, 1, requested=True)
    handlers = [(evt.EVT_C_STORE, _receiver(root, result, lock, (study, series)))]
    assoc = _associate(ae, remote, "C-GET", ext_neg=roles, evt_handlers=handlers)
    try:
        if not any(cx.abstract_syntax == GET for cx in assoc.accepted_contexts):
            raise DimseError(f"C-GET with {remote}: the PACS refused the C-GET service")
        _check_retrieve(assoc.send_c_get(_identifier(study, series), GET), "C-GET", remote)
    finally:
        assoc.release()
    return result


def _move(
    remote: RemoteAE, study: str, series: str, sop_classes: Sequence[str], root: Path, **opts: Any
) -> RetrieveResult:
    from pynetdicom import evt

    if not opts.get("move_port"):
        raise DimseError(
            f"C-GET refused by {remote} and no port for C-MOVE given: the PACS must know "
            f"{opts['calling_ae']} (its host and a port) as a destination, and that port is needed here"
        )
    result, lock = RetrieveResult(method="C-MOVE"), threading.Lock()
    scp = _application_entity(opts["calling_ae"], opts["timeout"])
    _add_storage(scp, sop_classes, 0, requested=False)
    handlers = [(evt.EVT_C_STORE, _receiver(root, result, lock, (study, series)))]
    server = scp.start_server((opts.get("move_host", ""), int(opts["move_port"])), block=False, evt_handlers=handlers)
    try:
        ae = _application_entity(opts["calling_ae"], opts["timeout"])
        ae.add_requested_context(MOVE)
        assoc = _associate(ae, remote, "C-MOVE")
        try:
            responses = assoc.send_c_move(_identifier(study, series), check_ae_title(opts["calling_ae"]), MOVE)
            _check_retrieve(responses, "C-MOVE", remote)
        finally:
            assoc.release()
    finally:
        server.shutdown()
    return result


def retrieve_series(
    remote: RemoteAE,
    study: str,
    series: str,
    root: str | os.PathLike[str],
    *,
    sop_classes: Sequence[str],
    calling_ae: str = "MEDIMG",
    move_port: int | None = None,
    move_host: str = "",
    timeout: float = 60,
) -> RetrieveResult:
    """Retrieve one series into ``root`` (layout of :func:`save_instance`): C-GET, and C-MOVE to a
    storage SCP on ``move_port`` (AE title ``calling_ae``) when the PACS refuses C-GET.

    ``sop_classes`` are the storage SOP classes of its instances (from an IMAGE-level C-FIND), for
    the presentation contexts. DimseError when both ways fail.
    """
    opts = {"calling_ae": calling_ae, "timeout": timeout, "move_port": move_port, "move_host": move_host}
    target = Path(root)
    try:
        return _get(remote, study, series, sop_classes, target, **opts)
    except DimseError as exc:
        if move_port is None:
            raise
        LOG.info("%s; trying C-MOVE to %s on port %s", exc, calling_ae, move_port)
    return _move(remote, study, series, sop_classes, target, **opts)


def store_datasets(
    remote: RemoteAE,
    datasets: Sequence[Any],
    *,
    calling_ae: str = "MEDIMG",
    timeout: float = 60,
) -> list[str]:
    """C-STORE pydicom ``datasets`` (read from files, with their file meta) to ``remote`` in one
    association; the reasons of those not stored (empty: all stored). DimseError when no
    association is made."""
    ae = _application_entity(calling_ae, timeout)
    for uid, syntax in sorted({(str(d.SOPClassUID), str(d.file_meta.TransferSyntaxUID)) for d in datasets}):
        ae.add_requested_context(uid, [syntax])
    if not datasets:
        return []
    assoc = _associate(ae, remote, "C-STORE")
    problems = []
    try:
        for dataset in datasets:
            sop = dataset.get("SOPInstanceUID", "?")
            try:
                code = _status_of(assoc.send_c_store(dataset), "C-STORE", remote)
            except (ValueError, RuntimeError, AttributeError) as exc:
                problems.append(f"{sop}: not sent ({exc})")
                continue
            if code not in _STORED:
                problems.append(f"{sop}: C-STORE status 0x{code:04X}")
    finally:
        assoc.release()
    return problems


def store_files(
    remote: RemoteAE,
    files: Sequence[str | os.PathLike[str]],
    *,
    calling_ae: str = "MEDIMG",
    timeout: float = 60,
) -> list[str]:
    """C-STORE DICOM ``files`` to ``remote``; the reasons of those not stored (an unreadable file
    included; empty: all stored). DimseError when no association is made."""
    import pydicom

    datasets, problems = [], []
    for path in files:
        try:
            datasets.append(pydicom.dcmread(path))
        except Exception as exc:  # noqa: BLE001 - an unreadable file is reported, the others are sent
            problems.append(f"{path}: cannot read ({exc})")
    return problems + store_datasets(remote, datasets, calling_ae=calling_ae, timeout=timeout)


class DimseDestination:
    """A PACS to push results to with C-STORE, with the ``url`` and ``store(datasets)`` of
    :class:`medimg.pacs.dicomweb.DicomWebSource` (so one push routine serves both)."""

    def __init__(self, remote: RemoteAE, *, calling_ae: str = "MEDIMG", timeout: float = 60) -> None:
        self.remote, self.calling_ae, self.timeout = remote, calling_ae, timeout
        #: How ``pushed.json`` names this destination.
        self.url = f"dicom://{remote}"

    def store(self, datasets: Sequence[Any]) -> list[str]:
        """C-STORE ``datasets``; the reasons of those not stored. DimseError: no association."""
        return store_datasets(self.remote, datasets, calling_ae=self.calling_ae, timeout=self.timeout)
