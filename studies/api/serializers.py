"""Serializers: everything derived from the DICOM file is read-only."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, cast

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.reverse import reverse

from .. import selectors
from ..models import Deidentification, DicomSend, Instance, Series, ShareLink, Study


class ErrorSerializer(serializers.Serializer):
    """The body of every error response."""

    error = serializers.CharField(help_text="A sentence saying what went wrong.")
    code = serializers.CharField(help_text="A stable machine-readable code, e.g. invalid_dicom, conflict, not_found.")


class ConflictSerializer(ErrorSerializer):
    """409: the owner already has this SOP Instance UID with other content."""

    id = serializers.UUIDField(help_text="The existing instance.")


class UploadSerializer(serializers.Serializer):
    """multipart/form-data upload of one DICOM file."""

    file = serializers.FileField(help_text="The DICOM Part-10 file.")


class TagValueSerializer(serializers.Serializer):
    """One header element found by a tag expression."""

    tag = serializers.CharField(help_text="(gggg,eeee)")
    keyword = serializers.CharField(help_text="DICOM keyword, empty for private tags.")
    name = serializers.CharField()
    vr = serializers.CharField()
    value = serializers.JSONField(
        help_text="Scalar for one value, list for several, null when empty; person names as strings; "
        "sequences as lists of DICOM JSON items; Pixel Data and values over 1 KiB as a summary object."
    )
    path = serializers.CharField(help_text="The expression in keyword form.")
    private_creator = serializers.CharField(required=False)


def _link(view_name: str, pk, request) -> str:
    return reverse(view_name, args=[pk], request=request)


_PK_MARK = "00000000-0000-0000-0000-000000000000"


def _cached_link(context: Mapping[str, Any], view_name: str, pk) -> str:
    """The link, with reverse() done once per request and view (a list page needs 250 of them;
    measured with python -m bench run http: reversing was half of a 50-row page's serialization)."""
    # The stubs type a serializer's context as a Mapping; DRF keeps the dict it was given, shared per request.
    templates = cast(dict[str, Any], context).setdefault("_link_templates", {})
    parts = templates.get(view_name)
    if parts is None:
        parts = templates[view_name] = _link(view_name, _PK_MARK, context.get("request")).split(_PK_MARK)
    return f"{parts[0]}{pk}{parts[1]}"


class BuiltOnceFields:
    """ModelSerializer.get_fields() introspects the model and builds every field on each instantiation
    (1.6 ms of a 2.8 ms single-instance answer here); the result depends only on the class, so it is built
    once per class and copied for each serializer, which binds its own copies.

    The copies are shallow: these serializers only read (every field read-only), so nothing a field holds
    (validators, choices) is changed by using it. DRF's deep copy re-runs each field's __init__: an instance
    metadata read in-process on PostgreSQL took 1.90-2.10 ms with it, 1.66-1.88 ms with this (three alternations)."""

    _built: dict[type, dict] = {}

    def get_fields(self):
        built = BuiltOnceFields._built.get(type(self))
        if built is None:
            built = super().get_fields()
            if not all(field.read_only for field in built.values()):
                raise TypeError(f"{type(self).__name__}: BuiltOnceFields shares field state, so it is for read-only serializers")
            BuiltOnceFields._built[type(self)] = built
        return {name: copy.copy(field) for name, field in built.items()}


class InstanceSerializer(BuiltOnceFields, serializers.ModelSerializer):
    """Catalogue metadata of one instance, with where it is stored and links to its resources."""

    url = serializers.HyperlinkedIdentityField(view_name="instance-detail")
    owner = serializers.CharField(source="owner.username", read_only=True)
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    series_instance_uid = serializers.CharField(source="series.series_instance_uid", read_only=True)
    storage = serializers.SerializerMethodField()
    links = serializers.SerializerMethodField()

    class Meta:
        model = Instance
        fields = [
            "id", "url", "owner", "study", "series", "study_instance_uid", "series_instance_uid",
            "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "modality", "instance_number",
            "patient_name", "patient_id", "study_date", "accession_number", "study_description",
            "series_description", "rows", "columns", "number_of_frames", "samples_per_pixel",
            "photometric_interpretation", "bits_allocated", "bits_stored", "pixel_representation",
            "has_pixel_data", "original_filename", "size", "sha256", "uploaded_at", "storage", "links",
        ]  # fmt: skip
        read_only_fields = fields

    @extend_schema_field({"type": "object", "properties": {"backend": {"type": "string"}, "key": {"type": "string"}}})
    def get_storage(self, obj: Instance) -> dict:
        backend = obj.file.storage.__class__  # default_storage is a lazy proxy: __class__ names the real backend
        return {"backend": f"{backend.__module__}.{backend.__name__}", "key": obj.file.name}

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "string", "format": "uri"}})
    def get_links(self, obj: Instance) -> dict:
        links = {
            "file": _cached_link(self.context, "instance-file", obj.pk),
            "tags": _cached_link(self.context, "instance-tags", obj.pk),
            "study": _cached_link(self.context, "study-detail", obj.study_id),
            "series": _cached_link(self.context, "series-detail", obj.series_id),
        }
        if obj.has_pixel_data:
            links["image"] = _cached_link(self.context, "instance-image", obj.pk)
        return links


