"""De-identification: DICOM PS3.15 Annex E, the Basic Application Level Confidentiality Profile and its options.

Pure module: pydicom, numpy and the standard library only, no Django.

The Basic Profile column of Table E.1-1 is `dicom-anonymizer`'s (KitwareMedical, BSD; its 2026c edition of the
table, kept as data only); the option columns are in `deid_table`. `Deidentifier.apply` rewrites a data set in
place, at every depth of its sequences:

- each attribute's action is that of the table's Basic Profile column unless an option chosen says otherwise
  (K wins over C when two options name one attribute): D a dummy of the VR, Z an empty value, X removed,
  K kept, C cleaned, U a new UID;
- the combined actions are resolved without knowing the IOD: X/Z and X/Z/D empty the value (type 2 stays
  conformant), X/D and Z/D put a dummy, X/Z/U* keeps the sequence and de-identifies its items;
- Patient ID and Patient's Name get one pseudonym per patient (Z allows a dummy), so that two de-identified
  studies of one patient still line up; UIDs map to 2.25 UIDs derived from the key, so that one original UID
  gets one new UID across a request (and across requests given the same key);
- with Retain Longitudinal Temporal Information with Modified Dates, dates move back by a number of days fixed
  per patient; without it, dates outside the table (which the standard does not name) are blanked too;
- C on text (Clean Descriptors, and the options' C) removes every identifying value found in the source data set
  (names and their parts, IDs, accession numbers, institutions, dates, UIDs) from the text, and so does keeping a
  text the table does not name; the texts the chosen options clean are not taken as identifying values themselves;
- private attributes, curves (50xx), overlay data and comments (60xx,3000/4000), attributes no dictionary
  knows and UIDs the table does not name (other than well-known UIDs) are removed or replaced as well;
- Patient Identity Removed = YES, De-identification Method (Code) Sequence name the profile and options
  (113100 and the options' codes), Longitudinal Temporal Information Modified says what happened to dates.

Pixel data are kept as stored, unless masks are given: then the frames are decoded, each rectangle set to 0,
and the data set written native (Explicit VR Little Endian). `burned_in_risk` says why a data set may carry
burned-in text (Burned In Annotation YES, or an ultrasound or secondary-capture image without that attribute).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table
from pydicom.datadict import dictionary_has_tag, repeater_has_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID_dictionary,
)

from .deid_table import OPTION_COLUMNS

PROFILE_CODE = ("113100", "Basic Application Confidentiality Profile")
CLEAN_PIXELS_CODE = ("113101", "Clean Pixel Data Option")
# Option name (the API's and the command's) -> its code in DICOM's DCM coding scheme (PS3.16 CID 7050).
OPTION_CODES: dict[str, tuple[str, str]] = {
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
}
OPTIONS = tuple(OPTION_CODES)

_BASIC_LISTS = {
    "D": table.D_TAGS, "Z": table.Z_TAGS, "X": table.X_TAGS, "U": table.U_TAGS, "Z/D": table.Z_D_TAGS,
    "X/Z": table.X_Z_TAGS, "X/D": table.X_D_TAGS, "X/Z/D": table.X_Z_D_TAGS, "X/Z/U*": table.X_Z_U_STAR_TAGS,
}  # fmt: skip
# Tag -> Basic Profile action, and the repeating groups (tag, mask) -> action: (50xx,xxxx), (60xx,3000), (60xx,4000).
BASIC_PROFILE: dict[int, str] = {}
BASIC_MASKED: list[tuple[int, int, str]] = []
for _action, _tags in _BASIC_LISTS.items():
    for _entry in _tags:
        if len(_entry) == 2:
            BASIC_PROFILE[(_entry[0] << 16) | _entry[1]] = _action
        else:
            BASIC_MASKED.append(((_entry[0] << 16) | _entry[1], (_entry[2] << 16) | _entry[3], _action))

DATE_VRS = frozenset({"DA", "DT"})
TIME_VRS = frozenset({"TM"})
FREE_TEXT_VRS = frozenset({"LO", "LT", "SH", "ST", "UT", "UC", "PN"})
BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV", "AT"})
DUMMY_TEXT = "ANONYMIZED"  # also a valid (relative) URI: the dummy of UR too
DUMMY_BY_VR: dict[str, Any] = {
    "DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D", "IS": "0", "DS": "0",
}  # fmt: skip
DUMMY_BINARY = b"\x00\x00"  # D asks for a value of non-zero length: two zero bytes (even, as OB/OW/UN need)
# The shortest identifying value removed from text when cleaning: shorter ones match everywhere.
MIN_SCRUB_LENGTH = 3
MAX_SHIFT_DAYS = 3650
PATIENT_ID = 0x00100020
PATIENT_NAME = 0x00100010
PIXEL_DATA = 0x7FE00010
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel Data, Float and Double Float Pixel Data
# Secondary capture (and its multi-frame kinds) and ultrasound images: often carry text drawn into the pixels.
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
ULTRASOUND_SOP_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.6.2", "1.2.840.10008.5.1.4.1.1.3.1",
    "1.2.840.10008.5.1.4.1.1.6", "1.2.840.10008.5.1.4.1.1.3",
})  # fmt: skip
BURNED_IN_MODALITIES = frozenset({"US", "SC", "OT", "XC", "ES"})


class DeidError(ValueError):
    """This data set cannot be de-identified as asked; `str()` is the human reason."""


@dataclass(frozen=True)
class Rect:
    """A rectangle of pixels to blank: columns x..x+width-1, rows y..y+height-1 (clipped to the image)."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class Options:
    """What the caller chose: the Attribute Confidentiality Options (names of OPTION_CODES) and pixel masks."""

    options: frozenset[str] = frozenset()
    masks: tuple[Rect, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.options) - set(OPTIONS)
        if unknown:
            raise DeidError(f"unknown option {sorted(unknown)[0]!r}; options are {', '.join(OPTIONS)}")


