"""Classify a credential failure reported by an identity provider.

``classify()`` turns what a worker saw (HTTP status, response body, headers, or a
network-level failure) into a :class:`FailureClass` that decides what Revive does
next: open a reconnect case, ask the owner to sign in again, refresh and retry,
back off, or hand the case to an operator.

The classifier is a set of tables of named rows. Each row has a matcher and a
class; the first matching row wins, and its name is returned as the
``signature`` so an operator can see exactly why a failure got its class. The
tables are tried in this order:

1. **Network** (``error_kind``): a timeout or connection error carries no
   answer from the provider, so nothing else is consulted.
2. **Provider signatures**, for the provider's own response shapes:

   * Entra: a known AADSTS code (from ``error_codes``, plus any ``AADSTSnnnn``
     in ``error_description``) refines what ``error`` and ``suberror`` alone
     would decide, so it is tried first: ``invalid_grant`` with AADSTS50076 is
     an MFA prompt, not a dead grant. Then ``suberror``, then Entra's own
     ``error`` values. When several known codes appear, table order decides
     (misconfiguration, dead grant, interaction, transient).
   * Auth0, Nango and Scalekit: their documented error codes and connected
     account statuses. Nango's ``refresh_token_external_error`` carries the
     upstream provider's token response; that inner body is classified with the
     Entra and OAuth rows (signature ``nango.refresh_token_external_error/<inner
     row>``), and an inner body nothing recognises gives ``unknown``.

3. **OAuth/OIDC error codes** (RFC 6749 §5.2, RFC 6750 §3.1, OIDC Core
   §3.1.2.6), from the body's ``error`` or the ``WWW-Authenticate`` challenge.
4. **HTTP status**, only when no body signature matched.
5. Otherwise ``unknown``, for operator triage.

An unknown provider name is classified with the generic rows (3 and 4).

Invariants:

* ``classify()`` never raises. Bodies come from providers and proxies we do not
  control (HTML error pages, truncated JSON, wrong types at any depth); anything
  the tables do not recognise is ``unknown``. Parsing is bounded in size and
  depth, so a huge or deeply nested body costs little.
* Nothing secret is echoed. ``code`` comes from the tables' own vocabulary, and
  ``description`` is scrubbed of JWTs, ``Bearer``/``Basic`` credentials, long
  opaque strings and the values of token/secret/password/assertion/code keys
  before it is truncated to 500 characters.
* This module needs no Django settings: it imports ``django.db.models`` only for
  ``TextChoices``, so workers and the SDK side can use it outside a project.
"""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl

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

# Indirection so tests can pin "now" for HTTP-date and epoch reset headers.
_clock: Callable[[], float] = time.time


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


# --- matchers ---------------------------------------------------------------


def _on_error(value: str) -> _Matcher:
    return lambda s: value if s.error == value else None


def _on_error_with_message(value: str, fragment: str) -> _Matcher:
    return lambda s: value if s.error == value and fragment in s.message.lower() else None


def _on_entra_code(number: int) -> _Matcher:
    return lambda s: f"AADSTS{number}" if number in s.entra_codes else None


def _on_error_with_status(value: str, status: int) -> _Matcher:
    return lambda s: value if s.error == value and s.status == status else None


def _on_suberror(value: str) -> _Matcher:
    return lambda s: value if s.suberror == value else None


def _on_nango_code(*values: str) -> _Matcher:
    def match(s: _Signals) -> str | None:
        return next((code for code in s.nango_codes if code in values), None)

    return match


def _on_account_status(values: frozenset[str]) -> _Matcher:
    return lambda s: s.account_status if s.account_status in values else None


def _on_active_account_with_status(status: int) -> _Matcher:
    return lambda s: "ACTIVE" if s.account_status == "ACTIVE" and s.status == status else None


def _on_status(low: int, high: int | None = None) -> _Matcher:
    top = low if high is None else high
    return lambda s: f"http_{s.status}" if s.status is not None and low <= s.status <= top else None


def _on_error_kind(value: str) -> _Matcher:
    return lambda s: value if s.error_kind == value else None


# --- tables -----------------------------------------------------------------

_NETWORK_ROWS = (
    _Row("network.timeout", FailureClass.TRANSIENT, _on_error_kind("timeout")),
    _Row("network.connection_error", FailureClass.TRANSIENT, _on_error_kind("connection_error")),
)

# Microsoft Entra.
#
# Sources cited per row:
#   [codes]  "Microsoft Entra authentication and authorization error codes",
#            https://learn.microsoft.com/entra/identity-platform/reference-error-codes (the AADSTS table; the
#            name after the number is Microsoft's own).
#   [msal]   MSAL's classification of Entra's ``suberror`` (MsalUiRequiredException.Classification,
#            "Handle errors and exceptions in MSAL.NET"; msal-node InteractionRequiredAuthErrorCodes).
#   [oauth]  the same page's table of ``error`` values and RFC 6749 §5.2.
#
# Microsoft: "Apps that take a dependency on text or error code numbers will be broken over time"; the
# ``error`` field "should be used to react to errors". So ``error`` bounds the answer (_ENTRA_ERROR_FAMILIES),
# ``suberror`` decides inside it, and a known AADSTS code only refines: it may pick another class the error
# admits (``invalid_grant`` + 50076 is an MFA prompt, not a dead grant), and after a suberror it may only
# escalate to the operator (admin consent) or add the reason the owner is shown.

_D, _I, _R, _T, _M = (FailureClass.DEAD_GRANT, FailureClass.INTERACTION_REQUIRED, FailureClass.REFRESHABLE,
                      FailureClass.TRANSIENT, FailureClass.MISCONFIGURATION)

