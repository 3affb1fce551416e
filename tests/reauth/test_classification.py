"""The failure classifier: one case per table row, then order, retry, redaction and garbage."""

import json
import os
import subprocess
import sys
from email.utils import formatdate
from pathlib import Path

import pytest

import classifier.reading
from classifier import SIGNATURES, Classification, FailureClass, Provider, classify

NOW = 1_750_000_000.0


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setattr(classifier.reading, "_clock", lambda: NOW)


def entra(error, code=None, text="", *, suberror=None, codes=True):
    """An Entra token endpoint error body as login.microsoftonline.com sends it."""
    description = f"AADSTS{code}: {text}" if code else text
    body = {
        "error": error,
        "error_description": description
        + "\r\nTrace ID: 0000aaaa-11bb-cccc-dd33-eeeeee333333"
        + "\r\nCorrelation ID: aaaa0000-bb11-2222-33cc-444444dddddd"
        + "\r\nTimestamp: 2025-06-15 14:40:00Z",
        "timestamp": "2025-06-15 14:40:00Z",
        "trace_id": "0000aaaa-11bb-cccc-dd33-eeeeee333333",
        "correlation_id": "aaaa0000-bb11-2222-33cc-444444dddddd",
    }
    if code and codes:
        body["error_codes"] = [code]
        body["error_uri"] = f"https://login.microsoftonline.com/error?code={code}"
    if suberror:
        body["suberror"] = suberror
    return body


def nango(code, message, payload=None):
    error = {"code": code, "message": message}
    if payload is not None:
        error["payload"] = payload
    return {"error": error}


# Microsoft Graph's CAE challenge ("Claims challenges, claims requests and client capabilities").
CAE_CLAIMS = '{"access_token":{"nbf":{"essential":true,"value":"1604106651"}}}'
CAE_CHALLENGE = (
    'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
    'client_id="00000003-0000-0000-c000-000000000000", error="insufficient_claims", '
    'claims="eyJhY2Nlc3NfdG9rZW4iOnsibmJmIjp7ImVzc2VudGlhbCI6dHJ1ZSwgInZhbHVlIjoiMTYwNDEwNjY1MSJ9fX0="'
)

RELINK = FailureClass.RELINK_REQUIRED
DEAD = FailureClass.DEAD_GRANT
INTERACTION = FailureClass.INTERACTION_REQUIRED
REFRESHABLE = FailureClass.REFRESHABLE
TRANSIENT = FailureClass.TRANSIENT
MISCONFIG = FailureClass.MISCONFIGURATION
UNKNOWN = FailureClass.UNKNOWN


def case(signature, expected, code, *, reason=None, **kwargs):
    return pytest.param(signature, expected, code, reason, kwargs, id=signature)


