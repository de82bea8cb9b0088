"""Read DICOM Part-10 files safely: validated header, summary metadata and DICOM JSON.

Pure module: pydicom and the standard library only, no Django. Everything here must
cope with hostile input: any failure of pydicom while reading becomes `InvalidDicom`
with a human reason, never an unexpected exception.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import math
import struct
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, BinaryIO

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.jsonrep import convert_to_python_number
from pydicom.multival import MultiValue
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.values import convert_value

from .constants import DICM, PREAMBLE_LENGTH, parse_da

# Media Storage Directory Storage: a DICOMDIR, which lists files instead of being one.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float and Double Float Pixel Data
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
TEXT_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}
)
# Values above these sizes are kept as a summary ({"vr", "BulkData": {"length"}}) rather than inline.
DEFAULT_INLINE_BINARY_LIMIT = 1024
DEFAULT_INLINE_TEXT_LIMIT = 64 * 1024
# Deepest sequence nesting rendered into JSON; deeper items are summarised.
MAX_JSON_DEPTH = 32
# A deflated data set may not inflate beyond this (a few hundred KiB can expand to GiBs).
DEFAULT_MAX_INFLATED_BYTES = 512 * 1024 * 1024
UID_MAX_LENGTH = 64
TRUNCATED = "the file ends inside a value: it is truncated"


class InvalidDicom(ValueError):
    """The input is not a DICOM file this service can catalogue; `str()` is a human reason."""


class NotAnInstance(InvalidDicom):
    """A valid DICOM file that is not a composite instance (a DICOMDIR media index)."""


@dataclass(frozen=True)
class PixelDataInfo:
    """Where the pixel data element is and how big it is, read without loading it."""

    tag: int
    vr: str
    length: int
    encapsulated: bool
    # Where the value starts in the file (the stored file: only the preamble differs); None when deflated.
    value_offset: int | None = None


@dataclass(frozen=True)
class ParsedDicom:
    """The catalogue-relevant facts of one DICOM file plus its whole header as DICOM JSON."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    study_instance_uid: str
    series_instance_uid: str
    modality: str = ""
    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: dt.date | None = None
    patient_sex: str = ""
    study_date: dt.date | None = None
    study_time: str = ""
    study_id: str = ""
    accession_number: str = ""
    study_description: str = ""
    referring_physician_name: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part_examined: str = ""
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    number_of_frames: int = 0
    samples_per_pixel: int | None = None
    photometric_interpretation: str = ""
    bits_allocated: int | None = None
    bits_stored: int | None = None
    pixel_representation: int | None = None
    pixel_data: PixelDataInfo | None = None
    header: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def has_pixel_data(self) -> bool:
        return self.pixel_data is not None


