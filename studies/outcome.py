"""The one answer of the ingest service: what happened to one file, for every channel.

`services.ingest()` and `services.ingest_batch()` return an `Outcome` per file and never raise for
a file's own problem. Each channel (REST upload, bulk upload, import_dicom, admin upload,
DICOMweb STOW-RS, DICOM C-STORE) owns one table mapping `Reason` to its own terms (HTTP status,
STOW failure reason, DIMSE status, report row) and nothing else: adding a reason makes each
channel's table test fail until the channel says what the reason means to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import ServiceError  # which imports this module


class Status(StrEnum):
    """The word a report row, the admin and the bulk API show for a file."""

    CREATED = "created"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    REFUSED = "refused"
    SKIPPED = "skipped"


class Reason(StrEnum):
    """Why the outcome is what it is; every channel's mapping table is keyed by this."""

    STORED = "stored"  # created: stored and catalogued
    SAME_BYTES = "same_bytes"  # duplicate: the owner already holds these exact bytes
    SAME_UID = "same_uid"  # conflict: same SOP Instance UID, other bytes
    SERIES_IN_OTHER_STUDY = "series_in_other_study"  # conflict: the series is catalogued under another study
    CATALOGUE_BUSY = "catalogue_busy"  # conflict: concurrent writers kept changing the hierarchy; try again
    INVALID = "invalid_dicom"  # refused: not a DICOM instance the catalogue can hold (empty, truncated, hostile...)
    TOO_LARGE = "too_large"  # refused: larger than DICOM_MAX_UPLOAD_BYTES
    QUOTA_EXCEEDED = "quota_exceeded"  # refused: the owner's storage quota (bytes or instances) would be exceeded
    STORAGE_FAILED = "storage_unavailable"  # refused: storage full or failing; nothing was kept
    UNREADABLE = "unreadable"  # refused before parsing: an unreadable file or an unsafe/over-limit archive member
    WRONG_STUDY = "wrong_study"  # refused: not in the study the request names (STOW-RS POST /studies/{uid})
    NOT_AN_INSTANCE = "not_an_instance"  # skipped: README, DICOMDIR index, JPEG, nested archive...


STATUS_OF: dict[Reason, Status] = {
    Reason.STORED: Status.CREATED,
    Reason.SAME_BYTES: Status.DUPLICATE,
    Reason.SAME_UID: Status.CONFLICT,
    Reason.SERIES_IN_OTHER_STUDY: Status.CONFLICT,
    Reason.CATALOGUE_BUSY: Status.CONFLICT,
    Reason.INVALID: Status.REFUSED,
    Reason.TOO_LARGE: Status.REFUSED,
    Reason.QUOTA_EXCEEDED: Status.REFUSED,
    Reason.STORAGE_FAILED: Status.REFUSED,
    Reason.UNREADABLE: Status.REFUSED,
    Reason.WRONG_STUDY: Status.REFUSED,
    Reason.NOT_AN_INSTANCE: Status.SKIPPED,
}


@dataclass(frozen=True)
class Outcome:
    """What happened to one file.

    `instance` is the catalogued Instance when the service has it in hand (created, or a single
    file's duplicate); `object_id` / `object_type` name the instance stored or already there, or
    what a conflict is with ("instance" or "series"); both are None in a dry run's "created".
    `message` is the human sentence for anything not stored. `label` is what the file was called
    in the request or the run (shown back to the caller in reports; never logged or stored as a key).
    `error` is the service's refusal (a ServiceError with HTTP status and code) when there is one.
    """

    reason: Reason
    message: str = ""
    instance: Any = None
    object_id: str | None = None
    object_type: str = "instance"
    label: str = ""
    size: int = 0
    error: ServiceError | None = None

    @property
    def status(self) -> Status:
        return STATUS_OF[self.reason]

    @property
    def stored(self) -> bool:
        """Created or duplicate: the owner's catalogue holds the file after this call."""
        return self.status in (Status.CREATED, Status.DUPLICATE)

    @property
    def id(self) -> str | None:
        """The instance stored (or already there), else the object a conflict is with."""
        return self.object_id

    def report_row(self) -> dict[str, Any]:
        """The row import_dicom's report and the bulk upload API show for this file."""
        return {"filename": self.label, "status": str(self.status), "id": self.id, "error": self.message, "size": self.size}


def counts(outcomes) -> dict[str, int]:
    """How many outcomes have each status, every status present (0 when none)."""
    tally = dict.fromkeys((str(s) for s in Status), 0)
    for outcome in outcomes:
        tally[str(outcome.status)] += 1
    return tally