# (AADSTS code, the ``error`` Entra sends with it, expected class, expected reason, Microsoft's name for it)
ENTRA_CODE_CASES = [
    (7000215, "invalid_client", MISCONFIG, "", "invalid client secret provided"),
    (7000222, "invalid_client", MISCONFIG, "", "InvalidClientSecretExpiredKeysProvided"),
    (7000218, "invalid_client", MISCONFIG, "", "body must contain client_assertion or client_secret"),
    (70002, "invalid_client", MISCONFIG, "", "InvalidClient: client_secret does not match"),
    (700025, "invalid_client", MISCONFIG, "", "InvalidClientPublicClientWithCredential"),
    (700027, "invalid_client", MISCONFIG, "", "client assertion failed signature validation"),
    (50012, "invalid_client", MISCONFIG, "", "AuthenticationFailed: signing certificate / client assertion"),
    (50146, "invalid_client", MISCONFIG, "", "MissingCustomSigningKey"),
    (
        700016,
        "unauthorized_client",
        MISCONFIG,
        "",
        "UnauthorizedClient_DoesNotMatchRequest: app not found in the tenant",
    ),
    (700011, "unauthorized_client", MISCONFIG, "", "UnauthorizedClientAppNotFoundInOrgIdTenant"),
    (70001, "unauthorized_client", MISCONFIG, "", "UnauthorizedClient: the application is disabled"),
    (7000112, "unauthorized_client", MISCONFIG, "", "UnauthorizedClientApplicationDisabled"),
    (
        1000031,
        "unauthorized_client",
        MISCONFIG,
        "",
        "application can't be accessed at this time, contact the administrator",
    ),
    (7000114, "unauthorized_client", MISCONFIG, "", "application not allowed to make on-behalf-of calls"),
    (50011, "invalid_request", MISCONFIG, "", "InvalidReplyTo: reply address mismatch"),
    (50194, "invalid_request", MISCONFIG, "", "app not multitenant: /common not supported"),
    (9001023, "invalid_request", MISCONFIG, "", "grant type not supported over /common or /consumers"),
    (70003, "unsupported_grant_type", MISCONFIG, "", "UnsupportedGrantType"),
    (90014, "invalid_request", MISCONFIG, "", "MissingRequiredField"),
    (900144, "invalid_request", MISCONFIG, "", "request body must contain a parameter"),
    (90023, "invalid_request", MISCONFIG, "", "InvalidRequest"),
    (90002, "invalid_request", MISCONFIG, "", "InvalidTenantName: tenant not found"),
    (700005, "invalid_grant", MISCONFIG, "", "InvalidGrantRedeemAgainstWrongTenant"),
    (70011, "invalid_scope", MISCONFIG, "", "InvalidScope"),
    (28002, "invalid_scope", MISCONFIG, "", "invalid scope value when requesting an access token"),
    (700022, "invalid_scope", MISCONFIG, "", "InvalidMultipleResourcesScope"),
    (700023, "invalid_scope", MISCONFIG, "", "InvalidResourcelessScope"),
    (50001, "invalid_resource", MISCONFIG, "", "InvalidResource: disabled or does not exist"),
    (500011, "invalid_resource", MISCONFIG, "", "InvalidResourceServicePrincipalNotFound"),
    (65005, "invalid_request", MISCONFIG, "", "MisconfiguredApplication: required resource access list"),
    (650052, "invalid_request", MISCONFIG, "", "the organization has not subscribed to the service"),
    (650054, "invalid_request", MISCONFIG, "", "the requested resource was removed or is no longer available"),
    (650057, "invalid_resource", MISCONFIG, "", "invalid resource, not in the app registration's permissions"),
    (65002, "invalid_request", MISCONFIG, "", "first-party preauthorization required"),
    (90094, "interaction_required", MISCONFIG, "admin_consent", "AdminConsentRequired"),
    (
        90095,
        "interaction_required",
        MISCONFIG,
        "admin_consent",
        "AdminConsentRequiredRequestAccess: ask the admin for consent",
    ),
    (
        90008,
        "interaction_required",
        MISCONFIG,
        "admin_consent",
        "TokenForItselfRequiresGraphPermission: nobody consented to sign-in",
    ),
    (
        650056,
        "invalid_request",
        MISCONFIG,
        "admin_consent",
        "misconfigured application or no admin consent in the tenant",
    ),
    (
        90099,
        "interaction_required",
        MISCONFIG,
        "admin_consent",
        "app not authorized in the tenant for delegated admins",
    ),
    (50057, "invalid_grant", MISCONFIG, "account_disabled", "UserDisabled"),
    (50034, "invalid_grant", MISCONFIG, "", "UserAccountNotFound: the account is not in the directory"),
    (50020, "invalid_grant", MISCONFIG, "", "UserUnauthorized: the account does not exist in the tenant"),
    (50105, "invalid_grant", MISCONFIG, "", "EntitlementGrantsNotFound: user not assigned to the application"),
    (500021, "access_denied", MISCONFIG, "", "tenant restrictions deny access to the tenant"),
    (500212, "access_denied", MISCONFIG, "", "NotAllowedByOutboundPolicyTenant"),
    (500213, "access_denied", MISCONFIG, "", "NotAllowedByInboundPolicyTenant"),
    (530032, "access_denied", MISCONFIG, "", "BlockedByConditionalAccessOnSecurityPolicy: tenant security policy"),
    (530035, "access_denied", MISCONFIG, "", "BlockedBySecurityDefaults"),
    (50196, "invalid_request", MISCONFIG, "", "LoopDetected: the client requests the same token too often"),
    (700082, "invalid_grant", DEAD, "", "ExpiredOrRevokedGrantInactiveToken: expired through inactivity"),
    (70008, "invalid_grant", DEAD, "", "ExpiredOrRevokedGrant"),
    (700084, "invalid_grant", DEAD, "", "SPA refresh token reached its fixed lifetime"),
    (50173, "invalid_grant", DEAD, "", "FreshTokenNeeded: grant revoked by the user or an admin"),
    (70043, "invalid_grant", DEAD, "", "BadTokenDueToSignInFrequency (Conditional Access sign-in frequency)"),
    (50089, "invalid_grant", DEAD, "", "flow token expired"),
    (50132, "invalid_grant", DEAD, "password_change", "SsoArtifactInvalidOrExpired: password expired or changed"),
    (50133, "invalid_grant", DEAD, "password_change", "SsoArtifactRevoked: password expired or changed"),
    (70000, "invalid_grant", DEAD, "", "InvalidGrant: the refresh token isn't valid"),
    (50085, "invalid_grant", DEAD, "", "refresh token needs social IDP login"),
    (50139, "invalid_grant", DEAD, "", "SessionMissingMsaOAuth2RefreshToken"),
    (54005, "invalid_grant", DEAD, "", "authorization code already redeemed"),
    (50076, "invalid_grant", INTERACTION, "mfa", "UserStrongAuthClientAuthNRequired"),
    (50074, "invalid_grant", INTERACTION, "mfa", "UserStrongAuthClientAuthNRequiredInterrupt"),
    (50078, "invalid_grant", INTERACTION, "mfa", "UserStrongAuthExpired: presented MFA expired"),
    (50158, "invalid_grant", INTERACTION, "mfa", "ExternalSecurityChallenge not satisfied"),
    (50079, "interaction_required", INTERACTION, "mfa_registration", "UserStrongAuthEnrollmentRequired"),
    (50072, "interaction_required", INTERACTION, "mfa_registration", "UserStrongAuthEnrollmentRequiredInterrupt"),
    (53004, "invalid_grant", INTERACTION, "mfa_registration", "ProofUpBlockedDueToRisk: complete MFA registration"),
    (65001, "consent_required", INTERACTION, "consent", "DelegationDoesNotExist: consent not granted"),
    (65004, "access_denied", INTERACTION, "consent", "UserDeclinedConsent"),
    (50015, "consent_required", INTERACTION, "consent", "ViralUserLegalAgeConsentRequiredState"),
    (52004, "invalid_grant", INTERACTION, "consent", "DelegationDoesNotExistForLinkedIn"),
    (53000, "interaction_required", INTERACTION, "compliant_device", "DeviceNotCompliant"),
    (53001, "interaction_required", INTERACTION, "compliant_device", "DeviceNotDomainJoined"),
    (50097, "invalid_grant", INTERACTION, "compliant_device", "DeviceAuthenticationRequired"),
    (50129, "invalid_grant", INTERACTION, "compliant_device", "DeviceIsNotWorkplaceJoined"),
    (50155, "invalid_grant", INTERACTION, "compliant_device", "DeviceAuthenticationFailed"),
    (53002, "interaction_required", INTERACTION, "approved_app", "ApplicationUsedIsNotAnApprovedApp"),
    (50127, "invalid_grant", INTERACTION, "approved_app", "BrokerAppNotInstalled"),
    (53003, "interaction_required", INTERACTION, "conditional_access", "BlockedByConditionalAccess"),
    (50131, "invalid_grant", INTERACTION, "conditional_access", "ConditionalAccessFailed"),
    (
        50005,
        "invalid_grant",
        INTERACTION,
        "conditional_access",
        "DevicePolicyError: platform not supported by Conditional Access",
    ),
    (50055, "invalid_grant", INTERACTION, "password_change", "InvalidPasswordExpiredPassword"),
    (50144, "invalid_grant", INTERACTION, "password_change", "InvalidPasswordExpiredOnPremPassword"),
    (50135, "invalid_grant", INTERACTION, "password_change", "PasswordChangeCompromisedPassword"),
    (50125, "invalid_grant", INTERACTION, "password_change", "PasswordResetRegistrationRequiredInterrupt"),
    (
        50053,
        "interaction_required",
        INTERACTION,
        "account_locked",
        "IdsLocked: too many failed sign-ins, or a malicious IP",
    ),
    (53011, "invalid_grant", INTERACTION, "risk", "user blocked due to risk on home tenant"),
    (700020, "invalid_grant", INTERACTION, "sign_in", "InteractionRequired: the access grant requires interaction"),
    (50058, "login_required", INTERACTION, "sign_in", "UserInformationNotProvided: no single-sign-on session"),
    (16000, "interaction_required", INTERACTION, "sign_in", "InteractionRequired / SelectUserAccount"),
    (16001, "interaction_required", INTERACTION, "sign_in", "UserAccountSelectionInvalid"),
    (50056, "invalid_grant", INTERACTION, "sign_in", "invalid or null password: enter the password again"),
    (51006, "interaction_required", INTERACTION, "sign_in", "ForceReauthDueToInsufficientAuth"),
    (50199, "interaction_required", INTERACTION, "sign_in", "CmsiInterrupt: user confirmation required"),
    (50140, "invalid_grant", INTERACTION, "sign_in", "KmsiInterrupt"),
    (50168, "invalid_grant", INTERACTION, "sign_in", "ChromeBrowserSsoInterruptRequired"),
    (81010, "invalid_grant", INTERACTION, "sign_in", "DesktopSsoAuthTokenInvalid: Kerberos ticket expired or invalid"),
    (500133, "invalid_grant", REFRESHABLE, "", "assertion not within its valid time range: request a new token"),
    (90033, "temporarily_unavailable", TRANSIENT, "", "MsodsServiceUnavailable"),
    (90006, "invalid_request", TRANSIENT, "", "ExternalServerRetryableError"),
    (50033, "invalid_grant", TRANSIENT, "", "RetryableError"),
    (50087, "invalid_grant", TRANSIENT, "", "SasRetryableError"),
    (50088, "invalid_grant", TRANSIENT, "", "limit on telecom MFA calls reached: try again in a few minutes"),
    (90024, "invalid_request", TRANSIENT, "", "RequestBudgetExceededError"),
    (90090, "temporarily_unavailable", TRANSIENT, "", "GraphRetryableError"),
    (90091, "temporarily_unavailable", TRANSIENT, "", "GraphServiceUnreachable"),
    (90055, "temporarily_unavailable", TRANSIENT, "", "TenantThrottlingError"),
    (90012, "temporarily_unavailable", TRANSIENT, "", "RequestTimeout"),
    (70012, "server_error", TRANSIENT, "", "MsaServerError: try again"),
    (50166, "temporarily_unavailable", TRANSIENT, "", "ExternalClaimsProviderThrottled"),
    (80001, "temporarily_unavailable", TRANSIENT, "", "OnPremiseStoreIsNotAvailable"),
    (80002, "temporarily_unavailable", TRANSIENT, "", "OnPremisePasswordValidatorRequestTimedout"),
    (80005, "temporarily_unavailable", TRANSIENT, "", "OnPremisePasswordValidatorUnpredictableWebException: retry"),
    (501621, "temporarily_unavailable", TRANSIENT, "", "claims transformation regex timeout: a retry may succeed"),
]


