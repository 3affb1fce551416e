"""The operator console: the recovery cases (list, case page, actions) and the read-only ledger behind them.

Every write goes through ``cases.console`` (and from there through the
services the API uses), is allowed only to holders of ``cases.operate_case``,
and is audited as ``operator:<username>``. Nothing here shows a credential:
JSON that could hold one (results, evidence, errors, runtime references) is
shown redacted.
"""

from __future__ import annotations

import csv
import json
from datetime import timedelta

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import Q
from django.http import Http404, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from audit import admin as audit_admin
from audit.admin import ReadOnlyAdmin, redacted_json, register_case_scope
from audit.redaction import redact
from revive_site.errors import DomainError
from audit.admin_scale import EstimatedCountPaginator, ExactSearchMixin, PlainActionCheckboxMixin

from . import console
from .case_story import case_story_context
from .console_access import namespaces_visible_to
from .namespaces import namespace_ensure, namespace_notifications_set, namespace_operators_set
from .models import (
    CASE_URGENCY,
    OPEN_CASE_STATES,
    Action,
    ApiKey,
    CaseState,
    Checkpoint,
    Connection,
    CredentialGeneration,
    Namespace,
    OutboxItem,
    RecoveryCase,
    Run,
)
from .admin_services import api_key_access_change, connection_identity_change
from .forms import ApiKeyAccessForm, ConnectionIdentityForm
from .outbox import outbox_retry
from .selectors import (
    case_audit_events, case_audit_q, console_case_detail, console_case_queryset, console_case_search,
    urgency_ranks,
)
from . import services
from .services import api_key_create, api_key_revoke
from .templatetags.revive_console import age as age_text


class NamespaceScopedMixin:
    """The console rows of a user limited to some namespaces (``namespaces_visible_to``): lists, filters, search,
    pages and actions all start from this queryset, so a row of another namespace is simply not found."""

    namespace_path = "namespace"

    def get_queryset(self, request):
        qs = super().get_queryset(request)
        visible = namespaces_visible_to(request.user)
        return qs if visible is None else qs.filter(**{f"{self.namespace_path}__in": visible})


def _audit_events_in_visible_namespaces(request, queryset):
    """The audit log of a user limited to some namespaces: the events of their runs and connections only."""
    visible = namespaces_visible_to(request.user)
    if visible is None:
        return queryset
    return queryset.filter(
        Q(connection_id__in=Connection.objects.filter(namespace__in=visible).values("pk"))
        | Q(run_id__in=Run.objects.filter(namespace__in=visible).values("pk"))
    )


audit_admin.EVENT_SCOPES.append(_audit_events_in_visible_namespaces)


class ChangeWithReasonMixin:
    """A model whose sensitive fields are read-only in its change form and written only through one extra page
    (``<pk>/<reason_view_path>/``): a form with a required reason whose view calls a service, which audits it."""

    reason_view_path: str
    reason_view_title: str
    reason_form: type
    reason_change_permission: str

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(f"<path:object_id>/{self.reason_view_path}/", self.admin_site.admin_view(self.change_with_reason_view),
                 name=f"{info[0]}_{info[1]}_{self.reason_view_path}"),
        ] + super().get_urls()

    def reason_change(self, obj, *, actor: str, reason: str, values: dict):
        raise NotImplementedError

    def change_with_reason_view(self, request, object_id):
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404
        if not request.user.has_perm(self.reason_change_permission):
            raise PermissionDenied
        form = self.reason_form(request.POST or None, instance=obj)
        if request.method == "POST" and form.is_valid():
            values = {name: form.cleaned_data[name] for name in form.Meta.fields}
            try:
                self.reason_change(obj, actor=console.operator_actor(request.user), reason=form.cleaned_data["reason"],
                                   values=values)
            except DomainError as exc:
                form.add_error(None, exc.message)
            else:
                self.message_user(request, f"{obj}: {self.reason_view_title.lower()} saved and audited.", messages.SUCCESS)
                return HttpResponseRedirect(reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk]))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{self.reason_view_title}: {obj}",
            "obj": obj,
            "form": form,
            "change_url": reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk]),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/cases/change_with_reason.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {**(extra_context or {}), "reason_change_url": reverse(
            f"admin:{self.opts.app_label}_{self.opts.model_name}_{self.reason_view_path}", args=[unquote(object_id)]),
            "reason_change_title": self.reason_view_title}
        return super().change_view(request, object_id, form_url, extra_context)


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
        namespace = namespace_ensure(name=obj.name, actor=console.operator_actor(request.user))
        if namespace.description != obj.description:
            Namespace.objects.filter(pk=namespace.pk).update(description=obj.description)
        namespace_notifications_set(name=namespace.pk, operator_emails=obj.operator_emails,
                                    operator_webhook_url=obj.operator_webhook_url,
                                    actor=console.operator_actor(request.user))
        obj._state.adding = False

    def save_related(self, request, form, formsets, change):
        namespace_operators_set(name=form.instance.pk, users=list(form.cleaned_data["operators"]),
                                actor=console.operator_actor(request.user))


