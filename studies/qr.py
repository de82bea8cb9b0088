"""Query/Retrieve for the DICOM node (`manage.py dicomserver`): C-FIND identifiers answered by the QIDO-RS engine
(one matching implementation for DICOMweb and DIMSE: PS3.18 defines QIDO-RS matching by PS3.4 C.2.2.2), and the
instances a C-MOVE or C-GET identifier names. Everything is scoped to the user the peer acts for.

Information models: Patient Root and Study Root (PS3.4 C.6.1, C.6.2), hierarchical (extended negotiation for
relational queries is not offered): above the query level, each level's unique key must be one value.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from django.conf import settings
from django.db.models import F
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from . import selectors
from .dicomweb import protocol as web
from .dicomweb import qido
from .models import Instance

# SOP Class UIDs of the information models (PS3.4 Annex C.6) → the model's root.
FIND = {"1.2.840.10008.5.1.4.1.2.1.1": "patient", "1.2.840.10008.5.1.4.1.2.2.1": "study"}
MOVE = {"1.2.840.10008.5.1.4.1.2.1.2": "patient", "1.2.840.10008.5.1.4.1.2.2.2": "study"}
GET = {"1.2.840.10008.5.1.4.1.2.1.3": "patient", "1.2.840.10008.5.1.4.1.2.2.3": "study"}

LEVELS = {"patient": ("PATIENT", "STUDY", "SERIES", "IMAGE"), "study": ("STUDY", "SERIES", "IMAGE")}
UNIQUE_KEY = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}
QIDO_LEVEL = {"STUDY": "study", "SERIES": "series", "IMAGE": "instance"}
PATIENT_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex")
PATIENT_COUNTS = {"NumberOfPatientRelatedStudies": "studies", "NumberOfPatientRelatedSeries": "series", "NumberOfPatientRelatedInstances": "instances"}
# Not matching or return keys of the catalogue: the request's own bookkeeping.
CONTROL_TAGS = {0x00080005, 0x00080052, 0x00080054, 0x00080056}  # Specific Character Set, Q/R level, Retrieve AE, availability

# PS3.4 C.4.1.1.4 / C.4.2.1.4 statuses this module decides (the rest are pynetdicom's).
IDENTIFIER_DOES_NOT_MATCH = 0xA900
UNABLE_TO_PROCESS = 0xC000

PAGE = 500  # results asked of the QIDO engine at a time


class QRFailure(Exception):
    """A C-FIND / C-MOVE / C-GET refused: the DIMSE status and an Error Comment."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class Request:
    level: str  # PATIENT, STUDY, SERIES or IMAGE
    model: str  # "patient" or "study"
    identifier: Dataset


def parse(identifier: Dataset | None, model: str) -> Request:
    """The identifier's Query/Retrieve level, checked against the information model and the hierarchy."""
    if identifier is None:
        raise QRFailure(UNABLE_TO_PROCESS, "the identifier cannot be decoded")
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level not in LEVELS[model]:
        raise QRFailure(IDENTIFIER_DOES_NOT_MATCH, f"Query/Retrieve Level must be one of {', '.join(LEVELS[model])}")
    levels = LEVELS[model]
    for above in levels[: levels.index(level)]:
        key = UNIQUE_KEY[above]
        if not _single(identifier, key):
            raise QRFailure(IDENTIFIER_DOES_NOT_MATCH, f"a {level} query needs one {key} (hierarchical model)")
    return Request(level, model, identifier)


def _single(identifier: Dataset, keyword: str) -> bool:
    value = _text(identifier.get(keyword))
    return bool(value) and "\\" not in value and "*" not in value and "?" not in value


def _text(value) -> str:
    """A request value as QIDO-RS would get it in its query string (multiple values joined by backslashes)."""
    if value is None:
        return ""
    if isinstance(value, (list, MultiValue)):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


# --- C-FIND -----------------------------------------------------------------------------------------------------


def find(user, request: Request, *, ae_title: str) -> Iterator[Dataset]:
    """The C-FIND responses' identifiers, one per match (PS3.4 C.4.1.2): every key of the request, filled."""
    if request.level == "PATIENT":
        yield from _patients(user, request, ae_title)
        return
    level = QIDO_LEVEL[request.level]
    params, wanted = _query_params(request.identifier, level)
    for result in _search(user, level, params):
        yield _answer(result, wanted, request, ae_title)


def _query_params(identifier: Dataset, level: str) -> tuple[list[tuple[str, str]], list[DataElement]]:
    """QIDO-RS parameters for the identifier's matching keys (and its return keys as includefield), and the
    elements the answers must carry."""
    params, include, wanted = [], [], []
    levels = web.LEVELS[: web.LEVELS.index(level) + 1]
    for elem in identifier:
        if elem.tag in CONTROL_TAGS or elem.tag.is_private or elem.tag.group == 0x0002:
            continue
        wanted.append(elem)
        tag = f"{int(elem.tag):08X}"
        value = "" if elem.VR == "SQ" else _text(elem.value)
        attribute = web.BY_TAG.get(tag)
        if value and attribute is not None and attribute.level in levels and tag not in web.NOT_MATCHABLE:
            params.append((tag, value))
        else:
            include.append(tag)
    if include:
        params.append(("includefield", ",".join(include)))
    return params, wanted


