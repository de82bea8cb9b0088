"""Errors the services raise; the API turns each into {"error", "code"} with its status."""

from __future__ import annotations

from typing import Any

from .outcome import Reason


class ServiceError(Exception):
    """A refusal with a machine code, an HTTP status and a human sentence."""

    status = 400
    code = "invalid"
    reason = Reason.INVALID  # what an ingest refusal with this error is, for every channel's table

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class InvalidUpload(ServiceError):
    """The upload is not a DICOM file the catalogue can hold."""

    code = "invalid_dicom"


class UnreadableSource(ServiceError):
    """A file being imported could not be read (a failing disk or medium); nothing was stored."""

    code = "unreadable"
    reason = Reason.UNREADABLE


class MissingFile(ServiceError):
    """The request carried no file."""

    code = "missing_file"


class UploadTooLarge(ServiceError):
    """The upload exceeds DICOM_MAX_UPLOAD_BYTES."""

    status = 413
    code = "too_large"
    reason = Reason.TOO_LARGE

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than the limit of {limit} bytes", limit=limit)


class QuotaExceeded(ServiceError):
    """Storing the file would take its owner past their quota (bytes or instances); nothing was kept."""

    status = 413
    code = "quota_exceeded"
    reason = Reason.QUOTA_EXCEEDED


class Conflict(ServiceError):
    """The owner already holds different bytes under the same identity."""

    status = 409
    code = "conflict"
    reason = Reason.SAME_UID


class SeriesConflict(Conflict):
    """The file's series is already catalogued under another study of the owner's."""

    reason = Reason.SERIES_IN_OTHER_STUDY


class CatalogueBusy(Conflict):
    """Concurrent writers kept changing the study/series the file joins; the client may try again."""

    reason = Reason.CATALOGUE_BUSY


class InvalidParameter(ServiceError):
    """A query or body parameter is malformed or out of range."""

    code = "invalid_parameter"


class StorageFailure(ServiceError):
    """The file could not be written completely (disk full, storage failing); nothing was kept."""

    status = 503
    code = "storage_unavailable"
    reason = Reason.STORAGE_FAILED


class UnknownPeer(ServiceError):
    """A send names an AE title that is not a DICOM peer this user may send to."""

    code = "unknown_peer"
