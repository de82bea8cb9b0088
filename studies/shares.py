"""Share links: one study for someone without an account, until the link expires or its owner revokes it.

A link is `/share/<secret>/`; only the secret's SHA-256 is stored, so the database alone cannot be used to open
one, and the secret is shown once, when the link is made. What it opens (studies.http.shares): that study in the
viewer, its DICOMweb read routes (for the viewer), and its zip. Nothing else: no other study (404), no write
(405), no API route (the secret is not a token). A de-identified link (the Basic Profile and the options chosen,
on the fly, the same new UIDs at every download) offers the zip only: the viewer would read the originals.
Every use is in the audit trail as the link's, not its owner's (studies.audit.middleware).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets

from django.conf import settings
from django.db.models import F
from django.utils import timezone

from dicomcore import deid

from . import deidentify
from .errors import InvalidParameter, ServiceError
from .models import ShareLink, Study


class ShareNotFound(ServiceError):
    """No link has this secret."""

    status = 404
    code = "not_found"


class ShareExpired(ServiceError):
    """The link has expired or was revoked: it opens nothing any more."""

    status = 410
    code = "share_expired"


class ShareZipOnly(ServiceError):
    """A de-identified link offers the zip only."""

    status = 409
    code = "share_zip_only"

    def __init__(self, message: str = "this link shares a de-identified copy: download it from its zip") -> None:
        super().__init__(message)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create(
    *, owner, study: Study, expires_in_hours: int | None = None, deidentify_options: list[str] | None = None, confirm_burned_in: bool = False
) -> tuple[ShareLink, str]:
    """A new link to `study` (the owner's own) and its secret, which is not kept. `deidentify_options`: None for the
    originals, else the de-identification options (possibly none: the Basic Profile alone); as for a de-identified
    copy, images that may show identity in their pixels are refused unless `confirm_burned_in`."""
    hours = settings.DICOM_SHARE_DEFAULT_HOURS if expires_in_hours is None else expires_in_hours
    if not 1 <= hours <= settings.DICOM_SHARE_MAX_HOURS:
        raise InvalidParameter(f"expires_in_hours must be 1 to {settings.DICOM_SHARE_MAX_HOURS}, not {hours}")
    fields: dict = {}
    if deidentify_options is not None:
        options = sorted(set(deidentify_options))
        unknown = set(options) - set(deid.OPTIONS)
        if unknown:
            raise InvalidParameter(f"unknown de-identification option {sorted(unknown)[0]!r}; options are {', '.join(deid.OPTIONS)}")
        choices = deidentify.Choices(options=frozenset(options), confirm_burned_in=confirm_burned_in)
        deidentify.check_burned_in(study.instances.all(), choices)
        fields = {"deidentify": True, "deid_options": options, "deid_secret": secrets.token_hex(32)}
    secret = secrets.token_urlsafe(32)
    link = ShareLink.objects.create(
        owner=owner, study=study, token_digest=digest(secret), expires_at=timezone.now() + dt.timedelta(hours=hours), **fields
    )
    return link, secret


def open_link(secret: str, *, count: bool = True) -> ShareLink:
    """The live link with this secret, counted as used (`uses`, `last_used_at`) unless `count` is off; ShareNotFound
    or ShareExpired. The viewer's DICOMweb reads are not counted (a study of 200 frames would be 200 writes to one
    row, in parallel); each of them is an audit event all the same."""
    link = ShareLink.objects.select_related("study", "owner").filter(token_digest=digest(secret)).first()
    if link is None:
        raise ShareNotFound("no such share link")
    now = timezone.now()
    if link.revoked_at is not None or link.expires_at <= now:
        raise ShareExpired("this share link has expired or was revoked")
    if count:
        ShareLink.objects.filter(pk=link.pk).update(uses=F("uses") + 1, last_used_at=now)
    return link


def revoke(link: ShareLink) -> None:
    if link.revoked_at is None:
        link.revoked_at = timezone.now()
        link.save(update_fields=["revoked_at"])


def choices(link: ShareLink) -> deidentify.Choices:
    """How a de-identified link's zip is made: its options, keyed by its own secret (burned-in text was checked
    when the link was made)."""
    return deidentify.Choices(options=frozenset(link.deid_options), secret=link.deid_secret, confirm_burned_in=True)


def is_live(link: ShareLink) -> bool:
    return link.revoked_at is None and link.expires_at > timezone.now()