class StoredBytesHasher:
    """SHA-256 of a stream as it will be stored: the 128-byte preamble counted as zeros.

    Feeding the upload through this while it streams to disk gives the digest of the
    stored file (whose preamble `zero_preamble` clears) without a second read.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self.size = 0

    def update(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        if self.size < PREAMBLE_LENGTH:
            n = min(PREAMBLE_LENGTH - self.size, len(view))
            self._hash.update(bytes(n))
            self._hash.update(view[n:])
        else:
            self._hash.update(view)
        self.size += len(view)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def zero_preamble(fp: BinaryIO) -> None:
    """Overwrite the 128-byte preamble with zeros (PS3.10 7.5; defeats polyglot files, CVE-2019-11687)."""
    fp.seek(0)
    fp.write(bytes(PREAMBLE_LENGTH))
    fp.flush()
    fp.seek(0)


def parse_dicom(
    fp: BinaryIO,
    *,
    inline_binary_limit: int = DEFAULT_INLINE_BINARY_LIMIT,
    inline_text_limit: int = DEFAULT_INLINE_TEXT_LIMIT,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
) -> ParsedDicom:
    """Validate and read a DICOM Part-10 file without loading its pixel data.

    Refuses (InvalidDicom) anything pydicom cannot read without `force`, files without
    a transfer syntax or the UIDs the catalogue is built on, and deflate bombs.
    """
    fp.seek(0, 2)
    file_size = fp.tell()
    fp.seek(0)
    if file_size == 0:
        raise InvalidDicom("the file is empty")
    try:
        ds = _read_header(fp, max_inflated_bytes=max_inflated_bytes)
        if str(ds.file_meta.get("MediaStorageSOPClassUID", "")).strip() == MEDIA_STORAGE_DIRECTORY:
            raise NotAnInstance("this is a DICOMDIR (a media index listing other files), not an image instance")
        transfer_syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "").strip()
        pixel_info = _pixel_data_info(ds, fp, file_size, transfer_syntax)
        if pixel_info is not None and not _frame_attributes_exact(ds):
            # The catalogue's lenient reading of these would not be the header's: frames go through the header.
            pixel_info = replace(pixel_info, value_offset=None)
        return _summarise(
            ds,
            transfer_syntax=transfer_syntax,
            pixel_info=pixel_info,
            inline_binary_limit=inline_binary_limit,
            inline_text_limit=inline_text_limit,
        )
    except InvalidDicom:
        raise
    except pydicom.errors.InvalidDicomError as exc:
        detail = _first_line(exc).replace(" Use force=True to force reading.", "")  # a developer's hint, not the user's
        raise InvalidDicom(f"not a DICOM Part-10 file: {detail}") from exc
    except RecursionError as exc:
        raise InvalidDicom("the header nests sequences too deeply to read") from exc
    except MemoryError as exc:
        raise InvalidDicom("the header is too large to read") from exc
    # Hostile or broken input makes pydicom raise almost anything (EOFError, OSError,
    # struct.error, ValueError, KeyError, NotImplementedError...); all of it means "cannot read".
    except Exception as exc:
        raise InvalidDicom(f"the DICOM header cannot be read ({type(exc).__name__}: {_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else "no detail"


def _read_header(fp: BinaryIO, *, max_inflated_bytes: int) -> Dataset:
    # Read only the preamble and file meta first: for a deflated data set, pydicom would
    # inflate everything before we could check its size.
    pydicom.filereader.read_preamble(fp, False)
    file_meta = pydicom.filereader._read_file_meta_info(fp)
    if _meta_cut_short(fp, file_meta):
        raise InvalidDicom(TRUNCATED)
    transfer_syntax = str(file_meta.get("TransferSyntaxUID", "") or "").strip()
    if not transfer_syntax:
        raise InvalidDicom("the file meta information has no Transfer Syntax UID (0002,0010)")
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        _check_inflated_size(fp, max_inflated_bytes)
    fp.seek(0)
    ds = pydicom.dcmread(fp, stop_before_pixels=True)
    if _cut_short(ds):
        raise InvalidDicom(TRUNCATED)
    return ds


def _meta_cut_short(fp: BinaryIO, file_meta: Dataset) -> bool:
    """The file ends before the end of the file meta group its group length (0002,0000) declares."""
    declared = file_meta.get("FileMetaInformationGroupLength")
    if not isinstance(declared, int):
        return _cut_short(file_meta)
    here = fp.tell()
    size = fp.seek(0, 2)
    fp.seek(here)
    group_length_element = 12  # (0002,0000) UL 4, Explicit VR Little Endian, always
    return size < PREAMBLE_LENGTH + len(DICM) + group_length_element + declared or _cut_short(file_meta)


def _cut_short(ds: Dataset) -> bool:
    """A value shorter than its declared length (pydicom stops quietly at the end of the file)."""
    for elem in ds.elements():
        if isinstance(elem, pydicom.dataelem.RawDataElement):
            if elem.length != 0xFFFFFFFF and isinstance(elem.value, bytes) and len(elem.value) < elem.length:
                return True
        elif elem.VR == "SQ" and any(_cut_short(item) for item in elem.value or []):
            return True
    return False


def _check_inflated_size(fp: BinaryIO, limit: int) -> None:
    """Inflate the deflated data set in bounded chunks, refusing it past `limit` bytes."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    while True:
        chunk = fp.read(64 * 1024)
        if not chunk:
            break
        try:
            buf = inflater.decompress(chunk, 1024 * 1024)
            total += len(buf)
            # Bytes after the end of the deflate stream (pydicom pads odd lengths) stay in
            # unconsumed_tail forever: stop at end of stream.
            while inflater.unconsumed_tail and not inflater.eof and total <= limit:
                buf = inflater.decompress(inflater.unconsumed_tail, 1024 * 1024)
                total += len(buf)
        except zlib.error as exc:
            raise InvalidDicom(f"the deflated data set is corrupt ({exc})") from exc
        if total > limit:
            raise InvalidDicom(f"the deflated data set inflates beyond {limit} bytes")
        if inflater.eof:
            break