def _case_scope(case_pk: str):
    case = RecoveryCase.objects.select_related("checkpoint").filter(pk=int(case_pk)).first()
    return case_audit_q(case) if case is not None else None


register_case_scope(_case_scope)


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
        key, raw = api_key_create(name=obj.name, role=obj.role, system_operate=obj.system_operate,
                                  actor=console.operator_actor(request.user), namespace=obj.namespace_id)
        obj.pk = key.pk
        obj._state.adding = False
        messages.warning(request, f"Store this key now; it is shown only once: {raw}")

    def reason_change(self, obj, *, actor, reason, values):
        api_key_access_change(key_id=obj.pk, actor=actor, reason=reason, **values)

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        for key in queryset:
            api_key_revoke(key_id=key.pk, actor=console.operator_actor(request.user))
        self.message_user(request, f"{queryset.count()} key(s) revoked.", messages.SUCCESS)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class GenerationInline(ReadOnlyInline):
    model = CredentialGeneration
    readonly_fields = ["number", "state", "issued_at", "rejected_at", "superseded_at"]


@admin.register(Connection)
class ConnectionAdmin(NamespaceScopedMixin, ChangeWithReasonMixin, ExactSearchMixin, admin.ModelAdmin):
    list_display = ["id", "provider", "owner_email", "provider_tenant", "current_generation", "updated_at"]
    list_filter = ["provider"]
    search_fields = ["id", "owner_email", "provider_subject", "provider_tenant"]
    exact_search_fields = ("id", "owner_email__iexact", "provider_subject", "provider_tenant")
    search_help_text = "Exact connection id, owner e-mail (any case), provider subject or tenant."
    paginator = EstimatedCountPaginator
    show_full_result_count = False
    fieldsets = [
        (None, {"fields": ["id", "provider", "display_name", "owner_email", "owner_name"]}),
        ("Recorded identity", {"fields": ["provider_subject", "provider_tenant", "provider_issuer", "provider_org"]}),
        ("Held by a broker (Nango, Scalekit): Revive stores no token", {
            "fields": ["upstream_provider", "broker_integration", "broker_connection", "broker_account"]}),
        ("Generation", {"fields": ["current_generation", "created_at", "updated_at"]}),
    ]
    # the identity changes only through the reason form; connections are created by command
    readonly_fields = [name for _, group in fieldsets for name in group["fields"]]
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


