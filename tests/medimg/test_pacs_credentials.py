"""PACS credentials: from the environment or a netrc file, in that order of the module's list,
never from the URL; a half-set environment or a bad netrc file is a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from medimg.pacs.credentials import CredentialError, find_credentials, refuse_url_credentials

BASIC = {"MEDIMG_PACS_USER": "alice", "MEDIMG_PACS_PASSWORD": "s3cret"}


def netrc_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "netrc"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_basic_auth_from_the_environment() -> None:
    found = find_credentials("pacs.example", environ=BASIC)
    assert found is not None and found.basic() == ("alice", "s3cret") and found.headers() == {}
    assert "s3cret" not in repr(found) and "s3cret" not in found.source


def test_a_token_from_the_environment_wins_over_user_and_password() -> None:
    found = find_credentials("pacs.example", environ={**BASIC, "MEDIMG_PACS_TOKEN": "tok"})
    assert found is not None and found.basic() is None
    assert found.headers() == {"Authorization": "Bearer tok"}


def test_nothing_given_means_no_credentials() -> None:
    assert find_credentials("pacs.example", environ={}) is None


@pytest.mark.parametrize("name", ["MEDIMG_PACS_USER", "MEDIMG_PACS_PASSWORD"])
def test_half_of_basic_auth_is_an_error(name: str) -> None:
    with pytest.raises(CredentialError, match="go together"):
        find_credentials("pacs.example", environ={name: BASIC[name]})


def test_the_netrc_entry_of_the_host_wins_over_the_environment(tmp_path: Path) -> None:
    path = netrc_file(tmp_path, "machine other login x password y\nmachine pacs.example login bob password pw\n")
    found = find_credentials("pacs.example", netrc_file=path, environ=BASIC)
    assert found is not None and found.basic() == ("bob", "pw")
    assert str(path) in found.source and "pw" not in found.source


def test_a_netrc_without_the_host_falls_back_to_the_environment(tmp_path: Path) -> None:
    path = netrc_file(tmp_path, "machine other login x password y\n")
    found = find_credentials("pacs.example", netrc_file=path, environ=BASIC)
    assert found is not None and found.basic() == ("alice", "s3cret")


def test_the_netrc_default_entry_applies_to_any_host(tmp_path: Path) -> None:
    path = netrc_file(tmp_path, "default login carol password pw2\n")
    found = find_credentials("pacs.example", netrc_file=path, environ={})
    assert found is not None and found.basic() == ("carol", "pw2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "netrc file not found"),
        ("machine pacs.example login a password b extra\n", "not a valid netrc file"),
        ("machine pacs.example password b\n", "the entry for pacs.example has no login"),
    ],
)
def test_a_missing_or_bad_netrc_file_is_named(tmp_path: Path, text: str | None, message: str) -> None:
    path = tmp_path / "netrc" if text is None else netrc_file(tmp_path, text)
    with pytest.raises(CredentialError, match=message) as caught:
        find_credentials("pacs.example", netrc_file=path, environ=BASIC)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    "url", ["dicomweb+http://alice:s3cret@pacs.example/dicom-web", "dicomweb+https://alice@pacs.example/dicom-web"]
)
def test_credentials_in_the_url_are_refused(url: str) -> None:
    with pytest.raises(CredentialError, match="the URL holds credentials") as caught:
        refuse_url_credentials(url)
    assert "s3cret" not in str(caught.value)


def test_a_plain_url_is_accepted() -> None:
    refuse_url_credentials("dicomweb+https://pacs.example:8443/dicom-web")


def test_the_command_line_has_no_password_option() -> None:
    """Credentials never come from argv: `medimg run` offers no option that takes one."""
    import typer.main

    from medimg.cli import app

    command = typer.main.get_command(app)
    run = command.commands["run"]  # type: ignore[attr-defined]
    names = {opt for param in run.params for opt in param.opts}
    assert "--netrc" in names and "--ca-bundle" in names
    assert not {n for n in names if any(w in n for w in ("password", "token", "user", "secret"))}
