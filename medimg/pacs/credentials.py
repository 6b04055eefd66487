"""PACS credentials from the environment or a netrc file, never from the command line.

Where they come from, first found wins:

1. ``--netrc FILE``: the ``machine HOST`` entry (or ``default``) of that file (stdlib :mod:`netrc`);
2. ``MEDIMG_PACS_TOKEN``: a bearer token;
3. ``MEDIMG_PACS_USER`` + ``MEDIMG_PACS_PASSWORD``: HTTP basic auth.

None of them: no credentials (an open server). A URL with ``user:password@`` in it is refused, so
that a password never sits in a shell history or a process list.
"""

from __future__ import annotations

import netrc
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["CredentialError", "Credentials", "find_credentials", "refuse_url_credentials"]

USER_VAR, PASSWORD_VAR, TOKEN_VAR = "MEDIMG_PACS_USER", "MEDIMG_PACS_PASSWORD", "MEDIMG_PACS_TOKEN"


class CredentialError(ValueError):
    """Credentials that cannot be used: a half-set environment, an unreadable or bad netrc file, a
    password in the URL."""


@dataclass(frozen=True)
class Credentials:
    """Basic auth (``user``, ``password``) or a bearer ``token``; ``source`` says where they came
    from (never the secret itself)."""

    source: str
    user: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header of a bearer token (basic auth goes through ``auth``)."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def basic(self) -> tuple[str, str] | None:
        return (self.user, self.password) if self.user and not self.token else None


def refuse_url_credentials(url: str) -> None:
    """Raise :class:`CredentialError` when ``url`` holds a user name or password."""
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise CredentialError(
            f"the URL holds credentials; remove them and use {USER_VAR}/{PASSWORD_VAR}, {TOKEN_VAR} "
            "or --netrc FILE instead"
        )


def _from_netrc(path: Path, host: str) -> Credentials | None:
    try:
        entries = netrc.netrc(os.fspath(path))
    except FileNotFoundError as exc:
        raise CredentialError(f"{path}: netrc file not found") from exc
    except netrc.NetrcParseError as exc:
        raise CredentialError(f"{path}: not a valid netrc file (line {exc.lineno}): {exc.msg}") from exc
    except OSError as exc:
        raise CredentialError(f"{path}: cannot read the netrc file: {exc.strerror or exc}") from exc
    found = entries.authenticators(host)
    if found is None:
        return None
    login, _account, password = found
    if not login:
        raise CredentialError(f"{path}: the entry for {host} has no login")
    return Credentials(source=f"{path} (machine {host})", user=login, password=password or "")


def find_credentials(
    host: str, *, netrc_file: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Credentials | None:
    """The credentials for ``host`` (see the module's order), or None when none are given.

    Raises:
        CredentialError: ``MEDIMG_PACS_USER`` without ``MEDIMG_PACS_PASSWORD`` (or the reverse), or a
            netrc file that cannot be read or parsed.
    """
    env = os.environ if environ is None else environ
    if netrc_file is not None:
        found = _from_netrc(Path(netrc_file), host)
        if found is not None:
            return found
    if env.get(TOKEN_VAR):
        return Credentials(source=TOKEN_VAR, token=env[TOKEN_VAR])
    user, password = env.get(USER_VAR, ""), env.get(PASSWORD_VAR, "")
    if user and password:
        return Credentials(source=f"{USER_VAR}/{PASSWORD_VAR}", user=user, password=password)
    if user or password:
        missing = PASSWORD_VAR if user else USER_VAR
        raise CredentialError(f"{USER_VAR} and {PASSWORD_VAR} go together; {missing} is not set")
    return None
