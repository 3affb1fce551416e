"""The console's forms for the writes of ``cases.admin_services``: each asks for a reason."""

from __future__ import annotations

from django import forms

from .models import ApiKey, Connection

REASON_HELP = "Required: why this changes (ticket, incident). Stored in the audit event with your name."


def _reason_field() -> forms.CharField:
    return forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 2, "cols": 60}), help_text=REASON_HELP)


class ConnectionIdentityForm(forms.ModelForm):
    """Validation only (the model's field rules); the view saves through ``connection_identity_change``."""

    reason = _reason_field()

    class Meta:
        model = Connection
        fields = ["provider_subject", "provider_tenant", "provider_issuer", "provider_org", "owner_email"]


class ApiKeyAccessForm(forms.ModelForm):
    """Validation only; the view saves through ``api_key_access_change``."""

    reason = _reason_field()

    class Meta:
        model = ApiKey
        fields = ["role", "system_operate", "namespace"]