def _frame_attributes_exact(ds: Dataset) -> bool:
    """Whether Rows, Columns, Samples per Pixel, Bits Allocated and Number of Frames read as plain integers, as
    rendering.check_frame reads them: then the catalogue's copies locate a frame as the header would."""
    try:
        for keyword, default in (("Rows", None), ("Columns", None), ("SamplesPerPixel", 1), ("BitsAllocated", 8), ("NumberOfFrames", 1)):
            value = ds.get(keyword, default)
            if value is None:
                return False
            int(value or default or 0)
    except Exception:  # noqa: BLE001 - any value that does not convert
        return False
    return True


def _pixel_data_info(ds: Dataset, fp: BinaryIO, file_size: int, transfer_syntax: str) -> PixelDataInfo | None:
    """Read the pixel data element's header where `stop_before_pixels` left the file."""
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        # The inflated stream is not the file, so re-read it whole (its size is already bounded).
        fp.seek(0)
        full = pydicom.dcmread(fp, defer_size=1024)
        for tag in PIXEL_TAGS:
            if tag in full:
                raw = full.get_item(tag)
                length = getattr(raw, "length", None)
                if length is None:
                    length = len(raw.value or b"")
                vr = _definite_vr(getattr(raw, "VR", None) or dictionary_VR(tag))
                return PixelDataInfo(tag=tag, vr=vr, length=length, encapsulated=False)
        return None
    uid = UID(transfer_syntax)
    try:
        implicit, little = uid.is_implicit_VR, uid.is_little_endian
    except ValueError:
        implicit, little = False, True
    start = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return None
    endian = "<" if little else ">"
    group, elem = struct.unpack(endian + "HH", head[:4])
    tag = (group << 16) | elem
    if tag not in PIXEL_TAGS:
        return None
    if implicit:
        vr = _definite_vr(dictionary_VR(tag))
        (length,), header_len = struct.unpack(endian + "L", head[4:8]), 8
    else:
        vr = head[4:6].decode("ascii", "replace")
        if vr in BINARY_VRS and len(head) >= 12:
            (length,), header_len = struct.unpack(endian + "L", head[8:12]), 12
        else:
            (length,), header_len = struct.unpack(endian + "H", head[6:8]), 8
    if not (len(vr) == 2 and vr.isascii() and vr.isalpha() and vr.isupper()):
        vr = _definite_vr(dictionary_VR(tag))  # junk VR bytes must not reach the header JSON
    encapsulated = length == 0xFFFFFFFF
    if encapsulated:
        length = max(0, file_size - start - header_len)
    elif start + header_len + length > file_size:
        # As for a cut inside any earlier value: stored, it would be catalogued with frames it does not hold.
        raise InvalidDicom(TRUNCATED)
    return PixelDataInfo(tag=tag, vr=vr, length=int(length), encapsulated=encapsulated, value_offset=start + header_len)


def _definite_vr(vr: str) -> str:
    """A single VR: the dictionary's "OB or OW" for pixel data is stored as OW (PS3.5 A.1)."""
    return "OW" if " or " in str(vr) else str(vr)


def _text(ds: Dataset, keyword: str, max_length: int = 255) -> str:
    try:
        value = ds.get(keyword)
    except Exception:  # noqa: BLE001 - an unreadable optional value is treated as absent
        return ""
    if value is None:
        return ""
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = "\\".join(str(v) for v in value)
    return clean_text(str(value)).strip()[:max_length]


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            value = value[0] if value else None
        if value is None or value == "":
            return None
        number = int(value)
    except Exception:  # noqa: BLE001 - invalid IS/US values are treated as absent
        return None
    return number if -(2**31) <= number < 2**31 else None


def _date(ds: Dataset, keyword: str) -> dt.date | None:
    return parse_da(_text(ds, keyword, 32), lenient=True)  # old ACR-NEMA style "1999.01.02" is still seen