# (code, class, reason); the group order is the tie-break when one response carries several known codes.
_ENTRA_CODES: tuple[tuple[int, FailureClass, str], ...] = (
    # --- an administrator must fix the app registration, the tenant or a policy: operator case, no owner link
    (7000215, _M, ""),  # invalid client secret provided [codes]
    (7000222, _M, ""),  # InvalidClientSecretExpiredKeysProvided [codes]
    (7000218, _M, ""),  # body must contain client_assertion or client_secret [codes]
    (70002, _M, ""),  # InvalidClient: client_secret does not match [codes]
    (700025, _M, ""),  # InvalidClientPublicClientWithCredential [codes]
    (700027, _M, ""),  # client assertion failed signature validation [codes]
    (50012, _M, ""),  # AuthenticationFailed: signing certificate / client assertion [codes]
    (50146, _M, ""),  # MissingCustomSigningKey [codes]
    (700016, _M, ""),  # UnauthorizedClient_DoesNotMatchRequest: app not found in the tenant [codes]
    (700011, _M, ""),  # UnauthorizedClientAppNotFoundInOrgIdTenant [codes]
    (70001, _M, ""),  # UnauthorizedClient: the application is disabled [codes]
    (7000112, _M, ""),  # UnauthorizedClientApplicationDisabled [codes]
    (1000031, _M, ""),  # application can't be accessed at this time, contact the administrator [codes]
    (7000114, _M, ""),  # application not allowed to make on-behalf-of calls [codes]
    (50011, _M, ""),  # InvalidReplyTo: reply address mismatch [codes]
    (50194, _M, ""),  # app not multitenant: /common not supported [codes]
    (9001023, _M, ""),  # grant type not supported over /common or /consumers [codes]
    (70003, _M, ""),  # UnsupportedGrantType [codes]
    (90014, _M, ""),  # MissingRequiredField [codes]
    (900144, _M, ""),  # request body must contain a parameter [codes]
    (90023, _M, ""),  # InvalidRequest [codes]
    (90002, _M, ""),  # InvalidTenantName: tenant not found [codes]
    (700005, _M, ""),  # InvalidGrantRedeemAgainstWrongTenant [codes]
    (70011, _M, ""),  # InvalidScope [codes]
    (28002, _M, ""),  # invalid scope value when requesting an access token [codes]
    (700022, _M, ""),  # InvalidMultipleResourcesScope [codes]
    (700023, _M, ""),  # InvalidResourcelessScope [codes]
    (50001, _M, ""),  # InvalidResource: disabled or does not exist [codes]
    (500011, _M, ""),  # InvalidResourceServicePrincipalNotFound [codes]
    (65005, _M, ""),  # MisconfiguredApplication: required resource access list [codes]
    (650052, _M, ""),  # the organization has not subscribed to the service [codes]
    (650054, _M, ""),  # the requested resource was removed or is no longer available [codes]
    (650057, _M, ""),  # invalid resource, not in the app registration's permissions [codes]
    (65002, _M, ""),  # first-party preauthorization required [codes]
    (90094, _M, "admin_consent"),  # AdminConsentRequired [codes]
    (90095, _M, "admin_consent"),  # AdminConsentRequiredRequestAccess: ask the admin for consent [codes]
    (90008, _M, "admin_consent"),  # TokenForItselfRequiresGraphPermission: nobody consented to sign-in [codes]
    (650056, _M, "admin_consent"),  # misconfigured application or no admin consent in the tenant [codes]
    (90099, _M, "admin_consent"),  # app not authorized in the tenant for delegated admins [codes]
    (50057, _M, "account_disabled"),  # UserDisabled [codes]
    (50034, _M, ""),  # UserAccountNotFound: the account is not in the directory [codes]
    (50020, _M, ""),  # UserUnauthorized: the account does not exist in the tenant [codes]
    (50105, _M, ""),  # EntitlementGrantsNotFound: user not assigned to the application [codes]
    (500021, _M, ""),  # tenant restrictions deny access to the tenant [codes]
    (500212, _M, ""),  # NotAllowedByOutboundPolicyTenant [codes]
    (500213, _M, ""),  # NotAllowedByInboundPolicyTenant [codes]
    (530032, _M, ""),  # BlockedByConditionalAccessOnSecurityPolicy: tenant security policy [codes]
    (530035, _M, ""),  # BlockedBySecurityDefaults [codes]
    (50196, _M, ""),  # LoopDetected: the client requests the same token too often [codes]
    # --- the refresh token or session is gone: the owner must reconnect
    (700082, _D, ""),  # ExpiredOrRevokedGrantInactiveToken: expired through inactivity [codes]
    (70008, _D, ""),  # ExpiredOrRevokedGrant [codes]
    (700084, _D, ""),  # SPA refresh token reached its fixed lifetime [codes]
    (50173, _D, ""),  # FreshTokenNeeded: grant revoked by the user or an admin [codes]
    (70043, _D, ""),  # BadTokenDueToSignInFrequency (Conditional Access sign-in frequency) [codes]
    (50089, _D, ""),  # flow token expired [codes]
    (50132, _D, "password_change"),  # SsoArtifactInvalidOrExpired: password expired or changed [codes]
    (50133, _D, "password_change"),  # SsoArtifactRevoked: password expired or changed [codes]
    (70000, _D, ""),  # InvalidGrant: the refresh token isn't valid [codes]
    (50085, _D, ""),  # refresh token needs social IDP login [codes]
    (50139, _D, ""),  # SessionMissingMsaOAuth2RefreshToken [codes]
    (54005, _D, ""),  # authorization code already redeemed [codes]
    # --- the owner must sign in interactively; the reason says what they will be asked to do
    (50076, _I, "mfa"),  # UserStrongAuthClientAuthNRequired [codes]
    (50074, _I, "mfa"),  # UserStrongAuthClientAuthNRequiredInterrupt [codes]
    (50078, _I, "mfa"),  # UserStrongAuthExpired: presented MFA expired [codes]
    (50158, _I, "mfa"),  # ExternalSecurityChallenge not satisfied [codes]
    (50079, _I, "mfa_registration"),  # UserStrongAuthEnrollmentRequired [codes]
    (50072, _I, "mfa_registration"),  # UserStrongAuthEnrollmentRequiredInterrupt [codes]
    (53004, _I, "mfa_registration"),  # ProofUpBlockedDueToRisk: complete MFA registration [codes]
    (65001, _I, "consent"),  # DelegationDoesNotExist: consent not granted [codes]
    (65004, _I, "consent"),  # UserDeclinedConsent [codes]
    (50015, _I, "consent"),  # ViralUserLegalAgeConsentRequiredState [codes]
    (52004, _I, "consent"),  # DelegationDoesNotExistForLinkedIn [codes]
    (53000, _I, "compliant_device"),  # DeviceNotCompliant [codes]
    (53001, _I, "compliant_device"),  # DeviceNotDomainJoined [codes]
    (50097, _I, "compliant_device"),  # DeviceAuthenticationRequired [codes]
    (50129, _I, "compliant_device"),  # DeviceIsNotWorkplaceJoined [codes]
    (50155, _I, "compliant_device"),  # DeviceAuthenticationFailed [codes]
    (53002, _I, "approved_app"),  # ApplicationUsedIsNotAnApprovedApp [codes]
    (50127, _I, "approved_app"),  # BrokerAppNotInstalled [codes]
    (53003, _I, "conditional_access"),  # BlockedByConditionalAccess [codes]
    (50131, _I, "conditional_access"),  # ConditionalAccessFailed [codes]
    (50005, _I, "conditional_access"),  # DevicePolicyError: platform not supported by Conditional Access [codes]
    (50055, _I, "password_change"),  # InvalidPasswordExpiredPassword [codes]
    (50144, _I, "password_change"),  # InvalidPasswordExpiredOnPremPassword [codes]
    (50135, _I, "password_change"),  # PasswordChangeCompromisedPassword [codes]
    (50125, _I, "password_change"),  # PasswordResetRegistrationRequiredInterrupt [codes]
    (50053, _I, "account_locked"),  # IdsLocked: too many failed sign-ins, or a malicious IP [codes]
    (53011, _I, "risk"),  # user blocked due to risk on home tenant [codes]
    (700020, _I, "sign_in"),  # InteractionRequired: the access grant requires interaction [codes]
    (50058, _I, "sign_in"),  # UserInformationNotProvided: no single-sign-on session [codes]
    (16000, _I, "sign_in"),  # InteractionRequired / SelectUserAccount [codes]
    (16001, _I, "sign_in"),  # UserAccountSelectionInvalid [codes]
    (50056, _I, "sign_in"),  # invalid or null password: enter the password again [codes]
    (51006, _I, "sign_in"),  # ForceReauthDueToInsufficientAuth [codes]
    (50199, _I, "sign_in"),  # CmsiInterrupt: user confirmation required [codes]
    (50140, _I, "sign_in"),  # KmsiInterrupt [codes]
    (50168, _I, "sign_in"),  # ChromeBrowserSsoInterruptRequired [codes]
    (81010, _I, "sign_in"),  # DesktopSsoAuthTokenInvalid: Kerberos ticket expired or invalid [codes]
    # --- the access token itself: refresh and retry
    (500133, _R, ""),  # assertion not within its valid time range: request a new token [codes]
    # --- Entra says to try again
    (90033, _T, ""),  # MsodsServiceUnavailable [codes]
    (90006, _T, ""),  # ExternalServerRetryableError [codes]
    (50033, _T, ""),  # RetryableError [codes]
    (50087, _T, ""),  # SasRetryableError [codes]
    (50088, _T, ""),  # limit on telecom MFA calls reached: try again in a few minutes [codes]
    (90024, _T, ""),  # RequestBudgetExceededError [codes]
    (90090, _T, ""),  # GraphRetryableError [codes]
    (90091, _T, ""),  # GraphServiceUnreachable [codes]
    (90055, _T, ""),  # TenantThrottlingError [codes]
    (90012, _T, ""),  # RequestTimeout [codes]
    (70012, _T, ""),  # MsaServerError: try again [codes]
    (50166, _T, ""),  # ExternalClaimsProviderThrottled [codes]
    (80001, _T, ""),  # OnPremiseStoreIsNotAvailable [codes]
    (80002, _T, ""),  # OnPremisePasswordValidatorRequestTimedout [codes]
    (80005, _T, ""),  # OnPremisePasswordValidatorUnpredictableWebException: retry [codes]
    (501621, _T, ""),  # claims transformation regex timeout: a retry may succeed [codes]
)