class CheckpointInline(ReadOnlyInline):
    model = Checkpoint
    fields = ["checkpoint_id", "label", "runtime_reference", "created_at"]
    readonly_fields = fields

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
    fields = ["id", "runtime", "runtime_reference", "workflow_name", "state", "created_at", "updated_at"]
    readonly_fields = fields
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
    fields = ["run", "action_key", "idempotency_key", "connection", "checkpoint", "state", "generation", "attempts",
              "external_ref", "result_redacted", "error_redacted", "evidence_redacted", "reconciled_by",
              "lock_expires_at", "created_at", "updated_at"]
    readonly_fields = fields

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
    fields = ["kind", "key", "case", "run_id", "payload", "state", "attempts", "max_attempts", "due_at",
              "claimed_until", "last_error", "created_at", "updated_at", "done_at"]
    readonly_fields = fields
    actions = ["retry_failed"]

    @admin.display(description="last error")
    def last_error_short(self, obj):
        return obj.last_error[:160]

    @admin.action(description="Retry the selected failed steps", permissions=["operate"])
    def retry_failed(self, request, queryset):
        actor = console.operator_actor(request.user)
        retried = [outbox_retry(item_id=pk, actor=actor).key
                   for pk in queryset.filter(state=OutboxItem.State.FAILED).values_list("pk", flat=True)]
        self.message_user(request, f"{len(retried)} failed step(s) dispatched again.")

    def has_operate_permission(self, request):
        return request.user.has_perm(console.PERMISSION)



# --------------------------------------------------------------------------- the case list


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("open", "All open")] + [(s.value, s.label) for s in CASE_URGENCY]

    def queryset(self, request, queryset):
        value = self.value()
        states = OPEN_CASE_STATES if value == "open" else [value] if value in {s.value for s in CASE_URGENCY} else None
        if states is None:
            return queryset
        # The urgency ranks restate the state condition in the terms of the list's ordering index.
        return queryset.filter(state__in=states, urgency__in=urgency_ranks(states))


class TenantFilter(admin.SimpleListFilter):
    title = "tenant"
    parameter_name = "tenant"

    def lookups(self, request, model_admin):
        connections = Connection.objects.exclude(provider_tenant="")
        visible = namespaces_visible_to(request.user)
        if visible is not None:
            connections = connections.filter(namespace__in=visible)
        tenants = connections.order_by("provider_tenant").values_list("provider_tenant", flat=True).distinct()
        return [(t, t) for t in tenants]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(connection__provider_tenant=self.value())
        return queryset


class OwnerLinkFilter(admin.SimpleListFilter):
    title = "owner link"
    parameter_name = "link"

    def lookups(self, request, model_admin):
        return [("pending", "Pending"), ("locked", "Locked (resend a new one)")]

    def queryset(self, request, queryset):
        if self.value() == "pending":
            return queryset.filter(pending_link_id__isnull=False)
        if self.value() == "locked":
            return queryset.filter(state__in=[CaseState.OPENED, CaseState.AWAITING_OWNER], owner_link_state="locked")
        return queryset


class AgeFilter(admin.SimpleListFilter):
    title = "age"
    parameter_name = "age"
    BANDS = {
        "1h": ("Under an hour", None, timedelta(hours=1)),
        "24h": ("1 to 24 hours", timedelta(hours=1), timedelta(hours=24)),
        "7d": ("1 to 7 days", timedelta(hours=24), timedelta(days=7)),
        "older": ("Over 7 days", timedelta(days=7), None),
    }

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _, _) in self.BANDS.items()]

    def queryset(self, request, queryset):
        band = self.BANDS.get(self.value() or "")
        if band is None:
            return queryset
        _, at_least, under = band
        now = timezone.now()
        if at_least is not None:
            queryset = queryset.filter(opened_at__lte=now - at_least)
        if under is not None:
            queryset = queryset.filter(opened_at__gt=now - under)
        return queryset


class AssigneeFilter(admin.SimpleListFilter):
    title = "owner"
    parameter_name = "assignee"

    def lookups(self, request, model_admin):
        return [("me", "My cases"), ("none", "Unassigned")]

    def queryset(self, request, queryset):
        if self.value() == "me":
            return queryset.filter(assignee=request.user)
        if self.value() == "none":
            return queryset.filter(assignee__isnull=True)
        return queryset


