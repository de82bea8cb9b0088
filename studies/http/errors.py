"""One JSON shape for every API error: {"error": "<sentence>", "code": "<machine_code>"}."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, SuspiciousOperation, TooManyFilesSent
from django.http import Http404, JsonResponse
from django.views import defaults
from rest_framework import exceptions
from rest_framework.response import Response
from rest_framework.views import set_rollback

from dicomcore.parsing import InvalidDicom
from dicomcore.rendering import FrameOutOfRange, InvalidRenderParameter, NoPixelData, RenderError
from dicomcore.tags import ElementNotFound, TagExpressionError

from ..dicomweb.protocol import QueryError
from ..errors import ServiceError
from .negotiation import NotAcceptable

# Where every answer, errors included, is the service's JSON (a share link's routes too: studies/http/shares.py).
API_PREFIXES = ("/api/", "/dicomweb/", "/share/")

# Errors of the pure DICOM core, mapped to (status, code).
DICOM_ERRORS: list[tuple[type[Exception], int, str]] = [
    (InvalidDicom, 400, "invalid_dicom"),
    (QueryError, 400, "invalid_parameter"),
    (NotAcceptable, 406, "not_acceptable"),
    (TagExpressionError, 400, "invalid_tag_expression"),
    (ElementNotFound, 404, "element_not_found"),
    (NoPixelData, 404, "no_pixel_data"),
    (FrameOutOfRange, 400, "invalid_frame"),
    (InvalidRenderParameter, 400, "invalid_parameter"),
    (RenderError, 422, "cannot_render"),
]


def error_body(message: str, code: str, **extra: Any) -> dict[str, Any]:
    return {"error": message, "code": code, **extra}


def error_response(exc: ServiceError, *, status: int | None = None) -> Response:
    """The service's error shape for a ServiceError, with its own status unless a channel's table says otherwise."""
    return Response(error_body(exc.message, exc.code, **exc.extra), status=status or exc.status)


def _sentence(detail: Any) -> str:
    """The first human message inside DRF's nested error details."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            text = _sentence(value)
            return text if key in ("non_field_errors", "detail") else f"{key}: {text}"
        return "invalid input"
    if isinstance(detail, (list, tuple)):
        return _sentence(detail[0]) if detail else "invalid input"
    return str(detail)


def exception_handler(exc: Exception, context: dict) -> Response | None:
    """DRF exception handler producing the service's error shape; unknown errors stay 500s."""
    if isinstance(exc, ServiceError):
        set_rollback()
        return error_response(exc)
    for kind, status, code in DICOM_ERRORS:
        if isinstance(exc, kind):
            return Response(error_body(str(exc), code), status=status)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("not found: no such object in your catalogue")
    elif isinstance(exc, TooManyFilesSent):
        return Response(
            error_body(f"too many files in one request; the limit is {settings.DATA_UPLOAD_MAX_NUMBER_FILES}", "too_many_files"),
            status=413,
        )
    elif isinstance(exc, SuspiciousOperation):
        exc = exceptions.ParseError("the request is malformed")
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None
    headers = {}
    auth_header = getattr(exc, "auth_header", None)  # set by DRF's APIView on authentication failures
    if auth_header:
        headers["WWW-Authenticate"] = auth_header
    wait = getattr(exc, "wait", None)  # Throttled
    if wait:
        headers["Retry-After"] = str(int(wait))
    extra: dict[str, Any] = {}
    if isinstance(exc, exceptions.ValidationError):
        extra["fields"] = exc.detail
    set_rollback()
    body = error_body(_sentence(exc.detail), getattr(exc, "default_code", "error"), **extra)
    return Response(body, status=exc.status_code, headers=headers)


def not_found(request, exception=None):
    """404 for URLs no route matches: JSON under /api/, Django's page elsewhere."""
    if request.path.startswith(API_PREFIXES):
        return JsonResponse(error_body("no such endpoint", "not_found"), status=404)
    return defaults.page_not_found(request, exception)


def server_error(request):
    """500 as JSON under /api/ (the service aims never to produce one)."""
    if request.path.startswith(API_PREFIXES):
        return JsonResponse(error_body("internal error; it has been logged", "server_error"), status=500)
    return defaults.server_error(request)