# Entra's ``suberror`` values and what MSAL makes of them.
_ENTRA_SUBERRORS: tuple[tuple[str, FailureClass, str], ...] = (
    ("basic_action", _I, "sign_in"),  # resolved by the user during interactive sign-in [msal]
    ("additional_action", _I, "additional_action"),  # remedial action outside the sign-in flow [msal]
    ("message_only", _I, "blocked"),  # cannot be resolved now; sign-in shows why [msal]
    ("user_password_expired", _I, "password_change"),  # the user's password expired [msal]
    ("consent_required", _I, "consent"),  # the user must consent [msal]
    ("device_authentication_failed", _I, "compliant_device"),  # device authentication failed [msal]
    ("bad_token", _D, ""),  # "no further silent calls should be made with this refresh token" [msal]
    ("token_expired", _D, ""),  # the refresh token expired [msal]
    # Signing in again cannot fix these: the app needs an Intune app protection policy, or the token
    # belongs to another client (FOCI family mismatch) [msal].
    ("protection_policy_required", _M, ""),
    ("client_mismatch", _M, ""),
)

# Which classes each ``error`` admits [oauth]; an error not listed admits any (codes then decide).
_OWNER_SIDE = frozenset({_D, _I, _M, _T, _R})
_ENTRA_ERROR_FAMILIES: dict[str, frozenset[FailureClass]] = {
    "invalid_grant": _OWNER_SIDE,
    "interaction_required": frozenset({_I, _D, _M}),
    "login_required": frozenset({_I, _M}),
    "consent_required": frozenset({_I, _M}),
    "access_denied": frozenset({_I, _M}),
    "account_selection_required": frozenset({_I}),
    "insufficient_claims": frozenset({_I}),
    "invalid_client": frozenset({_M, _T}),
    "unauthorized_client": frozenset({_M, _T}),
    "invalid_request": frozenset({_M, _T}),
    "invalid_scope": frozenset({_M}),
    "invalid_resource": frozenset({_M}),
    "unsupported_grant_type": frozenset({_M}),
    "temporarily_unavailable": frozenset({_T}),
    "server_error": frozenset({_T}),
}