def _uid(ds: Dataset, keyword: str, *, required: bool, label: str) -> str:
    value = _text(ds, keyword, 1024).rstrip("\x00 ")
    if not value:
        if required:
            raise InvalidDicom(f"the file has no {label} ({keyword})")
        return ""
    if len(value) > UID_MAX_LENGTH:
        raise InvalidDicom(f"the {label} is longer than {UID_MAX_LENGTH} characters")
    return value


# ParsedDicom's fields read from the header by keyword (text with the column's length).
TEXT_FIELDS: dict[str, tuple[str, int]] = {
    "modality": ("Modality", 16),
    "patient_name": ("PatientName", 255),
    "patient_id": ("PatientID", 64),
    "patient_sex": ("PatientSex", 16),
    "study_time": ("StudyTime", 32),
    "study_id": ("StudyID", 64),
    "accession_number": ("AccessionNumber", 64),
    "study_description": ("StudyDescription", 255),
    "referring_physician_name": ("ReferringPhysicianName", 255),
    "series_description": ("SeriesDescription", 255),
    "body_part_examined": ("BodyPartExamined", 64),
    "photometric_interpretation": ("PhotometricInterpretation", 32),
}
INT_FIELDS: dict[str, str] = {
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
    "rows": "Rows",
    "columns": "Columns",
    "samples_per_pixel": "SamplesPerPixel",
    "bits_allocated": "BitsAllocated",
    "bits_stored": "BitsStored",
    "pixel_representation": "PixelRepresentation",
}
DATE_FIELDS: dict[str, str] = {"patient_birth_date": "PatientBirthDate", "study_date": "StudyDate"}


def _summarise(
    ds: Dataset,
    *,
    transfer_syntax: str,
    pixel_info: PixelDataInfo | None,
    inline_binary_limit: int,
    inline_text_limit: int,
) -> ParsedDicom:
    sop_instance_uid = _uid(ds, "SOPInstanceUID", required=False, label="SOP Instance UID")
    if not sop_instance_uid:
        sop_instance_uid = _uid(ds.file_meta, "MediaStorageSOPInstanceUID", required=False, label="SOP Instance UID")
    if not sop_instance_uid:
        raise InvalidDicom("the file has no SOP Instance UID (SOPInstanceUID)")
    frames = 0
    if pixel_info is not None:
        frames = max(1, _int(ds, "NumberOfFrames") or 1)
    header = dataset_to_json(ds, inline_binary_limit=inline_binary_limit, inline_text_limit=inline_text_limit)
    if pixel_info is not None:
        header[f"{pixel_info.tag:08X}"] = {
            "vr": pixel_info.vr,
            "BulkData": {
                "length": pixel_info.length,
                "encapsulated": pixel_info.encapsulated,
                "frames": frames,
                "rows": _int(ds, "Rows"),
                "columns": _int(ds, "Columns"),
                "bits_allocated": _int(ds, "BitsAllocated"),
                "transfer_syntax_uid": transfer_syntax,
            },
        }
    # The descriptive fields come from the tables above, so their types vary by name.
    text_fields: dict[str, Any] = {name: _text(ds, keyword, length) for name, (keyword, length) in TEXT_FIELDS.items()}
    int_fields: dict[str, Any] = {name: _int(ds, keyword) for name, keyword in INT_FIELDS.items()}
    date_fields: dict[str, Any] = {name: _date(ds, keyword) for name, keyword in DATE_FIELDS.items()}
    return ParsedDicom(
        sop_instance_uid=sop_instance_uid,
        sop_class_uid=_uid(ds, "SOPClassUID", required=False, label="SOP Class UID")
        or _uid(ds.file_meta, "MediaStorageSOPClassUID", required=False, label="SOP Class UID"),
        transfer_syntax_uid=clean_text(transfer_syntax)[:UID_MAX_LENGTH],
        study_instance_uid=_uid(ds, "StudyInstanceUID", required=True, label="Study Instance UID"),
        series_instance_uid=_uid(ds, "SeriesInstanceUID", required=True, label="Series Instance UID"),
        number_of_frames=frames,
        pixel_data=pixel_info,
        header=header,
        **text_fields,
        **int_fields,
        **date_fields,
    )


# --- DICOM JSON (PS3.18 Annex F) -------------------------------------------------------


