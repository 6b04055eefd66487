"""A local Orthanc PACS on loopback, for the demo and the tests: Debian's ``orthanc`` with the
``orthanc-dicomweb`` plugin, a temporary storage folder and configuration, HTTP basic auth, DICOMweb
at ``/dicom-web`` and a DICOM port. Nothing listens beyond 127.0.0.1.

``LocalOrthanc(folder)`` starts one and waits until its REST API answers; ``stop()`` (or leaving
the ``with`` block) ends it. :func:`orthanc_missing` says why one cannot start here (None when it
can).
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["LocalOrthanc", "dicomweb_plugin", "free_port", "orthanc_missing"]

#: Where Debian puts the plugins (``MEDIMG_ORTHANC_PLUGINS`` overrides).
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dicomweb_plugin() -> Path | None:
    """The DICOMweb plugin's shared library, or None."""
    override = os.environ.get("MEDIMG_ORTHANC_PLUGINS")
    for folder in [override] if override else PLUGIN_DIRS:
        found = sorted(Path(folder).glob("libOrthancDicomWeb.so*")) if Path(folder).is_dir() else []
        if found:
            return found[0]
    return None


def orthanc_missing() -> str | None:
    """Why a local Orthanc cannot start here, or None when it can."""
    if shutil.which("Orthanc") is None:
        return "Orthanc is not installed (Debian package 'orthanc')"
    if dicomweb_plugin() is None:
        return "the Orthanc DICOMweb plugin is not installed (Debian package 'orthanc-dicomweb')"
    return None


def _is_dicom(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(128)
        return fh.read(4) == b"DICM"


class LocalOrthanc:
    """One Orthanc on 127.0.0.1 with basic auth (``user``/``password``; a random password unless
    given), DICOMweb at :attr:`dicomweb`, DICOM port :attr:`dicom_port` with AE :attr:`aet`, and
    ``modalities`` (``{name: (ae, host, port)}``) as C-MOVE destinations and C-STORE targets.

    Raises:
        RuntimeError: Orthanc is missing (:func:`orthanc_missing`), exits at start or does not answer.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        user: str = "medimg",
        password: str | None = None,
        modalities: Mapping[str, tuple[str, str, int]] | None = None,
        authentication: bool = True,
        aet: str = "ORTHANC",
        config: Mapping[str, Any] | None = None,
    ) -> None:
        missing = orthanc_missing()
        if missing:
            raise RuntimeError(missing)
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.user, self.password = user, password or secrets.token_urlsafe(12)
        self.http_port, self.dicom_port, self.aet = free_port(), free_port(), aet
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb = f"{self.url}/dicom-web"
        self.authentication = authentication
        self.config_path = self.folder / "orthanc.json"
        self.config_path.write_text(json.dumps(self._settings(modalities, config), indent=2))
        self._log = open(self.folder / "orthanc.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process: subprocess.Popen[bytes] | None = subprocess.Popen(
            [str(shutil.which("Orthanc")), str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        atexit.register(self.stop)
        self.wait_ready()

    def _settings(
        self, modalities: Mapping[str, tuple[str, str, int]] | None, config: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        return {
            "Name": "medimg-local",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.authentication,
            "RegisteredUsers": {self.user: self.password},
            "DicomModalities": {name: list(v) for name, v in (modalities or {}).items()},
            "DicomAlwaysAllowStore": True,
            "DicomCheckCalledAet": False,
            "Plugins": [str(dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Host": "127.0.0.1", "Ssl": False},
            "StableAge": 1,
            **(config or {}),
        }

    # --- lifecycle ---------------------------------------------------------------------------
    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the REST API answers (RuntimeError with the log's end otherwise)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start; its log ends:\n{self.log_text()[-2000:]}")
            try:
                self.get("/system")
                return
            except (OSError, urllib.error.URLError):
                time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer within {timeout} s; its log ends:\n{self.log_text()[-2000:]}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); safe to call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        if not self._log.closed:
            self._log.close()

    def kill(self) -> None:
        """Stop it hard, as a crash in the middle of a transfer would."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> LocalOrthanc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_text(self) -> str:
        path = self.folder / "orthanc.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- REST --------------------------------------------------------------------------------
    def request(self, method: str, path: str, data: bytes | None = None, content_type: str | None = None) -> Any:
        """One REST call; JSON answers decoded, others returned as bytes."""
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if self.authentication:
            token = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        if content_type:
            request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, timeout=60) as response:
            body = response.read()
        return json.loads(body) if body[:1] in (b"{", b"[") else body

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def upload(self, files: Iterable[str | os.PathLike[str]]) -> list[str]:
        """POST each DICOM file to ``/instances``; the Orthanc IDs of the instances."""
        return [
            self.request("POST", "/instances", Path(path).read_bytes(), "application/dicom")["ID"] for path in files
        ]

    def upload_folder(self, folder: str | os.PathLike[str]) -> list[str]:
        """Upload every DICOM file (``DICM`` preamble) under ``folder``."""
        return self.upload(p for p in sorted(Path(folder).rglob("*")) if p.is_file() and _is_dicom(p))

    def studies(self) -> list[dict[str, Any]]:
        return [self.get(f"/studies/{sid}") for sid in self.get("/studies")]

    def instances_of_modality(self, modality: str) -> list[str]:
        """Orthanc IDs of the instances whose series has ``modality`` (e.g. SR, SEG, OT)."""
        found: list[str] = []
        for sid in self.get("/series"):
            series = self.get(f"/series/{sid}")
            if series["MainDicomTags"].get("Modality") == modality:
                found += series["Instances"]
        return found

    def instance_file(self, orthanc_id: str) -> bytes:
        return bytes(self.get(f"/instances/{orthanc_id}/file"))

    def study_url(self, study_instance_uid: str) -> str:
        """Where Orthanc's web viewer shows a study (its built-in Orthanc Explorer)."""
        found = self.request("POST", "/tools/lookup", study_instance_uid.encode(), "text/plain")
        ids = [item["ID"] for item in found if item.get("Type") == "Study"]
        return f"{self.url}/app/explorer.html#study?uuid={ids[0]}" if ids else f"{self.url}/app/explorer.html"