_ENTRA_CODE_ROWS = tuple(
    _Row(f"entra.error_code.{number}", cls, _on_entra_code(number), reason=reason) for number, cls, reason in _ENTRA_CODES
)
_ENTRA_SUBERROR_ROWS = tuple(
    _Row(f"entra.suberror.{value}", cls, _on_suberror(value), reason=reason) for value, cls, reason in _ENTRA_SUBERRORS
)
_ENTRA_ERROR_ROWS = (
    _Row("entra.error.invalid_resource", _M, _on_error("invalid_resource")),  # [oauth]
)


def _entra_decide(s: _Signals) -> _Hit | None:
    """``error`` bounds, ``suberror`` decides, the AADSTS code refines (see the table's header)."""
    family = _ENTRA_ERROR_FAMILIES.get(s.error)
    suberror = _first_match(_ENTRA_SUBERROR_ROWS, s)
    if suberror is not None and family is not None and suberror.row.failure_class not in family:
        suberror = None
    refined = next((hit for hit in (_first_match((row,), s) for row in _ENTRA_CODE_ROWS)
                    if hit is not None and (family is None or hit.row.failure_class in family)), None)
    if refined is None:
        return suberror if suberror is not None else _first_match(_ENTRA_ERROR_ROWS, s)
    if suberror is None or refined.row.failure_class in (suberror.row.failure_class, _M):
        return refined
    return _Hit(suberror.row, suberror.code, reason=refined.row.reason or suberror.row.reason)


_AUTH0_ROWS = (
    _Row(
        "auth0.invalid_grant.unknown_refresh_token",
        FailureClass.DEAD_GRANT,
        _on_error_with_message("invalid_grant", "unknown or invalid refresh token"),
    ),
    _Row("auth0.mfa_required", FailureClass.INTERACTION_REQUIRED, _on_error("mfa_required"), reason=Reason.MFA),
    # Auth0 reports its global rate limit as access_denied (sometimes with a 500).
    _Row(
        "auth0.access_denied.rate_limited",
        FailureClass.TRANSIENT,
        _on_error_with_message("access_denied", "limit has been reached"),
    ),
    # The token endpoint answers 401 access_denied ("Unauthorized") when the
    # client itself failed to authenticate (wrong client id or secret): an
    # operator fixes the application, a sign-in by the owner cannot.
    _Row(
        "auth0.access_denied.client_authentication",
        FailureClass.MISCONFIGURATION,
        _on_error_with_status("access_denied", 401),
    ),
    # Otherwise a Rule/Action or consent denial, decided at sign-in: the owner
    # has to go through it interactively.
    _Row("auth0.access_denied", FailureClass.INTERACTION_REQUIRED, _on_error("access_denied"), reason=Reason.SIGN_IN),
)

# Auth0 Token Vault: the worker's credential comes from the federated-connection token exchange
# (grant_type urn:auth0:params:oauth:grant-type:token-exchange:federated-connection-access-token). When the
# upstream grant behind the connected account is gone the exchange fails -- observed 401
# federated_connection_refresh_token_not_found; Auth0's SDKs surface failed_to_exchange_refresh_token and
# missing_refresh_token -- and any other 4xx of the exchange means the same: re-link the connected account
# (My Account API, Connected Accounts). The Auth0 session's own refusal of the subject token ("Unknown or invalid
# refresh token") is different: the owner signs in to Auth0 again (dead grant). Revive's own client being
# refused is an operator's problem; 408/429 and 5xx fall through to the transient rows.
_TOKEN_VAULT_RELINK_ERRORS = ("federated_connection_refresh_token_not_found", "failed_to_exchange_refresh_token",
                              "missing_refresh_token")


def _on_exchange_4xx(s: _Signals) -> str | None:
    if s.status is not None and 400 <= s.status <= 499 and s.status not in (408, 429):
        return s.error or f"http_{s.status}"
    return None


