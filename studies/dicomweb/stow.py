"""STOW-RS: read a `multipart/related; type="application/dicom"` body part by part into staged
files (memory stays flat), then store each through the one ingest service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, BinaryIO

import pydicom
from django.conf import settings
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from dicomcore.constants import CHUNK_SIZE

from .. import services
from ..errors import InvalidParameter, ServiceError, UploadTooLarge
from ..outcome import Outcome, Reason
from ..uploads import StagedFile, stage_stream
from . import protocol as web

if TYPE_CHECKING:
    from python_multipart.multipart import MultipartCallbacks  # defined for type checkers only

logger = logging.getLogger(__name__)

DICOM_TYPE = "application/dicom"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class LengthRequired(ServiceError):
    status = 411
    code = "length_required"


class TooManyParts(ServiceError):
    status = 413
    code = "too_many_files"


def body_stream(request) -> BinaryIO:
    """The request body as a stream, also for chunked uploads (no Content-Length) when the server
    de-chunks them (gunicorn sets wsgi.input_terminated); Django alone would read those as empty."""
    if request.META.get("CONTENT_LENGTH"):
        return request
    if request.META.get("wsgi.input_terminated"):
        return request.META["wsgi.input"]
    raise LengthRequired("the request has no body (send it with Content-Length, or chunked)")


def staged_parts(stream: BinaryIO, content_type: str) -> list[StagedFile]:
    """The DICOM parts of a STOW-RS body as staged files; 415 for any other media type, 413 over the limits."""
    media, params = parse_options_header(content_type)
    media_type = media.decode("latin-1").lower()
    if media_type == DICOM_TYPE:  # a single instance as the whole body
        return [stage_stream(stream, "")]
    if media_type != "multipart/related":
        raise UnsupportedMediaType(f"send multipart/related; type=\"{DICOM_TYPE}\" (or a single {DICOM_TYPE} body), not {media_type[:60] or 'no type'}")
    part_type = params.get(b"type", b"").decode("latin-1").lower()
    if part_type and part_type != DICOM_TYPE:
        raise UnsupportedMediaType(f"only type=\"{DICOM_TYPE}\" parts are stored (metadata + bulk data is not supported), not {part_type[:60]}")
    boundary = params.get(b"boundary")
    if not boundary:
        raise InvalidParameter("the multipart/related Content-Type has no boundary")
    reader = _PartReader()
    parser = MultipartParser(boundary, reader.callbacks())
    total = 0
    try:
        while chunk := stream.read(CHUNK_SIZE):
            total += len(chunk)
            if total > settings.DICOM_BULK_MAX_BYTES:
                raise UploadTooLarge(settings.DICOM_BULK_MAX_BYTES)
            parser.write(chunk)
        parser.finalize()
        if reader.current is not None:
            raise InvalidParameter("the multipart body ends inside a part (no closing boundary)")
    except MultipartParseError as exc:
        reader.discard()
        raise InvalidParameter(f"the multipart body is malformed ({str(exc)[:80]})") from None
    except BaseException:
        reader.discard()
        raise
    if not reader.parts:
        raise InvalidParameter("the multipart body has no parts")
    return reader.parts


class _PartReader:
    """python-multipart callbacks writing each part's bytes into a StagedFile."""

    def __init__(self) -> None:
        self.parts: list[StagedFile] = []
        self.current: StagedFile | None = None
        self._field = b""
        self._value = b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> MultipartCallbacks:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda data, start, end: self._append("_field", data[start:end]),
            "on_header_value": lambda data, start, end: self._append("_value", data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _append(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)
        if len(self._field) + len(self._value) > 8192:
            raise InvalidParameter("a part header is too long")

    def _begin(self) -> None:
        if len(self.parts) >= settings.DICOM_BULK_MAX_FILES:
            raise TooManyParts(f"too many parts in one request; the limit is {settings.DICOM_BULK_MAX_FILES}")
        self._headers = {}
        self.current = StagedFile("")

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field = self._value = b""

    def _headers_finished(self) -> None:
        media = parse_options_header(self._headers.get(b"content-type", DICOM_TYPE.encode()))[0].decode("latin-1").lower()
        if media != DICOM_TYPE:
            raise UnsupportedMediaType(f"a part is {media[:60]}; only {DICOM_TYPE} parts are stored")

    def _data(self, data: bytes, start: int, end: int) -> None:
        assert self.current is not None  # python-multipart calls it between on_part_begin and on_part_end
        self.current.append(data[start:end])

    def _end(self) -> None:
        assert self.current is not None
        self.parts.append(self.current.finish())
        self.current = None

    def discard(self) -> None:
        for staged in [*self.parts, *([self.current] if self.current else [])]:
            staged.close()
        self.parts, self.current = [], None


# Each ingest outcome in STOW-RS terms (PS3.18 Table 10.5.3-2): (Failure Reason, None = stored; Error
# Comment, an LO of at most 64 characters; None = the service's own sentence).
STOW_FAILURE: dict[Reason, tuple[int | None, str | None]] = {
    Reason.STORED: (None, None),
    Reason.SAME_BYTES: (None, None),
    Reason.SAME_UID: (web.FAILURE_DUPLICATE_UID, "another instance with this SOP Instance UID is stored"),
    Reason.SERIES_IN_OTHER_STUDY: (web.FAILURE_PROCESSING, "Series Instance UID already stored under another study"),
    Reason.CATALOGUE_BUSY: (web.FAILURE_PROCESSING, "catalogue busy; send it again"),
    Reason.INVALID: (web.FAILURE_CANNOT_UNDERSTAND, None),
    Reason.UNREADABLE: (web.FAILURE_CANNOT_UNDERSTAND, None),
    Reason.NOT_AN_INSTANCE: (web.FAILURE_CANNOT_UNDERSTAND, None),
    Reason.TOO_LARGE: (web.FAILURE_OUT_OF_RESOURCES, None),
    Reason.QUOTA_EXCEEDED: (web.FAILURE_OUT_OF_RESOURCES, "storage quota exceeded"),
    Reason.STORAGE_FAILED: (web.FAILURE_OUT_OF_RESOURCES, None),
    Reason.WRONG_STUDY: (web.FAILURE_DOES_NOT_MATCH, "not in the study the URL names"),
}


def store(owner, parts: list[StagedFile], *, study_uid: str | None, instance_url: Callable[[object], str]) -> list[web.StowAnswer]:
    """Ingest each staged part; a part that fails is that part's failure, never the request's."""
    answers = []
    for staged in parts:
        sop_class, sop_instance, part_study = _uids(staged)
        if study_uid and part_study and part_study != study_uid:
            staged.close()
            outcome = Outcome(Reason.WRONG_STUDY)
        else:
            outcome = services.ingest(owner=owner, staged=staged, label="")
        failure, comment = STOW_FAILURE[outcome.reason]
        if failure is None:
            instance = outcome.instance
            answers.append(web.StowAnswer(instance.sop_class_uid, instance.sop_instance_uid, instance_url(instance)))
        else:
            message = outcome.message if comment is None else comment
            answers.append(web.StowAnswer(sop_class, sop_instance, failure=failure, message=message))
    logger.info("stow: %d parts, %d stored", len(answers), sum(o.failure is None for o in answers))
    return answers


def _uids(staged: StagedFile) -> tuple[str, str, str]:
    """(SOP Class, SOP Instance, Study Instance) UIDs read from the part, "" where unreadable."""
    try:
        staged.seek(0)
        ds = pydicom.dcmread(
            staged.file, stop_before_pixels=True, force=True,
            specific_tags=["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"],
        )
        values = (_clean_uid(ds.get("SOPClassUID", "")), _clean_uid(ds.get("SOPInstanceUID", "")), _clean_uid(ds.get("StudyInstanceUID", "")))
    except Exception:  # noqa: BLE001 - an unreadable part is reported as a failure by the ingest below
        values = ("", "", "")
    finally:
        staged.seek(0)
    return values


def _clean_uid(value) -> str:
    text = str(value or "").strip().rstrip("\x00")
    return text if len(text) <= 64 and all(c in "0123456789." for c in text) else ""
