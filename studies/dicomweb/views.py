"""DICOMweb (PS3.18) views under /dicomweb/: QIDO-RS, WADO-RS, STOW-RS over the user's catalogue.

Thin, like the REST API: parse the request (studies.dicomweb.protocol), read or write through
qido/stow and the services, write the answer. Authentication, permissions and throttles are
DRF's: a token or basic login as on /api/, the admin's session for reads only (the bundled
viewer). Errors are the service's JSON shape. The README lists what is and is not supported
(conformance).
"""

from __future__ import annotations

import json
import logging
from itertools import chain

from django.conf import settings
from django.db.models import Case, When
from django.http import Http404, HttpResponse, JsonResponse, StreamingHttpResponse
from drf_spectacular.utils import extend_schema
from rest_framework.authentication import BasicAuthentication
from rest_framework.renderers import JSONRenderer
from rest_framework.views import APIView

from dicomcore import frames as frame_reader
from dicomcore import rendering
from dicomcore.constants import CHUNK_SIZE

from .. import labels, selectors
from ..api.authentication import CachedTokenAuthentication, ViewerSessionAuthentication
from ..http import params
from ..http.drf import FirstRendererNegotiation, ScopedUserThrottle
from ..http.images import image_response
from ..http.negotiation import NotAcceptable, parse_accept
from ..imaging import open_stored
from ..models import Study
from . import protocol as web
from . import qido, stow

logger = logging.getLogger(__name__)

JSON_TYPES = ("application/dicom+json", "application/json")


# What the WADO-RS views read of an instance (frames, retrieve, bulk data, rendered: the file, its encoding and
# size, the URL's UIDs). Naming them instead of deferring only the header cut a frame request's query (50 columns of
# three tables) from 4.9 ms to 2.2 ms in-process on PostgreSQL, most of it the ORM compiling the SELECT list.
INSTANCE_COLUMNS = (
    "id", "owner_id", "file", "sha256", "size", "sop_instance_uid", "transfer_syntax_uid", "has_pixel_data", "number_of_frames",
    "rows", "columns", "samples_per_pixel", "bits_allocated", "instance_number", "uploaded_at", "pixel_offset",
    "photometric_interpretation",
)  # fmt: skip
INSTANCE_JOINS = (("study", ("id", "study_instance_uid")), ("series", ("id", "series_instance_uid", "series_number")))
INSTANCE_FIELDS = (*INSTANCE_COLUMNS, *(f"{relation}__{name}" for relation, names in INSTANCE_JOINS for name in names if name != "id"))


@extend_schema(exclude=True)  # DICOMweb is specified by PS3.18; its conformance is in the README
class DicomWebView(APIView):
    # A token or basic login, or the admin's session for reads from this origin (the bundled viewer).
    authentication_classes = [CachedTokenAuthentication, BasicAuthentication, ViewerSessionAuthentication]
    content_negotiation_class = FirstRendererNegotiation
    renderer_classes = [JSONRenderer]
    parser_classes: list = []
    throttle_scope_name: str | None = None

    def get_throttles(self):
        return [ScopedUserThrottle(self.throttle_scope_name)] if self.throttle_scope_name else []

    def base_url(self) -> str:
        return settings.DICOMWEB_BASE_URL or self.request.build_absolute_uri("/dicomweb").rstrip("/")

    def instances(self, **uids):
        """The user's instances under the URL's UIDs (the columns WADO-RS reads: INSTANCE_FIELDS), or 404."""
        if uids.get("instance") and uids.get("series"):  # one instance (frames, its metadata, rendered): one query
            try:
                one = selectors.instance_at(
                    self.request.user, uids["study"], uids["series"], uids["instance"], fields=INSTANCE_COLUMNS, joins=INSTANCE_JOINS
                )  # fmt: skip
            except LookupError:
                pass
            else:
                if one is None:
                    raise Http404
                return [one]
        queryset = qido.instances(self.request.user, study_uid=uids["study"], series_uid=uids.get("series"), instance_uid=uids.get("instance")).only(
            *INSTANCE_FIELDS
        )
        found = list(queryset)
        if not found:
            raise Http404
        return found

    def instance_url(self, instance) -> str:
        return (
            f"{self.base_url()}/studies/{instance.study.study_instance_uid}/series/{instance.series.series_instance_uid}/instances/{instance.sop_instance_uid}"
        )