def _search(user, level: str, params: list[tuple[str, str]]) -> Iterator[dict]:
    """Every match of the QIDO-RS engine, a page at a time (C-FIND has no limit)."""
    offset = 0
    while True:
        try:
            query = web.parse_query(level, [*params, ("limit", str(PAGE)), ("offset", str(offset))])
        except web.QueryError as invalid:
            raise QRFailure(IDENTIFIER_DOES_NOT_MATCH, str(invalid)) from None
        results = qido.search(user, query, base_url=settings.DICOMWEB_BASE_URL or "")
        yield from results
        if len(results) < PAGE or not query.warnings:
            return
        offset += PAGE


def _answer(result: dict, wanted: list[DataElement], request: Request, ae_title: str) -> Dataset:
    found = Dataset.from_json({tag: elem for tag, elem in result.items() if "BulkData" not in elem})
    out = Dataset()
    out.SpecificCharacterSet = "ISO_IR 192"
    out.QueryRetrieveLevel = request.level
    for elem in wanted:
        if elem.tag in found:
            out[elem.tag] = found[elem.tag]
        else:
            out.add_new(elem.tag, elem.VR, [] if elem.VR == "SQ" else None)
    if "RetrieveAETitle" in request.identifier:
        out.RetrieveAETitle = ae_title
    return out


def _patients(user, request: Request, ae_title: str) -> Iterator[Dataset]:
    """PATIENT level (Patient Root): the studies matching the patient keys, one answer per Patient ID."""
    identifier = request.identifier
    params = [(k, _text(identifier.get(k))) for k in PATIENT_KEYS if _text(identifier.get(k))]
    patients: dict[str, dict] = {}
    for result in _search(user, "study", params):
        pid = _json_text(result.get("00100020"))
        patient = patients.setdefault(pid, {"first": result, "studies": 0, "series": 0, "instances": 0})
        patient["studies"] += 1
        patient["series"] += int(_json_text(result.get("00201206")) or 0)
        patient["instances"] += int(_json_text(result.get("00201208")) or 0)
    for patient in patients.values():
        found = Dataset.from_json({t: e for t, e in patient["first"].items() if t[:4] == "0010"})
        out = Dataset()
        out.SpecificCharacterSet = "ISO_IR 192"
        out.QueryRetrieveLevel = "PATIENT"
        for elem in identifier:
            if elem.tag in CONTROL_TAGS or elem.tag.is_private or elem.tag.group == 0x0002:
                continue
            keyword = keyword_for_tag(elem.tag)
            if keyword in PATIENT_COUNTS:
                out.add_new(elem.tag, "IS", patient[PATIENT_COUNTS[keyword]])
            elif elem.tag in found:
                out[elem.tag] = found[elem.tag]
            else:
                out.add_new(elem.tag, elem.VR, [] if elem.VR == "SQ" else None)
        if "RetrieveAETitle" in identifier:
            out.RetrieveAETitle = ae_title
        yield out


def _json_text(elem: dict | None) -> str:
    values = (elem or {}).get("Value") or [""]
    return str(values[0]) if values[0] is not None else ""


# --- C-MOVE / C-GET ---------------------------------------------------------------------------------------------


def instances(user, request: Request) -> list[Instance]:
    """The instances a retrieve identifier names (its unique keys at and above its level, PS3.4 C.4.2.2.1), in
    study, series and instance order; each SOP Instance UID once for a view_all user."""
    identifier, level = request.identifier, request.level
    key = UNIQUE_KEY[level]
    values = [v for v in _text(identifier.get(key)).split("\\") if v.strip()]
    if not values:
        raise QRFailure(IDENTIFIER_DOES_NOT_MATCH, f"a {level} retrieve needs {key}")
    if any("*" in v or "?" in v for v in values):
        raise QRFailure(IDENTIFIER_DOES_NOT_MATCH, f"{key} of a retrieve is a list of values, not a pattern")
    queryset = selectors.scoped(Instance.objects.select_related("study", "series"), user)
    field = {"PATIENT": "study__patient_id", "STUDY": "study__study_instance_uid",
             "SERIES": "series__series_instance_uid", "IMAGE": "sop_instance_uid"}  # fmt: skip
    queryset = queryset.filter(**{f"{field[level]}__in": values})
    for above in LEVELS[request.model][: LEVELS[request.model].index(level)]:
        queryset = queryset.filter(**{field[above]: _text(identifier.get(UNIQUE_KEY[above]))})
    if selectors.can_view_all(user):
        queryset = qido.one_per_uid(queryset, "instance")
    return list(
        queryset.defer("header").order_by(
            "study__study_instance_uid", F("series__series_number").asc(nulls_last=True), "series_id",
            F("instance_number").asc(nulls_last=True), "uploaded_at", "id",
        )
    )  # fmt: skip


def audited_object(request: Request) -> tuple[str, str]:
    """(object type, id) for the audit event of a request that names one study, series or instance."""
    for level, object_type in (("IMAGE", "instance"), ("SERIES", "series"), ("STUDY", "study")):
        value = _text(request.identifier.get(UNIQUE_KEY[level]))
        if value and "\\" not in value and "*" not in value and "?" not in value:
            return object_type, value[:64]
    return "", ""
