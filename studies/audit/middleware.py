"""The audit trail of HTTP requests.

`AuditMiddleware` writes one append-only AuditEvent for every request that reads or changes
patient data (the API's instance/study/series/tag routes, DICOMweb, the catalogue's admin
pages), whatever its outcome: success, denied, not_found (no such object), refused (bad
input) or error. A 404 for an object that exists but belongs to someone else is recorded as
denied: the client is not told, the audit trail is.
"""

from __future__ import annotations

import logging
import re

from django.conf import settings
from django.urls import Resolver404, resolve

from .events import write_event

logger = logging.getLogger(__name__)

AUDITED_PREFIXES = ("/api/instances", "/api/studies", "/api/series", "/api/tags", "/api/auth", "/api/shares", "/dicomweb/", "/share/",
                    "/admin/studies/")  # fmt: skip
OBJECT_TYPES = {"instance": "instance", "study": "study", "series": "series"}


class AuditMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.path.startswith(AUDITED_PREFIXES):
            try:
                record(request, response.status_code)
            except Exception:
                logger.exception("audit event could not be written")
        return response


def record(request, status: int) -> None:
    """Write the AuditEvent for one finished request."""
    action, object_type, object_id = describe(request)
    # DRF authenticates (token, basic) inside the view and sets the user on Django's request too.
    user = getattr(request, "user", None)
    authenticated = bool(user is not None and user.is_authenticated)
    link = getattr(request, "share_link", None)
    if link is not None or request.path.startswith("/share/"):
        # A share link's recipient has no account: the use is the link's (never its secret, which is in the path).
        user, authenticated = None, False
        object_type, object_id = ("share", str(link.pk)) if link is not None else ("", "")
    outcome = _outcome(status)
    if status == 404 and authenticated and object_type and object_id and _exists(object_type, object_id):
        outcome = "denied"
    write_event(
        user=user if authenticated else None,
        action=action,
        method=request.method,
        object_type=object_type,
        object_id=object_id,
        outcome=outcome,
        status=status,
        client_address=client_address(request),
        request_id=getattr(request, "request_id", ""),
    )


def describe(request) -> tuple[str, str, str]:
    """(action, object type, object id) from the URL that was asked for."""
    match = getattr(request, "resolver_match", None)  # set by Django's URL resolution for this request
    if match is None:
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return "unknown-route", "", ""
    name = match.url_name or "unknown"
    if request.path.startswith("/share/"):
        return name[:64], "", ""  # record() names the link
    if request.path.startswith("/admin/"):
        action = "admin-" + name.removeprefix("studies_").replace("_", "-")
        object_id = str(match.kwargs.get("object_id", ""))
        model = name.removeprefix("studies_").split("_")[0]
    elif request.path.startswith("/dicomweb/"):  # objects are named by their deepest DICOM UID
        action = name
        model = next((level for level in ("instance", "series", "study") if match.kwargs.get(level)), "")
        object_id = str(match.kwargs.get(model, "")) if model else ""
    else:
        action = name
        object_id = str(match.kwargs.get("pk", "") or match.kwargs.get("study", "") or "")
        model = name.split("-")[0]
    if request.method not in ("GET", "HEAD", "OPTIONS") and not action.endswith(request.method.lower()):
        action = f"{action}-{request.method.lower()}"
    return action[:64], OBJECT_TYPES.get(model, "") if object_id else "", object_id


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    if status in (401, 403):
        return "denied"
    if status == 404:
        return "not_found"
    if status < 500:
        return "refused"
    return "error"


def _exists(object_type: str, object_id: str) -> bool:
    """Whether the object exists for anyone: by id (REST API, admin) or by DICOM UID (DICOMweb paths)."""
    from ..models import Instance, Series, Study  # the catalogue's models import this package's

    models: dict[str, tuple[type[Instance] | type[Study] | type[Series], str]] = {
        "instance": (Instance, "sop_instance_uid"),
        "study": (Study, "study_instance_uid"),
        "series": (Series, "series_instance_uid"),
    }
    model, uid_field = models[object_type]
    lookup = {uid_field: object_id} if re.fullmatch(r"[0-9.]+", object_id) else {"pk": object_id}
    try:
        return model.objects.filter(**lookup).exists()
    except Exception:  # noqa: BLE001 - a malformed id exists nowhere
        return False


def client_address(request) -> str | None:
    """REMOTE_ADDR, or the first X-Forwarded-For hop when the deployer says a proxy sets it."""
    address = request.META.get("REMOTE_ADDR", "")
    if settings.AUDIT_TRUST_X_FORWARDED_FOR:
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")[0].strip()
        address = forwarded or address
    return address or None