ROW_CASES = [
    # --- network
    case("network.timeout", TRANSIENT, "timeout", provider="entra", error_kind="timeout"),
    case("network.connection_error", TRANSIENT, "connection_error", provider="nango", error_kind="connection_error"),
    # --- Entra: one case per AADSTS row (ENTRA_CODE_CASES, below), then suberrors and error values
    *(
        case(
            f"entra.error_code.{number}",
            expected,
            f"AADSTS{number}",
            reason=reason,
            provider="entra",
            status=400,
            body=entra(error, number, text),
        )
        for number, error, expected, reason, text in ENTRA_CODE_CASES
    ),
    # suberrors, with codes Revive has no row for, so the suberror decides
    case(
        "entra.suberror.basic_action",
        INTERACTION,
        "basic_action",
        reason="sign_in",
        provider="entra",
        status=400,
        body=entra("invalid_grant", 9900001, "User confirmation is required.", suberror="basic_action"),
    ),
    case(
        "entra.suberror.additional_action",
        INTERACTION,
        "additional_action",
        reason="additional_action",
        provider="entra",
        status=400,
        body=entra(
            "interaction_required", 9900002, "Remediation needed outside sign-in.", suberror="additional_action"
        ),
    ),
    case(
        "entra.suberror.message_only",
        INTERACTION,
        "message_only",
        reason="blocked",
        provider="entra",
        status=400,
        body=entra("invalid_grant", 9900003, "Sign-in blocked.", suberror="message_only"),
    ),
    case(
        "entra.suberror.user_password_expired",
        INTERACTION,
        "user_password_expired",
        reason="password_change",
        provider="entra",
        status=400,
        body=entra("invalid_grant", 9900004, "The password has expired.", suberror="user_password_expired"),
    ),
    case(
        "entra.suberror.consent_required",
        INTERACTION,
        "consent_required",
        reason="consent",
        provider="entra",
        status=400,
        body=entra("invalid_grant", 9900005, "Consent is required.", suberror="consent_required"),
    ),
    case(
        "entra.suberror.device_authentication_failed",
        INTERACTION,
        "device_authentication_failed",
        reason="compliant_device",
        provider="entra",
        status=400,
        body=entra("invalid_grant", None, "Device authentication failed.", suberror="device_authentication_failed"),
    ),
    case(
        "entra.suberror.bad_token",
        DEAD,
        "bad_token",
        provider="entra",
        status=400,
        body=entra("invalid_grant", 9900006, "The refresh token isn't valid.", suberror="bad_token"),
    ),
    case(
        "entra.suberror.token_expired",
        DEAD,
        "token_expired",
        provider="entra",
        status=400,
        body=entra("invalid_grant", None, "The token has expired.", suberror="token_expired"),
    ),
    case(
        "entra.suberror.protection_policy_required",
        MISCONFIG,
        "protection_policy_required",
        provider="entra",
        status=400,
        body=entra(
            "unauthorized_client",
            9900007,
            "Application needs to enforce Intune protection policies.",
            suberror="protection_policy_required",
        ),
    ),
    case(
        "entra.suberror.client_mismatch",
        MISCONFIG,
        "client_mismatch",
        provider="entra",
        status=400,
        body=entra(
            "invalid_grant", None, "The refresh token was issued to a different client.", suberror="client_mismatch"
        ),
    ),
    case(
        "entra.error.invalid_resource",
        MISCONFIG,
        "invalid_resource",
        provider="entra",
        status=400,
        body=entra("invalid_resource", 9900008, "The resource principal was not found."),
    ),
    # --- Auth0
    case(
        "auth0.invalid_grant.unknown_refresh_token",
        DEAD,
        "invalid_grant",
        provider="auth0",
        status=403,
        body={"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."},
    ),
    case(
        "auth0.mfa_required",
        INTERACTION,
        "mfa_required",
        provider="auth0",
        status=403,
        body={
            "error": "mfa_required",
            "error_description": "Multifactor authentication required",
            "mfa_token": "Fe26.2*abc",
        },
    ),
    case(
        "auth0.access_denied.rate_limited",
        TRANSIENT,
        "access_denied",
        provider="auth0",
        status=500,
        headers={"X-RateLimit-Limit": "30", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 12)},
        body={"error": "access_denied", "error_description": "Global limit has been reached"},
    ),
    case(
        "auth0.access_denied.client_authentication",
        MISCONFIG,
        "access_denied",
        provider="auth0",
        status=401,
        body={"error": "access_denied", "error_description": "Unauthorized"},
    ),
    case(
        "auth0.access_denied",
        INTERACTION,
        "access_denied",
        provider="auth0",
        status=403,
        body={"error": "access_denied", "error_description": "Please verify your email before continuing."},
    ),
    # --- Auth0 Token Vault (the federated-connection token exchange)
    case(
        "auth0_token_vault.federated_connection_refresh_token_not_found",
        RELINK,
        "federated_connection_refresh_token_not_found",
        reason="relink",
        provider="auth0_token_vault",
        status=401,
        body={
            "error": "federated_connection_refresh_token_not_found",
            "error_description": "Federated connection Refresh Token not found.",
        },
    ),
    case(
        "auth0_token_vault.failed_to_exchange_refresh_token",
        RELINK,
        "failed_to_exchange_refresh_token",
        reason="relink",
        provider="auth0_token_vault",
        status=400,
        body={
            "error": "failed_to_exchange_refresh_token",
            "error_description": "Failed to exchange the refresh token.",
        },
    ),
    case(
        "auth0_token_vault.missing_refresh_token",
        RELINK,
        "missing_refresh_token",
        reason="relink",
        provider="auth0_token_vault",
        status=400,
        body={"error": "missing_refresh_token", "error_description": "A refresh token is required."},
    ),
    case(
        "auth0_token_vault.session_refresh_token_invalid",
        DEAD,
        "invalid_grant",
        reason="sign_in",
        provider="auth0_token_vault",
        status=403,
        body={"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."},
    ),
    case(
        "auth0_token_vault.client_rejected",
        MISCONFIG,
        "invalid_client",
        provider="auth0_token_vault",
        status=401,
        body={"error": "invalid_client", "error_description": "Client authentication failed."},
    ),
    case(
        "auth0_token_vault.exchange_4xx",
        RELINK,
        "invalid_request",
        reason="relink",
        provider="auth0_token_vault",
        status=400,
        body={"error": "invalid_request", "error_description": "The connection is not enabled for this client."},
    ),
    # --- Nango
    case(
        "nango.connection_refresh_exhausted",
        DEAD,
        "connection_refresh_exhausted",
        provider="nango",
        status=424,
        body=nango("connection_refresh_exhausted", "The refresh limit has been reached for this connection."),
    ),
    case(
        "nango.invalid_credentials",
        DEAD,
        "invalid_credentials",
        provider="nango",
        status=424,
        body={
            "error": {
                "message": "An error occurred during an HTTP call",
                "payload": {
                    "error": {
                        "code": "invalid_credentials",
                        "payload": {},
                        "message": "The refresh limit has been reached for this connection.",
                    }
                },
            }
        },
    ),
    case(
        "nango.connection_refresh_backoff",
        TRANSIENT,
        "connection_refresh_backoff",
        provider="nango",
        status=424,
        body=nango("connection_refresh_backoff", "A recent refresh attempt failed. Backing off before retrying."),
    ),
    case(
        "nango.refresh_token_lock_timeout",
        TRANSIENT,
        "refresh_token_lock_timeout",
        provider="nango",
        status=503,
        body=nango("refresh_token_lock_timeout", "Timed out waiting for the refresh lock."),
    ),
    case(
        "nango.refresh_token_external_error/oauth.error.invalid_grant",
        DEAD,
        "invalid_grant",
        provider="nango",
        status=400,
        body=nango(
            "refresh_token_external_error",
            "The external API returned an error when trying to refresh the access token. Please try again later.",
            payload={
                "dataMessage": {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
            },
        ),
    ),
    case(
        "nango.refresh_token_external_error",
        UNKNOWN,
        "refresh_token_external_error",
        provider="nango",
        status=400,
        body=nango(
            "refresh_token_external_error",
            "The external API returned an error when trying to refresh the access token. Please try again later.",
            payload={"dataMessage": {"error": "weird_vendor_error", "error_description": "Something happened."}},
        ),
    ),
    case(
        "nango.api_credentials_rejected",
        MISCONFIG,
        "invalid_secret_key",
        provider="nango",
        status=401,
        body=nango("invalid_secret_key", "Authentication failed. The provided secret key is invalid."),
    ),
    # --- Scalekit
    case(
        "scalekit.connected_account.inactive",
        DEAD,
        "EXPIRED",
        provider="scalekit",
        status=200,
        body={"connected_account": {"id": "ca_1", "identifier": "user_123", "connector": "gmail", "status": "EXPIRED"}},
    ),
    case(
        "scalekit.connected_account.active_401",
        REFRESHABLE,
        "ACTIVE",
        provider="scalekit",
        status=401,
        body={"connected_account": {"status": "ACTIVE"}},
    ),
    # --- RFC 6749 / 6750 / OIDC (generic provider)
    case(
        "oauth.error.invalid_grant",
        DEAD,
        "invalid_grant",
        provider="oidc",
        status=400,
        body={"error": "invalid_grant", "error_description": "The refresh token is invalid, expired or revoked."},
    ),
    case(
        "oauth.error.invalid_client",
        MISCONFIG,
        "invalid_client",
        provider="auth0",
        status=401,
        body={"error": "invalid_client", "error_description": "Client authentication failed."},
    ),
    case(
        "oauth.error.unauthorized_client",
        MISCONFIG,
        "unauthorized_client",
        provider="auth0",
        status=403,
        body={
            "error": "unauthorized_client",
            "error_description": "Grant type 'refresh_token' not allowed for the client.",
        },
    ),
    case(
        "oauth.error.unsupported_grant_type",
        MISCONFIG,
        "unsupported_grant_type",
        provider="oidc",
        status=400,
        body={"error": "unsupported_grant_type"},
    ),
    case(
        "oauth.error.invalid_scope",
        MISCONFIG,
        "invalid_scope",
        provider="oidc",
        status=400,
        body={"error": "invalid_scope", "error_description": "Unknown scope"},
    ),
    case(
        "oauth.error.invalid_request",
        MISCONFIG,
        "invalid_request",
        provider="oidc",
        status=400,
        body={"error": "invalid_request", "error_description": "Missing parameter: refresh_token"},
    ),
    case(
        "oauth.error.invalid_token",
        REFRESHABLE,
        "invalid_token",
        provider="oidc",
        status=401,
        headers={
            "WWW-Authenticate": 'Bearer realm="api", error="invalid_token", error_description="The access token expired"'
        },
    ),
    case(
        "oauth.error.insufficient_scope",
        INTERACTION,
        "insufficient_scope",
        provider="oidc",
        status=403,
        body={"error": "insufficient_scope", "error_description": "Requires scope mail.send"},
    ),
    case(
        "oauth.error.insufficient_claims",
        INTERACTION,
        "insufficient_claims",
        reason="claims_challenge",
        provider="entra",
        status=401,
        headers={"WWW-Authenticate": CAE_CHALLENGE},
    ),
    case(
        "oauth.error.insufficient_user_authentication",
        INTERACTION,
        "insufficient_user_authentication",
        reason="step_up",
        provider="oidc",
        status=401,
        headers={
            "WWW-Authenticate": 'Bearer error="insufficient_user_authentication", '
            'error_description="A different authentication level is required", acr_values="myACR"'
        },
    ),
    case(
        "oauth.error.interaction_required",
        INTERACTION,
        "interaction_required",
        provider="entra",
        status=400,
        body=entra("interaction_required", None, "The request requires user interaction."),
    ),
    case(
        "oauth.error.login_required",
        INTERACTION,
        "login_required",
        provider="oidc",
        status=400,
        body={"error": "login_required"},
    ),
    case(
        "oauth.error.consent_required",
        INTERACTION,
        "consent_required",
        provider="auth0",
        status=400,
        body={"error": "consent_required", "error_description": "Consent required"},
    ),
    case(
        "oauth.error.account_selection_required",
        INTERACTION,
        "account_selection_required",
        provider="oidc",
        status=400,
        body={"error": "account_selection_required"},
    ),
    case(
        "oauth.error.temporarily_unavailable",
        TRANSIENT,
        "temporarily_unavailable",
        provider="entra",
        status=400,
        body=entra("temporarily_unavailable", None, "The server is temporarily too busy."),
    ),
    case(
        "oauth.error.server_error",
        TRANSIENT,
        "server_error",
        provider="oidc",
        status=400,
        body={"error": "server_error"},
    ),
    case("oauth.error.slow_down", TRANSIENT, "slow_down", provider="oidc", status=400, body={"error": "slow_down"}),
    # --- HTTP status fallbacks
    case("http.401", REFRESHABLE, "http_401", provider="oidc", status=401, body={"message": "Unauthorized"}),
    case("http.403", UNKNOWN, "http_403", provider="auth0", status=403, body={"message": "Forbidden"}),
    case("http.408", TRANSIENT, "http_408", provider="oidc", status=408, body=""),
    case(
        "http.429",
        TRANSIENT,
        "http_429",
        provider="auth0",
        status=429,
        headers={"Retry-After": "7"},
        body={"error": "too_many_requests", "error_description": "Too Many Requests"},
    ),
    case("http.5xx", TRANSIENT, "http_502", provider="entra", status=502, body="<html><h1>502 Bad Gateway</h1></html>"),
]


