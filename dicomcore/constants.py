"""Facts of the DICOM file format (PS3.10) and of the transfer syntaxes the service converts to,
plus the chunk size every stream copy uses; one place, so no module keeps its own copy."""

from __future__ import annotations

import datetime as dt
import re

PREAMBLE_LENGTH = 128  # bytes before the "DICM" prefix of a Part-10 file (zeroed when stored)
DICM = b"DICM"
EXPLICIT_LE = "1.2.840.10008.1.2.1"  # Explicit VR Little Endian
IMPLICIT_LE = "1.2.840.10008.1.2"  # Implicit VR Little Endian
CHUNK_SIZE = 1024 * 1024  # bytes per read/write when streaming files (memory stays flat)

_DA = re.compile(r"\d{8}")


def parse_da(text: str, *, lenient: bool = False) -> dt.date | None:
    """A DA value (YYYYMMDD) as a date, None when it is not one. `lenient` also takes the old
    ACR-NEMA form "1999.01.02" and trailing characters, as stored headers still carry them."""
    text = text.strip()
    digits = text.replace(".", "")[:8] if lenient else text
    if not _DA.fullmatch(digits):
        return None
    try:
        return dt.date(int(digits[:4]), int(digits[4:6]), int(digits[6:8]))
    except ValueError:
        return None
