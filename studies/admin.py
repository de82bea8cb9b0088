"""Admin registration (a first version: read-only catalogue, scoped per user; issue 4 grows it)."""

from __future__ import annotations

from django.contrib import admin

from . import selectors, services
from .models import Instance, Series, Study


class OwnerScopedAdmin(admin.ModelAdmin):
    """Staff without `studies.view_all` see and act on only their own rows."""

    def get_queryset(self, request):
        queryset = super().get_queryset(request)
        return queryset if selectors.can_view_all(request.user) else queryset.filter(owner=request.user)

    def has_add_permission(self, request):
        return False  # rows come only from the ingest service

    def has_change_permission(self, request, obj=None):
        return False  # everything is derived from the DICOM file

    def has_delete_permission(self, request, obj=None):
        allowed = super().has_delete_permission(request, obj)
        return allowed and (obj is None or selectors.can_modify(request.user, obj))


@admin.register(Instance)
class InstanceAdmin(OwnerScopedAdmin):
    list_display = ["sop_instance_uid", "patient_name", "patient_id", "modality", "study_date", "owner", "uploaded_at", "size"]
    list_filter = ["modality", "uploaded_at"]
    search_fields = ["patient_name", "patient_id", "accession_number", "sop_instance_uid"]
    list_select_related = ["owner"]
    date_hierarchy = "uploaded_at"

    def delete_model(self, request, obj):
        services.delete_instance(instance=obj)

    def delete_queryset(self, request, queryset):
        for instance in queryset:
            services.delete_instance(instance=instance)


@admin.register(Study)
class StudyAdmin(OwnerScopedAdmin):
    list_display = ["study_instance_uid", "patient_name", "patient_id", "study_date", "study_description", "owner"]
    search_fields = ["patient_name", "patient_id", "accession_number", "study_instance_uid"]
    list_select_related = ["owner"]

    def has_delete_permission(self, request, obj=None):
        return False  # delete instances (files go with them); empty studies disappear


@admin.register(Series)
class SeriesAdmin(OwnerScopedAdmin):
    list_display = ["series_instance_uid", "modality", "series_number", "series_description", "owner"]
    search_fields = ["series_instance_uid", "series_description"]
    list_select_related = ["owner"]

    def has_delete_permission(self, request, obj=None):
        return False