class UploadResultSerializer(InstanceSerializer):
    """An upload's answer: the instance, and whether identical bytes were already there."""

    duplicate = serializers.SerializerMethodField()

    class Meta(InstanceSerializer.Meta):
        fields = [*InstanceSerializer.Meta.fields, "duplicate"]
        read_only_fields = fields

    def get_duplicate(self, obj: Instance) -> bool:
        return bool(self.context.get("duplicate", False))


class InstanceSummarySerializer(serializers.ModelSerializer):
    """An instance as a child of its series."""

    url = serializers.HyperlinkedIdentityField(view_name="instance-detail")

    class Meta:
        model = Instance
        fields = ["id", "url", "sop_instance_uid", "instance_number", "number_of_frames", "has_pixel_data", "uploaded_at"]
        read_only_fields = fields


class SeriesSummarySerializer(serializers.ModelSerializer):
    """A series as a child of its study."""

    url = serializers.HyperlinkedIdentityField(view_name="series-detail")
    instance_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Series
        fields = ["id", "url", "series_instance_uid", "modality", "series_number", "series_description", "instance_count"]
        read_only_fields = fields


class StudySerializer(serializers.ModelSerializer):
    """A study with counts of its series and instances."""

    url = serializers.HyperlinkedIdentityField(view_name="study-detail")
    owner = serializers.CharField(source="owner.username", read_only=True)
    series_count = serializers.IntegerField(read_only=True)
    instance_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Study
        fields = [
            "id", "url", "owner", "study_instance_uid", "patient_name", "patient_id", "patient_birth_date",
            "patient_sex", "study_date", "study_time", "study_id", "accession_number", "study_description",
            "referring_physician_name", "series_count", "instance_count", "created_at",
        ]  # fmt: skip
        read_only_fields = fields


class StudyDetailSerializer(StudySerializer):
    """A study with its series."""

    series = serializers.SerializerMethodField()

    class Meta(StudySerializer.Meta):
        fields = [*StudySerializer.Meta.fields, "series"]
        read_only_fields = fields

    @extend_schema_field(SeriesSummarySerializer(many=True))
    def get_series(self, obj: Study) -> list:
        # many=True makes a ListSerializer (the stubs cannot see it): its data is a ReturnList.
        return cast(list, SeriesSummarySerializer(selectors.series_of_study(obj), many=True, context=self.context).data)


class SeriesSerializer(serializers.ModelSerializer):
    """A series with its study and instance count."""

    url = serializers.HyperlinkedIdentityField(view_name="series-detail")
    owner = serializers.CharField(source="owner.username", read_only=True)
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    instance_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Series
        fields = [
            "id", "url", "owner", "study", "study_instance_uid", "series_instance_uid", "modality",
            "series_number", "series_description", "body_part_examined", "instance_count", "created_at",
        ]  # fmt: skip
        read_only_fields = fields


class SeriesDetailSerializer(SeriesSerializer):
    """A series with its instances."""

    instances = serializers.SerializerMethodField()

    class Meta(SeriesSerializer.Meta):
        fields = [*SeriesSerializer.Meta.fields, "instances"]
        read_only_fields = fields

    @extend_schema_field(InstanceSummarySerializer(many=True))
    def get_instances(self, obj: Series) -> list:
        # many=True makes a ListSerializer (the stubs cannot see it): its data is a ReturnList.
        return cast(list, InstanceSummarySerializer(selectors.instances_of_series(obj), many=True, context=self.context).data)