_TOKEN_VAULT_ROWS = (
    *(_Row(f"auth0_token_vault.{code}", FailureClass.RELINK_REQUIRED, _on_error(code), reason=Reason.RELINK)
      for code in _TOKEN_VAULT_RELINK_ERRORS),
    _Row("auth0_token_vault.session_refresh_token_invalid", FailureClass.DEAD_GRANT,
         _on_error_with_message("invalid_grant", "unknown or invalid refresh token"), reason=Reason.SIGN_IN),
    _Row("auth0_token_vault.client_rejected", FailureClass.MISCONFIGURATION,
         lambda s: s.error if s.error in ("invalid_client", "unauthorized_client", "unsupported_grant_type") else None),
    _Row("auth0_token_vault.exchange_4xx", FailureClass.RELINK_REQUIRED, _on_exchange_4xx, reason=Reason.RELINK),
)

# Scalekit connected account states other than ACTIVE all need a new
# authorization by the owner ("generate a new authorization link").
_SCALEKIT_INACTIVE_STATUSES = frozenset(
    {
        "EXPIRED",
        "REVOKED",
        "ERROR",
        "DISCONNECTED",
        "PENDING",
        "PENDING_AUTH",
        "PENDING_VERIFICATION",
        "SUSPENDED",
    }
)

_SCALEKIT_ROWS = (
    _Row(
        "scalekit.connected_account.inactive",
        FailureClass.DEAD_GRANT,
        _on_account_status(_SCALEKIT_INACTIVE_STATUSES),
    ),
    _Row(
        "scalekit.connected_account.active_401",
        FailureClass.REFRESHABLE,
        _on_active_account_with_status(401),
    ),
)

# Nango refuses to refresh for 30 s after a failed refresh (REFRESH_FAILURE_COOLDOWN_MS).
_NANGO_BACKOFF_SECONDS = 30.0

_NANGO_ROWS = (
    _Row(
        "nango.connection_refresh_exhausted",
        FailureClass.DEAD_GRANT,
        _on_nango_code("connection_refresh_exhausted"),
    ),
    # Nango's wrapper for a refresh the upstream API rejected for good.
    _Row("nango.invalid_credentials", FailureClass.DEAD_GRANT, _on_nango_code("invalid_credentials")),
    _Row(
        "nango.connection_refresh_backoff",
        FailureClass.TRANSIENT,
        _on_nango_code("connection_refresh_backoff"),
        retry_hint=_NANGO_BACKOFF_SECONDS,
    ),
    _Row(
        "nango.refresh_token_lock_timeout",
        FailureClass.TRANSIENT,
        _on_nango_code("refresh_token_lock_timeout"),
    ),
    _Row(
        "nango.refresh_token_external_error",
        FailureClass.UNKNOWN,
        _on_nango_code("refresh_token_external_error"),
        unwraps_upstream=True,
    ),
    # Nango rejected Revive's own key or integration id: not the owner's token.
    _Row(
        "nango.api_credentials_rejected",
        FailureClass.MISCONFIGURATION,
        _on_nango_code(
            "invalid_secret_key",
            "invalid_secret_key_format",
            "unknown_account",
            "missing_auth_header",
            "malformed_auth_header",
            "unknown_provider_config",
        ),
    ),
)

_OAUTH_ROWS = (
    # RFC 6749 §5.2
    _Row("oauth.error.invalid_grant", FailureClass.DEAD_GRANT, _on_error("invalid_grant")),
    _Row("oauth.error.invalid_client", FailureClass.MISCONFIGURATION, _on_error("invalid_client")),
    _Row("oauth.error.unauthorized_client", FailureClass.MISCONFIGURATION, _on_error("unauthorized_client")),
    _Row(
        "oauth.error.unsupported_grant_type",
        FailureClass.MISCONFIGURATION,
        _on_error("unsupported_grant_type"),
    ),
    _Row("oauth.error.invalid_scope", FailureClass.MISCONFIGURATION, _on_error("invalid_scope")),
    _Row("oauth.error.invalid_request", FailureClass.MISCONFIGURATION, _on_error("invalid_request")),
    # RFC 6750 §3.1
    _Row("oauth.error.invalid_token", FailureClass.REFRESHABLE, _on_error("invalid_token")),
    _Row("oauth.error.insufficient_scope", FailureClass.INTERACTION_REQUIRED, _on_error("insufficient_scope"),
         reason=Reason.CONSENT),
    # A resource API's claims challenge (Microsoft Entra continuous access evaluation, "Claims challenges,
    # claims requests and client capabilities"): 401 with WWW-Authenticate error="insufficient_claims" and
    # claims="<base64 JSON>"; the owner signs in again with that JSON as the ``claims`` parameter.
    _Row("oauth.error.insufficient_claims", FailureClass.INTERACTION_REQUIRED, _on_error("insufficient_claims"),
         reason=Reason.CLAIMS_CHALLENGE),
    # RFC 9470 (OAuth 2.0 Step Up Authentication Challenge) §3
    _Row("oauth.error.insufficient_user_authentication", FailureClass.INTERACTION_REQUIRED,
         _on_error("insufficient_user_authentication"), reason=Reason.STEP_UP),
    # OIDC Core §3.1.2.6
    _Row("oauth.error.interaction_required", FailureClass.INTERACTION_REQUIRED, _on_error("interaction_required"),
         reason=Reason.SIGN_IN),
    _Row("oauth.error.login_required", FailureClass.INTERACTION_REQUIRED, _on_error("login_required"),
         reason=Reason.SIGN_IN),
    _Row("oauth.error.consent_required", FailureClass.INTERACTION_REQUIRED, _on_error("consent_required"),
         reason=Reason.CONSENT),
    _Row(
        "oauth.error.account_selection_required",
        FailureClass.INTERACTION_REQUIRED,
        _on_error("account_selection_required"),
        reason=Reason.SIGN_IN,
    ),
    # RFC 6749 §4.1.2.1 / RFC 8628 §3.5
    _Row("oauth.error.temporarily_unavailable", FailureClass.TRANSIENT, _on_error("temporarily_unavailable")),
    _Row("oauth.error.server_error", FailureClass.TRANSIENT, _on_error("server_error")),
    _Row("oauth.error.slow_down", FailureClass.TRANSIENT, _on_error("slow_down")),
)