@pytest.mark.parametrize(("signature", "expected", "code", "reason", "kwargs"), ROW_CASES)
def test_row(signature, expected, code, reason, kwargs):
    result = classify(**kwargs)

    assert isinstance(result, Classification)
    assert (result.failure_class, result.code, result.signature) == (expected, code, signature)
    if reason is not None:
        assert result.reason == reason


def test_every_row_has_a_case():
    covered = {param.values[0].split("/")[0] for param in ROW_CASES}

    assert set(SIGNATURES) - covered == set()
    assert covered - set(SIGNATURES) == set()
    assert len(SIGNATURES) == len(set(SIGNATURES))


# --- decision order -----------------------------------------------------------


def test_entra_code_refines_the_error_within_its_family():
    body = entra("invalid_grant", 50076, "Due to a configuration change you must use MFA.")

    result = classify(provider="entra", status=400, body=body)

    assert (result.failure_class, result.signature, result.reason) == (INTERACTION, "entra.error_code.50076", "mfa")


def test_entra_suberror_decides_and_the_code_adds_the_reason():
    body = entra("invalid_grant", 50076, "Due to a configuration change you must use MFA.", suberror="bad_token")

    result = classify(provider="entra", status=400, body=body)

    assert (result.failure_class, result.signature, result.reason) == (DEAD, "entra.suberror.bad_token", "mfa")


