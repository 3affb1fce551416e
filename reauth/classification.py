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

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
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
    UNKNOWN = "unknown"


class Provider(models.TextChoices):
    ENTRA = "entra", "Microsoft Entra ID"
    AUTH0 = "auth0", "Auth0"
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


# A matcher returns the stable code of what it matched, or None.
_Matcher = Callable[[_Signals], "str | None"]


@dataclass(frozen=True)
class _Row:
    signature: str
    failure_class: FailureClass
    match: _Matcher
    retry_hint: float | None = None
    unwraps_upstream: bool = False


# --- matchers ---------------------------------------------------------------


def _on_error(value: str) -> _Matcher:
    return lambda s: value if s.error == value else None


def _on_error_with_message(value: str, fragment: str) -> _Matcher:
    return lambda s: value if s.error == value and fragment in s.message.lower() else None


def _on_entra_code(number: int) -> _Matcher:
    return lambda s: f"AADSTS{number}" if number in s.entra_codes else None


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

# Microsoft Entra AADSTS codes, grouped by class; the group order is the
# tie-break when one response carries several known codes.
_ENTRA_CODES: tuple[tuple[int, FailureClass], ...] = (
    # An administrator must fix the app registration, the tenant or a policy.
    (7000215, FailureClass.MISCONFIGURATION),  # invalid client secret
    (7000222, FailureClass.MISCONFIGURATION),  # client secret expired
    (70002, FailureClass.MISCONFIGURATION),  # InvalidClient
    (700016, FailureClass.MISCONFIGURATION),  # application not found in the tenant
    (50011, FailureClass.MISCONFIGURATION),  # reply address mismatch
    (53003, FailureClass.MISCONFIGURATION),  # blocked by Conditional Access
    (50057, FailureClass.MISCONFIGURATION),  # user account disabled
    (70001, FailureClass.MISCONFIGURATION),  # application disabled
    (7000112, FailureClass.MISCONFIGURATION),  # application disabled
    (50105, FailureClass.MISCONFIGURATION),  # user not assigned to the application
    # The refresh token or session is gone: the owner must reconnect.
    (700082, FailureClass.DEAD_GRANT),  # refresh token expired through inactivity
    (70008, FailureClass.DEAD_GRANT),  # grant expired or revoked
    (700084, FailureClass.DEAD_GRANT),  # SPA refresh token lifetime reached
    (50173, FailureClass.DEAD_GRANT),  # grant revoked (password change, admin revoke)
    (70043, FailureClass.DEAD_GRANT),  # refresh token invalid under sign-in frequency
    (50089, FailureClass.DEAD_GRANT),  # flow token expired
    (50132, FailureClass.DEAD_GRANT),  # session invalid after password change or expiry
    (50133, FailureClass.DEAD_GRANT),  # session revoked after password change or expiry
    # The owner must sign in interactively (MFA, consent, password reset).
    (50076, FailureClass.INTERACTION_REQUIRED),  # MFA required
    (50079, FailureClass.INTERACTION_REQUIRED),  # MFA registration required
    (50078, FailureClass.INTERACTION_REQUIRED),  # presented MFA expired
    (50072, FailureClass.INTERACTION_REQUIRED),  # second factor enrollment required
    (50074, FailureClass.INTERACTION_REQUIRED),  # strong authentication required
    (65001, FailureClass.INTERACTION_REQUIRED),  # consent not granted
    (65004, FailureClass.INTERACTION_REQUIRED),  # user declined consent
    (700020, FailureClass.INTERACTION_REQUIRED),  # access grant requires interaction
    (50055, FailureClass.INTERACTION_REQUIRED),  # password expired
    # Entra says to try again.
    (90033, FailureClass.TRANSIENT),  # directory service unavailable
    (90006, FailureClass.TRANSIENT),  # ExternalServerRetryableError
    (50033, FailureClass.TRANSIENT),  # RetryableError
    (50087, FailureClass.TRANSIENT),  # SasRetryableError
    (90024, FailureClass.TRANSIENT),  # RequestBudgetExceededError
    (90090, FailureClass.TRANSIENT),  # GraphRetryableError
    (70012, FailureClass.TRANSIENT),  # MsaServerError
)

# Entra's invalid_grant/interaction_required suberrors (MSAL's classification).
_ENTRA_SUBERRORS: tuple[tuple[str, FailureClass], ...] = (
    ("basic_action", FailureClass.INTERACTION_REQUIRED),
    ("additional_action", FailureClass.INTERACTION_REQUIRED),
    ("message_only", FailureClass.INTERACTION_REQUIRED),
    ("user_password_expired", FailureClass.INTERACTION_REQUIRED),
    ("consent_required", FailureClass.INTERACTION_REQUIRED),
    ("device_authentication_failed", FailureClass.INTERACTION_REQUIRED),
    # MSAL: "no further silent calls should be made with this refresh token".
    ("bad_token", FailureClass.DEAD_GRANT),
    ("token_expired", FailureClass.DEAD_GRANT),
    # Signing in again cannot fix these: the app needs an Intune app protection
    # policy, or the token belongs to another client (FOCI family mismatch).
    ("protection_policy_required", FailureClass.MISCONFIGURATION),
    ("client_mismatch", FailureClass.MISCONFIGURATION),
)

