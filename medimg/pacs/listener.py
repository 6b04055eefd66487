"""A storage SCP (C-STORE and C-ECHO) that collects studies and hands each one on once it is quiet.

:class:`StoreListener` accepts instances only from the allowed calling AE titles and hosts
(:class:`medimg.pacs.aet.AllowedPeer`): an association from another AE title is rejected
("calling AE title not recognised"), and a C-STORE from an allowed title on another host is
refused with status 0x0124 (Refused: not authorised); every refusal is logged. Instances are
written atomically as ``INCOMING/<study>/<series>/<SOP>.dcm`` (:func:`medimg.pacs.dimse.save_instance`).

A study that receives nothing for ``study_timeout`` seconds is passed to ``on_study(study_uid,
folder)``, one study at a time, in a worker thread (the SCP keeps receiving meanwhile). When more
instances of that study arrive later it becomes pending again and is handed on again after the
next quiet period. ``start()`` returns at once (tests run it in-process); ``stop()`` closes the
port, lets the study being handed on finish and hands on nothing more.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medimg.pacs.aet import ANY_HOST, AllowedPeer, check_ae_title, resolve_host
from medimg.pacs.dimse import RETRIEVE_SYNTAXES, save_instance

__all__ = ["STATUS_NOT_AUTHORISED", "StoreListener"]

LOG = logging.getLogger("medimg.pacs")

#: C-STORE "Refused: not authorised" (PS3.7 C.4): a caller not in the allow list.
STATUS_NOT_AUTHORISED = 0x0124
_VERIFICATION = "1.2.840.10008.1.1"


class StoreListener:
    """A C-STORE SCP on ``(host, port)`` writing under ``incoming`` and handing on quiet studies."""

    def __init__(
        self,
        incoming: str | os.PathLike[str],
        *,
        ae_title: str = "MEDIMG",
        port: int = 11112,
        host: str = "",
        allow: Sequence[AllowedPeer] = (),
        study_timeout: float = 30.0,
        on_study: Callable[[str, Path], None] | None = None,
        poll: float = 0.1,
    ) -> None:
        self.incoming = Path(incoming)
        self.ae_title = check_ae_title(ae_title)
        self.address = (host, int(port))
        self.allow = {(peer.ae_title, address) for peer in allow for address in resolve_host(peer.host)}
        self.study_timeout = float(study_timeout)
        self.on_study = on_study
        self.poll = poll
        #: Counts: ``stored``, ``refused``, ``failed`` instances; ``studies`` handed on.
        self.counts = {"stored": 0, "refused": 0, "failed": 0, "studies": 0}
        #: One line per refused association or C-STORE.
        self.refusals: list[str] = []
        self._pending: dict[str, tuple[float, Path]] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[tuple[str, Path] | None] = queue.Queue()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server: Any = None
        self._ae: Any = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> StoreListener:
        """Open the port and start the threads; OSError when the port cannot be opened."""
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.incoming.mkdir(parents=True, exist_ok=True)
        ae = AE(ae_title=self.ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(str(context.abstract_syntax), list(RETRIEVE_SYNTAXES))
        ae.add_supported_context(_VERIFICATION)
        titles = sorted({title for title, _address in self.allow})
        if titles:
            ae.require_calling_aet = titles
        handlers: list[Any] = [
            (evt.EVT_C_STORE, self._handle_store),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_REJECTED, self._handle_rejected),
        ]
        self._ae = ae
        self._server = ae.start_server(self.address, block=False, evt_handlers=handlers)
        self.address = (self.address[0], int(self._server.server_address[1]))
        for target, name in ((self._watch, "medimg-listen-watch"), (self._work, "medimg-listen-work")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    @property
    def port(self) -> int:
        """The port listened on (the one chosen by the system when started with port 0)."""
        return self.address[1]

    def stop(self, timeout: float | None = None) -> None:
        """Close the port, finish the study being handed on, stop the threads; safe to call twice."""
        self._stopping.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
        if self._ae is not None:
            self._ae.shutdown()
        self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout)
        self._threads = []

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe in a signal handler); nothing more is handed on."""
        self._stopping.set()

    def wait(self) -> None:
        """Block until :meth:`request_stop` or :meth:`stop` is called (a signal handler, another thread)."""
        while not self._stopping.wait(0.5):
            pass

    def __enter__(self) -> StoreListener:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def pending(self) -> list[str]:
        """Study Instance UIDs received and not yet handed on."""
        with self._lock:
            return sorted(self._pending)

    # --- events ------------------------------------------------------------------------------
    def permits(self, ae_title: str, address: str) -> bool:
        """True when ``ae_title`` calling from ``address`` may store here."""
        title = ae_title.strip()
        return (title, address) in self.allow or (title, ANY_HOST) in self.allow

    def _refuse(self, line: str) -> None:
        LOG.warning("refused: %s", line)
        with self._lock:
            self.counts["refused"] += 1
            self.refusals.append(line)

    def _handle_rejected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        self._refuse(f"association from {requestor.ae_title}@{requestor.address}: calling AE title not allowed")

    def _handle_store(self, event: Any) -> int:
        requestor = event.assoc.requestor
        if not self.permits(str(requestor.ae_title), str(requestor.address)):
            sop = event.request.AffectedSOPInstanceUID
            self._refuse(f"C-STORE of {sop} from {requestor.ae_title}@{requestor.address}: not in the allow list")
            return STATUS_NOT_AUTHORISED
        code, path = save_instance(self.incoming, event)
        with self._lock:
            if path is None:
                self.counts["failed"] += 1
                return code
            self.counts["stored"] += 1
            study = str(event.dataset.StudyInstanceUID)
            self._pending[study] = (time.monotonic(), path.parent.parent)
        return code

    # --- threads -----------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stopping.wait(self.poll):
            now = time.monotonic()
            with self._lock:
                quiet = [
                    (uid, folder) for uid, (last, folder) in self._pending.items() if now - last >= self.study_timeout
                ]
                for uid, _folder in quiet:
                    del self._pending[uid]
            for item in quiet:
                self._queue.put(item)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopping.is_set():
                return
            uid, folder = item
            LOG.info("study %s quiet for %.0f s: handing it on", uid, self.study_timeout)
            try:
                if self.on_study is not None:
                    self.on_study(uid, folder)
            except Exception:  # noqa: BLE001 - one study's failure never stops the listener
                LOG.exception("study %s: handing on failed", uid)
            with self._lock:
                self.counts["studies"] += 1
