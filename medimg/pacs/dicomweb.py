"""A DICOMweb server (QIDO-RS search, WADO-RS metadata and retrieve, STOW-RS store) through
``dicomweb-client``, with HTTP errors turned into readable :class:`PacsError` messages.

A source is written ``dicomweb+http://HOST:PORT/PATH`` or ``dicomweb+https://...``. Credentials come
from :mod:`medimg.pacs.credentials`; TLS certificates are always verified (``ca_bundle`` adds a CA
file for a hospital's own certificate authority).
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from medimg.pacs.credentials import Credentials, refuse_url_credentials

__all__ = [
    "SCHEMES",
    "DicomWebSource",
    "PacsAuthError",
    "PacsError",
    "PacsSetupError",
    "PacsTlsError",
    "PacsUnreachable",
    "is_dicomweb",
    "parse_query",
]

SCHEMES = ("dicomweb+http://", "dicomweb+https://")
#: Ask for the files as stored (any transfer syntax), not transcoded to Explicit VR Little Endian.
ORIGINAL_FILES = (("application/dicom", "*"),)
T = TypeVar("T")


class PacsError(RuntimeError):
    """The PACS could not be reached, stopped answering or refused a request (message for people)."""


class PacsSetupError(PacsError):
    """A problem every request would meet (credentials, TLS): nothing else is tried."""


class PacsAuthError(PacsSetupError):
    """The PACS refused the credentials (HTTP 401 or 403)."""


class PacsTlsError(PacsSetupError):
    """The server's TLS certificate could not be verified."""


class PacsUnreachable(PacsError):
    """The PACS did not answer (connection refused or dropped, time-out), after the retries."""


def is_dicomweb(source: str) -> bool:
    """True for ``dicomweb+http(s)://...``."""
    return source.lower().startswith(SCHEMES)


def parse_query(query: str) -> dict[str, str]:
    """QIDO-RS study search parameters ``"ModalitiesInStudy=MG&StudyDate=20260101-"`` as a dict.

    Raises:
        ValueError: an empty query or a part without ``=``.
    """
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    if not pairs or any(not key for key, _ in pairs) or any("=" not in part for part in query.split("&") if part):
        raise ValueError(f"--query {query!r}: expected KEY=VALUE pairs joined by '&', e.g. 'ModalitiesInStudy=CR'")
    return dict(pairs)


def _study_uid(item: Any) -> str:
    """The StudyInstanceUID (0020000D) of one QIDO-RS answer ("" when the item is not a usable one)."""
    value = item.get("0020000D", {}) if isinstance(item, dict) else {}
    values = value.get("Value") if isinstance(value, dict) else None
    return str(values[0]) if isinstance(values, list) and values and isinstance(values[0], str) else ""


def _empty_bulk_data(*_: Any) -> bytes:
    return b""


def _dataset_from_json(item: dict[str, Any]) -> Any:
    """A DICOM JSON header as a pydicom Dataset with the file meta a header reader expects: the
    transfer syntax the server stores (when it says), else Explicit VR Little Endian."""
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    ds = Dataset.from_json(item, bulk_data_uri_handler=_empty_bulk_data)
    meta = FileMetaDataset()
    stored = ds.get("TransferSyntaxUID") or ds.get("AvailableTransferSyntaxUID")
    if stored is not None and not isinstance(stored, str):  # several available: the first
        stored = next(iter(stored), None)
    meta.TransferSyntaxUID = UID(str(stored)) if stored else ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _server_says(response: Any) -> str:
    """``": MESSAGE"`` from an error answer (JSON ``Message`` as Orthanc sends, else the text), or ""."""
    try:
        text = str(response.json().get("Message", "")) if response is not None else ""
    except (ValueError, AttributeError):
        text = response.text if response is not None else ""
    text = " ".join(text.split())[:200]
    return f": {text}" if text else ""


def _verifying_adapter(ca_bundle: str) -> Any:
    """An HTTPS adapter that verifies against ``ca_bundle`` whatever the environment says (requests
    lets ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` override a session's ``verify``)."""
    from requests.adapters import HTTPAdapter

    class VerifyingAdapter(HTTPAdapter):
        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["verify"] = ca_bundle
            return super().send(request, *args, **kwargs)

    return VerifyingAdapter()