def option_action(tag: int, vr: str, option: str, basic: str | None) -> str | None:
    """The action `option` gives the attribute, or None when the option leaves it to the Basic Profile."""
    action = OPTION_COLUMNS[option].get(tag)
    if action is not None:
        return action
    if basic is None:
        return None
    if option == "retain_uids" and basic == "U":
        return "K"
    if option == "retain_modified_dates" and vr in DATE_VRS | TIME_VRS and tag not in _BIRTH:
        return "C"
    return None


_BIRTH = frozenset({0x00100030, 0x00100032})  # Patient's Birth Date and Time: never kept by a temporal option


def basic_action(tag: int) -> str | None:
    """The Basic Profile's action for `tag`, or None when the table does not name it."""
    action = BASIC_PROFILE.get(tag)
    if action is None:
        for value, mask, masked in BASIC_MASKED:
            if tag & mask == value:
                return masked
    return action


def action_for(tag: int, vr: str, options: Iterable[str]) -> str | None:
    """The action for one attribute under the Basic Profile and the chosen options (None: not in the table)."""
    basic = basic_action(tag)
    chosen = {option_action(tag, vr, option, basic) for option in options}
    if "K" in chosen:
        return "K"
    if "C" in chosen:
        return "C"
    return basic


def burned_in_risk(*, burned_in: str | None, modality: str | None, sop_class_uid: str | None) -> str | None:
    """Why an image may carry identity drawn into its pixels, or None. Burned In Annotation NO is believed."""
    flag = (burned_in or "").strip().upper()
    if flag == "YES":
        return "Burned In Annotation is YES"
    if flag == "NO":
        return None
    sop = (sop_class_uid or "").strip()
    if sop.startswith(SECONDARY_CAPTURE_PREFIX):
        return "a secondary capture without Burned In Annotation: it may carry burned-in text"
    if sop in ULTRASOUND_SOP_CLASSES or (modality or "").strip().upper() in BURNED_IN_MODALITIES:
        return f"a {(modality or '').strip() or 'screen-captured'} image without Burned In Annotation: it may carry burned-in text"
    return None


