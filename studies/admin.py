"""The Django admin for clinical staff: lists with thumbnails, upload, image viewer, tag browser.

Scope: an active staff user needs nothing but `is_staff` to upload and browse their own files;
`studies.view_all` holders and superusers see everyone's (read-only unless superuser). Rows are
created only by the ingest service and deleted only by the delete service, as in the API.
The list pages never decode DICOM: thumbnails are lazy `<img>` tags on the cached API endpoint.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Prefetch, Subquery
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from pydicom.uid import UID

from dicomcore import rendering, tags

from . import deidentify, labels, outbound, selectors, services
from .audit import admin as audit_admin  # noqa: F401 - registers the audit trail's admin
from .errors import ServiceError
from .http import viewer
from .models import Deidentification, DicomPeer, DicomSend, Instance, Label, Quota, Series, Study
from .outcome import Outcome
from .outcome import counts as status_counts
from .uploads import as_staged

THUMBNAIL_CSS_PX = 64


def _is_staff(user) -> bool:
    return bool(user and user.is_active and user.is_staff)


def thumbnail_html(instance_id, has_pixel_data: bool = True):
    """A lazy `<img>` on the API thumbnail (session-authenticated, cached by content hash)."""
    if not instance_id or not has_pixel_data:
        return "—"
    url = reverse("instance-thumbnail", args=[instance_id])
    return format_html(
        '<img class="dicom-thumb" src="{}" loading="lazy" alt="thumbnail" style="max-width:{}px;max-height:{}px">',
        url,
        THUMBNAIL_CSS_PX,
        THUMBNAIL_CSS_PX,
    )


def viewer_link(study_uid: str, series_uid: str = "", sop_instance_uid: str = "") -> str:
    """"Open in viewer": the bundled OHIF on this study (at this series and instance), in a new tab."""
    url = viewer.study_url(study_uid, series_uid, sop_instance_uid)
    return format_html('<a class="button open-in-viewer" href="{}" target="_blank" rel="noopener">Open in viewer</a>', url)


def _changelist_link(model: str, field: str, pk, text) -> str:
    url = reverse(f"admin:studies_{model}_changelist") + f"?{field}__id__exact={pk}"
    return format_html('<a href="{}">{}</a>', url, text)


class TransferSyntaxFilter(admin.SimpleListFilter):
    """Transfer syntaxes by name ("JPEG 2000 Image Compression"), not by bare UID."""

    title = "transfer syntax"
    parameter_name = "transfer_syntax_uid"

    def lookups(self, request, model_admin):
        uids = model_admin.get_queryset(request).order_by().values_list("transfer_syntax_uid", flat=True).distinct()
        return sorted(((uid, UID(uid).name if UID(uid).is_transfer_syntax else uid) for uid in uids), key=lambda x: x[1])

    def queryset(self, request, queryset):
        return queryset.filter(transfer_syntax_uid=self.value()) if self.value() else queryset


class OwnerScopedAdmin(admin.ModelAdmin):
    """Staff see and act on only their own rows unless they may view all (selectors.can_view_all)."""

    show_full_result_count = False  # one COUNT(*) fewer per page on big catalogues

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        return queryset if selectors.can_view_all(request.user) else queryset.filter(owner=request.user)

    # `is_staff` is enough: no per-model permission needs to be granted for one's own files.
    def has_module_permission(self, request):
        return _is_staff(request.user)

    def has_view_permission(self, request, obj=None):
        return _is_staff(request.user)

    def has_add_permission(self, request):
        return False  # rows come only from the ingest service

    def has_change_permission(self, request, obj=None):
        return False  # everything is derived from the DICOM file

    def has_delete_permission(self, request, obj=None):
        return False

    def get_fields(self, request, obj=None):
        # The owner as plain text: Django would link it to auth.User pages that staff may not open.
        return ["owner_name" if name == "owner" else name for name in super().get_fields(request, obj)]

    def get_readonly_fields(self, request, obj=None):
        return [*super().get_readonly_fields(request, obj), "owner_name"]

    @admin.display(description="Owner")
    def owner_name(self, obj):
        return obj.owner.get_username()

    def get_list_filter(self, request):
        filters = list(super().get_list_filter(request))
        if selectors.can_view_all(request.user):
            filters.insert(0, ("owner", admin.RelatedOnlyFieldListFilter))
        return filters


@admin.register(Instance)
class InstanceAdmin(OwnerScopedAdmin):
    list_display = [
        "thumbnail",
        "patient_name",
        "patient_id",
        "modality",
        "study_date",
        "study_description",
        "series_link",
        "owner",
        "uploaded_at",
        "file_size",
    ]
    list_display_links = ["thumbnail", "patient_name"]
    list_filter = ["modality", "uploaded_at", TransferSyntaxFilter]
    search_fields = [
        "patient_name",
        "patient_id",
        "accession_number",
        "=sop_instance_uid",
        "=study__study_instance_uid",
        "=series__series_instance_uid",
    ]
    search_help_text = "Patient name or ID, accession number, or an exact SOP / Study / Series Instance UID."
    list_select_related = ["owner", "series"]
    date_hierarchy = "uploaded_at"
    list_per_page = 50
    ordering = ["-uploaded_at"]
    exclude = ["header"]
    change_list_template = "admin/studies/instance/change_list.html"
    change_form_template = "admin/studies/instance/change_form.html"
    fieldsets = [
        ("Patient and study", {"fields": ["open_in_viewer", "patient_name", "patient_id", "study_date", "accession_number", "study_description", "study"]}),
        ("Series", {"fields": ["series", "series_description", "modality"]}),
        (
            "Instance",
            {
                "fields": [
                    "sop_instance_uid",
                    "sop_class_uid",
                    "instance_number",
                    "transfer_syntax_uid",
                    ("rows", "columns", "number_of_frames"),
                    ("photometric_interpretation", "samples_per_pixel"),
                    ("bits_allocated", "bits_stored", "pixel_representation"),
                ]
            },
        ),
        ("Stored file", {"fields": ["original_filename", "file_size", "sha256", "owner_name", "uploaded_at"]}),
    ]
    readonly_fields = ["file_size", "open_in_viewer"]
    actions = ["delete_selected_instances"]

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # bulk delete goes through the service, below
        return actions

    def get_list_display(self, request):
        columns = list(super().get_list_display(request))
        # Without view_all every row is the user's own: the owner column would only repeat their name.
        return columns if selectors.can_view_all(request.user) else [c for c in columns if c != "owner"]

    @admin.display(description="Image")
    def thumbnail(self, obj):
        return thumbnail_html(obj.pk, obj.has_pixel_data)

    @admin.display(description="Viewer")
    def open_in_viewer(self, obj):
        return viewer_link(obj.study.study_instance_uid, obj.series.series_instance_uid, obj.sop_instance_uid)

    @admin.display(description="Series", ordering="series__series_number")
    def series_link(self, obj):
        text = obj.series.series_description or f"Series {obj.series.series_number or ''}".strip()
        return _changelist_link("instance", "series", obj.series_id, text)

    @admin.display(description="Size", ordering="size")
    def file_size(self, obj):
        return filesizeformat(obj.size)

    def has_delete_permission(self, request, obj=None):
        if not _is_staff(request.user):
            return False
        return obj is None or selectors.can_modify(request.user, obj)

    def delete_model(self, request, obj):
        services.delete_instance(instance=obj)

    @admin.action(description="Delete selected instances (and their files)")
    def delete_selected_instances(self, request, queryset):
        selected = list(queryset.select_related(None))
        deletable = [obj for obj in selected if selectors.can_modify(request.user, obj)]
        for instance in deletable:
            services.delete_instance(instance=instance)
        self.message_user(request, f"Deleted {len(deletable)} instance(s).", messages.SUCCESS)
        if len(selected) > len(deletable):
            kept = len(selected) - len(deletable)
            self.message_user(request, f"{kept} instance(s) belong to other users and were kept.", messages.WARNING)

    def get_urls(self):
        upload = self.admin_site.admin_view(self.upload_view)
        return [path("upload/", upload, name="studies_instance_upload"), *super().get_urls()]

    def upload_view(self, request):
        """Upload one or many files through the ingest service and report each file's outcome."""
        if not self.has_module_permission(request):
            raise PermissionDenied
        outcomes = []
        if request.method == "POST":
            files = request.FILES.getlist("files")
            if not files:
                self.message_user(request, "Choose at least one file.", messages.ERROR)
            for upload in files:
                outcomes.append(services.ingest(owner=request.user, staged=as_staged(upload), label=upload.name))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "title": "Upload DICOM files",
            "results": [admin_row(o) for o in outcomes],
            "counts": status_counts(outcomes),
        }
        return TemplateResponse(request, "admin/studies/instance/upload.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        instance = self.get_object(request, object_id)
        extra = dict(extra_context or {})
        if instance is not None:
            extra.update(
                viewer={
                    "image_url": reverse("instance-image", args=[instance.pk]),
                    "file_url": reverse("instance-file", args=[instance.pk]),
                    "frames": instance.number_of_frames,
                    "has_pixel_data": instance.has_pixel_data,
                    "presets": [
                        ("default", "File default"),
                        *((name, name.replace("-", " ").capitalize()) for name in rendering.PRESETS),
                        ("minmax", "Min-max"),
                    ],
                },
                header_rows=tags.header_rows(instance.header),
            )
        return super().change_view(request, object_id, form_url, extra)


def admin_row(outcome: Outcome) -> dict:
    """The admin upload page's row for one file: the report row plus a link to what it names."""
    row = outcome.report_row()
    if outcome.object_id and outcome.object_type == "instance":
        row["url"] = reverse("admin:studies_instance_change", args=[outcome.object_id])
    elif outcome.object_id and outcome.object_type == "series":
        row["url"] = reverse("admin:studies_series_change", args=[outcome.object_id])
    else:
        row["url"] = ""
    return row


def _first_image(**match):
    """The id of the first instance with pixel data (lowest instance number), for a representative thumbnail."""
    return Subquery(
        Instance.objects.filter(**match, has_pixel_data=True).order_by("instance_number", "uploaded_at").values("id")[:1]
    )


class LabelFilter(admin.SimpleListFilter):
    """Your labels (each user sees only their own), on the object or the study it is in."""

    title = "your label"
    parameter_name = "label"

    def lookups(self, request, model_admin):
        return [(name, name) for name in labels.names_of(request.user)]

    def queryset(self, request, queryset):
        level = "study" if queryset.model is Study else "series"
        return labels.labelled(queryset, request.user, [self.value()], level=level) if self.value() else queryset


class LabelActionForm(helpers.ActionForm):
    """The changelist's action bar, with the label the label actions put on or take off."""

    label = forms.CharField(max_length=64, required=False, label="Label")


class LevelAdmin(OwnerScopedAdmin):
    """What the Study and Series admins share: a representative thumbnail and the instance count of
    the level (`level`: the Instance field that points at this model), each one subquery per page;
    the user's labels (one query per page) and their filter and inline."""

    level = ""
    ordering = ["-created_at"]
    readonly_fields = ["open_in_viewer"]  # each level's own link (study; series)
    action_form = LabelActionForm
    actions = ["add_label", "remove_label"]

    def get_queryset(self, request):
        match = {self.level: OuterRef("pk")}
        return (
            super().get_queryset(request)
            .annotate(first_image=_first_image(**match), n_instances=selectors.related_count(Instance, **match))
            .prefetch_related(Prefetch("labels", queryset=Label.objects.filter(owner=request.user), to_attr="my_labels"))
        )  # fmt: skip

    @admin.display(description="Your labels")
    def label_list(self, obj):
        return ", ".join(label.name for label in getattr(obj, "my_labels", []))

    @admin.action(description="Put the label (typed beside the action) on the selected")
    def add_label(self, request, queryset):
        self._label(request, queryset, labels.add, "on")

    @admin.action(description="Take the label (typed beside the action) off the selected")
    def remove_label(self, request, queryset):
        self._label(request, queryset, labels.remove, "off")

    def _label(self, request, queryset, change, word: str) -> None:
        try:
            name = labels.clean(request.POST.get("label", ""))
        except ServiceError as exc:
            self.message_user(request, f"No label changed: {exc.message}", messages.ERROR)
            return
        changed = sum(bool(change(request.user, obj, name)) for obj in queryset)
        self.message_user(request, f"'{name}' {word} {changed} of {len(queryset)} selected", messages.SUCCESS)

    @admin.display(description="Image")
    def thumbnail(self, obj):
        return thumbnail_html(obj.first_image)

    @admin.display(description="Instances")
    def instance_count(self, obj):
        return _changelist_link("instance", self.level, obj.pk, obj.n_instances or 0)


@admin.register(Study)
class StudyAdmin(LevelAdmin):
    level = "study"
    list_display = [
        "thumbnail", "patient_name", "patient_id", "study_date", "study_description", "accession_number", "series_count", "instance_count",
        "label_list", "owner", "open_in_viewer",
    ]  # fmt: skip
    list_display_links = ["thumbnail", "patient_name"]
    list_filter = ["study_date", LabelFilter]
    search_fields = ["patient_name", "patient_id", "accession_number", "=study_instance_uid"]
    list_select_related = ["owner"]
    date_hierarchy = "study_date"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(n_series=selectors.related_count(Series, study=OuterRef("pk")))

    @admin.display(description="Series")
    def series_count(self, obj):
        return _changelist_link("series", "study", obj.pk, obj.n_series or 0)

    @admin.display(description="Viewer")
    def open_in_viewer(self, obj):
        return viewer_link(obj.study_instance_uid)

    actions = ["add_label", "remove_label", "deidentify_basic", "deidentify_modified_dates"]

    @admin.action(description="De-identify a copy into my catalogue (PS3.15 Basic Profile)")
    def deidentify_basic(self, request, queryset):
        _deidentify_studies(self, request, queryset, deidentify.Choices())

    @admin.action(description="De-identify a copy into my catalogue (Basic Profile, dates shifted per patient)")
    def deidentify_modified_dates(self, request, queryset):
        _deidentify_studies(self, request, queryset, deidentify.Choices(options=frozenset({"retain_modified_dates"})))

    def get_actions(self, request):
        """Besides the usual ones, "Send to <AE>" for each DICOM peer this user may send to (studies/outbound.py)."""
        actions = super().get_actions(request)
        for peer in outbound.peers_for(request.user).order_by("ae_title")[:20]:
            name = f"send_to_{peer.pk}"
            actions[name] = (_send_action(peer.ae_title), name, f"Send to DICOM peer {peer.ae_title} ({peer.host}:{peer.port})")
        return actions


def _deidentify_studies(modeladmin, request, queryset, choices) -> None:
    """One de-identified copy per study (studies/deidentify.py), owned by the admin user; refusals say why."""
    made = 0
    for study in queryset:
        instances = list(study.instances.select_related("series").order_by("series__series_number", "instance_number", "id"))
        try:
            deidentify.to_catalogue(user=request.user, level="study", source_id=str(study.pk), instances=instances, choices=choices)
        except ServiceError as exc:
            files = exc.extra.get("files") or []
            detail = f" ({files[0]['reason']})" if files else ""
            modeladmin.message_user(request, f"Study {study.pk}: not de-identified: {exc.message}{detail}", messages.ERROR)
            continue
        made += 1
    if made:
        modeladmin.message_user(
            request, f"{made} de-identified cop{'y' if made == 1 else 'ies'} made; see De-identifications", messages.SUCCESS
        )


@admin.register(Quota)
class QuotaAdmin(admin.ModelAdmin):
    """Per-user storage limits (empty: the defaults from settings), with what each user stores now."""

    list_display = ("user", "max_bytes", "max_instances", "used", "used_instances")
    search_fields = ["user__username"]
    readonly_fields = ("used", "used_instances")
    fields = ("user", "max_bytes", "max_instances", "used", "used_instances")

    @admin.display(description="used")
    def used(self, obj):
        return filesizeformat(obj.used_bytes)

    def get_readonly_fields(self, request, obj=None):
        return (*self.readonly_fields, "user") if obj is not None else self.readonly_fields

    def _superuser(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_superuser

    has_module_permission = has_view_permission = has_change_permission = has_add_permission = _superuser


class RecordAdmin(admin.ModelAdmin):
    """A read-only list of what happened (sends, de-identifications): staff view their records, nobody edits them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_staff


@admin.register(Deidentification)
class DeidentificationAdmin(RecordAdmin):
    """De-identified copies, read-only: source, result, options (the UID map only for its owner)."""

    list_display = ("created_at", "source_level", "source_id", "result_study", "delivered_as", "instance_count", "owner")
    list_filter = ("delivered_as", "source_level")
    readonly_fields = [f.name for f in Deidentification._meta.fields if f.name != "uid_map"]
    exclude = ["uid_map"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("result_study", "owner").filter(owner=request.user)



def _send_action(ae_title: str):
    def send(modeladmin, request, queryset):
        sends = [outbound.queue_send(request.user, study, ae_title) for study in queryset]
        modeladmin.message_user(
            request, f"{len(sends)} stud{'y' if len(sends) == 1 else 'ies'} queued for {ae_title}; see DICOM sends for the results",
            messages.SUCCESS,
        )  # fmt: skip

    return send


@admin.register(DicomSend)
class DicomSendAdmin(RecordAdmin):
    """Sends of studies to DICOM peers, read-only: each one's state and a DIMSE status per instance."""

    list_display = ("created_at", "ae_title", "study", "status", "instance_count", "sent_count", "failed_count", "owner")
    list_filter = ("status", "ae_title")
    readonly_fields = [f.name for f in DicomSend._meta.fields]

    def get_queryset(self, request):
        queryset = super().get_queryset(request).select_related("study", "owner")
        return queryset if request.user.is_superuser else queryset.filter(owner=request.user)



@admin.register(Series)
class SeriesAdmin(LevelAdmin):
    level = "series"
    list_display = ["thumbnail", "series_description", "series_number", "modality", "study_link", "instance_count", "label_list", "owner"]
    list_display_links = ["thumbnail", "series_description"]
    list_filter = ["modality", LabelFilter]
    search_fields = ["series_description", "study__patient_name", "study__patient_id", "=series_instance_uid", "=study__study_instance_uid"]
    list_select_related = ["owner", "study"]

    @admin.display(description="Viewer")
    def open_in_viewer(self, obj):
        return viewer_link(obj.study.study_instance_uid, obj.series_instance_uid)

    @admin.display(description="Study")
    def study_link(self, obj):
        study = obj.study
        text = f"{study.patient_name or study.patient_id or 'Study'} {study.study_date or ''}".strip()
        return _changelist_link("series", "study", obj.study_id, text)


@admin.register(DicomPeer)
class DicomPeerAdmin(admin.ModelAdmin):
    """The DICOM nodes `manage.py dicomserver` answers (docs/dicom-node.md): managed by administrators only, with
    Django's model permissions (the same as `manage.py dicom_peer`)."""

    list_display = ("ae_title", "host", "port", "owner", "may_store", "may_find", "may_move", "may_get", "description")
    list_filter = ("may_store", "may_find", "may_move", "may_get")
    search_fields = ("ae_title", "host", "description")
    raw_id_fields = ("owner",)