_STATUS_ROWS = (
    # The access token expired: refresh through the vault and retry.
    _Row("http.401", FailureClass.REFRESHABLE, _on_status(401)),
    # A bare 403 says nothing about the grant: operator triage.
    _Row("http.403", FailureClass.UNKNOWN, _on_status(403)),
    _Row("http.408", FailureClass.TRANSIENT, _on_status(408)),
    _Row("http.429", FailureClass.TRANSIENT, _on_status(429)),
    _Row("http.5xx", FailureClass.TRANSIENT, _on_status(500, 599)),
)

_Table = Callable[[_Signals], "_Hit | None"]


def _rows(rows: tuple[_Row, ...]) -> _Table:
    return lambda s: _first_match(rows, s)


_PROVIDER_TABLES: dict[str, _Table] = {
    Provider.ENTRA: _entra_decide,
    Provider.AUTH0: _rows(_AUTH0_ROWS),
    Provider.AUTH0_TOKEN_VAULT: _rows(_TOKEN_VAULT_ROWS),
    Provider.NANGO: _rows(_NANGO_ROWS),
    Provider.SCALEKIT: _rows(_SCALEKIT_ROWS),
    Provider.OIDC: lambda s: None,
}

# What a body wrapped by Nango is classified with.
_UPSTREAM_TABLES: tuple[_Table, ...] = (_entra_decide, _rows(_OAUTH_ROWS))

SIGNATURES: tuple[str, ...] = tuple(
    row.signature
    for rows in (_NETWORK_ROWS, _ENTRA_CODE_ROWS, _ENTRA_SUBERROR_ROWS, _ENTRA_ERROR_ROWS, _AUTH0_ROWS, _TOKEN_VAULT_ROWS, _NANGO_ROWS,
                 _SCALEKIT_ROWS, _OAUTH_ROWS, _STATUS_ROWS)
    for row in rows
)
"""Every row name, in table order (tests check each has a case)."""


# --- entry point ------------------------------------------------------------


def classify(
    *,
    provider: str,
    status: int | None = None,
    body: object = None,
    headers: Mapping[str, str] | None = None,
    error_kind: str | None = None,
) -> Classification:
    """Classify one credential failure; see the module docstring for the order."""
    chosen = Provider.OIDC
    try:
        chosen = _provider_of(provider)
        return _classify(chosen, status=status, body=body, headers=headers, error_kind=error_kind)
    except Exception:  # noqa: BLE001 - the classifier must answer for any input
        return _classification(chosen, FailureClass.UNKNOWN, code="", signature="", description="")


def _classify(
    provider: Provider,
    *,
    status: object,
    body: object,
    headers: object,
    error_kind: object,
) -> Classification:
    network = _first_match(_NETWORK_ROWS, _Signals(error_kind=_token(error_kind)))
    if network is not None:
        return _classification(provider, network.row.failure_class, code=network.code, signature=network.row.signature,
                               description="")
    header_map = _headers_of(headers)
    signals = _read(status=status, body=body, headers=header_map)
    for table in (_PROVIDER_TABLES[provider], _rows(_OAUTH_ROWS), _rows(_STATUS_ROWS)):
        hit = table(signals)
        if hit is None:
            continue
        if hit.row.unwraps_upstream:
            return _classify_upstream(provider, hit, signals, header_map)
        return _classification(
            provider,
            hit.row.failure_class,
            code=hit.code,
            signature=hit.row.signature,
            description=signals.message or signals.text,
            headers=header_map,
            retry_hint=hit.row.retry_hint,
            reason=hit.why,
            claims=signals.claims,
        )
    return _classification(
        provider,
        FailureClass.UNKNOWN,
        code="",
        signature="",
        description=signals.message or signals.text,
    )


def _classify_upstream(provider: Provider, outer: _Hit, signals: _Signals, headers: dict[str, str]) -> Classification:
    for candidate in _upstream_bodies(signals.body):
        inner = _read(status=None, body=candidate, headers={})
        hit = next((found for found in (table(inner) for table in _UPSTREAM_TABLES) if found is not None), None)
        if hit is not None:
            return _classification(
                provider,
                hit.row.failure_class,
                code=hit.code,
                signature=f"{outer.row.signature}/{hit.row.signature}",
                description=inner.message or signals.message,
                headers=headers,
                retry_hint=hit.row.retry_hint,
                reason=hit.why,
                claims=inner.claims,
            )
    return _classification(
        provider,
        FailureClass.UNKNOWN,
        code=outer.code,
        signature=outer.row.signature,
        description=signals.message,
    )


def _first_match(rows: tuple[_Row, ...], signals: _Signals) -> _Hit | None:
    for row in rows:
        code = row.match(signals)
        if code is not None:
            return _Hit(row, code)
    return None


def _classification(
    provider: Provider,
    failure_class: FailureClass,
    *,
    code: str,
    signature: str,
    description: str,
    headers: dict[str, str] | None = None,
    retry_hint: float | None = None,
    reason: str = "",
    claims: str = "",
) -> Classification:
    retry_after = None
    if failure_class == FailureClass.TRANSIENT:
        retry_after = _retry_after(headers or {}, retry_hint)
    return Classification(
        failure_class=failure_class,
        provider=str(provider.value),
        code=code,
        description=_scrub(description),
        retry_after=retry_after,
        signature=signature,
        reason=str(reason),
        claims=claims if failure_class == FailureClass.INTERACTION_REQUIRED else "",
    )


