"""DICOM network addresses from the command line: ``AE@HOST:PORT`` (a peer to call) and
``AE@HOST`` (a peer allowed to send to ``medimg listen``).

An Application Entity title is 1 to 16 characters of printable ASCII without a backslash, and
not only spaces (PS3.5, value representation AE); leading and trailing spaces are not significant.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

__all__ = ["AllowedPeer", "RemoteAE", "check_ae_title", "parse_allowed", "parse_remote", "resolve_host"]

#: ``AE@*`` in an allow list: that AE title from any host.
ANY_HOST = "*"


def check_ae_title(title: str) -> str:
    """``title`` without its surrounding spaces, or ValueError saying what is wrong with it."""
    stripped = title.strip()
    if not stripped:
        raise ValueError(f"AE title {title!r} is empty")
    if len(stripped) > 16:
        raise ValueError(f"AE title {title!r} is longer than 16 characters")
    if any(not (32 <= ord(c) < 127) or c == "\\" for c in stripped):
        raise ValueError(f"AE title {title!r} holds a character not allowed (only printable ASCII, no backslash)")
    return stripped


@dataclass(frozen=True)
class RemoteAE:
    """A DICOM peer to call: its AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class AllowedPeer:
    """A calling AE title and the host it may call from (``*``: any host)."""

    ae_title: str
    host: str

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}"


def _split_ae(text: str, form: str) -> tuple[str, str]:
    ae, sep, rest = text.rpartition("@")
    if not sep or not rest:
        raise ValueError(f"{text!r} is not {form}")
    return check_ae_title(ae), rest


def parse_remote(text: str) -> RemoteAE:
    """``AE@HOST:PORT`` (IPv6: ``AE@[::1]:PORT``) as a :class:`RemoteAE`; ValueError naming the problem."""
    ae, hostport = _split_ae(text, "AE@HOST:PORT")
    host, sep, port_text = hostport.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"{text!r} is not AE@HOST:PORT (the port is missing or not a number)")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"{text!r}: port {port} is not between 1 and 65535")
    return RemoteAE(ae, host.removeprefix("[").removesuffix("]"), port)


def parse_allowed(text: str) -> AllowedPeer:
    """``AE@HOST`` (or ``AE@*`` for any host) as an :class:`AllowedPeer`; ValueError naming the problem."""
    ae, host = _split_ae(text, "AE@HOST (or AE@* for any host)")
    if ":" in host and not host.startswith("["):
        # ``AE@HOST:PORT`` given where ``AE@HOST`` is meant: the calling port is never fixed.
        if host.rpartition(":")[2].isdigit() and host.count(":") == 1:
            raise ValueError(f"{text!r}: give AE@HOST without a port (a caller's port changes each time)")
    return AllowedPeer(ae, host.removeprefix("[").removesuffix("]"))


def resolve_host(host: str) -> set[str]:
    """The IP addresses of ``host`` (itself when it is one); ValueError when it does not resolve."""
    if host == ANY_HOST:
        return {ANY_HOST}
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError as exc:
        raise ValueError(f"host {host!r} does not resolve: {exc}") from exc
    return {str(info[4][0]) for info in infos}
