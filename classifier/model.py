"""The classifier's vocabulary: failure classes, reasons, providers, the answer, and the rows' own types."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from django.db import models


class FailureClass(models.TextChoices):
    DEAD_GRANT = "dead_grant"
    INTERACTION_REQUIRED = "interaction_required"
    REFRESHABLE = "refreshable"
    TRANSIENT = "transient"
    MISCONFIGURATION = "misconfiguration"
    RELINK_REQUIRED = "relink_required"
    """The upstream account behind a vault (Auth0 Token Vault) is gone: the owner must re-link it."""
    UNKNOWN = "unknown"


class Reason(models.TextChoices):
    """What the person asked must do; refines a class (the owner page words it, see ``reauth.views``)."""

    SIGN_IN = "sign_in", "Sign in again"
    MFA = "mfa", "Complete multi-factor authentication"
    MFA_REGISTRATION = "mfa_registration", "Register a multi-factor authentication method"
    CONSENT = "consent", "Give consent"
    ADMIN_CONSENT = "admin_consent", "An administrator must consent"
    COMPLIANT_DEVICE = "compliant_device", "Use a compliant or registered device"
    APPROVED_APP = "approved_app", "Use an approved app"
    CONDITIONAL_ACCESS = "conditional_access", "Meet the organisation's Conditional Access policy"
    PASSWORD_CHANGE = "password_change", "Change the password"
    ACCOUNT_LOCKED = "account_locked", "The account is locked"
    ACCOUNT_DISABLED = "account_disabled", "The account is disabled"
    RISK = "risk", "The account is blocked due to risk"
    ADDITIONAL_ACTION = "additional_action", "A step outside the sign-in"
    BLOCKED = "blocked", "Sign-in is blocked for now"
    CLAIMS_CHALLENGE = "claims_challenge", "Sign in again to satisfy a claims challenge"
    STEP_UP = "step_up", "Sign in with a stronger method"
    RELINK = "relink", "Re-link the connected account"


class Provider(models.TextChoices):
    ENTRA = "entra", "Microsoft Entra ID"
    AUTH0 = "auth0", "Auth0"
    AUTH0_TOKEN_VAULT = "auth0_token_vault", "Auth0 Token Vault"
    NANGO = "nango", "Nango"
    SCALEKIT = "scalekit", "Scalekit"
    OIDC = "oidc", "Generic OIDC"


@dataclass(frozen=True)
class Classification:
    failure_class: FailureClass
    provider: str
    code: str
    description: str
    retry_after: float | None
    signature: str
    reason: str = ""
    """A :class:`Reason` value, or ''."""
    claims: str = ""
    """A claims challenge (JSON text, e.g. Entra CAE's), to send as the ``claims`` sign-in parameter; not a secret."""


# Names other parts of the stack use for Entra (allauth's provider id is "microsoft").
_PROVIDER_ALIASES = {
    "microsoft": Provider.ENTRA,
    "azuread": Provider.ENTRA,
    "azure_ad": Provider.ENTRA,
    "entra_id": Provider.ENTRA,
}

_MAX_PARSE_CHARS = 256 * 1024
_MAX_MESSAGE_CHARS = 4096
_MAX_DESCRIPTION_CHARS = 500
_MAX_RETRY_AFTER_SECONDS = 24 * 60 * 60
_MAX_CLAIMS_CHARS = 2048
_EPOCH_THRESHOLD = 1_000_000_000


@dataclass(frozen=True)
class _Signals:
    """What the rows look at, extracted once from the raw inputs."""

    status: int | None = None
    error_kind: str = ""
    body: Mapping | None = None
    text: str = ""
    error: str = ""
    suberror: str = ""
    entra_codes: tuple[int, ...] = ()
    message: str = ""
    nango_codes: tuple[str, ...] = ()
    account_status: str = ""
    claims: str = ""


# A matcher returns the stable code of what it matched, or None.
_Matcher = Callable[[_Signals], "str | None"]


@dataclass(frozen=True)
class _Row:
    signature: str
    failure_class: FailureClass
    match: _Matcher
    retry_hint: float | None = None
    unwraps_upstream: bool = False
    reason: str = ""


@dataclass(frozen=True)
class _Hit:
    """A matched row, with the code it matched and, where a later signal refined it, another reason."""

    row: _Row
    code: str
    reason: str | None = None

    @property
    def why(self) -> str:
        return self.row.reason if self.reason is None else self.reason
