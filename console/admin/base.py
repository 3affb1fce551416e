"""What the console's admin pages share: namespace scoping, changes that require a reason, read-only inlines, CSV.

Nothing here shows a credential: JSON that could hold one (results, evidence, errors, runtime references) is shown
redacted (``audit.admin.redacted_json``).
"""

from __future__ import annotations

import csv
import json

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import Q
from django.http import Http404, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse

from audit import admin as audit_admin
from audit.admin import register_case_scope
from audit.redaction import redact
from cases.models import Connection, RecoveryCase, Run
from cases.namespaces import namespaces_visible_to
from revive_site.errors import DomainError

from ..operate import operator_actor
from ..selectors import case_audit_q


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


def _case_scope(case_pk: str):
    case = RecoveryCase.objects.select_related("checkpoint").filter(pk=int(case_pk)).first()
    return case_audit_q(case) if case is not None else None


register_case_scope(_case_scope)


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
            path(
                f"<path:object_id>/{self.reason_view_path}/",
                self.admin_site.admin_view(self.change_with_reason_view),
                name=f"{info[0]}_{info[1]}_{self.reason_view_path}",
            ),
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
                self.reason_change(
                    obj, actor=operator_actor(request.user), reason=form.cleaned_data["reason"], values=values
                )
            except DomainError as exc:
                form.add_error(None, exc.message)
            else:
                self.message_user(
                    request, f"{obj}: {self.reason_view_title.lower()} saved and audited.", messages.SUCCESS
                )
                return HttpResponseRedirect(
                    reverse(f"admin:{self.opts.app_label}_{self.opts.model_name}_change", args=[obj.pk])
                )
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
        extra_context = {
            **(extra_context or {}),
            "reason_change_url": reverse(
                f"admin:{self.opts.app_label}_{self.opts.model_name}_{self.reason_view_path}", args=[unquote(object_id)]
            ),
            "reason_change_title": self.reason_view_title,
        }
        return super().change_view(request, object_id, form_url, extra_context)


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class _Echo:
    def write(self, value):
        return value


def csv_response(rows, *, filename: str) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    response = StreamingHttpResponse((writer.writerow(row) for row in rows), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


def json_cell(value) -> str:
    """JSON for a CSV cell, redacted again on the way out (as the admin pages show it)."""
    return "" if value in (None, {}, []) else json.dumps(redact(value), sort_keys=True, default=str)