DICOM_JSON_SCHEMA = OpenApiTypes.OBJECT


class BulkFileResultSerializer(serializers.Serializer):
    """One file of a bulk upload (zip members are named archive.zip/member)."""

    filename = serializers.CharField()
    status = serializers.ChoiceField(choices=["created", "duplicate", "conflict", "refused", "skipped"])
    id = serializers.UUIDField(allow_null=True, help_text="The instance (created, duplicate) or the one it conflicts with.")
    error = serializers.CharField(allow_blank=True, help_text="Why it was refused, conflicted or skipped.")


class BulkUploadResultSerializer(serializers.Serializer):
    """The answer to a bulk upload: one result per file, and counts per status."""

    results = BulkFileResultSerializer(many=True)
    counts = serializers.DictField(child=serializers.IntegerField())


class BulkUploadSerializer(serializers.Serializer):
    """multipart/form-data: any number of `file` parts, each a DICOM file or a zip of them."""

    file = serializers.ListField(child=serializers.FileField(), help_text="Repeat the part for each file.")


class TagLookupSerializer(serializers.Serializer):
    """Which instances (exactly one of instances, study, series) and which tag expressions."""

    instances = serializers.ListField(child=serializers.UUIDField(), required=False, allow_empty=False)
    study = serializers.UUIDField(required=False, help_text="A study id from /api/studies/.")
    series = serializers.UUIDField(required=False, help_text="A series id from /api/series/.")
    tags = serializers.ListField(
        child=serializers.CharField(allow_blank=False, trim_whitespace=True),
        allow_empty=False,
        help_text="Tag expressions as for /api/instances/{id}/tags/{expr}/, e.g. PatientName, (0020,0013).",
    )

    def validate_tags(self, value):
        if len(value) > settings.DICOM_LOOKUP_MAX_TAGS:
            raise serializers.ValidationError(f"at most {settings.DICOM_LOOKUP_MAX_TAGS} tags per lookup")
        return value

    def validate(self, attrs):
        given = [key for key in ("instances", "study", "series") if key in attrs]
        if len(given) != 1:
            raise serializers.ValidationError("give exactly one of instances, study or series")
        return attrs


class TagLookupRowSerializer(serializers.Serializer):
    id = serializers.UUIDField()
    sop_instance_uid = serializers.CharField()
    values = serializers.DictField(child=serializers.JSONField(allow_null=True), help_text="expression → value (null when absent)")


class TagLookupResultSerializer(serializers.Serializer):
    tags = serializers.ListField(child=serializers.CharField())
    results = TagLookupRowSerializer(many=True)


class SendRequestSerializer(serializers.Serializer):
    ae_title = serializers.CharField(max_length=16, help_text="the AE title of a DICOM peer (manage.py dicom_peer list)")


class DicomSendSerializer(serializers.ModelSerializer):
    """One send of a study to a DICOM peer: its state and a result per instance (DIMSE status as 0xNNNN)."""

    url = serializers.HyperlinkedIdentityField(view_name="send-detail")

    class Meta:
        model = DicomSend
        fields = ["id", "url", "study", "ae_title", "status", "instance_count", "sent_count", "failed_count", "results", "error",
                  "created_at", "finished_at"]  # fmt: skip
        read_only_fields = fields


class LabelsSerializer(serializers.Serializer):
    """Your labels on a study or series."""

    labels = serializers.ListField(child=serializers.CharField(max_length=64), max_length=100)


