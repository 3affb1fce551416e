"""The operator console's recovery cases: the list (by urgency, filtered and searched at a constant query count),
the case page (incident record, timeline, ledger, notes) and the CSV exports; the writes are ``CaseOperateMixin``'s.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from audit.admin import ReadOnlyAdmin
from audit.admin_scale import EstimatedCountPaginator, PlainActionCheckboxMixin
from cases.models import CaseState, RecoveryCase
from cases.namespaces import namespaces_visible_to

from .. import operate
from ..case_story import case_story_context
from ..forms import AssignForm, NoteForm
from ..selectors import case_audit_events, console_case_detail, console_case_queryset, console_case_search
from ..templatetags.revive_console import age as age_text
from .base import csv_response, json_cell
from .case_filters import AgeFilter, AssigneeFilter, OwnerLinkFilter, StateFilter, TenantFilter
from .case_operate import CaseOperateMixin, selection_action


@admin.register(RecoveryCase)
class RecoveryCaseAdmin(CaseOperateMixin, PlainActionCheckboxMixin, ReadOnlyAdmin):
    list_display = [
        "case_id",
        "state_badge",
        "failure_class",
        "provider_and_code",
        "connection_id_col",
        "tenant",
        "runs_blocked_col",
        "age",
        "owner_link",
    ]
    list_display_links = ["case_id"]
    list_filter = [StateFilter, AssigneeFilter, "failure_class", "provider", TenantFilter, OwnerLinkFilter, AgeFilter]
    search_fields = ["reference"]
    search_help_text = (
        "Case id, run id, connection id, owner e-mail or action key; when nothing matches exactly, "
        "part of a case id, run id, connection id or owner e-mail (3 characters or more)."
    )
    # 50 rows: a row's cells cost the admin's templates about as much as the rest of the page together (a 100-row
    # page took twice a 50-row one on the console benchmark); the most urgent cases come first anyway.
    list_per_page = 50
    list_max_show_all = 1000
    show_full_result_count = False
    paginator = EstimatedCountPaginator
    show_facets = admin.ShowFacets.NEVER  # per-choice counts would scan every case on each page view
    actions = [selection_action(op) for op in operate.OPERATIONS.values()]

    # ---- permissions: the console reads for every staff user with view permission; only operators act

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
            return format_html(
                '{}<br><small class="case-assignee">{}</small>', obj.reference, obj.assignee.get_username()
            )
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

    # ---- the case page and acting on one case

    def get_urls(self):
        info = self.opts.app_label, self.opts.model_name
        return [
            path(
                "<path:object_id>/operate/<str:name>/",
                self.admin_site.admin_view(self.operate_view),
                name="{}_{}_operate".format(*info),
            ),
            path("export.csv", self.admin_site.admin_view(self.export_cases_view), name="{}_{}_export".format(*info)),
            path(
                "<path:object_id>/audit.csv",
                self.admin_site.admin_view(self.export_audit_view),
                name="{}_{}_audit_export".format(*info),
            ),
            path(
                "<path:object_id>/assign/",
                self.admin_site.admin_view(self.assign_view),
                name="{}_{}_assign".format(*info),
            ),
            path("<path:object_id>/note/", self.admin_site.admin_view(self.note_view), name="{}_{}_note".format(*info)),
        ] + super().get_urls()

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
            for op in operate.available(case):
                operations.append(
                    {
                        "op": op,
                        "form": op.form_for(cases=[case]),
                        "url": reverse("admin:cases_recoverycase_operate", args=[case.pk, op.name]),
                    }
                )
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": f"{case.reference} · {case.run.workflow_name if case.run_id else case.connection_id}",
            "subtitle": case.reference,
            **case_story_context(detail, audit_url=reverse("admin:audit_auditevent_changelist") + f"?case={case.pk}"),
            "operations": operations,
            "can_operate": can_operate,
            "notes": list(case.notes.all()),
            "note_form": NoteForm(),
            "assign_form": AssignForm(initial={"assignee": case.assignee_id}),
            "assign_url": reverse("admin:cases_recoverycase_assign", args=[case.pk]),
            "note_url": reverse("admin:cases_recoverycase_note", args=[case.pk]),
            "audit_csv_url": reverse("admin:cases_recoverycase_audit_export", args=[case.pk]),
            "has_view_permission": True,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/cases/recoverycase/case_detail.html", context)

    def history_view(self, request, object_id, extra_context=None):
        case = (
            RecoveryCase.objects.filter(pk=unquote(object_id)).only("reference").first()
            if unquote(object_id).isdigit()
            else None
        )
        if case is None:
            raise Http404
        return HttpResponseRedirect(reverse("admin:audit_auditevent_changelist") + f"?case={case.pk}")

    # ---- CSV exports: streamed, so a long list or trail never sits in memory

    CASE_COLUMNS = [
        "case_id",
        "namespace",
        "state",
        "failure_class",
        "provider",
        "provider_code",
        "connection",
        "tenant",
        "owner_email",
        "run",
        "runs_blocked",
        "assignee",
        "opened_at",
        "state_changed_at",
        "closed_at",
    ]
    AUDIT_COLUMNS = [
        "occurred_at",
        "actor",
        "action",
        "entity_type",
        "entity_id",
        "case_id",
        "run_id",
        "connection_id",
        "outcome",
        "before",
        "after",
        "arguments",
    ]

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
                yield [
                    c.reference,
                    c.namespace_id,
                    c.state,
                    c.failure_class,
                    c.provider,
                    c.provider_code,
                    c.connection_id,
                    c.connection.provider_tenant,
                    c.connection.owner_email,
                    c.run_id,
                    c.runs_blocked,
                    c.assignee.get_username() if c.assignee_id else "",
                    c.opened_at.isoformat(),
                    c.state_changed_at.isoformat(),
                    c.closed_at.isoformat() if c.closed_at else "",
                ]

        return csv_response(lines(), filename="revive-cases.csv")

    def export_audit_view(self, request, object_id):
        """One case's audit trail (the events its timeline shows), redacted, as CSV."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        case = self._case_or_404(request, object_id)
        events = case_audit_events(case_id=case.pk).iterator(chunk_size=500)

        def lines():
            yield self.AUDIT_COLUMNS
            for e in events:
                yield [
                    e.occurred_at.isoformat(),
                    e.actor,
                    e.action,
                    e.entity_type,
                    e.entity_id,
                    e.case_reference,
                    e.run_id,
                    e.connection_id,
                    e.outcome,
                    json_cell(e.before),
                    json_cell(e.after),
                    json_cell(e.arguments),
                ]

        return csv_response(lines(), filename=f"{case.reference}-audit.csv")
