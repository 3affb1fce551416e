from django.contrib import admin, messages
from django.db import transaction
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.views.decorators.debug import sensitive_post_parameters

from audit.admin import ReadOnlyAdmin
from audit.services import audit_record
from cases.namespaces import namespaces_visible_to
from revive_site.errors import DomainError

from .brokers.services import nango_signing_key_clear, nango_signing_key_set
from .custody import secret_open
from .forms import NangoSigningKeyForm
from .models import NangoSigningKey, ReconnectRequest
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
        "public_id",
        "case",
        "connection",
        "rejected_generation",
        "state",
        "link_issued_at",
        "expires_at",
        "email_sent_at",
        "webhook_sent_at",
        "notify_attempts",
        "refusals",
        "consumed_at",
        "revoked_at",
        "revoked_reason",
        "locked_at",
        "replaced_by",
        "created_by",
        "created_at",
        "updated_at",
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
                    audit_record(
                        actor=actor,
                        action="console.refused",
                        entity_type="reconnect_request",
                        entity_id=req.public_id,
                        case=req.case,
                        connection_id=req.connection_id,
                        outcome="refused",
                        arguments={"operation": "resend_link", "why": exc.message, "code": exc.code},
                    )
                messages.error(request, f"{req.case}: {exc.code}: {exc.message}")
            else:
                messages.success(request, f"{req.case}: a new link is on its way to the owner ({new.public_id}).")


@admin.register(NangoSigningKey)
class NangoSigningKeyAdmin(admin.ModelAdmin):
    """A namespace's Nango webhook signing key, write-only: set, replaced or cleared through the services (each change
    audited without the key); the pages say only whether a key is set, when and by whom. Needs
    ``reauth.change_nangosigningkey`` (superusers hold it)."""

    form = NangoSigningKeyForm
    list_display = ["namespace", "is_set", "changed_at", "changed_by"]
    search_fields = ["namespace__name"]
    permission = "reauth.change_nangosigningkey"

    def get_fields(self, request, obj=None):
        return ["namespace", "signing_key"] if obj is None else ["namespace", "status", "signing_key", "clear"]

    def get_readonly_fields(self, request, obj=None):
        return [] if obj is None else ["namespace", "status"]

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        visible = namespaces_visible_to(request.user)
        return qs if visible is None else qs.filter(namespace__in=visible)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if db_field.name == "namespace":  # a namespace with a row (set or cleared) is changed on its own page
            choices = field.queryset.exclude(name__in=NangoSigningKey.objects.values("namespace_id"))
            visible = namespaces_visible_to(request.user)
            field.queryset = choices if visible is None else choices.filter(name__in=visible)
        return field

    def has_add_permission(self, request):
        return request.user.has_perm(self.permission)

    def has_change_permission(self, request, obj=None):
        return request.user.has_perm(self.permission)

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm(self.permission)

    def has_delete_permission(self, request, obj=None):
        return False  # "clear" keeps the row: who cleared it, and when

    @admin.display(boolean=True, description="key set")
    def is_set(self, obj):
        return obj.is_set

    @admin.display(description="key")
    def status(self, obj):
        when = f"{timezone.localtime(obj.changed_at):%Y-%m-%d %H:%M %Z} by {obj.changed_by}"
        if not obj.is_set:
            return f"Not set (cleared on {when}): the environment's key applies."
        if secret_open(obj.ciphertext) is None:
            return (
                f"Set on {when}, but SECRET_KEY and its fallbacks cannot decrypt it: every webhook is refused "
                "until it is set again."
            )
        return f"Set on {when}."

    @method_decorator(sensitive_post_parameters("signing_key"))
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return super().changeform_view(request, object_id, form_url, extra_context)

    def save_model(self, request, obj, form, change):
        actor = f"operator:{request.user.get_username()}"
        if form.cleaned_data.get("clear"):
            nango_signing_key_clear(namespace=obj.namespace_id, actor=actor)
        else:
            nango_signing_key_set(namespace=obj.namespace_id, key=form.cleaned_data["signing_key"], actor=actor)
        obj._state.adding = False