_CONTROLS = dict.fromkeys([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


def clean_text(text: str) -> str:
    """Make text safe for JSON, HTML and every database: no NUL or other C0 control (TAB, LF and CR
    stay), no DEL, no lone surrogates."""
    text = text.translate(_CONTROLS)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN/Infinity are not valid JSON (PostgreSQL's jsonb refuses them)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def dataset_to_json(
    ds: Dataset,
    *,
    inline_binary_limit: int = DEFAULT_INLINE_BINARY_LIMIT,
    inline_text_limit: int = DEFAULT_INLINE_TEXT_LIMIT,
    include_file_meta: bool = True,
    _depth: int = 0,
) -> dict[str, Any]:
    """Convert a data set to DICOM JSON: 8-hex keys, "vr", Value / PN objects / nested items.

    Large values are summarised as {"vr", "BulkData": {"length": n}}. An element whose value
    pydicom cannot convert is kept as {"vr": "UN", "InlineBinary": <its raw bytes>}.
    """
    out: dict[str, Any] = {}
    if include_file_meta and _depth == 0 and getattr(ds, "file_meta", None) is not None:
        for tag in sorted(ds.file_meta.keys()):
            out[f"{int(tag):08X}"] = _element_json(ds.file_meta, tag, inline_binary_limit, inline_text_limit, 0)
    encodings = ds._character_set  # resolved once per data set (items inherit their parent's)
    for tag in sorted(ds.keys()):
        if int(tag) in PIXEL_TAGS:
            continue
        out[f"{int(tag):08X}"] = _element_json(ds, tag, inline_binary_limit, inline_text_limit, _depth, encodings)
    return out


# Explicit-VR elements of these VRs go straight from the raw bytes to JSON (see _raw_json).
RAW_JSON_VRS = TEXT_VRS | {"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"}
NUMBER_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})  # JSON numbers


# What pydicom's converters do to the common VRs, for little-endian values without ISO 2022 escapes
# (config.datetime_conversion off, DS as float). Anything else raises _NotQuick and goes through pydicom.
_STRUCT = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "FL": "f", "FD": "d", "UV": "Q", "SV": "q"}
_STRUCT_SIZE = {vr: struct.calcsize("<" + code) for vr, code in _STRUCT.items()}
_MULTI_STRING_VRS = frozenset({"AS", "CS", "DA", "DT", "TM", "UI", "DS", "IS"})  # rstrip " \0", then split
_SPLIT_TEXT_VRS = frozenset({"SH", "LO", "UC"})  # charset; each value rstrip "\0 "
_SINGLE_TEXT_VRS = frozenset({"ST", "LT", "UT"})  # charset; one value, rstrip "\0 "


class _NotQuick(Exception):
    pass


def _quick_values(vr: str, raw: RawDataElement, encodings) -> list:
    """The element's values as pydicom's convert_value + convert_to_python_number would give them
    (the list _raw_json builds), for the VRs most of a header is made of, or _NotQuick."""
    data = raw.value
    if not raw.is_little_endian or not isinstance(data, bytes):
        raise _NotQuick
    if not data:
        return []
    if vr in _STRUCT:
        size = _STRUCT_SIZE[vr]
        if len(data) % size:
            raise _NotQuick
        return list(struct.unpack(f"<{len(data) // size}{_STRUCT[vr]}", data))
    if b"\x1b" in data:
        raise _NotQuick  # ISO 2022 escape sequences: pydicom's decoder
    if vr in _MULTI_STRING_VRS:
        items = data.decode("latin-1").rstrip(" \x00").split("\\")
        if len(items) == 1 and not items[0].strip(" "):
            return []  # a single blank value is an empty element (DS("") and IS("") stay "")
        if vr == "DS":
            return [_number(float, item) for item in items]
        if vr == "IS":
            return [_number(int, item) for item in items]
        return items if items != [""] else []
    if vr == "AE":
        items = [item.strip() for item in data.decode("latin-1").split("\\")]
        return items if items != [""] else []
    if vr in _SPLIT_TEXT_VRS or vr in _SINGLE_TEXT_VRS:
        if len(encodings) != 1:
            raise _NotQuick
        try:
            text = data.decode(encodings[0])
        except (LookupError, UnicodeError) as exc:
            raise _NotQuick from exc
        items = [text.rstrip("\x00 ")] if vr in _SINGLE_TEXT_VRS else [item.rstrip("\x00 ") for item in text.split("\\")]
        return items if items != [""] else []
    raise _NotQuick