def _json(data, *, status: int = 200, warnings: list[str] | None = None) -> JsonResponse:
    response = JsonResponse(data, safe=False, status=status, content_type="application/dicom+json")
    if warnings:
        response["Warning"] = ", ".join(f'299 dicomsite "{w}"' for w in warnings)
    return response


def _check_json_accept(request) -> None:
    accepts = parse_accept(request.META.get("HTTP_ACCEPT", ""), default="application/dicom+json")
    if not any(web.matches_type(a.media_type, t) for a in accepts for t in JSON_TYPES):
        raise NotAcceptable("this resource is application/dicom+json (XML is not supported)")


# --- QIDO-RS -----------------------------------------------------------------------------------


class SearchView(DicomWebView):
    level = "study"

    def get(self, request, study: str | None = None, series: str | None = None):
        _check_json_accept(request)
        query = web.parse_query(self.level, _pairs(request), default_limit=settings.DICOMWEB_DEFAULT_LIMIT)
        results = qido.search(request.user, query, base_url=self.base_url(), study_uid=study, series_uid=series)
        return _json(results, warnings=query.warnings)


def _pairs(request) -> list[tuple[str, str]]:
    return [(name, value) for name, values in request.query_params.lists() for value in values]


class StudiesView(SearchView):
    """GET: search for studies. POST: store instances (STOW-RS)."""

    level = "study"

    def get_throttles(self):
        return [ScopedUserThrottle("upload")] if self.request.method == "POST" else []

    def post(self, request, study: str | None = None):
        _check_json_accept(request)
        parts = stow.staged_parts(stow.body_stream(request), request.META.get("CONTENT_TYPE", ""))
        outcomes = stow.store(request.user, parts, study_uid=study, instance_url=self.instance_url)
        study_uids = {o.retrieve_url.split("/studies/")[1].split("/")[0] for o in outcomes if o.retrieve_url}
        study_uid = study or (study_uids.pop() if len(study_uids) == 1 else None)
        study_url = f"{self.base_url()}/studies/{study_uid}" if study_uid else None
        return _json(web.stow_response(outcomes, study_url), status=web.stow_status(outcomes))


class SeriesSearchView(SearchView):
    level = "series"


class InstanceSearchView(SearchView):
    level = "instance"


# --- WADO-RS: instances, metadata --------------------------------------------------------------


class RetrieveView(StudiesView):
    """GET a study, series or instance as multipart/related application/dicom; POST stores into the study."""

    # `study` is optional as in SearchView.get, which this overrides; the URLs routed here always give it.
    def get(self, request, study: str | None = None, series: str | None = None, instance: str | None = None):
        found = self.instances(study=study, series=series, instance=instance)
        accepts = parse_accept(request.META.get("HTTP_ACCEPT", ""), default="application/dicom")
        plan = [(one, web.instance_transfer_syntax(accepts, one.transfer_syntax_uid, can_transcode=_can_convert(one))) for one in found]
        boundary = web.new_boundary()
        parts = ((_part_headers(self.instance_url(one), ts), _instance_chunks(one, ts)) for one, ts in plan)
        return StreamingHttpResponse(web.multipart_chunks(parts, boundary), content_type=web.multipart_type("application/dicom", boundary))


def _part_headers(location: str, transfer_syntax: str, media_type: str = "application/dicom") -> dict[str, str]:
    return {"Content-Type": f"{media_type}; transfer-syntax={transfer_syntax}", "Content-Location": location}


