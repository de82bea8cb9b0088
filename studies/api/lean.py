"""The hottest read without DRF's dispatch: GET /api/instances/{id}/tags/{expr}/ from a script with a token.

A script reading one tag from thousands of instances pays DRF's request wrapping, content negotiation,
authentication loop, permission and throttle checks and response finalising on every call: about 0.3 ms of a
1.1 ms in-process lookup (cProfile, issue 15 round 3). This view answers the common case itself: a GET with
`Authorization: Token ...`, no `format=` and no HTML asked for, a token that authenticates, a visible instance, an
expression that parses and an element that is there. It authenticates with the same class DRF uses, reads through
the same selector and renders with DRF's JSONRenderer, so the 200 answer is the DRF view's byte for byte.

Everything else (another authentication scheme, the browsable API, HEAD and OPTIONS, and every error) is handed to
the DRF view unchanged, which works it out again and answers in the service's one error shape: the error paths
cost twice, the success path once. The audit middleware sees the same user and status either way.
"""

from __future__ import annotations

from django.http import Http404, HttpResponse
from rest_framework.exceptions import APIException
from rest_framework.renderers import JSONRenderer

from dicomcore import tags

from .. import selectors
from .authentication import CachedTokenAuthentication

_AUTH = CachedTokenAuthentication()
_RENDERER = JSONRenderer()
_HEADERS = {"Vary": "Accept", "Allow": "GET, HEAD, OPTIONS"}  # what DRF's view adds to its answer


def instance_tag(drf_view):
    """A view for the tag route that answers the common case itself and hands the rest to `drf_view`."""

    def view(request, pk, expr):
        if not _lean(request):
            return drf_view(request, pk=pk, expr=expr)
        try:
            found = _AUTH.authenticate(request)
            if found is None:
                return drf_view(request, pk=pk, expr=expr)
            user = found[0]
            steps = tags.parse_expression(expr)
            value = tags.lookup(selectors.visible_header(user, pk, tags.header_keys(steps)), steps).as_dict()
        except (APIException, Http404, tags.TagExpressionError, tags.ElementNotFound):
            return drf_view(request, pk=pk, expr=expr)  # its answer, in the one error shape
        request.user = user  # as DRF sets it: the audit middleware records who read
        response = HttpResponse(_RENDERER.render(value), content_type="application/json")
        for name, header in _HEADERS.items():
            response[name] = header
        return response

    view.csrf_exempt = True  # as DRF's views: a GET changes nothing, and token requests carry no session
    return view


# The Accept headers whose answer DRF's negotiation makes plain JSON; anything else (a browser's text/html, a
# parameter such as indent=4, a type DRF answers 406 to) goes to DRF.
# No Accept header is */* to DRF; an empty one is a 406.
PLAIN_JSON_ACCEPTS = frozenset({"*/*", "application/json"})


def _lean(request) -> bool:
    if request.method != "GET" or "format" in request.GET:
        return False
    if request.META.get("HTTP_ACCEPT", "*/*").strip() not in PLAIN_JSON_ACCEPTS:
        return False
    return request.META.get("HTTP_AUTHORIZATION", "")[:6].lower() == "token "