# --- reading the inputs -----------------------------------------------------


def _provider_of(value: object) -> Provider:
    if not isinstance(value, str):
        return Provider.OIDC
    key = value.strip().lower()
    if key in Provider.values:
        return Provider(key)
    return _PROVIDER_ALIASES.get(key, Provider.OIDC)


def _read(*, status: object, body: object, headers: dict[str, str]) -> _Signals:
    try:
        return _read_all(status=status, body=body, headers=headers)
    except Exception:  # noqa: BLE001 - a body that breaks when read says nothing; its status and headers still do
        return _read_all(status=status, body=None, headers=headers)


def _read_all(*, status: object, body: object, headers: dict[str, str]) -> _Signals:
    parsed, text = _parse_body(body)
    doc = _first_mapping(parsed)
    error = _token(doc.get("error")) if doc is not None else ""
    message = _message_of(doc) if doc is not None else ""
    claims = _claims_json(doc.get("claims")) if doc is not None else ""
    if not error:
        error, challenge_message, challenge_claims = _bearer_challenge(headers.get("www-authenticate", ""))
        message = message or challenge_message
        claims = claims or challenge_claims
    return _Signals(
        status=_status_of(status),
        body=doc,
        text=text,
        error=error,
        suberror=_token(doc.get("suberror")) if doc is not None else "",
        entra_codes=_entra_codes(doc, message),
        message=message,
        nango_codes=_nango_codes(doc),
        account_status=_account_status(doc),
        claims=claims,
    )


def _parse_body(value: object) -> tuple[object, str]:
    """Return (parsed document or None, raw text for a non-JSON body)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value[: _MAX_PARSE_CHARS + 1]).decode("utf-8", "replace")
    if isinstance(value, str):
        text = value[:_MAX_MESSAGE_CHARS]
        if len(value) > _MAX_PARSE_CHARS:
            return None, text
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                return json.loads(stripped), ""
            except (ValueError, RecursionError):
                return None, text
        return _form_encoded(stripped), text
    if isinstance(value, (Mapping, list, tuple)):
        return value, ""
    return None, ""


_FORM_ENCODED = re.compile(r"[A-Za-z0-9_.~%+-]+=[^\s]*")


def _form_encoded(text: str) -> dict[str, str] | None:
    """Token endpoints that answer application/x-www-form-urlencoded (e.g. GitHub)."""
    if not _FORM_ENCODED.fullmatch(text) or "error=" not in text:
        return None
    pairs = dict(parse_qsl(text, keep_blank_values=True, max_num_fields=50))
    return pairs if "error" in pairs else None


def _first_mapping(value: object) -> Mapping | None:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, (list, tuple)):
        return next((item for item in value[:5] if isinstance(item, Mapping)), None)
    return None


def _token(value: object) -> str:
    """A short machine identifier (error code, status), normalised; '' otherwise."""
    if isinstance(value, str) and len(value) <= 100:
        return value.strip().lower()
    return ""


def _text(value: object) -> str:
    if isinstance(value, str):
        return value[:_MAX_MESSAGE_CHARS].strip()
    return ""


_MESSAGE_KEYS = ("error_description", "message", "description", "detail", "error_message")


def _message_of(doc: Mapping) -> str:
    for key in _MESSAGE_KEYS:
        message = _text(doc.get(key))
        if message:
            return message
    nested = doc.get("error")
    if isinstance(nested, Mapping):
        for key in ("message", "description", "detail"):
            message = _text(nested.get(key))
            if message:
                return message
    return ""


_CHALLENGE_ERROR = re.compile(r'\berror="([^"]{1,100})"')
_CHALLENGE_DESCRIPTION = re.compile(r'\berror_description="([^"]{1,1000})"')
_CHALLENGE_CLAIMS = re.compile(r'\bclaims="([A-Za-z0-9+/=_-]{1,%d})"' % (4 * _MAX_CLAIMS_CHARS // 3 + 4))


def _bearer_challenge(header: str) -> tuple[str, str, str]:
    """RFC 6750 §3: a resource server's 401 carries the error (and a claims challenge) in WWW-Authenticate."""
    error = _CHALLENGE_ERROR.search(header)
    if error is None:
        return "", "", ""
    description = _CHALLENGE_DESCRIPTION.search(header)
    claims = _CHALLENGE_CLAIMS.search(header)
    return (_token(error.group(1)), description.group(1) if description else "",
            _claims_from_base64(claims.group(1)) if claims else "")


