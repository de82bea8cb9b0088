"""The DICOMweb protocol (PS3.18): request and response formats, with no Django in sight.

- QIDO-RS: the attributes the catalogue can match on, query parameters → `Query`, and DICOM
  JSON elements for the answers;
- WADO-RS: the transfer syntax of instances and frames for a parsed Accept header (the parser
  itself is `studies.http.negotiation`), multipart bodies written part by part, BulkDataURIs in
  stored headers, frame lists; rendered-resource parameters are `studies.http.params`;
- STOW-RS: the response data set (ReferencedSOPSequence / FailedSOPSequence).
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.uid import UID

from dicomcore.constants import EXPLICIT_LE, IMPLICIT_LE, parse_da

from ..http.negotiation import Acceptable, NotAcceptable, matches_type


class QueryError(ValueError):
    """A QIDO-RS or WADO-RS request parameter is malformed; `str()` says which and why."""


# --- QIDO-RS: what can be matched and returned -----------------------------------------------


@dataclass(frozen=True)
class Attribute:
    """One attribute the catalogue holds in a column: its tag, keyword, VR, level and column."""

    tag: str  # 8 upper-case hex digits
    keyword: str
    vr: str
    level: str  # "study", "series" or "instance"
    column: str | None  # the model field on that level's table (None: computed, or matched in the stored headers)


LEVELS = ("study", "series", "instance")
_A = Attribute
ATTRIBUTES: tuple[Attribute, ...] = (
    _A("00080020", "StudyDate", "DA", "study", "study_date"),
    _A("00080030", "StudyTime", "TM", "study", "study_time"),
    _A("00080050", "AccessionNumber", "SH", "study", "accession_number"),
    _A("00080061", "ModalitiesInStudy", "CS", "study", None),
    _A("00080090", "ReferringPhysicianName", "PN", "study", "referring_physician_name"),
    _A("00081030", "StudyDescription", "LO", "study", "study_description"),
    _A("00100010", "PatientName", "PN", "study", "patient_name"),
    _A("00100020", "PatientID", "LO", "study", "patient_id"),
    _A("00100030", "PatientBirthDate", "DA", "study", "patient_birth_date"),
    _A("00100040", "PatientSex", "CS", "study", "patient_sex"),
    _A("0020000D", "StudyInstanceUID", "UI", "study", "study_instance_uid"),
    _A("00200010", "StudyID", "SH", "study", "study_id"),
    _A("00201206", "NumberOfStudyRelatedSeries", "IS", "study", None),
    _A("00201208", "NumberOfStudyRelatedInstances", "IS", "study", None),
    _A("00080060", "Modality", "CS", "series", "modality"),
    _A("0008103E", "SeriesDescription", "LO", "series", "series_description"),
    _A("00180015", "BodyPartExamined", "CS", "series", "body_part_examined"),
    _A("0020000E", "SeriesInstanceUID", "UI", "series", "series_instance_uid"),
    _A("00200011", "SeriesNumber", "IS", "series", "series_number"),
    _A("00201209", "NumberOfSeriesRelatedInstances", "IS", "series", None),
    _A("00080016", "SOPClassUID", "UI", "instance", "sop_class_uid"),
    _A("00080018", "SOPInstanceUID", "UI", "instance", "sop_instance_uid"),
    _A("00083002", "AvailableTransferSyntaxUID", "UI", "instance", "transfer_syntax_uid"),
    _A("00200013", "InstanceNumber", "IS", "instance", "instance_number"),
    _A("00280002", "SamplesPerPixel", "US", "instance", "samples_per_pixel"),
    _A("00280004", "PhotometricInterpretation", "CS", "instance", "photometric_interpretation"),
    _A("00280008", "NumberOfFrames", "IS", "instance", "number_of_frames"),
    _A("00280010", "Rows", "US", "instance", "rows"),
    _A("00280011", "Columns", "US", "instance", "columns"),
    _A("00280100", "BitsAllocated", "US", "instance", "bits_allocated"),
)
BY_TAG = {a.tag: a for a in ATTRIBUTES}
# Matching on these is not offered (counts are computed; the set of modalities is matched through series).
NOT_MATCHABLE = {"00201206", "00201208", "00201209", "00083002"}
# Returned for every result of a level (PS3.18 Table 10.6.3-3/-4/-5), besides InstanceAvailability and RetrieveURL.
DEFAULT_RETURN = {
    "study": [a.tag for a in ATTRIBUTES if a.level == "study"],
    "series": [a.tag for a in ATTRIBUTES if a.level == "series"],
    "instance": [a.tag for a in ATTRIBUTES if a.level == "instance"],
}
# includefield=all at the study and series levels returns the elements of those levels' modules (PS3.3: Patient,
# Patient Study, General Study; General Series, General Equipment, Frame of Reference, the procedure step), from the
# stored header of the level's first instance. Every element of group 0010 is a patient one, except the series'
# Anatomical Orientation Type; an element not named here belongs to the instance.
STUDY_TAGS = frozenset({
    "00080020", "00080030", "00080050", "00080051", "00080090", "00080096", "00081030", "00081032", "00081048",
    "00081049", "00081060", "00081062", "00081080", "00081084", "00081110", "0020000D", "00200010", "00321032",
    "00321033", "00321060", "00321064", "00380010", "00380014", "00380060", "00380062", "00380064", "00380300",
    "00380500", "00400031", "00400032", "00401012",
})  # fmt: skip
SERIES_TAGS = frozenset({
    "00080021", "00080031", "00080060", "00080064", "00080070", "00080080", "00080081", "0008103E", "0008103F",
    "00081010", "00081040", "00081050", "00081052", "00081070", "00081072", "00081090", "00081111", "00081250",
    "00102210", "00180015", "00181000", "00181002", "00181008", "00181010", "00181016", "00181018", "00181020",
    "00181030", "00185100", "0020000E", "00200011", "00200052", "00200060", "00201040", "00280108", "00280109",
    "00400244", "00400245", "00400250", "00400251", "00400253", "00400254", "00400260", "00400275", "00400280",
})  # fmt: skip


def header_level(tag: str) -> str:
    """The level an element of a stored header belongs to: "study", "series" or "instance"."""
    if tag in SERIES_TAGS:
        return "series"
    if tag in STUDY_TAGS or tag.startswith("0010"):
        return "study"
    return "instance"


SPECIFIC_CHARACTER_SET = "00080005"
INSTANCE_AVAILABILITY = "00080056"
RETRIEVE_URL = "00081190"
# `label` is this service's extension: only objects carrying that label of yours (on them or a level above).
QUERY_CONTROL = {"limit", "offset", "fuzzymatching", "includefield", "orderby", "label"}
MAX_LIMIT = 1000


# Any other attribute is matched in the stored header JSON of the instances (an object matches when one of its
# instances does), except values that are not text or numbers: sequences, bulk data, tags, and unknown (private) VRs.
HEADER_UNMATCHABLE_VRS = frozenset({"SQ", "OB", "OD", "OF", "OL", "OV", "OW", "UN", "AT"})
INTEGER_VRS = frozenset({"IS", "US", "SS", "UL", "SL", "UV", "SV"})
DECIMAL_VRS = frozenset({"DS", "FL", "FD"})


@dataclass(frozen=True)
class Match:
    """One matching key: the attribute, how to match (`kind`) and the parsed value. `in_header`: matched in the
    stored headers of the instances, not a column (the attribute has no column at the queried level)."""

    attribute: Attribute
    kind: str  # "universal", "exact", "wildcard", "uids", "range", "modalities"
    value: Any = None
    in_header: bool = False


@dataclass
class Query:
    """A parsed QIDO-RS request."""

    level: str
    matches: list[Match] = field(default_factory=list)
    include: set[str] = field(default_factory=set)  # extra tags to return (from headers or columns)
    include_all: bool = False
    limit: int = 100
    offset: int = 0
    fuzzy: bool = False
    warnings: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)  # the `label` extension key, repeatable (all must match)


def tag_of(key: str) -> str:
    """A QIDO key (8 hex digits, or a keyword) → 8 upper-case hex digits; QueryError if neither."""
    key = key.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{8}", key):
        return key.upper()
    tag = tag_for_keyword(key)
    if tag is None:
        raise QueryError(f"'{key[:64]}' is neither a tag (8 hex digits) nor a DICOM keyword")
    return f"{tag:08X}"


def is_attribute_key(name: str) -> bool:
    """Whether a query parameter names a DICOM attribute (8 hex digits or a keyword of the dictionary)."""
    return bool(re.fullmatch(r"[0-9A-Fa-f]{8}", name)) or tag_for_keyword(name) is not None


def header_attribute(tag: str) -> Attribute:
    """An attribute without a column at the queried level: matched in the stored headers (`Match.in_header`)."""
    keyword = keyword_for_tag(int(tag, 16)) or tag
    return Attribute(tag, keyword, vr_of(tag), header_level(tag), None)


def parse_query(level: str, params: Iterable[tuple[str, str]], *, default_limit: int = 100) -> Query:
    """QIDO-RS query parameters (as (name, value) pairs, repeats kept) → Query.

    A key with a column at this level (or a level above) matches the column; any other attribute matches the
    stored headers of the instances (`Match.in_header`) and is returned as well. Keys that cannot be matched
    (computed counts, sequences, binary values, unknown private tags) are ignored with a warning."""
    query = Query(level=level, limit=default_limit)
    levels = LEVELS[: LEVELS.index(level) + 1]
    for name, value in params:
        if name in QUERY_CONTROL:
            _control(query, name, value)
            continue
        tag = tag_of(name)
        attribute = BY_TAG.get(tag)
        if attribute is not None and attribute.level in levels and tag not in NOT_MATCHABLE:
            query.matches.append(parse_match(attribute, value))
            continue
        query.include.add(tag)
        stored = header_attribute(tag)
        if tag in NOT_MATCHABLE or stored.vr in HEADER_UNMATCHABLE_VRS:
            # PS3.18 8.3.4.1: unsupported matching keys are ignored, with a Warning; they are still returned.
            query.warnings.append(f"matching on {name[:64]} is not supported; it was ignored")
            continue
        match = parse_match(stored, value)
        if match.kind != "universal":
            query.matches.append(Match(stored, match.kind, match.value, in_header=True))
    return query


def _control(query: Query, name: str, value: str) -> None:
    if name in ("limit", "offset"):
        if not (value.isascii() and value.isdigit()) or len(value) > 9:
            raise QueryError(f"{name} must be a whole number, not '{value[:20]}'")
        number = int(value)
        if name == "limit":
            if number == 0:
                raise QueryError("limit must be at least 1")
            if number > MAX_LIMIT:
                query.warnings.append(f"limit was reduced to {MAX_LIMIT}")
            query.limit = min(number, MAX_LIMIT)
        else:
            query.offset = number
    elif name == "fuzzymatching":
        if value.lower() not in ("true", "false"):
            raise QueryError(f"fuzzymatching must be true or false, not '{value[:20]}'")
        query.fuzzy = value.lower() == "true"
    elif name == "label":
        query.labels.append(value)
    elif name == "orderby":
        query.warnings.append("orderby is not supported; results are newest first")
    else:  # includefield
        for key in re.split(r"[,\\]", value):
            key = key.strip()
            if not key:
                continue
            if key.lower() == "all":
                query.include_all = True
            else:
                query.include.add(_include_path(key))


def _include_path(key: str) -> str:
    """includefield names a tag or keyword, or a sequence path `00081115.0020000E`: its first tag is returned."""
    return tag_of(key.split(".", 1)[0])


def parse_match(attribute: Attribute, raw: str) -> Match:
    """One matching value, by the attribute's VR (PS3.4 C.2.2.2)."""
    value = raw.strip()
    if value in ("", "*"):
        return Match(attribute, "universal")
    if attribute.keyword == "ModalitiesInStudy":
        return Match(attribute, "modalities", [v.strip() for v in re.split(r"[,\\]", value) if v.strip()])
    if attribute.vr == "UI":
        uids = [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]
        for uid in uids:
            if not re.fullmatch(r"[0-9.]{1,64}", uid):
                raise QueryError(f"{attribute.keyword} must be UIDs (digits and dots), not '{uid[:64]}'")
        return Match(attribute, "uids", uids)
    if attribute.vr == "DA":
        return Match(attribute, "range", _range(value, _date, attribute.keyword))
    if attribute.vr == "TM":
        return Match(attribute, "range", _range(value, _time, attribute.keyword))
    if attribute.vr == "DT":
        return Match(attribute, "range", _range(value, _datetime, attribute.keyword))
    if attribute.vr in INTEGER_VRS:
        digits = 9 if attribute.column else 18  # the columns are 32-bit integers; header values up to 64-bit
        if not re.fullmatch(rf"[+-]?\d{{1,{digits}}}", value):
            raise QueryError(f"{attribute.keyword} must be a whole number, not '{value[:20]}'")
        return Match(attribute, "exact", int(value))
    if attribute.vr in DECIMAL_VRS:
        if not re.fullmatch(r"[+-]?(\d{1,16}(\.\d{0,16})?|\.\d{1,16})([eE][+-]?\d{1,3})?", value):
            raise QueryError(f"{attribute.keyword} must be a number, not '{value[:20]}'")
        number = float(value)
        return Match(attribute, "exact", int(number) if number.is_integer() else number)
    if "*" in value or "?" in value:
        return Match(attribute, "wildcard", value)
    return Match(attribute, "exact", value)