def test_entra_code_escalates_a_suberror_to_the_operator():
    body = entra("interaction_required", 90094, "Administrator consent is required.", suberror="consent_required")

    result = classify(provider="entra", status=400, body=body)

    assert (result.failure_class, result.signature, result.reason) == (
        MISCONFIG,
        "entra.error_code.90094",
        "admin_consent",
    )


def test_entra_code_agreeing_with_the_suberror_names_the_row():
    body = entra(
        "invalid_grant", 53003, "Access has been blocked by Conditional Access policies.", suberror="message_only"
    )

    result = classify(provider="entra", status=400, body=body)

    assert (result.failure_class, result.signature, result.reason) == (
        INTERACTION,
        "entra.error_code.53003",
        "conditional_access",
    )


@pytest.mark.parametrize(
    ("error", "code", "expected", "signature"),
    [
        ("temporarily_unavailable", 50076, TRANSIENT, "oauth.error.temporarily_unavailable"),
        ("invalid_client", 700082, MISCONFIG, "oauth.error.invalid_client"),
        ("server_error", 90094, TRANSIENT, "oauth.error.server_error"),
        ("invalid_scope", 90006, MISCONFIG, "oauth.error.invalid_scope"),
    ],
)
def test_entra_code_outside_the_errors_family_does_not_decide(error, code, expected, signature):
    result = classify(provider="entra", status=400, body=entra(error, code, "Something."))

    assert (result.failure_class, result.signature) == (expected, signature)


