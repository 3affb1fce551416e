"""The tables of named rows (see the package docstring for their order) and their matchers."""

from __future__ import annotations

from collections.abc import Callable

from .model import FailureClass, Provider, Reason, _Hit, _Matcher, _Row, _Signals

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

_D, _I, _R, _T, _M = (
    FailureClass.DEAD_GRANT,
    FailureClass.INTERACTION_REQUIRED,
    FailureClass.REFRESHABLE,
    FailureClass.TRANSIENT,
    FailureClass.MISCONFIGURATION,
)

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
    _Row(f"entra.error_code.{number}", cls, _on_entra_code(number), reason=reason)
    for number, cls, reason in _ENTRA_CODES
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
    refined = next(
        (
            hit
            for hit in (_first_match((row,), s) for row in _ENTRA_CODE_ROWS)
            if hit is not None and (family is None or hit.row.failure_class in family)
        ),
        None,
    )
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
_TOKEN_VAULT_RELINK_ERRORS = (
    "federated_connection_refresh_token_not_found",
    "failed_to_exchange_refresh_token",
    "missing_refresh_token",
)


def _on_exchange_4xx(s: _Signals) -> str | None:
    if s.status is not None and 400 <= s.status <= 499 and s.status not in (408, 429):
        return s.error or f"http_{s.status}"
    return None


_TOKEN_VAULT_ROWS = (
    *(
        _Row(f"auth0_token_vault.{code}", FailureClass.RELINK_REQUIRED, _on_error(code), reason=Reason.RELINK)
        for code in _TOKEN_VAULT_RELINK_ERRORS
    ),
    _Row(
        "auth0_token_vault.session_refresh_token_invalid",
        FailureClass.DEAD_GRANT,
        _on_error_with_message("invalid_grant", "unknown or invalid refresh token"),
        reason=Reason.SIGN_IN,
    ),
    _Row(
        "auth0_token_vault.client_rejected",
        FailureClass.MISCONFIGURATION,
        lambda s: s.error if s.error in ("invalid_client", "unauthorized_client", "unsupported_grant_type") else None,
    ),
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
    _Row(
        "oauth.error.insufficient_scope",
        FailureClass.INTERACTION_REQUIRED,
        _on_error("insufficient_scope"),
        reason=Reason.CONSENT,
    ),
    # A resource API's claims challenge (Microsoft Entra continuous access evaluation, "Claims challenges,
    # claims requests and client capabilities"): 401 with WWW-Authenticate error="insufficient_claims" and
    # claims="<base64 JSON>"; the owner signs in again with that JSON as the ``claims`` parameter.
    _Row(
        "oauth.error.insufficient_claims",
        FailureClass.INTERACTION_REQUIRED,
        _on_error("insufficient_claims"),
        reason=Reason.CLAIMS_CHALLENGE,
    ),
    # RFC 9470 (OAuth 2.0 Step Up Authentication Challenge) §3
    _Row(
        "oauth.error.insufficient_user_authentication",
        FailureClass.INTERACTION_REQUIRED,
        _on_error("insufficient_user_authentication"),
        reason=Reason.STEP_UP,
    ),
    # OIDC Core §3.1.2.6
    _Row(
        "oauth.error.interaction_required",
        FailureClass.INTERACTION_REQUIRED,
        _on_error("interaction_required"),
        reason=Reason.SIGN_IN,
    ),
    _Row(
        "oauth.error.login_required",
        FailureClass.INTERACTION_REQUIRED,
        _on_error("login_required"),
        reason=Reason.SIGN_IN,
    ),
    _Row(
        "oauth.error.consent_required",
        FailureClass.INTERACTION_REQUIRED,
        _on_error("consent_required"),
        reason=Reason.CONSENT,
    ),
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
    for rows in (
        _NETWORK_ROWS,
        _ENTRA_CODE_ROWS,
        _ENTRA_SUBERROR_ROWS,
        _ENTRA_ERROR_ROWS,
        _AUTH0_ROWS,
        _TOKEN_VAULT_ROWS,
        _NANGO_ROWS,
        _SCALEKIT_ROWS,
        _OAUTH_ROWS,
        _STATUS_ROWS,
    )
    for row in rows
)
"""Every row name, in table order (tests check each has a case)."""


def _first_match(rows: tuple[_Row, ...], signals: _Signals) -> _Hit | None:
    for row in rows:
        code = row.match(signals)
        if code is not None:
            return _Hit(row, code)
    return None
