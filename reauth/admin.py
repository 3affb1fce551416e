from django.contrib import admin, messages
from django.db import transaction

from audit.admin import ReadOnlyAdmin
from audit.services import audit_record

from cases.console_access import namespaces_visible_to
from revive_site.errors import DomainError

from .models import ReconnectRequest
from .services import reconnect_request_resend

# CustodyGrant is deliberately not registered: grants stay out of the operator console. Nor are allauth's own
# models: providers are configured in settings, and Revive keeps no owner accounts, tokens or client secrets there.
for _model in list(admin.site._registry):
    if _model._meta.app_label in ("account", "socialaccount"):
        admin.site.unregister(_model)


@admin.register(ReconnectRequest)
class ReconnectRequestAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "case", "connection", "state", "expires_at", "email_sent_at", "refusals", "created_at"]
    list_filter = ["state"]
    search_fields = ["public_id", "case__reference", "connection__id"]
    list_select_related = ["case", "connection"]
    fields = (
        "public_id", "case", "connection", "rejected_generation", "state", "link_issued_at", "expires_at", "email_sent_at",
        "webhook_sent_at", "notify_attempts", "refusals", "consumed_at", "revoked_at", "revoked_reason", "locked_at",
        "replaced_by", "created_by", "created_at", "updated_at",
    )
    readonly_fields = fields
    actions = ["resend_link"]

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        visible = namespaces_visible_to(request.user)
        return qs if visible is None else qs.filter(case__namespace__in=visible)


    def has_operate_permission(self, request):
        return request.user.has_perm("cases.operate_case")

    @admin.action(description="Resend a new reconnect link (the old link stops working)", permissions=["operate"])
    def resend_link(self, request, queryset):
        actor = f"operator:{request.user.get_username()}"
        for req in queryset:
            try:
                new = reconnect_request_resend(public_id=req.public_id, actor=actor)
            except DomainError as exc:
                with transaction.atomic():  # every refusal leaves a trace (console.refused), as in the case console
                    audit_record(actor=actor, action="console.refused", entity_type="reconnect_request",
                                 entity_id=req.public_id, case=req.case, connection_id=req.connection_id,
                                 outcome="refused", arguments={"operation": "resend_link", "why": exc.message,
                                                               "code": exc.code})
                messages.error(request, f"{req.case}: {exc.code}: {exc.message}")
            else:
                messages.success(request, f"{req.case}: a new link is on its way to the owner ({new.public_id}).")