@dataclass
class Deidentifier:
    """Applies one request's choices to its data sets; keeps the UID mapping of everything it saw (`uid_map`)."""

    options: Options
    key: bytes
    uid_map: dict[str, str] = field(default_factory=dict)

    def new_uid(self, uid: str) -> str:
        """The UID `uid` becomes under this key: 2.25 and 128 bits of HMAC-SHA256 (same input, same output)."""
        uid = uid.strip().rstrip("\x00")
        if not uid or uid in UID_dictionary:
            return uid
        new = self.uid_map.get(uid)
        if new is None:
            new = "2.25." + str(int.from_bytes(self._mac("uid", uid)[:16], "big"))
            self.uid_map[uid] = new
        return new

    def _mac(self, purpose: str, value: str) -> bytes:
        return hmac.new(self.key, f"{purpose}\x00{value}".encode(), hashlib.sha256).digest()

    def pseudonym(self, patient: str) -> str:
        """The stand-in for one patient's ID (and name): ANON and 12 hex digits of HMAC over the original."""
        return "ANON" + self._mac("patient", patient).hex()[:12].upper()

    def shift_days(self, patient: str) -> int:
        """How many days this patient's dates move back (1..MAX_SHIFT_DAYS), the same for each of their files."""
        return 1 + int.from_bytes(self._mac("shift", patient)[:4], "big") % MAX_SHIFT_DAYS

    def apply(self, ds: Dataset) -> Dataset:
        """De-identify `ds` in place (file meta rebuilt) and return it; DeidError when masking cannot decode it."""
        patient = str(ds.get("PatientID", "") or ds.get("PatientName", "") or "")
        context = _Context(self, patient, _identifying_values(ds, self.options.options))
        if self.options.masks and PIXEL_DATA in ds:
            _mask(ds, self.options.masks)
        _walk(ds, context)
        self._mark(ds)
        self._meta(ds)
        return ds

    def _mark(self, ds: Dataset) -> None:
        chosen = [o for o in OPTIONS if o in self.options.options]
        ds.PatientIdentityRemoved = "YES"
        codes = [PROFILE_CODE, *(OPTION_CODES[o] for o in chosen)]
        if self.options.masks:
            codes.append(CLEAN_PIXELS_CODE)
        ds.DeidentificationMethod = ("PS3.15 E.1 Basic Profile" + "".join(f", {OPTION_CODES[o][1]}" for o in chosen))[:64]
        items = []
        for value, meaning in codes:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            items.append(item)
        ds.DeidentificationMethodCodeSequence = Sequence(items)
        ds.LongitudinalTemporalInformationModified = "MODIFIED" if "retain_modified_dates" in chosen else "REMOVED"

    def _meta(self, ds: Dataset) -> None:
        """A new file meta: the data set's (new) SOP UIDs, else the old meta's mapped the way the data set's are;
        the transfer syntax as stored, else the one the data set was read with."""
        old = getattr(ds, "file_meta", None) or FileMetaDataset()

        def mapped(uid: object) -> str:
            uid = str(uid or "")
            return uid if "retain_uids" in self.options.options else self.new_uid(uid)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(ds.get("SOPClassUID") or mapped(old.get("MediaStorageSOPClassUID")))
        meta.MediaStorageSOPInstanceUID = UID(ds.get("SOPInstanceUID") or mapped(old.get("MediaStorageSOPInstanceUID")))
        meta.TransferSyntaxUID = _transfer_syntax(ds)
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        ds.preamble = b"\x00" * 128


def _transfer_syntax(ds: Dataset) -> UID:
    """The file meta's transfer syntax, or (a data set read without one) the encoding it was read with."""
    syntax = getattr(ds, "file_meta", None) and ds.file_meta.get("TransferSyntaxUID")
    if syntax:
        return UID(syntax)
    implicit, little = ds.original_encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRBigEndian if little is False else ExplicitVRLittleEndian


@dataclass
class _Context:
    deid: Deidentifier
    patient: str
    identifying: list[str]

    @property
    def options(self) -> frozenset[str]:
        return self.deid.options.options


def _walk(ds: Dataset, ctx: _Context) -> None:
    for key in list(ds.keys()):
        tag = int(key)
        if tag in PIXEL_TAGS:
            continue  # kept as stored (or masked before): never read into memory here
        if key.is_private or tag >> 16 == 0x0002 or tag & 0xFFFF == 0 or not _known(tag):
            del ds[key]  # private, group lengths, and attributes no dictionary knows: nothing says they are safe
            continue
        elem = ds[key]
        action = action_for(tag, elem.VR, ctx.options)
        _ACTIONS[action or _unlisted(elem.VR, ctx.options)](ds, elem, ctx)


def _known(tag: int) -> bool:
    return dictionary_has_tag(tag) or repeater_has_tag(tag)


def _unlisted(vr: str, options: frozenset[str]) -> str:
    """Attributes the table does not name are kept, except UIDs (replaced, unless Retain UIDs: kept like every
    U attribute) and dates (shifted or blanked)."""
    if vr == "UI":
        return "keep" if "retain_uids" in options else "U"
    if vr in DATE_VRS:
        return "date"
    return "keep"


