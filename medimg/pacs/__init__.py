"""Studies from a PACS and results back to it.

- :mod:`medimg.pacs.credentials`: user/password or token from the environment or a netrc file.
- :mod:`medimg.pacs.dicomweb`: a DICOMweb server (QIDO-RS, WADO-RS, STOW-RS) with readable errors.
- :mod:`medimg.pacs.cache`: the retrieved series under an output folder, complete or in progress.
- :mod:`medimg.pacs.aet`: DICOM network addresses ``AE@HOST:PORT`` and allowed callers ``AE@HOST``.
- :mod:`medimg.pacs.dimse`: C-ECHO, C-FIND, C-GET / C-MOVE and C-STORE as a service class user.
- :mod:`medimg.pacs.listener`: a storage SCP handing on each received study once it is quiet.
"""

from medimg.pacs.aet import AllowedPeer, RemoteAE, parse_allowed, parse_remote
from medimg.pacs.cache import SeriesCache
from medimg.pacs.credentials import CredentialError, Credentials, find_credentials
from medimg.pacs.dicomweb import DicomWebSource, PacsAuthError, PacsError, PacsSetupError, is_dicomweb
from medimg.pacs.dimse import DimseDestination, DimseError
from medimg.pacs.listener import StoreListener

__all__ = [
    "AllowedPeer",
    "DimseDestination",
    "DimseError",
    "RemoteAE",
    "StoreListener",
    "parse_allowed",
    "parse_remote",
    "CredentialError",
    "Credentials",
    "DicomWebSource",
    "PacsAuthError",
    "PacsError",
    "PacsSetupError",
    "SeriesCache",
    "find_credentials",
    "is_dicomweb",
]