_ENTRA_ROWS = (
    *(_Row(f"entra.error_code.{number}", cls, _on_entra_code(number)) for number, cls in _ENTRA_CODES),
    *(_Row(f"entra.suberror.{value}", cls, _on_suberror(value)) for value, cls in _ENTRA_SUBERRORS),
    _Row("entra.error.invalid_resource", FailureClass.MISCONFIGURATION, _on_error("invalid_resource")),
)

_AUTH0_ROWS = (
    _Row(
        "auth0.invalid_grant.unknown_refresh_token",
        FailureClass.DEAD_GRANT,
        _on_error_with_message("invalid_grant", "unknown or invalid refresh token"),
    ),
    _Row("auth0.mfa_required", FailureClass.INTERACTION_REQUIRED, _on_error("mfa_required")),
    # Auth0 reports its global rate limit as access_denied (sometimes with a 500).
    _Row(
        "auth0.access_denied.rate_limited",
        FailureClass.TRANSIENT,
        _on_error_with_message("access_denied", "limit has been reached"),
    ),
    # Otherwise a Rule/Action or consent denial, decided at sign-in: the owner
    # has to go through it interactively.
    _Row("auth0.access_denied", FailureClass.INTERACTION_REQUIRED, _on_error("access_denied")),
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
    _Row("oauth.error.insufficient_scope", FailureClass.INTERACTION_REQUIRED, _on_error("insufficient_scope")),
    # OIDC Core §3.1.2.6
    _Row("oauth.error.interaction_required", FailureClass.INTERACTION_REQUIRED, _on_error("interaction_required")),
    _Row("oauth.error.login_required", FailureClass.INTERACTION_REQUIRED, _on_error("login_required")),
    _Row("oauth.error.consent_required", FailureClass.INTERACTION_REQUIRED, _on_error("consent_required")),
    _Row(
        "oauth.error.account_selection_required",
        FailureClass.INTERACTION_REQUIRED,
        _on_error("account_selection_required"),
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

_PROVIDER_ROWS: dict[str, tuple[_Row, ...]] = {
    Provider.ENTRA: _ENTRA_ROWS,
    Provider.AUTH0: _AUTH0_ROWS,
    Provider.NANGO: _NANGO_ROWS,
    Provider.SCALEKIT: _SCALEKIT_ROWS,
    Provider.OIDC: (),
}

# What a body wrapped by Nango is classified with.
_UPSTREAM_ROWS = (*_ENTRA_ROWS, *_OAUTH_ROWS)

SIGNATURES: tuple[str, ...] = tuple(
    row.signature
    for rows in (_NETWORK_ROWS, _ENTRA_ROWS, _AUTH0_ROWS, _NANGO_ROWS, _SCALEKIT_ROWS, _OAUTH_ROWS, _STATUS_ROWS)
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
        row, code = network
        return _classification(provider, row.failure_class, code=code, signature=row.signature, description="")
    header_map = _headers_of(headers)
    signals = _read(status=status, body=body, headers=header_map)
    for rows in (_PROVIDER_ROWS[provider], _OAUTH_ROWS, _STATUS_ROWS):
        hit = _first_match(rows, signals)
        if hit is None:
            continue
        row, code = hit
        if row.unwraps_upstream:
            return _classify_upstream(provider, row, code, signals, header_map)
        return _classification(
            provider,
            row.failure_class,
            code=code,
            signature=row.signature,
            description=signals.message or signals.text,
            headers=header_map,
            retry_hint=row.retry_hint,
        )
    return _classification(
        provider,
        FailureClass.UNKNOWN,
        code="",
        signature="",
        description=signals.message or signals.text,
    )


def _classify_upstream(
    provider: Provider,
    row: _Row,
    code: str,
    signals: _Signals,
    headers: dict[str, str],
) -> Classification:
    for candidate in _upstream_bodies(signals.body):
        inner = _read(status=None, body=candidate, headers={})
        hit = _first_match(_UPSTREAM_ROWS, inner)
        if hit is not None:
            inner_row, inner_code = hit
            return _classification(
                provider,
                inner_row.failure_class,
                code=inner_code,
                signature=f"{row.signature}/{inner_row.signature}",
                description=inner.message or signals.message,
                headers=headers,
                retry_hint=inner_row.retry_hint,
            )
    return _classification(
        provider,
        FailureClass.UNKNOWN,
        code=code,
        signature=row.signature,
        description=signals.message,
    )


def _first_match(rows: tuple[_Row, ...], signals: _Signals) -> tuple[_Row, str] | None:
    for row in rows:
        code = row.match(signals)
        if code is not None:
            return row, code
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
    parsed, text = _parse_body(body)
    doc = _first_mapping(parsed)
    error = _token(doc.get("error")) if doc is not None else ""
    message = _message_of(doc) if doc is not None else ""
    if not error:
        error, challenge_message = _bearer_challenge(headers.get("www-authenticate", ""))
        message = message or challenge_message
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


def _bearer_challenge(header: str) -> tuple[str, str]:
    """RFC 6750 §3: a resource server's 401 carries the error in WWW-Authenticate."""
    error = _CHALLENGE_ERROR.search(header)
    if error is None:
        return "", ""
    description = _CHALLENGE_DESCRIPTION.search(header)
    return _token(error.group(1)), description.group(1) if description else ""


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
