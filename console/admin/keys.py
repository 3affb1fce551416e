"""Namespaces and API keys in the console: created, changed and revoked only through their services, audited."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db import models

from cases.models import ApiKey, Namespace
from cases.namespaces import namespace_ensure
from cases.services import api_key_create, api_key_revoke

from ..forms import ApiKeyAccessForm
from ..operate import operator_actor
from ..services import api_key_access_change, namespace_notifications_set, namespace_operators_set
from .base import ChangeWithReasonMixin, NamespaceScopedMixin


@admin.register(Namespace)
class NamespaceAdmin(admin.ModelAdmin):
    """Namespaces and the console users limited to them; only superusers change them, each change audited."""

    list_display = ["name", "description", "created_at"]
    fields = ["name", "description", "operators", "operator_emails", "operator_webhook_url"]
    filter_horizontal = ["operators"]
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    def get_readonly_fields(self, request, obj=None):
        return ["name"] if obj is not None else []

    def has_add_permission(self, request):
        return request.user.is_superuser

    def has_change_permission(self, request, obj=None):
        return request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        namespace = namespace_ensure(name=obj.name, actor=operator_actor(request.user))
        if namespace.description != obj.description:
            Namespace.objects.filter(pk=namespace.pk).update(description=obj.description)
        namespace_notifications_set(
            name=namespace.pk,
            operator_emails=obj.operator_emails,
            operator_webhook_url=obj.operator_webhook_url,
            actor=operator_actor(request.user),
        )
        obj._state.adding = False

    def save_related(self, request, form, formsets, change):
        namespace_operators_set(
            name=form.instance.pk, users=list(form.cleaned_data["operators"]), actor=operator_actor(request.user)
        )


@admin.register(ApiKey)
class ApiKeyAdmin(NamespaceScopedMixin, ChangeWithReasonMixin, admin.ModelAdmin):
    list_display = ["name", "namespace", "role", "system_operate", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["namespace", "role", "system_operate"]
    search_fields = ["name", "prefix"]
    change_form_template = "admin/cases/change_form_with_reason.html"
    reason_view_path = "access"
    reason_view_title = "Change role and permissions"
    reason_form = ApiKeyAccessForm
    reason_change_permission = "cases.change_apikey"
    actions = ["revoke_keys"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name", "namespace", "role", "system_operate"]
        return ["name", "namespace", "role", "system_operate", "prefix", "created_at", "last_used_at", "revoked_at"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return self.get_fields(request, obj)  # role and permissions change only through the reason form

    def save_model(self, request, obj, form, change):
        if change:
            return  # nothing is editable in place
        key, raw = api_key_create(
            name=obj.name,
            role=obj.role,
            system_operate=obj.system_operate,
            actor=operator_actor(request.user),
            namespace=obj.namespace_id,
        )
        obj.pk = key.pk
        obj._state.adding = False
        messages.warning(request, f"Store this key now; it is shown only once: {raw}")

    def reason_change(self, obj, *, actor, reason, values):
        api_key_access_change(key_id=obj.pk, actor=actor, reason=reason, **values)

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        for key in queryset:
            api_key_revoke(key_id=key.pk, actor=operator_actor(request.user))
        self.message_user(request, f"{queryset.count()} key(s) revoked.", messages.SUCCESS)