def _can_convert(instance) -> bool:
    pixels = (instance.rows or 0) * (instance.columns or 0) * (instance.samples_per_pixel or 1)
    decoded = pixels * ((instance.bits_allocated or 8) + 7) // 8 * max(instance.number_of_frames, 1)
    return frame_reader.can_convert(instance.transfer_syntax_uid) and decoded + instance.size <= settings.DICOMWEB_MAX_CONVERT_BYTES


def _instance_chunks(instance, transfer_syntax: str):
    """The stored file in chunks, or converted to Explicit VR Little Endian. Once the response has
    started, a failure can only end it early (logged); the client sees a truncated multipart body."""
    try:
        with instance.file.open("rb") as handle:
            if transfer_syntax == instance.transfer_syntax_uid:
                while chunk := handle.read(CHUNK_SIZE):
                    yield chunk
            else:
                yield frame_reader.to_explicit_little_endian(handle, max_bytes=settings.DICOMWEB_MAX_CONVERT_BYTES)
    except (OSError, rendering.RenderError) as exc:
        logger.error("wado-rs: instance %s could not be sent (%s)", instance.pk, type(exc).__name__)
        raise


class MetadataView(DicomWebView):
    """GET the stored headers of a study, series or instance as DICOM JSON with BulkDataURIs."""

    def get(self, request, study: str, series: str | None = None, instance: str | None = None):
        _check_json_accept(request)
        queryset = qido.instances(request.user, study_uid=study, series_uid=series, instance_uid=instance).values_list(
            "header", "has_pixel_data", "study__study_instance_uid", "series__series_instance_uid", "sop_instance_uid"
        )
        rows = queryset.iterator(chunk_size=200)
        first = next(rows, None)
        if first is None:
            raise Http404
        base = self.base_url()

        def items():
            yield "["
            for i, (header, pixels, study_uid, series_uid, sop_uid) in enumerate(chain([first], rows)):
                url = f"{base}/studies/{study_uid}/series/{series_uid}/instances/{sop_uid}"
                yield ("," if i else "") + json.dumps(web.with_bulkdata_uris(header, url, pixel_data=pixels))
            yield "]"

        return StreamingHttpResponse(items(), content_type="application/dicom+json")


# --- WADO-RS: frames and bulk data -------------------------------------------------------------


class FramesView(DicomWebView):
    """GET frames of an instance as multipart/related parts (native or as stored)."""

    def get(self, request, study: str, series: str, instance: str, frames: str):
        numbers = web.parse_frame_list(frames)
        return _frames_response(self, self.instances(study=study, series=series, instance=instance)[0], numbers)


def _frames_response(view: DicomWebView, instance, numbers: list[int] | None):
    if not instance.has_pixel_data:
        raise rendering.NoPixelData("this instance has no pixel data")
    accepts = parse_accept(view.request.META.get("HTTP_ACCEPT", ""), default="application/octet-stream")
    encoding = web.frame_encoding(accepts, instance.transfer_syntax_uid)
    numbers = numbers or list(range(1, max(instance.number_of_frames, 1) + 1))
    handle = open_stored(instance)
    try:
        frames = None
        if instance.pixel_offset is not None:  # where the value starts is in the row: no header to parse
            frames = frame_reader.read_frames_at(
                handle, _stored_pixels(instance), numbers, keep=encoding.keep, max_frame_bytes=settings.DICOM_MAX_FRAME_PIXELS
            )  # fmt: skip
        if frames is None:
            frames = frame_reader.read_frames(handle, numbers, keep=encoding.keep, max_frame_bytes=settings.DICOM_MAX_FRAME_PIXELS)
        first = next(frames)  # every number is checked before the first frame: errors come before the response
    except BaseException:
        handle.close()
        raise
    url = view.instance_url(instance)

    def parts():
        try:
            for number, content in zip(numbers, chain([first], frames)):
                yield _part_headers(f"{url}/frames/{number}", encoding.transfer_syntax, encoding.media_type), [content]
        finally:
            handle.close()

    boundary = web.new_boundary()
    return StreamingHttpResponse(
        web.multipart_chunks(parts(), boundary),
        content_type=web.multipart_type(encoding.media_type, boundary, encoding.transfer_syntax),
    )


