"""The console's forms: what an operation on a case asks for, and the two changes that require a reason.

``ConnectionIdentityForm`` and ``ApiKeyAccessForm`` only validate (the model's field rules, and for a connection the
identity rules of ``cases.forms``); their views save through ``console.services``.
"""

from __future__ import annotations

from typing import cast

from django import forms

from cases.forms import identity_check
from cases.models import Action, ApiKey, Connection

# --------------------------------------------------------------------------- operations on a case


class ConfirmForm(forms.Form):
    """Nothing to ask: the confirmation page is the form."""

    def __init__(self, *args, actions=None, **kwargs):
        super().__init__(*args, **kwargs)


class ReasonForm(ConfirmForm):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=2000,
        help_text="Recorded in the audit log with your name.",
    )


class ReconcileForm(ConfirmForm):
    actions = forms.MultipleChoiceField(widget=forms.CheckboxSelectMultiple, label="Ambiguous actions")
    outcome = forms.ChoiceField(
        widget=forms.RadioSelect,
        choices=[
            ("found", "Found: the effect happened (it counts as committed and is never executed again)"),
            ("absent", "Absent: the effect did not happen (the action may execute again)"),
        ],
    )
    note = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=2000,
        help_text="Required: what you checked and where. Stored as the reconciliation's evidence.",
    )
    external_ref = forms.CharField(
        required=False,
        max_length=500,
        label="External reference",
        help_text="For a found effect: the provider's id of it (message id, ticket number).",
    )

    def __init__(self, *args, actions: list[Action] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.ambiguous = {str(a.pk): a for a in actions or []}
        field = cast(forms.MultipleChoiceField, self.fields["actions"])
        field.choices = [
            (pk, f"{a.run_id} / {a.action_key} (attempt {a.attempts}, generation {a.generation})")
            for pk, a in self.ambiguous.items()
        ]
        if not self.is_bound:
            self.initial.setdefault("actions", list(self.ambiguous))

    def chosen(self) -> list[Action]:
        return [self.ambiguous[pk] for pk in self.cleaned_data["actions"]]


class NoteForm(forms.Form):
    body = forms.CharField(
        label="Note",
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        max_length=4000,
        help_text="Shared with every operator and auditor; recorded in the audit log.",
    )


def operators():
    """The users a case can be assigned to: active staff holding ``cases.operate_case`` (directly, by group, or as
    superusers)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission
    from django.db.models import Q

    perm = Permission.objects.filter(content_type__app_label="cases", codename="operate_case").first()
    User = get_user_model()
    holders = Q(is_superuser=True)
    if perm is not None:
        holders |= Q(user_permissions=perm) | Q(groups__permissions=perm)
    return User.objects.filter(holders, is_active=True, is_staff=True).distinct().order_by("username")


class AssignForm(forms.Form):
    assignee: forms.ModelChoiceField = forms.ModelChoiceField(
        queryset=None, required=False, empty_label="— nobody —", label="Assign to"
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["assignee"].queryset = operators()


# --------------------------------------------------------------------------- changes with a reason


REASON_HELP = "Required: why this changes (ticket, incident). Stored in the audit event with your name."


def _reason_field() -> forms.CharField:
    return forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}), help_text=REASON_HELP)


class ConnectionIdentityForm(forms.ModelForm):
    """Validation only (the model's field rules); the view saves through ``connection_identity_change``."""

    reason = _reason_field()

    class Meta:
        model = Connection
        fields = ["provider_subject", "provider_tenant", "provider_issuer", "provider_org", "owner_email"]

    def clean(self):
        data = super().clean()
        identity_check(self, data, provider=self.instance.identity_provider)  # a broker-held one: its upstream
        return data


class ApiKeyAccessForm(forms.ModelForm):
    """Validation only; the view saves through ``api_key_access_change``."""

    reason = _reason_field()

    class Meta:
        model = ApiKey
        fields = ["role", "system_operate", "namespace"]