class DicomWebSource:
    """One DICOMweb server: ``url`` is ``dicomweb+http(s)://HOST[:PORT]/PATH``."""

    def __init__(
        self,
        url: str,
        credentials: Credentials | None = None,
        *,
        ca_bundle: str | os.PathLike[str] | None = None,
        timeout: float = 60.0,
        attempts: int = 3,
    ) -> None:
        import requests
        from dicomweb_client import DICOMwebClient

        if not is_dicomweb(url):
            raise ValueError(f"{url!r}: a DICOMweb source starts with dicomweb+http:// or dicomweb+https://")
        refuse_url_credentials(url)
        self.url = url
        self.http_url = url.split("+", 1)[1].rstrip("/")
        self.host = urlsplit(self.http_url).hostname or "?"
        session = requests.Session()
        if ca_bundle:
            session.mount("https://", _verifying_adapter(os.fspath(ca_bundle)))
        if credentials is not None:
            session.auth = credentials.basic()
            session.headers.update(credentials.headers())
        self.session, self.timeout = session, timeout
        self.client = DICOMwebClient(self.http_url, session=session, timeout=timeout)
        # dicomweb-client retries every failed request (5 attempts, waits up to 16 s): fewer, shorter
        self.client.set_http_retry_params(max_attempts=attempts, wait_exponential_multiplier=500)

    def _call(self, what: str, action: Callable[[], T]) -> T:
        """Run ``action``; requests' errors become :class:`PacsError` naming ``what`` and the host."""
        import requests

        try:
            return action()
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            if code in (401, 403):
                raise PacsAuthError(f"the PACS refused the credentials for {self.host} (HTTP {code})") from exc
            raise PacsError(f"{what}: HTTP {code} from {self.host}{_server_says(exc.response)}") from exc
        except requests.exceptions.SSLError as exc:
            raise PacsTlsError(
                f"{what}: TLS verification failed for {self.host} (give its CA with --ca-bundle FILE): {exc}"
            ) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            raise PacsUnreachable(
                f"{what}: {self.host} is unreachable or stopped answering ({type(exc).__name__})"
            ) from exc
        except requests.exceptions.RequestException as exc:
            raise PacsError(f"{what}: the transfer from {self.host} failed ({type(exc).__name__}: {exc})") from exc

    def search_studies(self, query: str) -> list[str]:
        """The StudyInstanceUIDs that a QIDO-RS study search with ``query`` finds.

        The first request sets no limit; a server that caps its answers is asked again from the
        offset reached until a page brings nothing new (dicomweb-client's ``get_remaining=True``
        waits forever on Orthanc 1.10, and small pages lose studies there when
        ``ModalitiesInStudy`` is filtered).
        """
        filters = parse_query(query)
        uids: list[str] = []
        while True:
            offset = len(uids) or None
            page = self._call(f"searching studies ({query})", functools.partial(self._qido_studies, filters, offset))
            found = [_study_uid(item) for item in page]
            new = [u for u in dict.fromkeys(found) if u and u not in uids]
            if not new:
                return uids
            uids += new

    def _qido_studies(self, filters: dict[str, str], offset: int | None) -> list[dict[str, Any]]:
        """One QIDO-RS study search. Built here, not by dicomweb-client, to leave ``*`` and ``,`` unescaped:
        Orthanc 1.10 does not decode ``%2A``, so ``PatientName=SMITH*`` would match nothing."""
        params = {**filters, **({"offset": str(offset)} if offset else {})}
        response = self.session.get(
            f"{self.http_url}/studies?{urlencode(params, safe='*,')}",
            headers={"Accept": "application/dicom+json"},
            timeout=self.timeout,
        )
        response.raise_for_status()
        if not response.content:
            return []  # 204: nothing found
        try:
            answer = response.json()
        except ValueError as exc:
            raise PacsError(f"searching studies: {self.host} answered with something that is not JSON") from exc
        if not isinstance(answer, list):
            raise PacsError(f"searching studies: {self.host} answered with a {type(answer).__name__}, not a list")
        return answer

    def study_metadata(self, study_uid: str) -> list[Any]:
        """The instances' headers of a study (WADO-RS metadata) as pydicom Datasets, bulk data left empty."""
        found = self._call(
            f"study {study_uid}: reading its metadata", lambda: self.client.retrieve_study_metadata(study_uid)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on every odd value; the selection reports instead
            return [_dataset_from_json(item) for item in found]

    def iter_series(self, study_uid: str, series_uid: str) -> Iterator[Any]:
        """The instances of a series as pydicom Datasets, one at a time as they arrive."""
        what = f"study {study_uid} series {series_uid}: retrieving"
        stream = self._call(what, lambda: self.client.iter_series(study_uid, series_uid, media_types=ORIGINAL_FILES))
        while True:
            item = self._call(what, lambda: next(stream, None))
            if item is None:
                return
            yield item

    def retrieve_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> Any:
        """One instance as a pydicom Dataset."""
        return self._call(
            f"study {study_uid} series {series_uid} instance {sop_uid}: retrieving",
            lambda: self.client.retrieve_instance(study_uid, series_uid, sop_uid, media_types=ORIGINAL_FILES),
        )

    def store(self, datasets: Sequence[Any]) -> list[str]:
        """STOW-RS ``datasets``; the reasons of the instances the server did not take (empty: all stored)."""
        answer = self._call("storing results (STOW-RS)", lambda: self.client.store_instances(list(datasets)))
        failed = getattr(answer, "FailedSOPSequence", None) or []
        return [
            f"{getattr(item, 'ReferencedSOPInstanceUID', '?')}: failure reason {getattr(item, 'FailureReason', '?')}"
            for item in failed
        ]
