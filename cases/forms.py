"""The connection form and the identity rules: what an operator types, checked before anything is stored.

Used by ``manage.py revive_connection`` and, for the identity rules, by the console's change form
(``console.forms.ConnectionIdentityForm``), so both refuse the same input with the same words: Entra tenant and object ids are GUIDs, an issuer is an https URL (http only on loopback,
for a local identity provider), the owner's e-mail is an e-mail. A placeholder such as ``<tid>`` copied from the
README never becomes the identity Revive insists on at reconnect.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from django import forms

from classifier import Provider

from .errors import ConnectionInvalid
from .models import Connection
from .services import connection_broker_check

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


def guid_problem(value: str, *, what: str) -> str | None:
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return f"{what} must be a GUID such as 72f988bf-86f1-41af-91ab-2d7cd011db47, not {value!r}."
    if str(parsed) != value.lower() or "{" in value:
        return f"{what} must be a GUID in its 8-4-4-4-12 form, not {value!r}."
    return None


def issuer_problem(value: str) -> str | None:
    try:
        parts = urlsplit(value)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("https", "http") or not parts.hostname:
        return f"The issuer must be a URL such as https://tenant.eu.auth0.com/, not {value!r}."
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        return "The issuer must use https (http only for an identity provider on this machine)."
    if parts.username or parts.password or parts.query or parts.fragment:
        return "The issuer must not carry user-info, a query or a fragment."
    return None


class ConnectionForm(forms.ModelForm):
    class Meta:
        model = Connection
        fields = [
            "id",
            "provider",
            "display_name",
            "owner_email",
            "owner_name",
            "provider_subject",
            "provider_tenant",
            "provider_issuer",
            "provider_org",
            "upstream_provider",
            "broker_integration",
            "broker_connection",
            "broker_account",
        ]

    def clean(self):
        data = super().clean()
        provider = data.get("provider")
        # a broker-held connection (nango, scalekit) records its upstream's identity, under the upstream's rules
        identity_check(self, data, provider=data.get("upstream_provider") or provider)
        try:  # a broker-held connection (nango, scalekit) names its upstream provider and the broker's references
            connection_broker_check(
                provider=provider or "",
                upstream_provider=data.get("upstream_provider") or "",
                broker_integration=data.get("broker_integration") or "",
                broker_connection=data.get("broker_connection") or "",
                broker_account=data.get("broker_account") or "",
            )
        except ConnectionInvalid as exc:
            for name, text in exc.data["fields"].items():
                self.add_error(name if name in self.fields else None, text)
        return data


def identity_check(form: forms.ModelForm, data: dict, *, provider: str | None) -> None:
    """The identity rules both forms share: Entra ids are GUIDs, issuers URLs."""
    subject = (data.get("provider_subject") or "").strip()
    tenant = (data.get("provider_tenant") or "").strip()
    issuer = (data.get("provider_issuer") or "").strip()
    if provider == Provider.ENTRA:
        if not tenant:
            form.add_error("provider_tenant", "Entra connections need the tenant id (tid), a GUID.")
        elif problem := guid_problem(tenant, what="The Entra tenant id (tid)"):
            form.add_error("provider_tenant", problem)
        if subject and (problem := guid_problem(subject, what="The Entra object id (oid)")):
            form.add_error("provider_subject", problem)
    elif provider in (Provider.AUTH0, Provider.OIDC):
        if not issuer:
            form.add_error("provider_issuer", "Auth0 and OIDC connections need the issuer (iss), a URL.")
    if issuer and (problem := issuer_problem(issuer)):
        form.add_error("provider_issuer", problem)
