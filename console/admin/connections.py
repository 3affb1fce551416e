"""Connections in the console: read-only but for the recorded identity, which changes only with a reason."""

from __future__ import annotations

from django.contrib import admin

from audit.admin_scale import EstimatedCountPaginator, ExactSearchMixin
from cases.models import Connection, CredentialGeneration

from ..forms import ConnectionIdentityForm
from ..services import connection_identity_change
from .base import ChangeWithReasonMixin, NamespaceScopedMixin, ReadOnlyInline


class GenerationInline(ReadOnlyInline):
    model = CredentialGeneration
    readonly_fields = ["number", "state", "issued_at", "rejected_at", "superseded_at"]


_SECTIONS: list[tuple[str | None, tuple[str, ...]]] = [
    (None, ("id", "provider", "display_name", "owner_email", "owner_name")),
    ("Recorded identity", ("provider_subject", "provider_tenant", "provider_issuer", "provider_org")),
    (
        "Held by a broker (Nango, Scalekit): Revive stores no token",
        ("upstream_provider", "broker_integration", "broker_connection", "broker_account"),
    ),
    ("Generation", ("current_generation", "created_at", "updated_at")),
]


@admin.register(Connection)
class ConnectionAdmin(NamespaceScopedMixin, ChangeWithReasonMixin, ExactSearchMixin, admin.ModelAdmin):
    list_display = ["id", "provider", "owner_email", "provider_tenant", "current_generation", "updated_at"]
    list_filter = ["provider"]
    search_fields = ["id", "owner_email", "provider_subject", "provider_tenant"]
    exact_search_fields = ("id", "owner_email__iexact", "provider_subject", "provider_tenant")
    search_help_text = "Exact connection id, owner e-mail (any case), provider subject or tenant."
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    fieldsets = [(title, {"fields": names}) for title, names in _SECTIONS]
    # the identity changes only through the reason form; connections are created by command
    readonly_fields = [name for _, names in _SECTIONS for name in names]
    inlines = [GenerationInline]
    change_form_template = "admin/cases/change_form_with_reason.html"
    reason_view_path = "identity"
    reason_view_title = "Change recorded identity"
    reason_form = ConnectionIdentityForm
    reason_change_permission = "cases.change_connection"

    def has_add_permission(self, request):
        return False  # manage.py revive_connection (connection_create) creates them, audited

    def reason_change(self, obj, *, actor, reason, values):
        connection_identity_change(connection_id=obj.pk, actor=actor, reason=reason, **values)