def _stored_pixels(instance) -> frame_reader.StoredPixels:
    return frame_reader.StoredPixels(
        transfer_syntax=instance.transfer_syntax_uid, value_offset=instance.pixel_offset, file_size=instance.size,
        frames=instance.number_of_frames, rows=instance.rows, columns=instance.columns,
        samples_per_pixel=instance.samples_per_pixel, bits_allocated=instance.bits_allocated,
        photometric_interpretation=instance.photometric_interpretation,
    )  # fmt: skip


class BulkDataView(DicomWebView):
    """GET one value a metadata BulkDataURI names; Pixel Data is served as its frames."""

    def get(self, request, study: str, series: str, instance: str, path: str):
        steps = web.parse_bulkdata_path(path)
        one = self.instances(study=study, series=series, instance=instance)[0]
        if steps == ["7FE00010"]:
            return _frames_response(self, one, None)
        with open_stored(one) as handle:
            content = frame_reader.bulk_value(handle, steps)
        if content is None:
            raise Http404
        boundary = web.new_boundary()
        part = ({"Content-Type": "application/octet-stream", "Content-Location": f"{self.instance_url(one)}/bulkdata/{path}"}, [content])
        return StreamingHttpResponse(web.multipart_chunks([part], boundary), content_type=web.multipart_type("application/octet-stream", boundary))


# --- WADO-RS: rendered and thumbnail -----------------------------------------------------------


class RenderedView(DicomWebView):
    """GET a rendered image (or thumbnail) of an instance or one frame; at study/series level, of the first image."""

    throttle_scope_name = "render"
    thumbnail = False

    def get(self, request, study: str, series: str | None = None, instance: str | None = None, frames: str | None = None):
        numbers = web.parse_frame_list(frames) if frames else [1]
        if len(numbers) != 1:
            raise web.QueryError("a rendered request names one frame")
        found = [one for one in self.instances(study=study, series=series, instance=instance) if one.has_pixel_data]
        if not found:
            raise rendering.NoPixelData("nothing here has pixel data")
        options = params.rendered_options(
            request.query_params,
            request.META.get("HTTP_ACCEPT", ""),
            frame=numbers[0],
            thumbnail_size=settings.DICOM_THUMBNAIL_SIZE if self.thumbnail else None,
        )
        return image_response(request, found[0], options)


class ThumbnailView(RenderedView):
    thumbnail = True


# --- labels (this service's extension, addressed by Study Instance UID) ---------------------------------------------


class StudyLabelsView(DicomWebView):
    """GET /dicomweb/studies/{uid}/labels: your labels on the study, as {"labels": [...]}."""

    def study(self, uid: str) -> Study:
        """The study with this UID you may see: your own copy first, else the first stored (view_all); or 404."""
        found = (
            selectors.studies_for(self.request.user).filter(study_instance_uid=uid)
            .order_by(Case(When(owner=self.request.user, then=0), default=1), "created_at", "id").first()
        )  # fmt: skip
        if found is None:
            raise Http404
        return found

    def get(self, request, study: str):
        return JsonResponse({"labels": labels.of(request.user, self.study(study))})


class StudyLabelView(StudyLabelsView):
    """PUT /dicomweb/studies/{uid}/labels/{name}: put the label on (201; 200 if there). DELETE: take it off (204)."""

    http_method_names = ["put", "delete", "options"]

    def put(self, request, study: str, name: str):
        obj = self.study(study)
        created = labels.add(request.user, obj, name)
        return JsonResponse({"labels": labels.of(request.user, obj)}, status=201 if created else 200)

    def delete(self, request, study: str, name: str):
        if not labels.remove(request.user, self.study(study), name):
            raise Http404
        return HttpResponse(status=204)