def test_entra_suberror_outside_the_errors_family_is_ignored():
    result = classify(
        provider="entra", status=503, body=entra("temporarily_unavailable", None, "Busy.", suberror="bad_token")
    )

    assert (result.failure_class, result.signature) == (TRANSIENT, "oauth.error.temporarily_unavailable")


def test_entra_code_without_a_known_error_decides_alone():
    body = {"error": "something_new", "error_codes": [50055]}

    result = classify(provider="entra", status=400, body=body)

    assert (result.failure_class, result.reason) == (INTERACTION, "password_change")


def test_entra_table_has_at_least_80_codes_and_each_a_case():
    codes = {s for s in SIGNATURES if s.startswith("entra.error_code.")}

    assert len(codes) >= 80
    assert len(ENTRA_CODE_CASES) == len({number for number, *_ in ENTRA_CODE_CASES}) == len(codes)


# --- claims challenges (Entra continuous access evaluation) ------------------------


def test_cae_challenge_keeps_the_decoded_claims():
    result = classify(provider="entra", status=401, headers={"WWW-Authenticate": CAE_CHALLENGE})

    assert (result.failure_class, result.reason) == (INTERACTION, "claims_challenge")
    assert json.loads(result.claims) == json.loads(CAE_CLAIMS)


def test_cae_challenge_with_url_safe_unpadded_base64():
    import base64

    encoded = base64.urlsafe_b64encode(CAE_CLAIMS.encode()).decode().rstrip("=")
    headers = {"WWW-Authenticate": f'Bearer error="insufficient_claims", claims="{encoded}"'}

    assert json.loads(classify(provider="entra", status=401, headers=headers).claims) == json.loads(CAE_CLAIMS)


@pytest.mark.parametrize("claims", ["%%%", "bm90IGpzb24=", "WzEsMl0=", "e30=", "A" * 5000])
def test_cae_challenge_with_bad_claims_is_still_interaction_without_claims(claims):
    headers = {"WWW-Authenticate": f'Bearer error="insufficient_claims", claims="{claims}"'}

    result = classify(provider="entra", status=401, headers=headers)

    assert (result.failure_class, result.claims) == (INTERACTION, "")


def test_claims_from_an_entra_token_endpoint_body():
    body = {**entra("interaction_required", 50076, "MFA required."), "claims": CAE_CLAIMS}

    result = classify(provider="entra", status=400, body=body)

    assert (result.reason, json.loads(result.claims)) == ("mfa", json.loads(CAE_CLAIMS))


def test_claims_are_kept_only_for_interaction_required():
    body = {"error": "invalid_grant", "claims": CAE_CLAIMS}

    assert classify(provider="oidc", status=400, body=body).claims == ""


def test_entra_code_is_parsed_from_the_description_without_error_codes():
    body = entra("invalid_grant", 700082, "The refresh token has expired due to inactivity.", codes=False)

    result = classify(provider="entra", status=400, body=body)

    assert (result.failure_class, result.code) == (DEAD, "AADSTS700082")


def test_entra_error_codes_as_strings_are_read():
    body = {"error": "invalid_grant", "error_codes": ["50076"]}

    assert classify(provider="entra", status=400, body=body).code == "AADSTS50076"


def test_unknown_entra_code_falls_back_to_the_oauth_error():
    result = classify(provider="entra", status=400, body=entra("invalid_grant", 9999999, "Something new."))

    assert (result.failure_class, result.signature) == (DEAD, "oauth.error.invalid_grant")


def test_body_signature_beats_status():
    result = classify(provider="oidc", status=401, body={"error": "invalid_grant"})

    assert result.failure_class == DEAD


def test_network_failure_ignores_body_and_status():
    result = classify(provider="auth0", status=403, body={"error": "invalid_grant"}, error_kind="timeout")

    assert (result.failure_class, result.signature) == (TRANSIENT, "network.timeout")


def test_entra_codes_do_not_apply_to_other_providers():
    result = classify(provider="auth0", status=400, body=entra("invalid_grant", 50076, "MFA required."))

    assert result.signature == "oauth.error.invalid_grant"


@pytest.mark.parametrize("provider", ["okta", "", "ENTRA ", None, 42])
def test_unknown_provider_is_generic_oidc(provider):
    result = classify(provider=provider, status=400, body={"error": "invalid_grant"})

    expected_provider = "entra" if provider == "ENTRA " else "oidc"
    assert (result.provider, result.failure_class) == (expected_provider, DEAD)


def test_microsoft_alias_uses_entra_rows():
    result = classify(provider="microsoft", status=400, body=entra("invalid_grant", 50076, "MFA required."))

    assert (result.provider, result.signature) == (Provider.ENTRA, "entra.error_code.50076")


def test_bare_status_200_with_unknown_body_is_unknown():
    result = classify(provider="oidc", status=200, body={"ok": False})

    assert (result.failure_class, result.code, result.signature) == (UNKNOWN, "", "")


def test_form_encoded_token_error_is_read():
    body = "error=invalid_grant&error_description=The+code+passed+is+incorrect+or+expired."

    assert classify(provider="oidc", status=200, body=body).failure_class == DEAD


def test_json_bytes_body_is_read():
    body = json.dumps({"error": "invalid_grant"}).encode()

    assert classify(provider="oidc", status=400, body=body).failure_class == DEAD


def test_scalekit_status_at_top_level_and_lower_case():
    result = classify(provider="scalekit", body={"status": "revoked"})

    assert (result.failure_class, result.code) == (DEAD, "REVOKED")


@pytest.mark.parametrize("status", ["PENDING_AUTH", "PENDING_VERIFICATION", "DISCONNECTED", "ERROR", "PENDING"])
def test_scalekit_statuses_other_than_active_are_dead(status):
    result = classify(provider="scalekit", body={"connectedAccount": {"status": status}})

    assert result.failure_class == DEAD


def test_scalekit_active_without_401_is_not_a_signature():
    result = classify(provider="scalekit", status=429, body={"connected_account": {"status": "ACTIVE"}})

    assert result.signature == "http.429"


# --- Nango wrapping -------------------------------------------------------------


EXTERNAL = "The external API returned an error when trying to refresh the access token. Please try again later."