def _range(value: str, convert, keyword: str) -> tuple[Any, Any]:
    if "-" not in value:
        point = convert(value, keyword)
        return point, point
    low, _, high = value.partition("-")
    low_value = convert(low, keyword) if low.strip() else None
    high_value = convert(high, keyword) if high.strip() else None
    if low_value is None and high_value is None:
        raise QueryError(f"{keyword} range '{value[:40]}' has neither bound")
    if low_value is not None and high_value is not None and low_value > high_value:
        raise QueryError(f"{keyword} range '{value[:40]}' ends before it starts")
    return low_value, high_value


def _date(text: str, keyword: str) -> dt.date:
    date = parse_da(text)
    if date is None:
        raise QueryError(f"{keyword} must be a date YYYYMMDD or a range YYYYMMDD-YYYYMMDD, not '{text.strip()[:20]}'")
    return date


def _time(text: str, keyword: str) -> str:
    """A TM value normalised to HHMMSS (missing parts as zeros) for comparison with stored times."""
    text = text.strip().replace(":", "")
    if not re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?", text):
        raise QueryError(f"{keyword} must be a time HHMMSS or a range HHMMSS-HHMMSS, not '{text[:20]}'")
    return text.split(".")[0].ljust(6, "0")


def _datetime(text: str, keyword: str) -> str:
    """A DT value (YYYY[MM[DD[HH[MM[SS[.F]]]]]], no offset) as its digits, for comparison with stored values."""
    text = text.strip()
    if not re.fullmatch(r"\d{4}(\d{2}){0,5}(\.\d{1,6})?", text):
        raise QueryError(f"{keyword} must be a date-time YYYYMMDDHHMMSS or a range of two, not '{text[:26]}'")
    return text


