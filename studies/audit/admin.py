"""The audit trail in the admin: read-only, superusers only."""

from __future__ import annotations

from django.contrib import admin

from .models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(admin.ModelAdmin):
    """The audit trail, read-only: no add, no change, no delete, for anyone (superusers included)."""

    list_display = ["at", "username", "action", "object_type", "object_id", "outcome", "status", "client_address", "request_id"]
    list_filter = ["outcome", "action", "at"]
    search_fields = ["username", "=object_id", "=request_id", "=client_address"]
    date_hierarchy = "at"
    list_per_page = 100
    show_full_result_count = False

    def has_module_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None):
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