def _remove(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    del ds[elem.tag]


def _empty(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    tag = int(elem.tag)
    if tag in (PATIENT_ID, PATIENT_NAME):  # Z allows a dummy: one pseudonym per patient keeps studies together
        elem.value = ctx.deid.pseudonym(ctx.patient)
    elif elem.VR == "SQ":
        elem.value = Sequence()
    else:
        elem.value = None


def _dummy(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    vr = elem.VR
    tag = int(elem.tag)
    if tag in (PATIENT_ID, PATIENT_NAME):
        elem.value = ctx.deid.pseudonym(ctx.patient)
    elif vr == "SQ":
        _items(elem, ctx)
    elif vr == "UI":
        _uid(ds, elem, ctx)
    elif vr in BINARY_VRS:
        elem.value = DUMMY_BINARY
    elif vr in NUMBER_VRS:
        elem.value = 0
    else:
        elem.value = DUMMY_BY_VR.get(vr, DUMMY_TEXT)


def _uid(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    if elem.VR == "SQ":
        _items(elem, ctx)
        return
    if elem.VR != "UI" or elem.value is None or elem.value == "":
        return
    values = list(elem.value) if isinstance(elem.value, (list, MultiValue)) else [elem.value]
    new = [ctx.deid.new_uid(str(v)) for v in values]
    elem.value = new if len(new) > 1 else new[0]


def _keep(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    if elem.VR == "SQ":
        _items(elem, ctx)
    elif elem.VR in FREE_TEXT_VRS:
        _scrub(elem, ctx)  # a kept text still loses the identifying values found elsewhere in the data set


def _keep_as_is(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    """K: the option keeps this attribute (sequences are still de-identified inside)."""
    if elem.VR == "SQ":
        _items(elem, ctx)


def _clean(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    vr = elem.VR
    if vr == "SQ":
        _items(elem, ctx)
    elif vr in DATE_VRS:
        _date(ds, elem, ctx)
    elif vr in FREE_TEXT_VRS or vr == "CS":
        _scrub(elem, ctx)
    # C on anything else (times, numbers, binary) under a temporal or device option: kept


def _date(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    """Dates the table does not name, and C dates: shifted with Modified Dates, else blanked."""
    if "retain_modified_dates" not in ctx.options:
        elem.value = None
        return
    days = ctx.deid.shift_days(ctx.patient)
    values = elem.value if elem.VM > 1 else [elem.value]
    shifted = [_shift(str(v), days, elem.VR) for v in values if v not in (None, "")]
    elem.value = shifted if len(shifted) > 1 else (shifted[0] if shifted else None)


def _shift(value: str, days: int, vr: str) -> str:
    """YYYYMMDD[...] moved back `days` days; the rest (a DT's time and offset) kept; an unreadable date blanked."""
    value = value.strip()
    if "-" in value and vr == "DA":  # a range (in a query) has no place in a stored instance
        return ""
    if len(value) < 8 or not value[:8].isdigit():
        return ""
    try:
        day = dt.date(int(value[:4]), int(value[4:6]), int(value[6:8])) - dt.timedelta(days=days)
    except (ValueError, OverflowError):  # not a date, or one that would move before year 1
        return ""
    return f"{day.year:04d}{day.month:02d}{day.day:02d}" + value[8:]


def _items(elem: DataElement, ctx: _Context) -> None:
    for item in elem.value or []:
        _walk(item, ctx)


def _combined_empty(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    _empty(ds, elem, ctx)


def _uid_star(ds: Dataset, elem: DataElement, ctx: _Context) -> None:
    """X/Z/U*: the sequence stays, its items de-identified (their UIDs replaced); a non-sequence is emptied."""
    if elem.VR == "SQ":
        _items(elem, ctx)
    elif elem.VR == "UI":
        _uid(ds, elem, ctx)
    else:
        elem.value = None


_ACTIONS: dict[str, Callable[[Dataset, DataElement, _Context], None]] = {
    "X": _remove, "Z": _empty, "D": _dummy, "U": _uid, "C": _clean, "K": _keep_as_is,
    "X/Z": _combined_empty, "X/Z/D": _combined_empty, "X/D": _dummy, "Z/D": _dummy, "X/Z/U*": _uid_star,
    "keep": _keep, "date": _date,
}  # fmt: skip


def _identifying_values(ds: Dataset, options: frozenset[str] = frozenset()) -> list[str]:
    """Every text an attribute the profile does not keep holds, at any depth: what cleaning removes from texts.
    Not the texts the chosen options clean (descriptions, comments, a time zone...): they are what is cleaned, and
    taken as sources each would be wiped whole by its own value ("*"); dates stay sources. Names also give their
    parts and their "Given Family" spelling; UIDs but the well-known ones are sources too, unless Retain UIDs (all
    replaced, none may stay in a text either). Longest first, so that parts go last."""
    found: set[str] = set()

    def visit(data: Dataset) -> None:
        for key in list(data.keys()):
            if key.is_private or int(key) in PIXEL_TAGS:
                continue
            elem = data[key]
            if elem.VR == "SQ":
                for item in elem.value or []:
                    visit(item)
                continue
            if elem.VR == "UI":
                if "retain_uids" not in options:
                    values = elem.value if elem.VM > 1 else [elem.value]
                    found.update(u for u in (str(v or "").strip().rstrip("\x00") for v in values) if u not in UID_dictionary)
                continue
            basic = basic_action(int(key))
            if basic is None or basic == "K" or elem.VR not in FREE_TEXT_VRS | DATE_VRS | {"CS", "AE"}:
                continue
            if elem.VR not in DATE_VRS and action_for(int(key), elem.VR, options) == "C":
                continue
            values = elem.value if elem.VM > 1 else [elem.value]
            for value in values:
                text = str(value or "").strip()
                if elem.VR == "PN":
                    parts = [p for p in re.split(r"[\^=]", text) if p.strip()]
                    found.update(p.strip() for p in parts)
                    if len(parts) > 1:
                        found.add(" ".join(reversed(parts[:2])))
                        found.add(" ".join(parts[:2]))
                found.add(text)

    visit(ds)
    return sorted((v for v in found if len(v) >= MIN_SCRUB_LENGTH), key=len, reverse=True)


def _scrub(elem: DataElement, ctx: _Context) -> None:
    if not ctx.identifying or elem.value in (None, ""):
        return
    values = elem.value if elem.VM > 1 else [elem.value]
    cleaned = [scrub_text(str(v), ctx.identifying) for v in values]
    elem.value = cleaned if len(cleaned) > 1 else cleaned[0]


def scrub_text(text: str, identifying: Iterable[str]) -> str:
    """`text` without any of `identifying` (case-insensitive), each occurrence replaced by '*'."""
    for value in identifying:
        if value.lower() in text.lower():
            text = re.sub(re.escape(value), "*", text, flags=re.IGNORECASE)
    return text


def _mask(ds: Dataset, masks: tuple[Rect, ...]) -> None:
    """Blank each rectangle in every frame; the pixel data are written back native (Explicit VR Little Endian)."""
    if int(ds.get("BitsAllocated", 0) or 0) not in (8, 16, 32):
        raise DeidError("the pixel data cannot be masked: only 8, 16 and 32 bits allocated are supported")
    if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = _transfer_syntax(ds)  # the decoders need it: a file read without one
    try:
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress(generate_instance_uid=False)
        pixels = ds.pixel_array.copy()
    except Exception as exc:  # noqa: BLE001 - any decoder failure: the caller is told the file cannot be masked
        raise DeidError(f"the pixel data cannot be decoded to mask them ({type(exc).__name__})") from None
    if int(ds.get("SamplesPerPixel", 1) or 1) > 1:
        ds.PlanarConfiguration = 0  # numpy's (rows, columns, samples) order is colour-by-pixel
        if str(ds.get("PhotometricInterpretation", "")).startswith("YBR"):
            ds.PhotometricInterpretation = "RGB"  # pydicom's pixel_array converted the colours to RGB
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    view = pixels if frames > 1 else pixels[None, ...]
    rows, cols = view.shape[1], view.shape[2]
    for rect in masks:
        x0, y0 = max(rect.x, 0), max(rect.y, 0)
        x1, y1 = min(rect.x + rect.width, cols), min(rect.y + rect.height, rows)
        if x0 < x1 and y0 < y1:
            view[:, y0:y1, x0:x1, ...] = 0
    if ds.original_encoding[1] is False:
        _to_little_endian(ds)
    ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian


_SWAP_WIDTH = {"OW": 2, "OF": 4, "OL": 4, "OD": 8, "OV": 8}


def _to_little_endian(ds: Dataset) -> None:
    """A data set read big endian, about to be written little endian: its binary values (kept as read, in the big
    endian order) swapped; the values pydicom decoded (numbers, texts) are encoded anew when written."""
    for elem in ds.iterall():
        width = _SWAP_WIDTH.get(elem.VR)
        if width and int(elem.tag) not in PIXEL_TAGS and isinstance(elem.value, bytes) and len(elem.value) % width == 0:
            elem.value = np.frombuffer(elem.value, f">u{width}").astype(f"<u{width}").tobytes()
    ds.set_original_encoding(False, True, ds.original_character_set)