def wildcard_regex(pattern: str) -> str:
    """A DICOM wildcard pattern (`*` any run, `?` one character) → an anchored regular expression."""
    return "^" + "".join(".*" if ch == "*" else "." if ch == "?" else re.escape(ch) for ch in pattern) + "$"


# --- DICOM JSON elements ---------------------------------------------------------------------


def element(vr: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON element; an empty or missing value is an element without "Value"."""
    if value is None or value == "" or value == []:
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        return {"vr": vr, "Value": [{"Alphabetic": str(v)} for v in values]}
    if vr == "DA" and isinstance(values[0], dt.date):
        return {"vr": vr, "Value": [v.strftime("%Y%m%d") for v in values]}
    return {"vr": vr, "Value": values}


def vr_of(tag: str) -> str:
    try:
        vr = dictionary_VR(int(tag, 16))
    except KeyError:
        return "UN"
    return vr.split(" or ")[0]


# --- Accept headers and transfer syntaxes ----------------------------------------------------

# Media types of compressed frames by transfer syntax (PS3.18 Table 8.7.3-2 / -3).
FRAME_MEDIA_TYPES = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


def instance_transfer_syntax(accepts: list[Acceptable], stored: str, *, can_transcode: bool) -> str:
    """The transfer syntax to send an instance in (`application/dicom`), or NotAcceptable.

    `*` keeps the stored encoding; no transfer-syntax parameter means Explicit VR Little Endian
    (PS3.18 8.7.3.5.2); the only conversion offered is to Explicit VR Little Endian.
    """
    for accept in accepts:
        if not matches_type(accept.media_type, "application/dicom"):
            continue
        wanted = accept.transfer_syntax or EXPLICIT_LE
        if wanted == "*" or wanted == stored:
            return stored
        if wanted == EXPLICIT_LE and can_transcode:
            return EXPLICIT_LE
    raise NotAcceptable(
        f"this instance is stored as {stored}; accept it with transfer-syntax=* or transfer-syntax={stored}"
        + ("" if not can_transcode else f" (or {EXPLICIT_LE})")
    )


@dataclass(frozen=True)
class FrameEncoding:
    """How to send frames: keep the stored bytes (`keep`) or decode to native little-endian bytes."""

    keep: bool
    media_type: str
    transfer_syntax: str


def frame_encoding(accepts: list[Acceptable], stored: str) -> FrameEncoding:
    """The encoding of /frames parts for an Accept header (PS3.18 8.7.3.5.2, Table 8.7.3-2/-3)."""
    compressed = UID(stored).is_compressed if UID(stored).is_transfer_syntax else False
    stored_media = FRAME_MEDIA_TYPES.get(stored, "application/octet-stream") if compressed else "application/octet-stream"
    native_le = stored in (EXPLICIT_LE, IMPLICIT_LE)
    for accept in accepts:
        ts = accept.transfer_syntax
        if ts == "*" or (matches_type(accept.media_type, stored_media) and ts in (stored, None) and compressed):
            return FrameEncoding(True, stored_media, stored)
        if matches_type(accept.media_type, "application/octet-stream") and ts in (None, EXPLICIT_LE):
            return FrameEncoding(native_le, "application/octet-stream", EXPLICIT_LE)
    raise NotAcceptable(
        "frames are sent as application/octet-stream (uncompressed, Explicit VR Little Endian) "
        f"or, with transfer-syntax=*, as stored ({stored_media}; {stored})"
    )


# --- multipart/related bodies ----------------------------------------------------------------


def new_boundary() -> str:
    return uuid.uuid4().hex


def multipart_type(media_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    value = f'multipart/related; type="{media_type}"; boundary={boundary}'
    return value + (f"; transfer-syntax={transfer_syntax}" if transfer_syntax else "")


def multipart_chunks(parts: Iterable[tuple[dict[str, str], Iterable[bytes]]], boundary: str) -> Iterator[bytes]:
    """Write parts (headers, chunks of content) as a multipart body, one chunk at a time."""
    delimiter = f"--{boundary}\r\n".encode()
    for headers, chunks in parts:
        yield delimiter + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n"
        yield from chunks
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


# --- metadata: stored headers with BulkDataURIs ----------------------------------------------


def with_bulkdata_uris(header: Mapping[str, Any], base_url: str, *, pixel_data: bool) -> dict[str, Any]:
    """A stored header for WADO-RS metadata: file meta dropped, `BulkData` summaries → `BulkDataURI`s.

    Nested values are named by their path: `<tag>/<item>/<tag>` under `<base_url>/bulkdata/`.
    With `pixel_data`, Pixel Data is listed too (its URI serves the frames).
    """
    out = _bulk_uris(header, f"{base_url}/bulkdata", "")
    if pixel_data:
        out["7FE00010"] = {"vr": "OB", "BulkDataURI": f"{base_url}/bulkdata/7FE00010"}
    return out


def _bulk_uris(header: Mapping[str, Any], base: str, prefix: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag, elem in header.items():
        if not prefix and tag.startswith("0002"):
            continue
        if not isinstance(elem, dict):
            continue
        if "BulkData" in elem:
            if elem.get("vr") == "SQ":  # a sequence too deep to store: not served
                out[tag] = {"vr": "SQ"}
            else:
                out[tag] = {"vr": elem.get("vr", "UN"), "BulkDataURI": f"{base}/{prefix}{tag}"}
        elif elem.get("vr") == "SQ" and isinstance(elem.get("Value"), list):
            items = [
                _bulk_uris(item, base, f"{prefix}{tag}/{i}/") if isinstance(item, dict) else item
                for i, item in enumerate(elem["Value"])
            ]
            out[tag] = {"vr": "SQ", "Value": items}
        else:
            out[tag] = elem
    return out


def parse_bulkdata_path(path: str) -> list[int | str]:
    """`00282000` or `00540016/0/00181072` → [tag, index, tag, ...]; QueryError if malformed."""
    pieces = path.strip("/").split("/")
    if len(pieces) % 2 != 1 or len(pieces) > 2 * 8 + 1:
        raise QueryError("a bulk data path is <tag>[/<item>/<tag>...]")
    out: list[int | str] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            if not re.fullmatch(r"[0-9A-Fa-f]{8}", piece):
                raise QueryError(f"'{piece[:20]}' is not a tag of 8 hex digits")
            out.append(piece.upper())
        else:
            if not (piece.isascii() and piece.isdigit()) or len(piece) > 6:
                raise QueryError(f"'{piece[:20]}' is not an item number")
            out.append(int(piece))
    return out


# --- frame lists and rendered parameters -----------------------------------------------------

MAX_FRAMES_PER_REQUEST = 10_000


def parse_frame_list(raw: str) -> list[int]:
    """`1,3,5` → [1, 3, 5] (1-based, as in the URL); QueryError if malformed."""
    numbers = []
    for piece in raw.split(","):
        piece = piece.strip()
        if not (piece.isascii() and piece.isdigit()) or len(piece) > 9 or int(piece) < 1:
            raise QueryError(f"frame numbers are whole numbers from 1, separated by commas, not '{raw[:40]}'")
        numbers.append(int(piece))
    if len(numbers) > MAX_FRAMES_PER_REQUEST:
        raise QueryError(f"at most {MAX_FRAMES_PER_REQUEST} frames per request")
    return numbers


# --- STOW-RS response ------------------------------------------------------------------------

# Failure reasons (PS3.18 Table 10.5.3-2, PS3.4 Annex B.2.3).
FAILURE_PROCESSING = 0x0110
FAILURE_DUPLICATE_UID = 0x0111  # a different instance with this SOP Instance UID is already stored
FAILURE_OUT_OF_RESOURCES = 0xA700
FAILURE_DOES_NOT_MATCH = 0xA900  # e.g. not in the study the URL names
FAILURE_CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class StowAnswer:
    """One stored (or not) part: UIDs when known, the instance URL when stored, else a failure reason."""

    sop_class_uid: str
    sop_instance_uid: str
    retrieve_url: str | None = None
    failure: int | None = None
    message: str = ""


def stow_response(outcomes: list[StowAnswer], study_url: str | None) -> dict[str, Any]:
    """The STOW-RS response data set (PS3.18 Table 10.5.3-1) as DICOM JSON."""
    body: dict[str, Any] = {}
    if study_url:
        body[RETRIEVE_URL] = {"vr": "UR", "Value": [study_url]}
    failed = [o for o in outcomes if o.failure is not None]
    stored = [o for o in outcomes if o.failure is None]
    if failed:
        body["00081198"] = {"vr": "SQ", "Value": [
            {
                "00081150": element("UI", o.sop_class_uid or None),
                "00081155": element("UI", o.sop_instance_uid or None),
                "00081197": {"vr": "US", "Value": [o.failure]},
                "00000902": element("LO", o.message[:64] or None),  # Error Comment
            }
            for o in failed
        ]}
    if stored:
        body["00081199"] = {"vr": "SQ", "Value": [
            {
                "00081150": element("UI", o.sop_class_uid or None),
                "00081155": element("UI", o.sop_instance_uid),
                "00081190": element("UR", o.retrieve_url),
            }
            for o in stored
        ]}
    return body


def stow_status(outcomes: list[StowAnswer]) -> int:
    """200 all stored, 202 some stored, 409 none stored (PS3.18 10.5.3)."""
    stored = sum(1 for o in outcomes if o.failure is None)
    if stored == len(outcomes):
        return 200
    return 202 if stored else 409