def _number(kind, item: str):
    if not item.strip(" "):
        raise _NotQuick  # a blank value among several: pydicom's conversion decides
    try:
        return kind(item)
    except ValueError as exc:
        raise _NotQuick from exc


def _raw_json(raw: RawDataElement, encodings) -> dict[str, Any]:
    """The DICOM JSON of an element still in its raw form, as DataElement.to_json_dict would give it,
    without building the DataElement (which costs most of a header's conversion time: about half
    of import_dicom's CPU before this; python -m bench run import). Anything unusual raises, and the
    caller falls back to pydicom's own conversion; test_dicom_parsing checks the two agree on every
    test file."""
    vr = raw.VR
    assert vr is not None  # _element_json passes explicit-VR elements only (raw.VR in RAW_JSON_VRS)
    if vr != "PN":
        try:
            values = _quick_values(vr, raw, encodings)
        except _NotQuick:
            pass
        else:
            return {"vr": vr, "Value": [_clean(v) for v in values]} if values else {"vr": vr}
    value = convert_value(vr, raw, encodings)
    if isinstance(value, (MultiValue, list)):
        values = list(value)
    elif value is None or value == "":
        values = []
    else:
        values = [value]
    if not values:
        return {"vr": vr}
    if vr == "PN":
        names = []
        for name in values:
            groups = name.components
            entry = {"Alphabetic": clean_text(groups[0])}
            if len(groups) > 1:
                entry["Ideographic"] = clean_text(groups[1])
            if len(groups) > 2:
                entry["Phonetic"] = clean_text(groups[2])
            names.append(entry)
        return {"vr": vr, "Value": names}
    if vr in NUMBER_VRS:
        values = convert_to_python_number(values, vr)
    return {"vr": vr, "Value": [_clean(v) for v in values]}


def _element_json(ds: Dataset, tag: Any, bin_limit: int, text_limit: int, depth: int, encodings=None) -> dict[str, Any]:
    raw = ds.get_item(tag)
    if encodings is not None and type(raw) is RawDataElement and raw.VR in RAW_JSON_VRS and raw.value is not None:
        if raw.length > (text_limit if raw.VR in TEXT_VRS else bin_limit):
            return {"vr": raw.VR, "BulkData": {"length": int(raw.length)}}
        try:
            return _raw_json(raw, encodings)
        except Exception:  # noqa: BLE001 - pydicom's own conversion below decides (and copes with broken values)
            pass
    vr = getattr(raw, "VR", None)
    if not vr:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = "UN"
        if " or " in vr:  # ambiguous dictionary VR such as "US or SS": pydicom resolves it on conversion
            vr = None
    raw_value = getattr(raw, "value", None)
    length = getattr(raw, "length", None)
    if isinstance(raw_value, (bytes, bytearray)) and length is not None and vr != "SQ":
        limit = text_limit if vr in TEXT_VRS else bin_limit
        if length > limit:
            return {"vr": vr or "UN", "BulkData": {"length": int(length)}}
    try:
        elem = ds[tag]
        vr = str(elem.VR)
        if vr == "SQ":
            if depth >= MAX_JSON_DEPTH:
                return {"vr": "SQ", "BulkData": {"items": len(elem.value)}}
            items = [
                dataset_to_json(item, inline_binary_limit=bin_limit, inline_text_limit=text_limit, _depth=depth + 1)
                for item in elem.value
            ]
            return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        value = elem.value
        if isinstance(value, (bytes, bytearray)) and len(value) > (text_limit if vr in TEXT_VRS else bin_limit):
            return {"vr": vr, "BulkData": {"length": len(value)}}
        return _clean(elem.to_json_dict(None, bin_limit))
    except Exception:  # noqa: BLE001 - a broken value must not make the whole header unreadable
        data = raw_value if isinstance(raw_value, (bytes, bytearray)) else b""
        if len(data) > bin_limit:
            return {"vr": "UN", "BulkData": {"length": len(data)}}
        return {"vr": "UN", "InlineBinary": base64.b64encode(bytes(data)).decode("ascii")} if data else {"vr": "UN"}
