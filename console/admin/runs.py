"""The ledger behind the cases, read-only: runs and their checkpoints, actions, and the outbox of owed steps.

Millions of rows: searches are exact index lookups and page counts are estimated (``audit.admin_scale``).
"""

from __future__ import annotations

from django.contrib import admin

from audit.admin import ReadOnlyAdmin, redacted_json
from audit.admin_scale import EstimatedCountPaginator, ExactSearchMixin
from cases.models import Action, Checkpoint, OutboxItem, Run
from cases.outbox import outbox_retry

from ..operate import PERMISSION, operator_actor
from .base import NamespaceScopedMixin, ReadOnlyInline


class CheckpointInline(ReadOnlyInline):
    model = Checkpoint
    fields = readonly_fields = ("checkpoint_id", "label", "runtime_reference", "created_at")

    @admin.display(description="runtime reference")
    def runtime_reference(self, obj):
        return redacted_json(obj.runtime_ref)


@admin.register(Run)
class RunAdmin(NamespaceScopedMixin, ExactSearchMixin, ReadOnlyAdmin):
    list_display = ["id", "workflow_name", "runtime", "state", "updated_at"]
    list_filter = ["runtime", "state"]
    search_fields = ["id", "workflow_name"]
    exact_search_fields = ("id", "workflow_name")
    search_help_text = "Exact run id or workflow name."
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    fields = readonly_fields = (
        "id",
        "runtime",
        "runtime_reference",
        "workflow_name",
        "state",
        "created_at",
        "updated_at",
    )
    inlines = [CheckpointInline]

    @admin.display(description="runtime reference")
    def runtime_reference(self, obj):
        return redacted_json(obj.runtime_ref)


@admin.register(Action)
class ActionAdmin(NamespaceScopedMixin, ExactSearchMixin, ReadOnlyAdmin):
    """The ledger, read-only. Results, errors and evidence are shown redacted.

    Millions of rows: searches are exact index lookups and page counts are estimated (``audit.admin_scale``)."""

    namespace_path = "run__namespace"

    list_display = ["action_key", "run", "state", "generation", "attempts", "reconciled_by", "updated_at"]
    list_filter = ["state"]
    search_fields = ["action_key", "run_id", "idempotency_key"]
    exact_search_fields = ("action_key", "run_id", "idempotency_key")
    search_help_text = "Exact action key, run id or idempotency key."
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    list_select_related = ["run"]
    fields = readonly_fields = (
        "run",
        "action_key",
        "idempotency_key",
        "connection",
        "checkpoint",
        "state",
        "generation",
        "attempts",
        "external_ref",
        "result_redacted",
        "error_redacted",
        "evidence_redacted",
        "reconciled_by",
        "lock_expires_at",
        "created_at",
        "updated_at",
    )

    @admin.display(description="result")
    def result_redacted(self, obj):
        return redacted_json(obj.result)

    @admin.display(description="error")
    def error_redacted(self, obj):
        return redacted_json(obj.error)

    @admin.display(description="evidence")
    def evidence_redacted(self, obj):
        return redacted_json(obj.evidence)


@admin.register(OutboxItem)
class OutboxItemAdmin(ReadOnlyAdmin):
    """Every step Revive owes, read-only; ``failed`` rows (attempts used up) are an operator's to look at.

    An operator with the console permission may give a failed row its attempts again.
    """

    list_display = ["kind", "key", "case", "run_id", "state", "attempts", "max_attempts", "due_at", "last_error_short"]
    list_filter = ["state", "kind"]
    search_fields = ["=key", "=run_id", "=case__reference"]
    list_select_related = ["case"]
    fields = readonly_fields = (
        "kind",
        "key",
        "case",
        "run_id",
        "payload",
        "state",
        "attempts",
        "max_attempts",
        "due_at",
        "claimed_until",
        "last_error",
        "created_at",
        "updated_at",
        "done_at",
    )
    actions = ["retry_failed"]

    @admin.display(description="last error")
    def last_error_short(self, obj):
        return obj.last_error[:160]

    @admin.action(description="Retry the selected failed steps", permissions=["operate"])
    def retry_failed(self, request, queryset):
        actor = operator_actor(request.user)
        retried = [
            outbox_retry(item_id=pk, actor=actor).key
            for pk in queryset.filter(state=OutboxItem.State.FAILED).values_list("pk", flat=True)
        ]
        self.message_user(request, f"{len(retried)} failed step(s) dispatched again.")

    def has_operate_permission(self, request):
        return request.user.has_perm(PERMISSION)