def test_nango_wrapped_entra_body_uses_entra_rows():
    upstream = entra("invalid_grant", 700082, "The refresh token has expired due to inactivity.")
    body = nango("refresh_token_external_error", EXTERNAL, payload={"dataMessage": upstream})

    result = classify(provider="nango", status=400, body=body)

    assert (result.failure_class, result.code) == (DEAD, "AADSTS700082")
    assert result.signature == "nango.refresh_token_external_error/entra.error_code.700082"
    assert result.description.startswith("AADSTS700082: The refresh token has expired")


def test_nango_wrapped_body_as_json_text():
    upstream = json.dumps({"error": "invalid_client", "error_description": "Bad client secret"})
    body = nango("refresh_token_external_error", EXTERNAL, payload={"dataMessage": upstream})

    assert classify(provider="nango", status=400, body=body).failure_class == MISCONFIG


def test_nango_log_operation_shape():
    body = {
        "payload": {
            "dataMessage": {"error_description": "Token has been expired or revoked.", "error": "invalid_grant"}
        },
        "type": "refresh_token_external_error",
        "status": 400,
    }

    assert classify(provider="nango", body=body).failure_class == DEAD


def test_nango_payload_embedded_in_the_message():
    dumped = json.dumps(
        {"external_message": "Response Error: 400 Bad Request", "dataMessage": {"error": "interaction_required"}},
        indent=2,
    )
    body = {"error": EXTERNAL + " " + dumped, "type": "refresh_token_external_error"}

    result = classify(provider="nango", status=400, body=body)

    assert (result.failure_class, result.signature) == (
        INTERACTION,
        "nango.refresh_token_external_error/oauth.error.interaction_required",
    )


def test_nango_webhook_shape():
    dumped = json.dumps({"dataMessage": {"error": "invalid_grant", "error_description": "Refresh token revoked"}})
    body = {
        "type": "auth",
        "operation": "refresh",
        "success": False,
        "connectionId": "conn_microsoft_ops",
        "error": {"type": "refresh_token_external_error", "description": EXTERNAL + " " + dumped},
    }

    assert classify(provider="nango", body=body).failure_class == DEAD


def test_nango_wrapped_without_upstream_body_is_unknown():
    body = nango("refresh_token_external_error", EXTERNAL, payload={"connection": {"id": 3}})

    result = classify(provider="nango", status=400, body=body)

    assert (result.failure_class, result.signature) == (UNKNOWN, "nango.refresh_token_external_error")


def test_nango_passes_through_upstream_oauth_error():
    result = classify(provider="nango", status=401, body={"error": "invalid_token"})

    assert result.signature == "oauth.error.invalid_token"


# --- retry_after ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"retry-after": "0"}, 0.0),
        ({"RETRY-AFTER": formatdate(NOW + 90, usegmt=True)}, 90.0),
        ({"Retry-After": formatdate(NOW - 90, usegmt=True)}, 0.0),
        ({"X-RateLimit-Reset": str(int(NOW) + 42)}, 42.0),
        ({"x-ratelimit-reset": "15"}, 15.0),
        ({"Retry-After": "5", "X-RateLimit-Reset": str(int(NOW) + 42)}, 5.0),
        ({"Retry-After": "10000000"}, 86400.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "nan"}, None),
        ({}, None),
    ],
)
def test_retry_after_for_transient(headers, expected):
    result = classify(provider="auth0", status=429, headers=headers)

    assert result.retry_after == (pytest.approx(expected) if expected is not None else None)


def test_retry_after_accepts_byte_headers_and_pairs():
    assert classify(provider="oidc", status=503, headers={b"Retry-After": b"3"}).retry_after == 3.0
    assert classify(provider="oidc", status=503, headers=[("Retry-After", "4")]).retry_after == 4.0


def test_nango_backoff_uses_its_cooldown_when_no_header():
    body = nango("connection_refresh_backoff", "A recent refresh attempt failed.")

    assert classify(provider="nango", status=424, body=body).retry_after == 30.0
    assert classify(provider="nango", status=424, body=body, headers={"Retry-After": "2"}).retry_after == 2.0


def test_retry_after_only_for_transient():
    result = classify(provider="oidc", status=400, body={"error": "invalid_grant"}, headers={"Retry-After": "30"})

    assert result.retry_after is None


# --- description ------------------------------------------------------------------

JWT = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJ1c2VyIiwiZXhwIjoxfQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


@pytest.mark.parametrize(
    ("message", "secret"),
    [
        (f"Token {JWT} was rejected", JWT),
        ("Authorization: Bearer 2YotnFZFEjr1zKsicMWpAA was rejected", "2YotnFZFEjr1zKsicMWpAA"),
        ("Authorization: Basic czZCaGRSa3F0MzpnWDFmQmF0M2JW failed", "czZCaGRSa3F0MzpnWDFmQmF0M2JW"),
        ("refresh_token=tGzv3JOkF0XG5Qx2TlKWIA is unknown", "tGzv3JOkF0XG5Qx2TlKWIA"),
        ('{"client_secret": "hunter2-very-secret", "x": 1}', "hunter2-very-secret"),
        ("password: correct-horse-battery", "correct-horse-battery"),
        ("client_assertion=abc.def.ghi rejected", "abc.def.ghi"),
        ("redirect https://app.example/cb?code=SplxlOBeZQQYbYS6WxSbIA&state=x", "SplxlOBeZQQYbYS6WxSbIA"),
        (
            "opaque 0.ARwA6WgJ0rDf2kSGvb4bBpaXD5yUJYkIWoNEq2j2QmBdGB0cAN4 blob",
            "ARwA6WgJ0rDf2kSGvb4bBpaXD5yUJYkIWoNEq2j2QmBdGB0cAN4",
        ),
    ],
)
def test_description_never_echoes_secrets(message, secret):
    result = classify(provider="oidc", status=400, body={"error": "invalid_grant", "error_description": message})

    assert secret not in result.description
    assert "[redacted]" in result.description


def test_description_keeps_the_provider_message():
    body = entra("invalid_grant", 700082, "The refresh token has expired due to inactivity.")

    description = classify(provider="entra", status=400, body=body).description

    assert description.startswith("AADSTS700082: The refresh token has expired due to inactivity. Trace ID:")
    assert "\r" not in description and "\n" not in description


def test_description_is_truncated():
    result = classify(provider="oidc", status=400, body={"error": "invalid_grant", "error_description": "word " * 1000})

    assert len(result.description) == 500


def test_description_of_non_json_body_is_scrubbed_text():
    result = classify(provider="oidc", status=502, body=f"upstream said Bearer {JWT}")

    assert JWT not in result.description
    assert result.description.startswith("upstream said Bearer")


