"""The ingest outcome in HTTP terms: the REST upload's status, also the audit trail's status for
channels without HTTP (C-STORE), so that their events compare with API uploads."""

from __future__ import annotations

from ..outcome import Reason

HTTP_STATUS: dict[Reason, int] = {
    Reason.STORED: 201,
    Reason.SAME_BYTES: 200,
    Reason.SAME_UID: 409,
    Reason.SERIES_IN_OTHER_STUDY: 409,
    Reason.CATALOGUE_BUSY: 409,
    Reason.INVALID: 400,
    Reason.UNREADABLE: 400,
    Reason.WRONG_STUDY: 400,
    Reason.NOT_AN_INSTANCE: 400,
    Reason.TOO_LARGE: 413,
    Reason.QUOTA_EXCEEDED: 413,
    Reason.STORAGE_FAILED: 503,
}
