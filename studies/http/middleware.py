"""Request guards that apply to every route (API, admin, docs)."""

from __future__ import annotations

from django.http import HttpResponseBadRequest, JsonResponse

from .errors import error_body


class RejectNulInQueryMiddleware:
    """A NUL character in a query parameter is never meaningful, and PostgreSQL refuses it in any
    string comparison (a 500 from a search or filter). Such requests get a clear 400."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if any("\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()):
            message = "query parameters must not contain NUL characters"
            if request.path.startswith(("/api/", "/dicomweb/")):
                return JsonResponse(error_body(message, "invalid_parameter"), status=400)
            return HttpResponseBadRequest(message)
        return self.get_response(request)
