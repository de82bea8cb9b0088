"""The bulk tag lookup: a table of tag values across instances, a study or a series, as JSON or
as a streamed CSV download (safe against spreadsheet formula injection)."""

from __future__ import annotations

import csv
import io
import json

from django.conf import settings
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from dicomcore import tags

from .. import selectors
from ..errors import InvalidParameter
from ..http.drf import FirstRendererNegotiation
from .schema import errors
from .serializers import TagLookupResultSerializer, TagLookupSerializer


class TagLookupView(APIView):
    """Bulk tag lookup: a table of tag values across instances, a study or a series."""

    parser_classes = [JSONParser]
    content_negotiation_class = FirstRendererNegotiation  # the view answers CSV itself; errors stay JSON

    @extend_schema(
        summary="Look up tags across many instances",
        description=(
            "Exactly one of `instances` (ids), `study` or `series` (ids from /api/studies/ and /api/series/), and "
            "`tags` (expressions as for the single lookup). One row per instance with each expression's value "
            "(null when absent). 400 names a malformed expression; 404 when any instance, study or series is not "
            "in your catalogue. `?format=csv` (or `Accept: text/csv`) answers with a CSV download instead."
        ),
        request=TagLookupSerializer,
        parameters=[OpenApiParameter("format", str, enum=["json", "csv"], description="csv for a spreadsheet")],
        responses={200: TagLookupResultSerializer, (200, "text/csv"): OpenApiTypes.STR, **errors(400, 401, 404)},
    )
    def post(self, request):
        serializer = TagLookupSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        expressions = data["tags"]
        parsed = [tags.parse_expression(expr) for expr in expressions]
        keys = tags.header_keys(*parsed)
        queryset = selectors.lookup_instances(
            request.user, keys=keys, instances=data.get("instances"), study=data.get("study"), series=data.get("series")
        )
        if queryset.count() > settings.DICOM_LOOKUP_MAX_INSTANCES:
            raise InvalidParameter(f"the lookup covers more than {settings.DICOM_LOOKUP_MAX_INSTANCES} instances; narrow it")
        rows = (
            (inst, [_lookup_cell(header, steps) for steps in parsed])
            for inst in queryset.iterator(chunk_size=200)
            for header in [selectors.partial_header(inst, keys)]
        )
        if _wants_csv(request):
            response = StreamingHttpResponse(_csv_lines(expressions, rows), content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = 'attachment; filename="tags.csv"'
            return response
        results = [
            {"id": str(inst.pk), "sop_instance_uid": inst.sop_instance_uid, "values": dict(zip(expressions, values, strict=True))}
            for inst, values in rows
        ]
        return Response({"tags": expressions, "results": results})


def _lookup_cell(header, steps):
    """The value, or None when absent or when the path does not fit this header (e.g. it enters an
    element that is not a sequence here): decided per instance, so never an error mid-stream."""
    try:
        return tags.lookup_value(header, steps)
    except tags.TagExpressionError:
        return None


def _wants_csv(request) -> bool:
    fmt = (request.query_params.get("format") or "").lower()
    if fmt:
        if fmt not in ("csv", "json"):
            raise InvalidParameter(f"format must be csv or json, not '{fmt[:20]}'")
        return fmt == "csv"
    return "text/csv" in request.META.get("HTTP_ACCEPT", "")


def _csv_lines(expressions, rows):
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["id", "sop_instance_uid", *expressions])
    for inst, values in rows:
        writer.writerow([str(inst.pk), inst.sop_instance_uid, *(_csv_cell(v) for v in values)])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _csv_cell(value) -> str:
    """Scalars as text, multiple values joined by a backslash (DICOM's separator), structures as JSON."""
    if value is None:
        return ""
    if isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
        text = "\\".join(str(v) for v in value)
    elif isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    else:
        text = str(value)
    # A leading = + - @ would make a spreadsheet evaluate the cell (CSV injection): quote it as text.
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _is_number(text) else text


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True

