"""Acting on cases from the console: an operation on a selection or on one case (each confirmed first),
assigning a case, adding a note.

Every write goes through ``console.operate`` (and from there through the services the API uses), is allowed only
to holders of ``cases.operate_case``, and is audited as ``operator:<username>``; every refusal is audited as
``console.refused``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from cases import services
from cases.models import RecoveryCase
from cases.namespaces import namespaces_visible_to
from revive_site.errors import DomainError

from .. import operate
from ..forms import AssignForm, NoteForm

if TYPE_CHECKING:  # the type checker reads the mixin as what it becomes: part of a ModelAdmin
    _ModelAdmin = admin.ModelAdmin
else:
    _ModelAdmin = object


def selection_action(op: operate.Operation):
    """The list's action for ``op``: it opens the confirmation page of the selected cases."""

    def action(modeladmin, request, queryset):
        return modeladmin.operate_on_selection(request, queryset, op)

    action.__name__ = f"operate_{op.name}"
    return admin.action(description=op.label, permissions=["operate"])(action)


class CaseOperateMixin(_ModelAdmin):
    """The writes of ``RecoveryCaseAdmin``, and who may make them on which case."""

    # ---- permissions: the console reads for every staff user with view permission; only operators act

    def has_operate_permission(self, request):
        return request.user.has_perm(operate.PERMISSION)

    @staticmethod
    def _visible(request, case) -> bool:
        visible = namespaces_visible_to(request.user)
        return visible is None or case.namespace_id in visible

    def _case_url(self, case) -> str:
        return reverse("admin:cases_recoverycase_change", args=[case.pk])

    def _case_or_404(self, request, object_id):
        object_id = unquote(object_id)
        case = RecoveryCase.objects.filter(pk=object_id).first() if object_id.isdigit() else None
        if case is None or not self._visible(request, case):  # another namespace's case: as if it did not exist
            raise Http404
        return case

    # ---- acting on a selection

    def operate_on_selection(self, request, queryset, op: operate.Operation):
        cases = list(queryset.select_related("connection").order_by("pk")[: self.list_max_show_all + 1])
        if len(cases) > self.list_max_show_all:
            cases = cases[: self.list_max_show_all]
            self.message_user(
                request,
                f"Only the first {self.list_max_show_all} selected cases are acted on; "
                "narrow the filters and repeat for the rest.",
                messages.WARNING,
            )
        if "apply" in request.POST:
            form = op.form_for(request.POST, cases=cases)
            if form.is_valid():
                self._report(request, operate.perform(op, cases, user=request.user, form=form))
                return None
        else:
            form = op.form_for(cases=cases)
        eligible, refused = self._partition(op, cases)
        actor = operate.operator_actor(request.user)
        for case, why in refused:  # skipped now: audited now (the confirmation posts back only the others)
            operate.audit_refusal(case, operation=op.name, actor=actor, why=why)
        if not eligible:
            for _case, why in refused:
                self.message_user(request, why, messages.ERROR)
            return None
        # Nothing is done until the operator confirms the page listing each case's effect; ``operate.perform``
        # checks every case again then.
        return self._confirm_page(request, op, eligible, refused, form, selection=True)

    # ---- assigning a case, its notes

    def assign_view(self, request, object_id):
        """POST: assign the case (``assignee`` empty: to nobody), or ``take`` it yourself."""
        case = self._case_or_404(request, object_id)
        if request.method != "POST":
            return HttpResponseRedirect(self._case_url(case))
        if not self.has_operate_permission(request):
            self._refuse_permission(request, [case], op_name="assign")
            raise PermissionDenied
        actor = operate.operator_actor(request.user)
        if "take" in request.POST:
            assignee = request.user
        else:
            form = AssignForm(request.POST)
            if not form.is_valid():
                self.message_user(request, "Choose an operator to assign the case to.", messages.ERROR)
                return HttpResponseRedirect(self._case_url(case))
            assignee = form.cleaned_data["assignee"]
        try:
            case = services.case_assign(case_id=case.pk, assignee=assignee, actor=actor)
        except DomainError as exc:
            operate.audit_refusal(case, operation="assign", actor=actor, why=exc.message)
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
        form = NoteForm(request.POST)
        if form.is_valid():
            services.case_note_add(
                case_id=case.pk, body=form.cleaned_data["body"], actor=operate.operator_actor(request.user)
            )
            self.message_user(request, f"Note added to {case.reference}.", messages.SUCCESS)
        else:
            self.message_user(request, "A note needs some text.", messages.ERROR)
        return HttpResponseRedirect(self._case_url(case) + "#notes")

    # ---- acting on one case, and refusing whoever may not act

    def _refuse_permission(self, request, cases, *, op_name: str) -> None:
        """A staff user without ``cases.operate_case`` tried to act: audited per case, then 403 (or a message)."""
        why = f"{operate.PERMISSION} is required to {op_name.replace('_', ' ')} a case"
        actor = operate.operator_actor(request.user)
        for case in cases:
            operate.audit_refusal(case, operation=op_name, actor=actor, why=why)

    def changelist_view(self, request, extra_context=None):
        name = request.POST.get("action", "") if request.method == "POST" else ""
        if name.startswith("operate_") and not self.has_operate_permission(request):
            ids = [i for i in request.POST.getlist(helpers.ACTION_CHECKBOX_NAME) if i.isdigit()]
            self._refuse_permission(
                request,
                RecoveryCase.objects.filter(pk__in=ids[: self.list_max_show_all]),
                op_name=name.removeprefix("operate_"),
            )
            raise PermissionDenied
        return super().changelist_view(request, extra_context)

    def operate_view(self, request, object_id, name):
        op = operate.OPERATIONS.get(name)
        object_id = unquote(object_id)
        case = (
            RecoveryCase.objects.select_related("connection").filter(pk=object_id).first()
            if object_id.isdigit()
            else None
        )
        if op is None or case is None or not self._visible(request, case):
            raise Http404
        if not self.has_operate_permission(request):
            self._refuse_permission(request, [case], op_name=name)
            raise PermissionDenied
        if request.method == "POST":
            why = operate.refusal_for(op, case)
            if why is not None:
                operate.audit_refusal(case, operation=op.name, actor=operate.operator_actor(request.user), why=why)
                self.message_user(request, why, messages.ERROR)
                return HttpResponseRedirect(self._case_url(case))
            form = op.form_for(request.POST, cases=[case])
            if form.is_valid():
                self._report(request, operate.perform(op, [case], user=request.user, form=form))
                return HttpResponseRedirect(self._case_url(case))
        else:
            why = operate.refusal_for(op, case)
            if why is not None:
                operate.audit_refusal(case, operation=op.name, actor=operate.operator_actor(request.user), why=why)
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
            why = operate.refusal_for(op, case)
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
            "post_url": request.get_full_path()
            if selection
            else reverse("admin:cases_recoverycase_operate", args=[eligible[0].pk, op.name]),
            "case_url": None if selection else self._case_url(eligible[0]),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/cases/recoverycase/operate.html", context)
