"""Request guards that apply to every route (API, admin, docs)."""

from __future__ import annotations

from django.http import HttpResponseBadRequest, JsonResponse

from .errors import API_PREFIXES, error_body


class RejectNulInQueryMiddleware:
    """A NUL character in a query parameter is never meaningful, and PostgreSQL refuses it in any
    string comparison (a 500 from a search or filter). Such requests get a clear 400."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()):
            message = "query parameters must not contain NUL characters"
            if request.path.startswith(API_PREFIXES):
                return JsonResponse(error_body(message, "invalid_parameter"), status=400)
            return HttpResponseBadRequest(message)
        return self.get_response(request)


# What a non-JSON error page under the API prefixes becomes (Django's own pages: DEBUG's technical 404/500,
# CommonMiddleware's redirects are not errors and pass).
PAGE_ERRORS = {
    400: ("the request is malformed", "parse_error"),
    403: ("you may not do this", "permission_denied"),
    404: ("no such endpoint", "not_found"),
    405: ("this method is not allowed here", "method_not_allowed"),
    413: ("the request is larger than the service accepts", "too_large"),
    500: ("internal error; it has been logged", "server_error"),
}
FALLBACK = ("the request cannot be answered", "error")  # any other status a framework page may carry


class JsonErrorsMiddleware:
    """Under /api/ and /dicomweb/ every error is the service's JSON shape, in DEBUG too: Django's HTML pages
    (the technical 404 of an unknown route or a malformed id, a 500 page) are replaced, with the same status."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if (
            response.status_code >= 400
            and request.path.startswith(API_PREFIXES)
            and not response.get("Content-Type", "").startswith(("application/json", "application/dicom+json"))
        ):
            message, code = PAGE_ERRORS.get(response.status_code, FALLBACK)
            return JsonResponse(error_body(message, code), status=response.status_code)
        return response
