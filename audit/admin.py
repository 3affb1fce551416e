from django.contrib import admin

from .models import AuditEvent, OperationAudit


class ReadOnlyAdmin(admin.ModelAdmin):
    """Evidence is read-only for everyone, superusers included."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ["occurred_at", "actor", "action", "entity_type", "entity_id", "case_reference", "outcome"]
    list_filter = ["action", "entity_type", "outcome"]
    search_fields = ["case_reference", "actor", "action", "run_id", "entity_id"]
    date_hierarchy = "occurred_at"


@admin.register(OperationAudit)
class OperationAuditAdmin(ReadOnlyAdmin):
    list_display = ["started_at", "actor", "role", "route", "outcome", "error_code", "request_id"]
    list_filter = ["outcome", "route"]
    search_fields = ["actor", "route", "request_id"]