class DeidentifyRequestSerializer(serializers.Serializer):
    """The choices of a de-identification (PS3.15 Annex E): the Basic Profile always, plus these options."""

    retain_modified_dates = serializers.BooleanField(
        default=False, help_text="Retain Longitudinal Temporal Information with Modified Dates (113107): dates move back by a per-patient number of days"
    )
    retain_patient_characteristics = serializers.BooleanField(default=False, help_text="Retain Patient Characteristics (113108): sex, age, size, weight...")
    retain_device_identity = serializers.BooleanField(default=False, help_text="Retain Device Identity (113109): station, serial numbers...")
    clean_descriptors = serializers.BooleanField(
        default=False, help_text="Clean Descriptors (113105): study, series and other descriptions kept without the identifying values found in the file"
    )
    retain_uids = serializers.BooleanField(default=False, help_text="Retain UIDs (113110): keep the original UIDs (off by default)")
    project_secret = serializers.CharField(
        required=False, allow_blank=False, min_length=16, max_length=256, write_only=True,
        help_text="the same secret gives the same new UIDs, pseudonyms and date shifts across requests (never stored)",
    )  # fmt: skip
    keep_mapping = serializers.BooleanField(default=False, help_text="keep the original -> new UID map, readable by you only")
    confirm_burned_in = serializers.BooleanField(default=False, help_text="you checked: no image shows identity in its pixels")
    masks = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField(min_value=0, max_value=65535), min_length=4, max_length=4),
        required=False, max_length=64,
        help_text="rectangles [x, y, width, height] in pixels set to 0 in every frame of every image (Clean Pixel Data, 113101)",
    )  # fmt: skip

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields)) if isinstance(self.initial_data, dict) else []
        if unknown:  # a misspelt option must not silently give a copy with less (or more) than asked
            raise serializers.ValidationError({unknown[0]: f"unknown field; the fields are {', '.join(self.fields)}"})
        return attrs

    def choices(self):
        """The validated body as deidentify.Choices."""
        from dicomcore.deid import OPTIONS, Rect

        from ..deidentify import Choices

        data = self.validated_data
        return Choices(
            options=frozenset(o for o in OPTIONS if data.get(o)), masks=tuple(Rect(*m) for m in data.get("masks", [])),
            secret=data.get("project_secret", ""), keep_mapping=data["keep_mapping"], confirm_burned_in=data["confirm_burned_in"],
        )  # fmt: skip


class DeidentificationSerializer(serializers.ModelSerializer):
    """One de-identified copy: its source, its result, the options, and the UID map when you asked to keep it."""

    url = serializers.HyperlinkedIdentityField(view_name="deidentification-detail")

    class Meta:
        model = Deidentification
        fields = ["id", "url", "source_level", "source_id", "result_study", "delivered_as", "options", "instance_count", "uid_map", "created_at"]
        read_only_fields = fields


class ShareRequestSerializer(serializers.Serializer):
    """A share link to one study: how long it lives, and whether it shares a de-identified copy."""

    expires_in_hours = serializers.IntegerField(
        required=False, min_value=1, help_text="default 168 (DICOM_SHARE_DEFAULT_HOURS), at most 720 (DICOM_SHARE_MAX_HOURS)"
    )
    deidentify = serializers.BooleanField(default=False, help_text="share a de-identified copy (the Basic Profile and `options`), as a zip only")
    options = serializers.ListField(
        child=serializers.CharField(max_length=64), required=False, default=list, max_length=16,
        help_text="de-identification options (the field names of POST .../deidentify/, e.g. retain_modified_dates)",
    )  # fmt: skip
    confirm_burned_in = serializers.BooleanField(default=False, help_text="you checked: no image shows identity in its pixels")

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields)) if isinstance(self.initial_data, dict) else []
        if unknown:  # a misspelt option must not silently share more than asked
            raise serializers.ValidationError({unknown[0]: f"unknown field; the fields are {', '.join(self.fields)}"})
        if attrs.get("options") and not attrs.get("deidentify"):
            raise serializers.ValidationError({"options": "options apply to a de-identified share only (deidentify: true)"})
        return attrs


class ShareLinkSerializer(serializers.ModelSerializer):
    url = serializers.HyperlinkedIdentityField(view_name="share-detail", lookup_field="pk")
    study_instance_uid = serializers.CharField(source="study.study_instance_uid", read_only=True)
    options = serializers.ListField(source="deid_options", child=serializers.CharField(), read_only=True)
    live = serializers.SerializerMethodField()

    class Meta:
        model = ShareLink
        fields = ["id", "url", "study", "study_instance_uid", "created_at", "expires_at", "revoked_at", "live", "deidentify", "options", "uses", "last_used_at"]
        read_only_fields = fields

    def get_live(self, link) -> bool:
        from ..shares import is_live  # the service imports these serializers' models only

        return is_live(link)
