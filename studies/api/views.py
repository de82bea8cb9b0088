"""REST API viewsets: parse the request, call a selector or service, serialize. Nothing more."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from django.conf import settings
from django.db.models import QuerySet
from django.http import FileResponse, StreamingHttpResponse
from django.urls import reverse
from django.utils.http import content_disposition_header
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, viewsets
from rest_framework.authtoken.views import ObtainAuthToken
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from dicomcore import rendering, tags, zipstream

from .. import bulk_upload, deidentify, header_search, labels, outbound, quotas, selectors, services, shares
from ..dicomweb import qido
from ..errors import InvalidParameter, InvalidUpload, MissingFile, ServiceError, UploadTooLarge
from ..http import params
from ..http import shares as share_pages
from ..http.drf import FirstRendererNegotiation, ScopedUserThrottle
from ..http.errors import error_response
from ..http.images import image_response
from ..http.status import HTTP_STATUS
from ..models import Deidentification, DicomSend, ShareLink
from ..outcome import Reason
from ..outcome import counts as status_counts
from ..uploads import as_staged
from .parsers import DicomParser, StagingMultiPartParser
from .schema import errors
from .serializers import (
    BulkUploadResultSerializer,
    BulkUploadSerializer,
    ConflictSerializer,
    DeidentificationSerializer,
    DeidentifyRequestSerializer,
    DicomSendSerializer,
    InstanceSerializer,
    LabelsSerializer,
    SendRequestSerializer,
    SeriesDetailSerializer,
    SeriesSerializer,
    ShareLinkSerializer,
    ShareRequestSerializer,
    StudyDetailSerializer,
    StudySerializer,
    TagValueSerializer,
    UploadResultSerializer,
    UploadSerializer,
)

logger = logging.getLogger(__name__)

UUID_PATTERN = r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"


IMAGE_PARAMETERS = [
    OpenApiParameter("frame", int, description="1-based frame number (default 1); out of range → 400"),
    OpenApiParameter("window", str, description="center,width[,linear|linear-exact|sigmoid], e.g. 40,400"),
    OpenApiParameter(
        "preset",
        str,
        enum=list(rendering.PRESET_NAMES),
        description="Named window: lung -600/1500, bone 400/1800, brain 40/80, soft-tissue 50/400, abdomen 60/400; "
        "minmax (the frame's range); default (the file's own VOI).",
    ),
    OpenApiParameter("size", int, description="Fit in size x size pixels, keeping the aspect ratio (max 4096)"),
    OpenApiParameter("width", int, description="Output width (keeps aspect unless height is also given: fit in the box)"),
    OpenApiParameter("height", int, description="Output height"),
    OpenApiParameter("format", str, enum=list(rendering.FORMATS), description="Image format; else from the Accept header"),
    OpenApiParameter("quality", int, description="JPEG/WebP quality 1-100 (default 90)"),
    OpenApiParameter("bits", int, enum=[8, 16], description="16: a 16-bit greyscale PNG of the windowed values"),
]


def image_responses(*formats: str, not_modified: str) -> dict:
    """OpenAPI responses of an image action: the formats (first = default), 304, and its errors."""
    return {
        **{(200, f"image/{name}"): OpenApiTypes.BINARY for name in formats},
        304: OpenApiResponse(description=not_modified),
        **errors(400, 401, 404, 422),
    }


class InstanceFilterParams:
    """Query parameters of the instance list, for the OpenAPI schema."""

    parameters = [
        OpenApiParameter("study", str, description="Study Instance UID"),
        OpenApiParameter("series", str, description="Series Instance UID"),
        OpenApiParameter("modality", str, description="Modality, e.g. CT (case-insensitive)"),
        OpenApiParameter("patient_id", str, description="Patient ID (exact)"),
        OpenApiParameter("study_date_from", OpenApiTypes.DATE, description="Study date on or after (YYYY-MM-DD)"),
        OpenApiParameter("study_date_to", OpenApiTypes.DATE, description="Study date on or before (YYYY-MM-DD)"),
        OpenApiParameter("search", str, description="Text in patient name/ID, accession number, descriptions, or an exact UID"),
    ]


@extend_schema_view(
    list=extend_schema(
        summary="List your instances",
        parameters=InstanceFilterParams.parameters,
        responses={200: InstanceSerializer, **errors(400, 401, 404, e404="No such page.")},
    ),
    retrieve=extend_schema(summary="Instance metadata", responses={200: InstanceSerializer, **errors(401, 404)}),
    destroy=extend_schema(summary="Delete an instance and its stored file", responses={204: None, **errors(401, 404)}),
)
class InstanceViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """DICOM instances: upload, list, metadata, header tags, image, original file, delete."""

    serializer_class = InstanceSerializer
    lookup_value_regex = UUID_PATTERN
    parser_classes = [StagingMultiPartParser, DicomParser, JSONParser]

    def get_queryset(self):
        if self.action == "list":
            params = self.request.query_params
            queryset = selectors.instance_list(
                user=self.request.user,
                study=params.get("study"),
                series=params.get("series"),
                modality=params.get("modality"),
                patient_id=params.get("patient_id"),
                study_date_from=_date_param(params, "study_date_from"),
                study_date_to=_date_param(params, "study_date_to"),
                search=params.get("search"),
            )
            return qido.filtered(queryset, header_search.rest_query("instance", params), self.request.user)
        return selectors.instances_for(self.request.user)

    def get_throttles(self):
        scope = {"create": "upload", "bulk": "upload", "image": "render", "thumbnail": "render"}.get(self.action)
        return [ScopedUserThrottle(scope)] if scope else []

    def get_object(self):
        if self.action in {"image", "thumbnail", "file"}:
            fields = selectors.DISPLAY_FIELDS
        elif self.action in {"tags", "tag"}:
            fields = selectors.HEADER_FIELDS
        else:
            fields = None
        instance = selectors.visible_instance(self.request.user, self.kwargs["pk"], fields=fields)
        self.check_object_permissions(self.request, instance)
        return instance

    @extend_schema(
        summary="Upload a DICOM file",
        description=(
            "Send the file as multipart field `file`, or as the raw body with `Content-Type: application/dicom`. "
            "201: stored. 200 with `duplicate: true`: you already have these exact bytes. "
            "409: you already have this SOP Instance UID with other content (`id` names it)."
        ),
        request={"multipart/form-data": UploadSerializer, "application/dicom": OpenApiTypes.BINARY},
        responses={
            201: UploadResultSerializer,
            200: UploadResultSerializer,
            **errors(400, 401, 413, 415),
            409: ConflictSerializer,
        },
    )
    def create(self, request):
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isascii() and length.isdigit() and int(length) > settings.DICOM_MAX_UPLOAD_BYTES + 64 * 1024:
            raise UploadTooLarge(settings.DICOM_MAX_UPLOAD_BYTES)
        files = request.FILES.getlist("file")
        if not files:
            raise MissingFile("no file: send it as multipart field 'file' or as the body with Content-Type: application/dicom")
        if len(files) > 1:
            raise InvalidUpload("send one file per request (multipart field 'file' appears more than once)")
        outcome = services.ingest(owner=request.user, staged=as_staged(files[0]))
        if not outcome.stored:
            return error_response(outcome.error, status=HTTP_STATUS[outcome.reason])
        context = {**self.get_serializer_context(), "duplicate": outcome.reason is Reason.SAME_BYTES}
        data = UploadResultSerializer(outcome.instance, context=context).data
        return Response(data, status=HTTP_STATUS[outcome.reason])

    @extend_schema(
        summary="Upload many DICOM files or zip archives",
        description=(
            "Repeat the multipart field `file` for each file; a part that is a zip archive is expanded member by "
            "member (never to disk as a tree). One result per file: created, duplicate, conflict (with the existing "
            "`id`), refused (with the reason: not DICOM, invalid, or an unsafe archive member) or skipped (a zip "
            "member that is not an instance: README, DICOMDIR, nested archive). Limits: `DICOM_BULK_MAX_FILES` "
            "parts and `DICOM_BULK_MAX_BYTES` per request (413); zip archives are checked before expansion against "
            "member count, total size and compression ratio (a zip bomb is refused with the reason, never "
            "expanded), and members with absolute or '..' paths are refused."
        ),
        request={"multipart/form-data": BulkUploadSerializer},
        responses={200: BulkUploadResultSerializer, **errors(400, 401, 413, 415)},
    )
    @action(detail=False, methods=["post"], url_path="bulk", parser_classes=[StagingMultiPartParser])
    def bulk(self, request):
        length = request.META.get("CONTENT_LENGTH") or "0"
        if length.isascii() and length.isdigit() and int(length) > settings.DICOM_BULK_MAX_BYTES:
            raise UploadTooLarge(settings.DICOM_BULK_MAX_BYTES)
        files = request.FILES.getlist("file")
        if not files:
            raise MissingFile("no file: send one or more multipart parts named 'file'")
        outcomes = bulk_upload.ingest_uploads(owner=request.user, uploads=files)
        rows = [{k: v for k, v in o.report_row().items() if k != "size"} for o in outcomes]
        return Response({"results": rows, "counts": status_counts(outcomes)})

    def perform_destroy(self, instance):
        if not selectors.can_modify(self.request.user, instance):
            raise PermissionDenied("you may view this instance, but only its owner or a superuser may delete it")
        services.delete_instance(instance=instance)

    @extend_schema(
        summary="Download the original DICOM file",
        responses={(200, "application/dicom"): OpenApiTypes.BINARY, **errors(401, 404)},
    )
    @action(detail=True, methods=["get"], url_path="file", content_negotiation_class=FirstRendererNegotiation)
    def file(self, request, pk=None):
        instance = self.get_object()
        try:
            handle = instance.file.open("rb")
        except OSError:
            raise ServiceError("the stored file is missing; an administrator has to restore it") from None
        return FileResponse(handle, as_attachment=True, filename=f"{instance.sop_instance_uid}.dcm", content_type="application/dicom")

    @extend_schema(
        summary="Header: all elements, or one by expression",
        description=(
            "Without `tag`: the whole header as DICOM JSON (PS3.18 Annex F). Pixel Data and values over 1 KiB "
            'appear as `{"vr", "BulkData": {"length", ...}}` instead of inline bytes. '
            "With `tag`: the one element it names (see the `/tags/{expr}/` route)."
        ),
        parameters=[OpenApiParameter("tag", str, description="Tag expression, e.g. (0010,0010), 00100010, PatientName")],
        responses={200: OpenApiTypes.OBJECT, **errors(400, 401, 404)},
    )
    @action(detail=True, methods=["get"], url_path="tags")
    def tags(self, request, pk=None):
        instance = self.get_object()
        expr = request.query_params.get("tag")
        if expr is None:
            return Response(instance.header)
        return Response(tags.lookup(instance.header, tags.parse_expression(expr)).as_dict())

    @extend_schema(
        summary="Header: one element by tag expression",
        operation_id="instances_tag_retrieve",
        description=(
            "`expr` is `(0010,0010)`, `0010,0010`, `00100010`, a keyword such as `PatientName` (any case), a private "
            "tag, or a path into sequences such as `ReferencedImageSequence[0].ReferencedSOPInstanceUID` or "
            "`(0008,1140)[0].(0008,1155)`. An index on a multi-valued element picks one value (`ImageType[1]`). "
            "400: malformed expression; 404: the element is absent (the message says which)."
        ),
        parameters=[OpenApiParameter("expr", str, OpenApiParameter.PATH, description="Tag expression")],
        responses={200: TagValueSerializer, **errors(400, 401, 404)},
    )
    @action(detail=True, methods=["get"], url_path=r"tags/(?P<expr>[^/]+)", url_name="tag")
    def tag(self, request, pk=None, expr=None):
        try:
            steps = tags.parse_expression(expr)
        except tags.TagExpressionError:
            self.get_object()  # someone else's instance answers 404 whatever the expression
            raise
        keys = tags.header_keys(steps)
        return Response(tags.lookup(selectors.visible_header(request.user, pk, keys), steps).as_dict())

    @extend_schema(
        summary="Render a frame (PNG, JPEG or WebP)",
        description=(
            "Display pipeline (PS3.3 C.11): modality LUT (rescale or LUT sequence) → VOI (the requested window or "
            "preset, else the file's first window with its VOI LUT function, else its first VOI LUT, else the "
            "frame's min-max) → MONOCHROME1 inverted → colour (RGB, YBR, palette) → resize → encode. "
            "Responses carry a strong ETag; If-None-Match gives 304. 404 when there is no pixel data; 422 when "
            "the pixel data cannot be decoded (the message names the transfer syntax) or the frame is too large."
        ),
        parameters=IMAGE_PARAMETERS,
        responses=image_responses("png", "jpeg", "webp", not_modified="Not modified (If-None-Match matched the ETag)."),
    )
    @action(detail=True, methods=["get"], url_path="image", content_negotiation_class=FirstRendererNegotiation)
    def image(self, request, pk=None):
        options = params.rest_options(request.query_params, accept=request.META.get("HTTP_ACCEPT", ""))
        return image_response(request, self.get_object(), options)

    @extend_schema(
        summary="Thumbnail (default 256 px, JPEG)",
        description="The first frame (or `frame`) with the file's default window, fitted in `size` (default 256).",
        parameters=IMAGE_PARAMETERS,
        responses=image_responses("jpeg", "png", "webp", not_modified="Not modified."),
    )
    @action(detail=True, methods=["get"], url_path="thumbnail", content_negotiation_class=FirstRendererNegotiation)
    def thumbnail(self, request, pk=None):
        options = params.rest_options(
            request.query_params,
            accept=request.META.get("HTTP_ACCEPT", ""),
            default_format="jpeg",
            default_size=settings.DICOM_THUMBNAIL_SIZE,
        )
        return image_response(request, self.get_object(), options)


def _date_param(params, name: str):
    raw = (params.get(name) or "").strip()
    if not raw:
        return None
    try:
        return dt.date.fromisoformat(raw)
    except ValueError:
        raise InvalidParameter(f"{name} must be a date as YYYY-MM-DD, not '{raw[:20]}'") from None


ARCHIVE_RESPONSES = {
    (200, "application/zip"): OpenApiResponse(
        OpenApiTypes.BINARY,
        description="A zip streamed as it is written (no Content-Length); members are the stored files, "
        "<SeriesInstanceUID>/<SOPInstanceUID>.dcm. Files missing from storage are listed in MISSING.txt.",
    ),
    **errors(401, 404),
}


class LevelViewSet(viewsets.ReadOnlyModelViewSet):
    """What the study and series endpoints share: list, detail with children, and a zip of the
    level's original files. Subclasses name the selector, serializers and the zip's name."""

    lookup_value_regex = UUID_PATTERN
    scoped: Callable[[Any], QuerySet[Any]] = staticmethod(selectors.studies_for)
    list_serializer: type[StudySerializer | SeriesSerializer] = StudySerializer
    detail_serializer: type[StudyDetailSerializer | SeriesDetailSerializer] = StudyDetailSerializer
    uid_field = "study_instance_uid"
    level = "study"

    def get_queryset(self):
        queryset = self.scoped(self.request.user)
        if self.action == "list":
            params = self.request.query_params
            if names := params.getlist("label"):
                queryset = labels.labelled(queryset, self.request.user, names, level=self.level)
            queryset = qido.filtered(queryset, header_search.rest_query(self.level, params), self.request.user)
        return queryset

    def get_serializer_class(self):
        return self.detail_serializer if self.action == "retrieve" else self.list_serializer

    @extend_schema(
        summary="Your labels on this object (PUT: make them exactly these)",
        request=LabelsSerializer,
        responses={200: LabelsSerializer, **errors(400, 401, 404)},
    )
    @action(detail=True, methods=["get", "put"], url_path="labels", parser_classes=[JSONParser])
    def labels(self, request, pk=None):
        obj = self.get_object()
        if request.method == "PUT":
            body = LabelsSerializer(data=request.data)
            body.is_valid(raise_exception=True)
            return Response({"labels": labels.replace(request.user, obj, body.validated_data["labels"])})
        return Response({"labels": labels.of(request.user, obj)})

    @extend_schema(
        summary="Put one label on (PUT: 201, or 200 if it was there) or take it off (DELETE: 204, 404 if it was not)",
        request=None,
        responses={200: LabelsSerializer, 201: LabelsSerializer, 204: None, **errors(400, 401, 404)},
    )
    @action(detail=True, methods=["put", "delete"], url_path=r"labels/(?P<name>[^/]+)", url_name="label")
    def label(self, request, pk=None, name=None):
        obj = self.get_object()
        if request.method == "DELETE":
            if not labels.remove(request.user, obj, name):
                raise NotFound(f"this {self.level} has no label '{name[:64]}'")
            return Response(status=204)
        created = labels.add(request.user, obj, name)
        return Response({"labels": labels.of(request.user, obj)}, status=201 if created else 200)

    @action(detail=True, methods=["get"], url_path="archive", content_negotiation_class=FirstRendererNegotiation)
    def archive(self, request, pk=None):
        obj = self.get_object()
        return archive_response(obj.instances.all(), f"{self.level}-{getattr(obj, self.uid_field)}.zip")

    @extend_schema(
        summary="Make a de-identified copy (PS3.15 Annex E): a new study in your catalogue, or a zip",
        description=(
            "The Basic Application Level Confidentiality Profile, with the options chosen in the body. 201: the copy's "
            "record, its new study and a row per file (`source` id -> new `id`). `?as=zip` streams the de-identified "
            "files as a zip instead (the record's id in `X-Deidentification-ID`). 422 `burned_in_annotation` lists "
            "the images that may show identity in their pixels (Burned In Annotation YES, or ultrasound and secondary "
            "capture without it) unless `masks` or `confirm_burned_in`; 422 `cannot_deidentify` names a file that "
            "cannot be de-identified as asked. The original is never changed."
        ),
        request=DeidentifyRequestSerializer,
        parameters=[OpenApiParameter("as", str, enum=["catalogue", "zip"], description="zip: stream the copy instead of storing it")],
        responses={
            201: DeidentificationSerializer,
            (200, "application/zip"): OpenApiTypes.BINARY,
            **errors(400, 401, 404, 409, 422, e422="Burned-in text, or a file that cannot be de-identified as asked."),
        },
    )
    @action(detail=True, methods=["post"], url_path="deidentify", parser_classes=[JSONParser],
            content_negotiation_class=FirstRendererNegotiation)  # fmt: skip
    def deidentify(self, request, pk=None):
        obj = self.get_object()
        body = DeidentifyRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        delivery = (request.query_params.get("as") or "catalogue").lower()
        if delivery not in ("catalogue", "zip"):
            raise InvalidParameter(f"as must be zip or catalogue, not '{delivery[:20]}'")
        if delivery == "zip":
            return deidentified_zip_response(user=request.user, level=self.level, obj=obj, choices=body.choices())
        result = deidentify.to_catalogue(
            user=request.user, level=self.level, source_id=str(obj.pk), instances=_in_order(obj), choices=body.choices()
        )
        data = DeidentificationSerializer(result.record, context={"request": request}).data
        study = result.study
        data["study"] = None if study is None else {
            "id": str(study.pk), "study_instance_uid": study.study_instance_uid,
            "url": request.build_absolute_uri(reverse("study-detail", args=[study.pk])),
        }  # fmt: skip
        data["results"] = result.rows
        return Response(data, status=201, headers={"Location": str(data["url"])})


@extend_schema_view(
    list=extend_schema(summary="List your studies", responses={200: StudySerializer, **errors(400, 401, 404, e404="No such page.")}),
    retrieve=extend_schema(summary="A study with its series", responses={200: StudyDetailSerializer, **errors(401, 404)}),
    archive=extend_schema(summary="Download the study as a zip of its original files", responses=ARCHIVE_RESPONSES),
    label=[
        extend_schema(methods=["PUT"], operation_id="api_studies_label_add"),
        extend_schema(methods=["DELETE"], operation_id="api_studies_label_remove"),
    ],
)
class StudyViewSet(LevelViewSet):
    """Studies in your catalogue."""

    @extend_schema(
        summary="Share the study by a link, for someone without an account (viewer and zip, until it expires)",
        description=(
            "201: the link (`link`, and its `viewer`, `zip` and `dicomweb` addresses), shown this once: only a digest "
            "of its secret is kept. It opens this study only, read-only, until `expires_at` or DELETE /api/shares/{id}/. "
            "`deidentify: true` shares a de-identified copy (the Basic Profile and `options`), made on the fly, as a zip "
            "only; 422 `burned_in_annotation` as for a de-identified copy unless `confirm_burned_in`."
        ),
        request=ShareRequestSerializer,
        responses={
            201: ShareLinkSerializer,
            **errors(400, 401, 403, 404, 422, e403="The study is not yours: only its owner shares it.", e422="Images that may show identity in their pixels."),
        },
    )
    @action(detail=True, methods=["post"], url_path="share", parser_classes=[JSONParser])
    def share(self, request, pk=None):
        study = self.get_object()
        if study.owner_id != request.user.pk:
            raise PermissionDenied("only the study's owner can share it")
        body = ShareRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        options = list(data["options"]) if data["deidentify"] else None
        link, secret = shares.create(owner=request.user, study=study, expires_in_hours=data.get("expires_in_hours"),
                                     deidentify_options=options, confirm_burned_in=data["confirm_burned_in"])  # fmt: skip
        out = {**ShareLinkSerializer(link, context={"request": request}).data, **share_pages.addresses(request, secret, link)}
        return Response(out, status=201, headers={"Location": str(out["url"])})

    @extend_schema(
        summary="Send the study to a DICOM peer (C-STORE, in the background)",
        description=(
            "202: queued; follow `url` (GET /api/sends/{id}/) for its state and a DIMSE status per instance. "
            "The peer is one of yours (`manage.py dicom_peer`), any one for staff; 400 `unknown_peer` otherwise."
        ),
        request=SendRequestSerializer,
        responses={202: DicomSendSerializer, **errors(400, 401, 404)},
    )
    @action(detail=True, methods=["post"], url_path="send", parser_classes=[JSONParser])
    def send(self, request, pk=None):
        study = self.get_object()
        body = SendRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        job = outbound.queue_send(request.user, study, body.validated_data["ae_title"])
        data = DicomSendSerializer(job, context={"request": request}).data
        return Response(data, status=202, headers={"Location": str(data["url"])})


@extend_schema_view(
    list=extend_schema(
        summary="Your de-identified copies, newest first", responses={200: DeidentificationSerializer, **errors(401, 404, e404="No such page.")}
    ),
    retrieve=extend_schema(
        summary="One de-identified copy (with its UID map, if you kept it)", responses={200: DeidentificationSerializer, **errors(401, 404)}
    ),
)
class DeidentificationViewSet(viewsets.ReadOnlyModelViewSet):
    """Your de-identified copies (POST /api/studies/{id}/deidentify/ and /api/series/{id}/deidentify/)."""

    serializer_class = DeidentificationSerializer
    lookup_value_regex = UUID_PATTERN

    def get_queryset(self):
        return Deidentification.objects.filter(owner=self.request.user)


@extend_schema_view(
    list=extend_schema(summary="Your share links, newest first", responses={200: ShareLinkSerializer, **errors(401, 404, e404="No such page.")}),
    retrieve=extend_schema(summary="One share link: its study, expiry and uses (never its secret)", responses={200: ShareLinkSerializer, **errors(401, 404)}),
    destroy=extend_schema(summary="Revoke a share link (it opens nothing from now on; the record stays)", responses={204: None, **errors(401, 404)}),
)
class ShareLinkViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    """Your share links (POST /api/studies/{id}/share/ makes one)."""

    serializer_class = ShareLinkSerializer
    lookup_value_regex = UUID_PATTERN

    def get_queryset(self):
        return ShareLink.objects.filter(owner=self.request.user).select_related("study")

    def perform_destroy(self, instance):
        shares.revoke(instance)


@extend_schema_view(
    list=extend_schema(
        summary="Your sends of studies to DICOM peers, newest first", responses={200: DicomSendSerializer, **errors(401, 404, e404="No such page.")}
    ),
    retrieve=extend_schema(summary="One send: its state and a result per instance", responses={200: DicomSendSerializer, **errors(401, 404)}),
)
class SendViewSet(viewsets.ReadOnlyModelViewSet):
    """Sends of studies to DICOM peers (POST /api/studies/{id}/send/)."""

    serializer_class = DicomSendSerializer
    lookup_value_regex = UUID_PATTERN

    def get_queryset(self):
        return DicomSend.objects.filter(owner=self.request.user)


@extend_schema_view(
    list=extend_schema(summary="List your series", responses={200: SeriesSerializer, **errors(400, 401, 404, e404="No such page.")}),
    retrieve=extend_schema(summary="A series with its instances", responses={200: SeriesDetailSerializer, **errors(401, 404)}),
    archive=extend_schema(summary="Download the series as a zip of its original files", responses=ARCHIVE_RESPONSES),
    label=[
        extend_schema(methods=["PUT"], operation_id="api_series_label_add"),
        extend_schema(methods=["DELETE"], operation_id="api_series_label_remove"),
    ],
)
class SeriesViewSet(LevelViewSet):
    """Series in your catalogue."""

    scoped = staticmethod(selectors.series_for)
    list_serializer = SeriesSerializer
    detail_serializer = SeriesDetailSerializer
    uid_field = "series_instance_uid"
    level = "series"


def _in_order(obj) -> list:
    """A study's or series' instances in series and instance order, as de-identified copies take them."""
    return list(obj.instances.select_related("series").order_by("series__series_number", "series_id", "instance_number", "id"))


def deidentified_zip_response(*, user, level: str, obj, choices) -> StreamingHttpResponse:
    """A de-identified copy of a study or series streamed as a zip (its record's id in X-Deidentification-ID): the
    API's ?as=zip and a de-identified share link (studies/http/shares.py)."""
    record, chunks = deidentify.zip_stream(user=user, level=level, source_id=str(obj.pk), instances=_in_order(obj), choices=choices)
    response = StreamingHttpResponse(chunks, content_type="application/zip")
    response["Content-Disposition"] = content_disposition_header(True, f"deidentified-{record.pk}.zip")
    response["Cache-Control"] = "private, no-store"
    response["X-Deidentification-ID"] = str(record.pk)
    return response


def archive_response(instances, filename: str) -> StreamingHttpResponse:
    """Stream a zip (STORED members named <SeriesInstanceUID>/<SOPInstanceUID>.dcm): memory stays flat,
    and a client that disconnects stops the generator, closing the file being read."""
    members = (
        # A catalogued instance always has its stored file (the stubs allow a FieldFile without a name).
        (f"{inst.series.series_instance_uid}/{inst.sop_instance_uid}.dcm", partial(inst.file.storage.open, cast(str, inst.file.name), "rb"))
        for inst in selectors.archive_members(instances).iterator(chunk_size=500)
    )
    response = StreamingHttpResponse(zipstream.stream_zip(members), content_type="application/zip")
    response["Content-Disposition"] = content_disposition_header(True, filename)
    response["Cache-Control"] = "private, no-store"
    return response


class MeView(APIView):
    """Who you are and your storage quota."""

    @extend_schema(
        summary="You: username and storage quota (limits and usage)",
        responses={
            200: {
                "type": "object",
                "properties": {
                    "username": {"type": "string"},
                    "quota": {
                        "type": "object",
                        "properties": {
                            "max_bytes": {"type": "integer", "nullable": True, "description": "null: no limit"},
                            "max_instances": {"type": "integer", "nullable": True, "description": "null: no limit"},
                            "used_bytes": {"type": "integer"},
                            "used_instances": {"type": "integer"},
                        },
                    },
                },
            },
            **errors(401),
        },
    )
    def get(self, request):
        return Response({"username": request.user.get_username(), "quota": quotas.usage(request.user).as_dict()})


class TokenView(ObtainAuthToken):
    """Exchange a username and password for an API token (send it as `Authorization: Token <key>`)."""

    @extend_schema(summary="Get an API token", responses={200: {"type": "object", "properties": {"token": {"type": "string"}}}, **errors(400)})
    def post(self, request, *args, **kwargs):
        return super().post(request, *args, **kwargs)