def _claims_from_base64(value: str) -> str:
    """The challenge's ``claims`` is base64 (standard or URL-safe, padding optional) of a JSON object."""
    try:
        raw = base64.urlsafe_b64decode(value.replace("+", "-").replace("/", "_") + "=" * (-len(value) % 4))
        return _claims_json(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return ""


def _claims_json(value: object) -> str:
    """A claims request as compact JSON text if ``value`` is a JSON object of bounded size, else ''."""
    if not isinstance(value, str) or len(value) > _MAX_CLAIMS_CHARS:
        return ""
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(parsed, dict) or not parsed:
        return ""
    return json.dumps(parsed, separators=(",", ":"), sort_keys=True)


_AADSTS = re.compile(r"AADSTS([0-9]{4,9})")
_DIGITS = re.compile(r"[0-9]{1,9}")


def _entra_codes(doc: Mapping | None, message: str) -> tuple[int, ...]:
    codes: list[int] = []
    raw = doc.get("error_codes") if doc is not None else None
    if isinstance(raw, (list, tuple)):
        for item in raw[:10]:
            if isinstance(item, bool):
                continue
            if isinstance(item, int):
                codes.append(item)
            elif isinstance(item, str) and _DIGITS.fullmatch(item.strip()):
                codes.append(int(item.strip()))
    codes.extend(int(number) for number in _AADSTS.findall(message))
    return tuple(dict.fromkeys(codes))


def _nango_codes(doc: Mapping | None) -> tuple[str, ...]:
    """Nango puts its code in error.code (API), error.type (webhooks) or type (logs)."""
    if doc is None:
        return ()
    envelopes = [doc]
    error = doc.get("error")
    if isinstance(error, Mapping):
        envelopes.append(error)
        payload = error.get("payload")
        nested = payload.get("error") if isinstance(payload, Mapping) else None
        if isinstance(nested, Mapping):
            envelopes.append(nested)
    codes = (_token(envelope.get(key)) for envelope in envelopes for key in ("code", "type"))
    return tuple(code for code in codes if code)


def _account_status(doc: Mapping | None) -> str:
    if doc is None:
        return ""
    for key in ("connected_account", "connectedAccount"):
        account = doc.get(key)
        if isinstance(account, Mapping):
            return _token(account.get("status")).upper()
    return _token(doc.get("status")).upper()


def _upstream_bodies(doc: Mapping | None, depth: int = 0) -> Iterator[Mapping]:
    """Bodies Nango may have wrapped, innermost first.

    Nango carries the upstream token response as ``payload.dataMessage`` (a
    dict, or the raw response text), and older versions and webhooks append the
    payload as JSON to the error text (``error``, ``message`` or ``description``).
    """
    if doc is None or depth > 3:
        return
    for key in ("error", "payload", "dataMessage"):
        child = doc.get(key)
        if isinstance(child, str) and key == "dataMessage":
            child = _first_mapping(_parse_body(child)[0])
        if isinstance(child, Mapping):
            yield from _upstream_bodies(child, depth + 1)
    for key in ("error", "message", "description", "external_message"):
        embedded = _embedded_json(doc.get(key))
        if embedded is not None:
            yield from _upstream_bodies(embedded, depth + 1)
    yield doc


def _embedded_json(value: object) -> Mapping | None:
    if not isinstance(value, str) or len(value) > _MAX_PARSE_CHARS:
        return None
    start = value.find("{")
    if start < 0:
        return None
    try:
        found, _ = json.JSONDecoder().raw_decode(value, start)
    except (ValueError, RecursionError):
        return None
    return found if isinstance(found, Mapping) else None


def _headers_of(value: object) -> dict[str, str]:
    """Lower-cased header names; anything that is not a name/value pair is skipped."""
    pairs: Iterable[object]
    if isinstance(value, Mapping):
        pairs = value.items()
    elif isinstance(value, (list, tuple)):
        pairs = value
    else:
        return {}
    headers: dict[str, str] = {}
    for index, pair in enumerate(pairs):
        if index >= 100:
            break
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            continue
        name, header_value = (_header_text(part) for part in pair)
        if name and header_value is not None:
            headers.setdefault(name.strip().lower(), header_value.strip())
    return headers


def _header_text(value: object) -> str | None:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[:1024]).decode("latin-1")
    if isinstance(value, str):
        return value[:1024]
    return None


def _status_of(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = int(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]{3}\s*", value):
        number = int(value)
    else:
        return None
    return number if 100 <= number <= 599 else None


# --- retry hints ------------------------------------------------------------


def _retry_after(headers: dict[str, str], hint: float | None) -> float | None:
    """Seconds to wait: Retry-After, else X-RateLimit-Reset, else the row's hint."""
    for seconds in (
        _parse_retry_after(headers.get("retry-after")),
        _parse_rate_limit_reset(headers.get("x-ratelimit-reset")),
        hint,
    ):
        if seconds is not None:
            return min(max(seconds, 0.0), float(_MAX_RETRY_AFTER_SECONDS))
    return None


def _number(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _parse_retry_after(value: str | None) -> float | None:
    """RFC 9110 §10.2.3: delta-seconds or an HTTP-date."""
    seconds = _number(value)
    if seconds is not None or not value:
        return seconds
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return max(moment.timestamp() - _clock(), 0.0)


def _parse_rate_limit_reset(value: str | None) -> float | None:
    """Auth0 sends epoch seconds; some APIs send seconds remaining."""
    number = _number(value)
    if number is None:
        return None
    if number >= _EPOCH_THRESHOLD:
        return max(number - _clock(), 0.0)
    return number


# --- description scrubbing --------------------------------------------------

_REDACTED = "[redacted]"
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){0,4}")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_SECRET_PAIR = re.compile(
    r"""
    (["']?)                                                       # optional quote
    ([a-z0-9_.-]{0,40}(?:token|secret|password|passwd|assertion|code)[a-z0-9_-]{0,40})  # key
    \1
    (\s*[:=]\s*)
    (?!\[redacted\])("[^"]*"|'[^']*'|[^\s,;&"'}\])]+)             # value
    """,
    re.IGNORECASE | re.VERBOSE,
)
_OPAQUE = re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}")


def _scrub(text: str) -> str:
    """Make a provider message safe to store and show: no credentials, bounded."""
    if not isinstance(text, str) or not text:
        return ""
    text = text[: _MAX_MESSAGE_CHARS]
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = _JWT.sub(_REDACTED, text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {_REDACTED}", text)
    text = _OPAQUE.sub(_REDACTED, text)
    text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}{_REDACTED}", text)
    return " ".join(text.split())[:_MAX_DESCRIPTION_CHARS]
