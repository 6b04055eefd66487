"""Which transfer syntaxes the installed pixel-data codecs can decode.

pydicom 3 keeps a registry of decoders per transfer syntax, each backed by optional plugins
(pylibjpeg, pillow, gdcm, ...). We ask that registry instead of keeping our own table.
"""

from __future__ import annotations

from functools import cache
from typing import NamedTuple

__all__ = ["DecodeSupport", "decode_support"]

#: Install hint shown when a known transfer syntax has no installed plugin.
CODECS_HINT = "install the codecs extra: pip install 'medimg[codecs]'"


class DecodeSupport(NamedTuple):
    """Whether pixel data in one transfer syntax can be decoded here.

    Attributes:
        known: False when pydicom has no decoder at all for the syntax (video, private
            syntaxes): such files are quarantined.
        available: False when a decoder exists but none of its plugins is installed: such
            files stay in the index, flagged as not decodable on this machine.
        note: the plugins that would be used, or what to install.
    """

    known: bool
    available: bool
    note: str


@cache
def decode_support(transfer_syntax_uid: str) -> DecodeSupport:
    """Tell whether pixel data in ``transfer_syntax_uid`` can be decoded with what is installed.

    Args:
        transfer_syntax_uid: the (0002,0010) Transfer Syntax UID, e.g. ``"1.2.840.10008.1.2.4.50"``.

    Returns:
        A :class:`DecodeSupport` ``(known, available, note)``; ``note`` names the plugin used or
        what to install.
    """
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import UID

    uid = UID(transfer_syntax_uid)
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        name = uid.name if uid.is_valid else transfer_syntax_uid
        return DecodeSupport(False, False, f"no pixel data decoder exists for {name}")
    if decoder.is_native:
        return DecodeSupport(True, True, "native")
    if decoder.is_available:
        return DecodeSupport(True, True, ", ".join(sorted(decoder.available_plugins)))
    return DecodeSupport(True, False, f"no installed plugin decodes {uid.name}; {CODECS_HINT}")
