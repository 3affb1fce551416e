"""Provider identities: the one a connection was recorded with, the one an owner signs in as, and the rule that compares them.

* Microsoft Entra ID: the tenant (``tid``) and the user's object id (``oid``)
  must both match. ``sub`` is pairwise per application in Entra, so it is not
  compared; the issuer follows from the tenant.
* Auth0 and any OIDC issuer: the issuer (``iss``) and subject (``sub``) must
  match, plus the organization (``org_id``) when the connection recorded one.

Comparison is exact (Entra GUIDs case-insensitively); an empty expected value
never matches, so a half-recorded connection refuses everyone rather than
accepting anyone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from classifier import Provider

ENTRA = "entra"
ISSUER_SUBJECT = "issuer_subject"


def rule_for(connection_provider: str) -> str:
    return ENTRA if connection_provider == Provider.ENTRA else ISSUER_SUBJECT


@dataclass(frozen=True)
class ProviderIdentity:
    issuer: str = ""
    subject: str = ""
    tenant: str = ""
    org: str = ""
    label: str = field(default="", compare=False)

    def evidence(self) -> dict[str, str]:
        """What the audit log keeps of an identity: identifiers, never a token."""
        return {k: v for k, v in asdict(self).items() if v}


@dataclass(frozen=True)
class Verdict:
    matches: bool
    rule: str
    mismatched: tuple[str, ...] = ()


def _norm_issuer(value: str) -> str:
    return (value or "").strip().rstrip("/")


def expected_identity(connection) -> ProviderIdentity:
    return ProviderIdentity(
        issuer=connection.provider_issuer,
        subject=connection.provider_subject,
        tenant=connection.provider_tenant,
        org=connection.provider_org,
        label=connection.owner_email,
    )


def compare(*, rule: str, expected: ProviderIdentity, presented: ProviderIdentity) -> Verdict:
    mismatched: list[str] = []
    if rule == ENTRA:
        pairs = [("tenant", expected.tenant, presented.tenant), ("subject", expected.subject, presented.subject)]
        for name, want, got in pairs:
            if not want or want.strip().lower() != (got or "").strip().lower():
                mismatched.append(name)
    else:
        if not expected.issuer or _norm_issuer(expected.issuer) != _norm_issuer(presented.issuer):
            mismatched.append("issuer")
        if not expected.subject or expected.subject != presented.subject:
            mismatched.append("subject")
        if expected.org and expected.org != presented.org:
            mismatched.append("org")
    return Verdict(matches=not mismatched, rule=rule, mismatched=tuple(mismatched))


def presented_from_claims(claims: dict[str, Any], *, rule: str, issuer: str = "") -> ProviderIdentity:
    """The identity a sign-in proved, from the verified ID token claims (or Auth0's userinfo)."""

    def text(name: str) -> str:
        value = claims.get(name)
        return value.strip() if isinstance(value, str) else ""

    label = text("email") or text("preferred_username") or text("upn") or text("name")
    iss = text("iss") or issuer
    if rule == ENTRA:
        return ProviderIdentity(issuer=iss, subject=text("oid"), tenant=text("tid"), org="", label=label)
    return ProviderIdentity(issuer=iss, subject=text("sub"), tenant=text("tid"), org=text("org_id"), label=label)


def mask_email(value: str) -> str:
    """``jane.doe@contoso.com`` → ``ja•••@contoso.com``: enough to recognise an account, not to harvest it."""
    value = (value or "").strip()
    if "@" not in value:
        return mask_identifier(value)
    local, _, domain = value.partition("@")
    keep = 1 if len(local) <= 3 else 2
    return f"{local[:keep]}•••@{domain}"


def mask_identifier(value: str) -> str:
    value = (value or "").strip()
    if len(value) <= 6:
        return "•••" if value else ""
    return f"{value[:4]}•••{value[-2:]}"