def test_description_from_nested_error_message():
    body = {"error": {"code": "InvalidAuthenticationToken", "message": "Access token has expired or is not yet valid."}}

    result = classify(provider="entra", status=401, body=body)

    assert (result.failure_class, result.description) == (REFRESHABLE, "Access token has expired or is not yet valid.")


# --- garbage in, unknown out ----------------------------------------------------------


class ExplodingMapping(dict):
    def get(self, *args, **kwargs):
        raise RuntimeError("boom")

    def items(self):
        raise RuntimeError("boom")


class Unprintable:
    def __str__(self):
        raise RuntimeError("no")

    __repr__ = __str__


def deep_dict(depth):
    node = {"error": "invalid_grant"}
    for _ in range(depth):
        node = {"error": node, "payload": node}
    return node


GARBAGE_BODIES = [
    None,
    "",
    "   ",
    b"",
    b"\xff\xfe\x00garbage",
    bytearray(b"{not json"),
    memoryview(b"[1, 2"),
    "{",
    "[]",
    "[[[]]]",
    "null",
    '"just a string"',
    "[" * 200_000 + "]" * 200_000,
    "A" * 5_000_000,
    b"{" * 1_000_000,
    '{"error": ' + "[" * 5000 + "]" * 5000 + "}",
    {},
    [],
    (),
    [None, 1, "x"],
    {1: 2, None: "x", ("t",): []},
    {"error": None},
    {"error": 123},
    {"error": ["invalid_grant"]},
    {"error": {"code": None, "payload": "x"}},
    {"error": {"code": ["x"], "payload": {"error": 5}}},
    {"error": "x" * 10_000},
    {"error_codes": "700082"},
    {"error_codes": [True, None, "abc", "²", 1.5, float("inf"), -1, 10**40]},
    {"error_description": b"bytes"},
    {"error_description": {"nested": True}},
    {"suberror": 7, "error_codes": {}},
    {"connected_account": "EXPIRED"},
    {"connected_account": {"status": ["EXPIRED"]}},
    {"status": 401},
    {"type": "refresh_token_external_error", "payload": {"dataMessage": "{broken"}},
    {"type": "refresh_token_external_error", "payload": {"dataMessage": b"bytes"}},
    {"type": "refresh_token_external_error", "message": "{" * 10_000},
    deep_dict(60),
    ExplodingMapping(error="invalid_grant"),
    object(),
    Unprintable(),
    12345,
    3.14,
    float("nan"),
    True,
    {1, 2, 3},
    Exception("x"),
]

GARBAGE_HEADERS = [
    None,
    {},
    {"Retry-After": None},
    {None: "1"},
    {"Retry-After": ["1"]},
    {"Retry-After": "1e400"},
    {"Retry-After": "Wed, 99 Foo 20xx"},
    {"X-RateLimit-Reset": "inf"},
    {"www-authenticate": 'Bearer error="' + "x" * 5000},
    ["not", "pairs"],
    [("a",)],
    "Retry-After: 5",
    42,
    ExplodingMapping(),
]


# A garbage body tells nothing, so the status decides as it would with no body at all -- even a body that breaks
# when read. Two documented exceptions: any 4xx of a Token Vault exchange means "re-link the account", and a Nango
# refresh failure whose embedded upstream error is unreadable goes to an operator whatever Nango's status.
BY_STATUS = {None: UNKNOWN, 503: TRANSIENT, 401: REFRESHABLE}


def _garbage_expected(provider, status, body) -> FailureClass:
    if provider == Provider.AUTH0_TOKEN_VAULT and status == 401:
        return RELINK
    if provider == Provider.NANGO and type(body) is dict and body.get("type") == "refresh_token_external_error":
        return UNKNOWN
    return BY_STATUS[status]


@pytest.mark.parametrize("status", list(BY_STATUS))
@pytest.mark.parametrize("provider", [*Provider.values, "unknown-idp", None])
@pytest.mark.parametrize("body", GARBAGE_BODIES, ids=lambda body: type(body).__name__)
def test_a_garbage_body_is_classified_by_its_status(provider, body, status):
    result = classify(provider=provider, body=body, status=status)

    assert isinstance(result, Classification)
    assert result.failure_class == _garbage_expected(provider, status, body)
    assert isinstance(result.description, str) and len(result.description) <= 500
    assert result.retry_after is None  # no Retry-After header, and no row here hints one


@pytest.mark.parametrize("headers", GARBAGE_HEADERS, ids=lambda headers: type(headers).__name__)
@pytest.mark.parametrize("status", [None, 429, 503, "429", "abc", -1, 10**100, True, 3.5, object()])
def test_garbage_status_and_headers_never_raise(status, headers):
    result = classify(provider="auth0", status=status, headers=headers, body={"error": "mystery"})

    assert isinstance(result, Classification)
    assert result.failure_class in (UNKNOWN, TRANSIENT)
    assert result.retry_after is None or 0 <= result.retry_after <= 86400


@pytest.mark.parametrize("error_kind", [None, "", 5, "TIMEOUT", "Connection_Error ", "dns", ["timeout"], object()])
def test_garbage_error_kind_never_raises(error_kind):
    result = classify(provider="oidc", error_kind=error_kind)

    expected = (
        TRANSIENT
        if isinstance(error_kind, str) and error_kind.strip().lower() in ("timeout", "connection_error")
        else UNKNOWN
    )
    assert result.failure_class == expected


def test_classification_is_frozen():
    result = classify(provider="oidc", status=500)

    with pytest.raises(AttributeError):
        result.failure_class = FailureClass.DEAD_GRANT  # type: ignore[misc]


def test_module_imports_without_django_settings():
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    root = Path(__file__).resolve().parents[2]
    script = (
        "from classifier import classify;"
        "print(classify(provider='entra', status=400, body={'error': 'invalid_grant'}).failure_class)"
    )

    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "dead_grant"


@pytest.mark.parametrize(("status", "expected"), [(429, TRANSIENT), (503, TRANSIENT), (408, TRANSIENT), (404, RELINK)])
def test_token_vault_exchange_statuses(status, expected):
    result = classify(provider="auth0_token_vault", status=status, body={"message": "whatever"})

    assert result.failure_class == expected


def test_token_vault_rows_do_not_apply_to_plain_auth0():
    body = {"error": "federated_connection_refresh_token_not_found"}

    assert classify(provider="auth0", status=401, body=body).failure_class == REFRESHABLE  # just a 401 there
