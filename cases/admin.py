from django.contrib import admin, messages

from .models import Action, ApiKey, CaseRun, Checkpoint, Connection, CredentialGeneration, RecoveryCase, Run
from .services import api_key_create


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "role", "system_operate", "prefix", "created_at", "last_used_at", "revoked_at"]
    list_filter = ["role", "system_operate"]
    search_fields = ["name", "prefix"]
    readonly_fields = ["prefix", "created_at", "last_used_at"]

    def get_fields(self, request, obj=None):
        if obj is None:
            return ["name", "role", "system_operate"]
        return ["name", "role", "system_operate", "prefix", "created_at", "last_used_at", "revoked_at"]

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        key, raw = api_key_create(name=obj.name, role=obj.role, system_operate=obj.system_operate,
                                  actor=f"operator:{request.user.get_username()}")
        obj.pk = key.pk
        obj._state.adding = False
        messages.warning(request, f"Store this key now; it is shown only once: {raw}")


class GenerationInline(admin.TabularInline):
    model = CredentialGeneration
    extra = 0
    can_delete = False
    readonly_fields = ["number", "state", "issued_at", "rejected_at", "superseded_at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Connection)
class ConnectionAdmin(admin.ModelAdmin):
    list_display = ["id", "provider", "owner_email", "provider_tenant", "current_generation", "updated_at"]
    list_filter = ["provider"]
    search_fields = ["id", "owner_email", "provider_subject", "provider_tenant"]
    readonly_fields = ["current_generation", "created_at", "updated_at"]
    inlines = [GenerationInline]


class CheckpointInline(admin.TabularInline):
    model = Checkpoint
    extra = 0
    can_delete = False
    readonly_fields = ["checkpoint_id", "label", "runtime_ref", "created_at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ["id", "workflow_name", "runtime", "state", "updated_at"]
    list_filter = ["runtime", "state"]
    search_fields = ["id", "workflow_name"]
    readonly_fields = ["id", "runtime", "runtime_ref", "workflow_name", "state", "created_at", "updated_at"]
    inlines = [CheckpointInline]

    def has_add_permission(self, request):
        return False


@admin.register(Action)
class ActionAdmin(admin.ModelAdmin):
    list_display = ["action_key", "run", "state", "generation", "attempts", "updated_at"]
    list_filter = ["state"]
    search_fields = ["action_key", "run__id", "idempotency_key"]
    list_select_related = ["run"]
    readonly_fields = [f.name for f in Action._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class CaseRunInline(admin.TabularInline):
    model = CaseRun
    extra = 0
    can_delete = False
    readonly_fields = ["run", "checkpoint", "action", "joined_at", "resumed_at"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(RecoveryCase)
class RecoveryCaseAdmin(admin.ModelAdmin):
    list_display = ["reference", "state", "failure_class", "provider", "provider_code", "connection", "opened_at"]
    list_filter = ["state", "failure_class", "provider"]
    search_fields = ["reference", "connection__id", "run__id"]
    list_select_related = ["connection"]
    readonly_fields = [f.name for f in RecoveryCase._meta.fields]
    inlines = [CaseRunInline]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False