class _Echo:
    def write(self, value):
        return value


def _csv_response(rows, *, filename: str) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse((writer.writerow(row) for row in rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def _json_cell(value) -> str:
    """JSON for a CSV cell, redacted again on the way out (as the admin pages show it)."""
    return "" if value in (None, {}, []) else json.dumps(redact(value), sort_keys=True, default=str)


def _selection_action(op: console.Operation):
    def action(modeladmin, request, queryset):
        return modeladmin.operate_on_selection(request, queryset, op)

    action.__name__ = f"operate_{op.name}"
    return admin.action(description=op.label, permissions=["operate"])(action)


@admin.register(RecoveryCase)
class RecoveryCaseAdmin(PlainActionCheckboxMixin, ReadOnlyAdmin):
    list_display = ["case_id", "state_badge", "failure_class", "provider_and_code", "connection_id_col", "tenant",
                    "runs_blocked_col", "age", "owner_link"]
    list_display_links = ["case_id"]
    list_filter = [StateFilter, AssigneeFilter, "failure_class", "provider", TenantFilter, OwnerLinkFilter, AgeFilter]
    search_fields = ["reference"]
    search_help_text = ("Case id, run id, connection id, owner e-mail or action key; when nothing matches exactly, "
                        "part of a case id, run id, connection id or owner e-mail (3 characters or more).")
    list_per_page = 100
    list_max_show_all = 1000
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    show_facets = admin.ShowFacets.NEVER  # per-choice counts would scan every case on each page view
    actions = [_selection_action(op) for op in console.OPERATIONS.values()]

    # ---- permissions: the console reads for every staff user with view permission; only operators act


    def has_operate_permission(self, request):
        return request.user.has_perm(console.PERMISSION)

    # ---- the list

    def get_queryset(self, request):
        visible = namespaces_visible_to(request.user)
        qs = console_case_queryset()
        return qs if visible is None else qs.filter(namespace__in=visible)

    def get_ordering(self, request):
        return ["urgency", "opened_at", "pk"]

    def get_search_results(self, request, queryset, search_term):
        return console_case_search(queryset, search_term), False

    @admin.display(description="case id", ordering="reference")
    def case_id(self, obj):
        # The assignee rides under the case id: a column of its own would push the list past 1280 px.
        if obj.assignee_id:
            return format_html('{}<br><small class="case-assignee">{}</small>', obj.reference, obj.assignee.get_username())
        return obj.reference

    @admin.display(description="state", ordering="urgency")
    def state_badge(self, obj):
        # may break after an underscore (awaiting_<wbr>approval) when the list is narrow, never inside a word
        words = format_html_join(mark_safe("_<wbr>"), "{}", ((word,) for word in obj.state.split("_")))
        return format_html('<span class="case-state case-state-{}">{}</span>', obj.state, words)

    @admin.display(description="provider / error", ordering="provider")
    def provider_and_code(self, obj):
        return format_html("{} <code>{}</code>", obj.get_provider_display(), obj.provider_code or "—")

    @admin.display(description="connection", ordering="connection_id")
    def connection_id_col(self, obj):
        return obj.connection_id

    @admin.display(description="tenant")
    def tenant(self, obj):
        return obj.connection.provider_tenant or "—"

    @admin.display(description="runs blocked")
    def runs_blocked_col(self, obj):
        return obj.runs_blocked

    @admin.display(description="age", ordering="opened_at")
    def age(self, obj):
        return age_text(obj.opened_at)

    @admin.display(description="owner link")
    def owner_link(self, obj):
        """``pending`` while the owner can use it; ``locked`` (the owner cannot go on: resend) while the case still
        waits for the owner; else the latest link's state, or a dash for a case without one."""
        if obj.pending_link_id is not None:
            return "pending"
        if obj.owner_link_state == "locked" and obj.state in (CaseState.OPENED, CaseState.AWAITING_OWNER):
            return format_html('<strong class="owner-link-locked">{}</strong> — resend', "locked")
        return obj.owner_link_state or "—"

    # ---- acting on a selection

    def operate_on_selection(self, request, queryset, op: console.Operation):
        cases = list(queryset.select_related("connection").order_by("pk")[: self.list_max_show_all + 1])
        if len(cases) > self.list_max_show_all:
            cases = cases[: self.list_max_show_all]
            self.message_user(request, f"Only the first {self.list_max_show_all} selected cases are acted on; "
                                       "narrow the filters and repeat for the rest.", messages.WARNING)
        if "apply" in request.POST:
            form = op.form_for(request.POST, cases=cases)
            if form.is_valid():
                self._report(request, console.perform(op, cases, user=request.user, form=form))
                return None
        else:
            form = op.form_for(cases=cases)
        eligible, refused = self._partition(op, cases)
        actor = console.operator_actor(request.user)
        for case, why in refused:  # skipped now: audited now (the confirmation posts back only the others)
            console.audit_refusal(case, operation=op.name, actor=actor, why=why)
        if not eligible:
            for case, why in refused:
                self.message_user(request, why, messages.ERROR)
            return None
        # Nothing is done until the operator confirms the page listing each case's effect; ``console.perform``
        # checks every case again then.
        return self._confirm_page(request, op, eligible, refused, form, selection=True)

    # ---- the case page and acting on one case

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path("<path:object_id>/operate/<str:name>/", self.admin_site.admin_view(self.operate_view),
                 name="%s_%s_operate" % info),
            path("export.csv", self.admin_site.admin_view(self.export_cases_view), name="%s_%s_export" % info),
            path("<path:object_id>/audit.csv", self.admin_site.admin_view(self.export_audit_view),
                 name="%s_%s_audit_export" % info),
            path("<path:object_id>/assign/", self.admin_site.admin_view(self.assign_view), name="%s_%s_assign" % info),
            path("<path:object_id>/note/", self.admin_site.admin_view(self.note_view), name="%s_%s_note" % info),
        ] + super().get_urls()

    @staticmethod
    def _visible(request, case) -> bool:
        visible = namespaces_visible_to(request.user)
        return visible is None or case.namespace_id in visible

    def _case_url(self, case) -> str:
        return reverse("admin:cases_recoverycase_change", args=[case.pk])

    def change_view(self, request, object_id, form_url="", extra_context=None):
        detail = console_case_detail(case_id=unquote(object_id))
        if detail is None:
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        case = detail.case
        if not self.has_view_permission(request, case):
            raise PermissionDenied
        if not self._visible(request, case):  # another namespace's case: as if it did not exist
            return self._get_obj_does_not_exist_redirect(request, self.opts, object_id)
        can_operate = self.has_operate_permission(request)
        operations = []
        if can_operate:
            for op in console.available(case):
                operations.append({"op": op, "form": op.form_for(cases=[case]),
                                   "url": reverse("admin:cases_recoverycase_operate", args=[case.pk, op.name])})
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{case.reference} · {case.run.workflow_name if case.run_id else case.connection_id}",
            "subtitle": case.reference,
            **case_story_context(detail, audit_url=reverse("admin:audit_auditevent_changelist") + f"?case={case.pk}"),
            "operations": operations,
            "can_operate": can_operate,
            "notes": list(case.notes.all()),
            "note_form": console.NoteForm(),
            "assign_form": console.AssignForm(initial={"assignee": case.assignee_id}),
            "assign_url": reverse("admin:cases_recoverycase_assign", args=[case.pk]),
            "note_url": reverse("admin:cases_recoverycase_note", args=[case.pk]),
            "audit_csv_url": reverse("admin:cases_recoverycase_audit_export", args=[case.pk]),
            "has_view_permission": True,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/cases/recoverycase/case_detail.html", context)

    def history_view(self, request, object_id, extra_context=None):
        case = RecoveryCase.objects.filter(pk=unquote(object_id)).only("reference").first() if unquote(object_id).isdigit() else None
        if case is None:
            raise Http404
        return HttpResponseRedirect(reverse("admin:audit_auditevent_changelist") + f"?case={case.pk}")

    # ---- CSV exports: streamed, so a long list or trail never sits in memory

    CASE_COLUMNS = ["case_id", "namespace", "state", "failure_class", "provider", "provider_code", "connection", "tenant",
                    "owner_email", "run", "runs_blocked", "assignee", "opened_at", "state_changed_at", "closed_at"]
    AUDIT_COLUMNS = ["occurred_at", "actor", "action", "entity_type", "entity_id", "case_id", "run_id",
                     "connection_id", "outcome", "before", "after", "arguments"]

    def export_cases_view(self, request):
        """The case list as filtered and searched on screen (the same query string), as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        params = request.GET.copy()
        request.GET = params  # the changelist reads its filters from here
        changelist = self.get_changelist_instance(request)
        rows = changelist.get_queryset(request).iterator(chunk_size=500)

        def lines():
            yield self.CASE_COLUMNS
            for c in rows:
                yield [c.reference, c.namespace_id, c.state, c.failure_class, c.provider, c.provider_code, c.connection_id,
                       c.connection.provider_tenant, c.connection.owner_email, c.run_id, c.runs_blocked,
                       c.assignee.get_username() if c.assignee_id else "", c.opened_at.isoformat(),
                       c.state_changed_at.isoformat(), c.closed_at.isoformat() if c.closed_at else ""]

        return _csv_response(lines(), filename="revive-cases.csv")

    def export_audit_view(self, request, object_id):
        """One case's audit trail (the events its timeline shows), redacted, as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        case = self._case_or_404(request, object_id)
        events = case_audit_events(case_id=case.pk).iterator(chunk_size=500)

        def lines():
            yield self.AUDIT_COLUMNS
            for e in events:
                yield [e.occurred_at.isoformat(), e.actor, e.action, e.entity_type, e.entity_id, e.case_reference,
                       e.run_id, e.connection_id, e.outcome, _json_cell(e.before), _json_cell(e.after),
                       _json_cell(e.arguments)]

        return _csv_response(lines(), filename=f"{case.reference}-audit.csv")

    def _case_or_404(self, request, object_id):
        object_id = unquote(object_id)
        case = RecoveryCase.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        if case is None or not self._visible(request, case):  # another namespace's case: as if it did not exist
            raise Http404
        return case

    def assign_view(self, request, object_id):
        """POST: assign the case (``assignee`` empty: to nobody), or ``take`` it yourself."""
        case = self._case_or_404(request, object_id)
        if request.method != "POST":
            return HttpResponseRedirect(self._case_url(case))
        if not self.has_operate_permission(request):
            self._refuse_permission(request, [case], op_name="assign")
            raise PermissionDenied
        actor = console.operator_actor(request.user)
        if "take" in request.POST:
            assignee = request.user
        else:
            form = console.AssignForm(request.POST)
            if not form.is_valid():
                self.message_user(request, "Choose an operator to assign the case to.", messages.ERROR)
                return HttpResponseRedirect(self._case_url(case))
            assignee = form.cleaned_data["assignee"]
        try:
            case = services.case_assign(case_id=case.pk, assignee=assignee, actor=actor)
        except DomainError as exc:
            console.audit_refusal(case, operation="assign", actor=actor, why=exc.message)
            self.message_user(request, exc.message, messages.ERROR)
        else:
            who = case.assignee.get_username() if case.assignee_id else "nobody"
            self.message_user(request, f"{case.reference} is assigned to {who}.", messages.SUCCESS)
        return HttpResponseRedirect(self._case_url(case))

    def note_view(self, request, object_id):
        case = self._case_or_404(request, object_id)
        if request.method != "POST":
            return HttpResponseRedirect(self._case_url(case))
        if not self.has_operate_permission(request):
            self._refuse_permission(request, [case], op_name="note")
            raise PermissionDenied
        form = console.NoteForm(request.POST)
        if form.is_valid():
            services.case_note_add(case_id=case.pk, body=form.cleaned_data["body"], actor=console.operator_actor(request.user))
            self.message_user(request, f"Note added to {case.reference}.", messages.SUCCESS)
        else:
            self.message_user(request, "A note needs some text.", messages.ERROR)
        return HttpResponseRedirect(self._case_url(case) + "#notes")

    def _refuse_permission(self, request, cases, *, op_name: str) -> None:
        """A staff user without ``cases.operate_case`` tried to act: audited per case, then 403 (or a message)."""
        why = f"{console.PERMISSION} is required to {op_name.replace('_', ' ')} a case"
        actor = console.operator_actor(request.user)
        for case in cases:
            console.audit_refusal(case, operation=op_name, actor=actor, why=why)

    def changelist_view(self, request, extra_context=None):
        name = request.POST.get("action", "") if request.method == "POST" else ""
        if name.startswith("operate_") and not self.has_operate_permission(request):
            ids = [i for i in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME) if i.isdigit()]
            self._refuse_permission(request, RecoveryCase.objects.filter(pk__in=ids[:self.list_max_show_all]),
                                    op_name=name.removeprefix("operate_"))
            raise PermissionDenied
        return super().changelist_view(request, extra_context)

    def operate_view(self, request, object_id, name):
        op = console.OPERATIONS.get(name)
        object_id = unquote(object_id)
        case = RecoveryCase.objects.select_related("connection").filter(pk=object_id).first() if object_id.isdigit() else None
        if op is None or case is None or not self._visible(request, case):
            raise Http404
        if not self.has_operate_permission(request):
            self._refuse_permission(request, [case], op_name=name)
            raise PermissionDenied
        if request.method == "POST":
            why = console.refusal_for(op, case)
            if why is not None:
                console.audit_refusal(case, operation=op.name, actor=console.operator_actor(request.user), why=why)
                self.message_user(request, why, messages.ERROR)
                return HttpResponseRedirect(self._case_url(case))
            form = op.form_for(request.POST, cases=[case])
            if form.is_valid():
                self._report(request, console.perform(op, [case], user=request.user, form=form))
                return HttpResponseRedirect(self._case_url(case))
        else:
            why = console.refusal_for(op, case)
            if why is not None:
                console.audit_refusal(case, operation=op.name, actor=console.operator_actor(request.user), why=why)
                self.message_user(request, why, messages.ERROR)
                return HttpResponseRedirect(self._case_url(case))
            form = op.form_for(cases=[case])
        eligible, refused = self._partition(op, [case])
        return self._confirm_page(request, op, eligible or [case], refused, form, selection=False)

    # ---- shared

    @staticmethod
    def _partition(op, cases):
        eligible, refused = [], []
        for case in cases:
            why = console.refusal_for(op, case)
            if why is None:
                eligible.append(case)
            else:
                refused.append((case, why))
        return eligible, refused

    def _report(self, request, outcomes):
        for outcome in outcomes:
            self.message_user(request, outcome.message, messages.SUCCESS if outcome.ok else messages.ERROR)

    def _confirm_page(self, request, op, eligible, refused, form, *, selection: bool):
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": op.label,
            "op": op,
            "cases": eligible,
            "effects": [(case, op.effect_on(case)) for case in eligible],
            "refused": refused,
            "form": form,
            "selection": selection,
            "action_name": f"operate_{op.name}",
            "post_url": request.get_full_path() if selection else reverse(
                "admin:cases_recoverycase_operate", args=[eligible[0].pk, op.name]),
            "case_url": None if selection else self._case_url(eligible[0]),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/cases/recoverycase/operate.html", context)
