import json
from collections.abc import Callable
from datetime import timedelta

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest
from django.utils import timezone

from .admin_scale import EstimatedCountPaginator, ExactSearchMixin
from .models import AuditEvent, OperationAudit
from .redaction import redact


def redacted_json(value) -> str:
    """JSON for an admin page, redacted again on the way out (secret-like keys, bearer tokens, JWTs, URL user-info)."""
    if value in (None, "", {}, []):
        return "—"
    return json.dumps(redact(value), indent=2, sort_keys=True, default=str)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Read-only for everyone, superusers included: evidence (the audit log), and the console's records, which
    change only through Revive's services (its actions, each with its own permission)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class FixedChoicesFilter(admin.SimpleListFilter):
    """A filter with fixed choices: no SELECT DISTINCT over the whole log to build it."""

    field: str
    values: list[str]

    def lookups(self, request, model_admin):
        return [(v, v) for v in self.values]

    def queryset(self, request, queryset):
        return queryset.filter(**{self.field: self.value()}) if self.value() else queryset


class OutcomeFilter(FixedChoicesFilter):
    title = parameter_name = field = "outcome"
    values = ["ok", "refused", "error", "failed", "expired", "revoked", "locked"]


class EntityTypeFilter(FixedChoicesFilter):
    title = "entity"
    parameter_name = field = "entity_type"
    values = ["case", "action", "run", "checkpoint", "connection", "reconnect_request", "api_key"]


class ActorKindFilter(admin.SimpleListFilter):
    title = "actor"
    parameter_name = "actor_kind"
    KINDS = {
        "operator": "operator:",
        "owner": "owner",
        "system": "system",
        "reconciler": "reconciler:",
        "worker": "worker:",
    }

    def lookups(self, request, model_admin):
        return [(k, k) for k in self.KINDS]

    def queryset(self, request, queryset):
        prefix = self.KINDS.get(self.value() or "")
        return queryset.filter(actor__startswith=prefix) if prefix else queryset


# Apps above ``audit`` narrow what a console user sees of the log by registering a scope here (``console.admin``
# registers the namespaces the user is limited to); ``audit`` itself knows nothing of them.
EVENT_SCOPES: list[Callable[[HttpRequest, QuerySet], QuerySet]] = []


_case_scopes: list = []


def register_case_scope(scope) -> None:
    """The console (``console.admin.base``) hands over which events belong to a case (``scope(case_pk) -> Q | None``);
    audit imports nothing above it."""
    _case_scopes[:] = [scope]


class CaseFilter(admin.SimpleListFilter):
    """``?case=<pk>``: every event of one case (its runs' too), as its case page's timeline shows them. Offered
    only when set (by the case page's "Audit log" link), so the sidebar lists no cases."""

    title = "case"
    parameter_name = "case"

    def lookups(self, request, model_admin):
        value = request.GET.get(self.parameter_name, "")
        return [(value, f"case {value}")] if value.isdigit() else []

    def queryset(self, request, queryset):
        if not self.value():
            return queryset
        scope = _case_scopes[0](self.value()) if _case_scopes and self.value().isdigit() else None
        return queryset.filter(scope) if scope is not None else queryset.none()


class OccurredFilter(admin.SimpleListFilter):
    """When, in fixed bands (a date hierarchy would read every distinct date of the whole log to draw itself)."""

    title = "occurred"
    parameter_name = "occurred"
    BANDS = {
        "1h": ("Last hour", timedelta(hours=1)),
        "24h": ("Last 24 hours", timedelta(hours=24)),
        "7d": ("Last 7 days", timedelta(days=7)),
        "30d": ("Last 30 days", timedelta(days=30)),
    }

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _) in self.BANDS.items()]

    def queryset(self, request, queryset):
        band = self.BANDS.get(self.value() or "")
        return queryset.filter(occurred_at__gte=timezone.now() - band[1]) if band else queryset


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    """The audit log. Searching matches a case id, run id or entity id exactly, and an actor or action by prefix
    (``operator:`` finds every operator's act), so a search stays on an index however long the log grows.
    What is shown is redacted again on display (it was redacted when written)."""

    list_display = ["occurred_at", "actor", "action", "entity_type", "entity_id", "case_reference", "outcome"]
    list_filter = [CaseFilter, OccurredFilter, OutcomeFilter, ActorKindFilter, EntityTypeFilter]
    search_fields = ["case_reference", "actor", "action"]
    search_help_text = "Case id, run id, entity id, trace id, or the start of an actor or action (operator:, case.)."
    show_full_result_count = False
    paginator = EstimatedCountPaginator  # the log grows without bound: no COUNT(*) of it per page
    fields = (
        "occurred_at",
        "actor",
        "action",
        "entity_type",
        "entity_id",
        "case_reference",
        "run_id",
        "connection_id",
        "outcome",
        "trace_id",
        "before_redacted",
        "after_redacted",
        "arguments_redacted",
    )
    readonly_fields = fields

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        for scope in EVENT_SCOPES:
            qs = scope(request, qs)
        return qs

    def get_search_results(self, request, queryset, search_term):
        term = search_term.strip()
        if not term:
            return queryset, False
        return queryset.filter(
            Q(case_reference=term.upper())
            | Q(run_id=term)
            | Q(entity_id=term)
            | Q(trace_id=term.lower())
            | Q(actor__startswith=term)
            | Q(action__startswith=term)
        ), False

    @admin.display(description="before")
    def before_redacted(self, obj):
        return redacted_json(obj.before)

    @admin.display(description="after")
    def after_redacted(self, obj):
        return redacted_json(obj.after)

    @admin.display(description="arguments")
    def arguments_redacted(self, obj):
        return redacted_json(obj.arguments)


@admin.register(OperationAudit)
class OperationAuditAdmin(ExactSearchMixin, ReadOnlyAdmin):
    list_display = ["started_at", "actor", "role", "route", "outcome", "error_code", "request_id"]
    list_filter = ["outcome", "route"]
    search_fields = ["actor", "route", "request_id"]
    exact_search_fields = ("actor", "route", "request_id")
    search_help_text = "Exact actor, route or request id."
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    fields = (
        "request_id",
        "actor",
        "role",
        "route",
        "arguments_redacted",
        "reason",
        "started_at",
        "finished_at",
        "outcome",
        "error_code",
        "error",
    )
    readonly_fields = fields

    @admin.display(description="arguments")
    def arguments_redacted(self, obj):
        return redacted_json(obj.arguments)
