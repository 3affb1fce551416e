"""The failure classifier: one case per table row, then order, retry, redaction and garbage."""

import json
import os
import subprocess
import sys
from email.utils import formatdate
from pathlib import Path

import pytest

from reauth import classification
from reauth.classification import SIGNATURES, Classification, FailureClass, Provider, classify

NOW = 1_750_000_000.0


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch):
    monkeypatch.setattr(classification, "_clock", lambda: NOW)


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


DEAD = FailureClass.DEAD_GRANT
INTERACTION = FailureClass.INTERACTION_REQUIRED
REFRESHABLE = FailureClass.REFRESHABLE
TRANSIENT = FailureClass.TRANSIENT
MISCONFIG = FailureClass.MISCONFIGURATION
UNKNOWN = FailureClass.UNKNOWN


def case(signature, expected, code, **kwargs):
    return pytest.param(signature, expected, code, kwargs, id=signature)


ROW_CASES = [
    # --- network
    case("network.timeout", TRANSIENT, "timeout", provider="entra", error_kind="timeout"),
    case("network.connection_error", TRANSIENT, "connection_error", provider="nango", error_kind="connection_error"),
    # --- Entra: misconfiguration
    case(
        "entra.error_code.7000215", MISCONFIG, "AADSTS7000215",
        provider="entra", status=401, body=entra("invalid_client", 7000215, "Invalid client secret provided."),
    ),
    case(
        "entra.error_code.7000222", MISCONFIG, "AADSTS7000222",
        provider="entra", status=401, body=entra("invalid_client", 7000222, "The provided client secret keys are expired."),
    ),
    case(
        "entra.error_code.70002", MISCONFIG, "AADSTS70002",
        provider="entra", status=401, body=entra("invalid_client", 70002, "Error validating credentials."),
    ),
    case(
        "entra.error_code.700016", MISCONFIG, "AADSTS700016",
        provider="entra", status=400,
        body=entra("unauthorized_client", 700016, "Application with identifier 'x' was not found in the directory."),
    ),
    case(
        "entra.error_code.50011", MISCONFIG, "AADSTS50011",
        provider="entra", status=400, body=entra("invalid_request", 50011, "The reply URL does not match."),
    ),
    case(
        "entra.error_code.53003", MISCONFIG, "AADSTS53003",
        provider="entra", status=400,
        body=entra("invalid_grant", 53003, "Access has been blocked by Conditional Access policies.", suberror="message_only"),
    ),
    case(
        "entra.error_code.50057", MISCONFIG, "AADSTS50057",
        provider="entra", status=400, body=entra("invalid_grant", 50057, "The user account is disabled."),
    ),
    case(
        "entra.error_code.70001", MISCONFIG, "AADSTS70001",
        provider="entra", status=400, body=entra("unauthorized_client", 70001, "The application is disabled."),
    ),
    case(
        "entra.error_code.7000112", MISCONFIG, "AADSTS7000112",
        provider="entra", status=400, body=entra("unauthorized_client", 7000112, "Application is disabled."),
    ),
    case(
        "entra.error_code.50105", MISCONFIG, "AADSTS50105",
        provider="entra", status=400,
        body=entra("invalid_grant", 50105, "The signed in user is not assigned to a role for the application."),
    ),
    # --- Entra: dead grant
    case(
        "entra.error_code.700082", DEAD, "AADSTS700082",
        provider="entra", status=400,
        body=entra("invalid_grant", 700082, "The refresh token has expired due to inactivity.", suberror="bad_token"),
    ),
    case(
        "entra.error_code.70008", DEAD, "AADSTS70008",
        provider="entra", status=400,
        body=entra("invalid_grant", 70008, "The provided authorization code or refresh token has expired."),
    ),
    case(
        "entra.error_code.700084", DEAD, "AADSTS700084",
        provider="entra", status=400,
        body=entra("invalid_grant", 700084, "The refresh token was issued to a single page app (SPA)."),
    ),
    case(
        "entra.error_code.50173", DEAD, "AADSTS50173",
        provider="entra", status=400,
        body=entra("invalid_grant", 50173, "The provided grant has expired due to it being revoked."),
    ),
    case(
        "entra.error_code.70043", DEAD, "AADSTS70043",
        provider="entra", status=400,
        body=entra("invalid_grant", 70043, "The refresh token has expired or is invalid due to sign-in frequency checks."),
    ),
    case(
        "entra.error_code.50089", DEAD, "AADSTS50089",
        provider="entra", status=400, body=entra("invalid_grant", 50089, "Authentication failed due to flow token expired."),
    ),
    case(
        "entra.error_code.50132", DEAD, "AADSTS50132",
        provider="entra", status=400,
        body=entra("invalid_grant", 50132, "The session is not valid due to password expiration or recent password change."),
    ),
    case(
        "entra.error_code.50133", DEAD, "AADSTS50133",
        provider="entra", status=400,
        body=entra("invalid_grant", 50133, "The session is not valid due to password expiration or recent password change."),
    ),
    # --- Entra: interaction required
    case(
        "entra.error_code.50076", INTERACTION, "AADSTS50076",
        provider="entra", status=400,
        body=entra("invalid_grant", 50076, "You must use multi-factor authentication.", suberror="basic_action"),
    ),
    case(
        "entra.error_code.50079", INTERACTION, "AADSTS50079",
        provider="entra", status=400, body=entra("interaction_required", 50079, "The user is required to use MFA."),
    ),
    case(
        "entra.error_code.50078", INTERACTION, "AADSTS50078",
        provider="entra", status=400, body=entra("invalid_grant", 50078, "Presented multi-factor authentication has expired."),
    ),
    case(
        "entra.error_code.50072", INTERACTION, "AADSTS50072",
        provider="entra", status=400, body=entra("invalid_grant", 50072, "User needs to enroll for second factor."),
    ),
    case(
        "entra.error_code.50074", INTERACTION, "AADSTS50074",
        provider="entra", status=400, body=entra("invalid_grant", 50074, "Strong authentication is required."),
    ),
    case(
        "entra.error_code.65001", INTERACTION, "AADSTS65001",
        provider="entra", status=400,
        body=entra("invalid_grant", 65001, "The user or administrator has not consented to use the application."),
    ),
    case(
        "entra.error_code.65004", INTERACTION, "AADSTS65004",
        provider="entra", status=400, body=entra("access_denied", 65004, "User declined to consent to access the app."),
    ),
    case(
        "entra.error_code.700020", INTERACTION, "AADSTS700020",
        provider="entra", status=400, body=entra("invalid_grant", 700020, "The access grant requires interaction."),
    ),
    case(
        "entra.error_code.50055", INTERACTION, "AADSTS50055",
        provider="entra", status=400, body=entra("invalid_grant", 50055, "The password is expired."),
    ),
    # --- Entra: transient
    case(
        "entra.error_code.90033", TRANSIENT, "AADSTS90033",
        provider="entra", status=503, body=entra("temporarily_unavailable", 90033, "A transient error has occurred."),
    ),
    case(
        "entra.error_code.90006", TRANSIENT, "AADSTS90006",
        provider="entra", status=400, body=entra("invalid_request", 90006, "The service is temporarily unavailable."),
    ),
    case(
        "entra.error_code.50033", TRANSIENT, "AADSTS50033",
        provider="entra", status=400, body=entra("invalid_grant", 50033, "A transient error has occurred."),
    ),
    case(
        "entra.error_code.50087", TRANSIENT, "AADSTS50087",
        provider="entra", status=400, body=entra("invalid_grant", 50087, "A transient error has occurred during strong authentication."),
    ),
    case(
        "entra.error_code.90024", TRANSIENT, "AADSTS90024",
        provider="entra", status=400, body=entra("invalid_request", 90024, "A transient error has occurred. Try again."),
    ),
    case(
        "entra.error_code.90090", TRANSIENT, "AADSTS90090",
        provider="entra", status=400, body=entra("invalid_request", 90090, "The service is temporarily unavailable."),
    ),
    case(
        "entra.error_code.70012", TRANSIENT, "AADSTS70012",
        provider="entra", status=400, body=entra("server_error", 70012, "A server error occurred while authenticating an MSA user."),
    ),
    # --- Entra: suberrors (codes Revive has no row for, so the suberror decides)
    case(
        "entra.suberror.basic_action", INTERACTION, "basic_action",
        provider="entra", status=400, body=entra("invalid_grant", 50199, "User confirmation is required.", suberror="basic_action"),
    ),
    case(
        "entra.suberror.additional_action", INTERACTION, "additional_action",
        provider="entra", status=400, body=entra("invalid_grant", 53000, "Device is not compliant.", suberror="additional_action"),
    ),
    case(
        "entra.suberror.message_only", INTERACTION, "message_only",
        provider="entra", status=400, body=entra("invalid_grant", 53011, "User blocked due to risk.", suberror="message_only"),
    ),
    case(
        "entra.suberror.user_password_expired", INTERACTION, "user_password_expired",
        provider="entra", status=400,
        body=entra("invalid_grant", 50144, "The Active Directory password has expired.", suberror="user_password_expired"),
    ),
    case(
        "entra.suberror.consent_required", INTERACTION, "consent_required",
        provider="entra", status=400, body=entra("invalid_grant", 65002, "Consent must be configured.", suberror="consent_required"),
    ),
    case(
        "entra.suberror.device_authentication_failed", INTERACTION, "device_authentication_failed",
        provider="entra", status=400,
        body=entra("invalid_grant", 50155, "Device authentication failed.", suberror="device_authentication_failed"),
    ),
    case(
        "entra.suberror.bad_token", DEAD, "bad_token",
        provider="entra", status=400, body=entra("invalid_grant", 70000, "The refresh token isn't valid.", suberror="bad_token"),
    ),
    case(
        "entra.suberror.token_expired", DEAD, "token_expired",
        provider="entra", status=400, body=entra("invalid_grant", None, "The token has expired.", suberror="token_expired"),
    ),
    case(
        "entra.suberror.protection_policy_required", MISCONFIG, "protection_policy_required",
        provider="entra", status=400,
        body=entra("unauthorized_client", 53005, "Application needs to enforce Intune protection policies.",
                   suberror="protection_policy_required"),
    ),
    case(
        "entra.suberror.client_mismatch", MISCONFIG, "client_mismatch",
        provider="entra", status=400,
        body=entra("invalid_grant", None, "The refresh token was issued to a different client.", suberror="client_mismatch"),
    ),
    case(
        "entra.error.invalid_resource", MISCONFIG, "invalid_resource",
        provider="entra", status=400, body=entra("invalid_resource", 500011, "The resource principal was not found."),
    ),
    # --- Auth0
    case(
        "auth0.invalid_grant.unknown_refresh_token", DEAD, "invalid_grant",
        provider="auth0", status=403,
        body={"error": "invalid_grant", "error_description": "Unknown or invalid refresh token."},
    ),
    case(
        "auth0.mfa_required", INTERACTION, "mfa_required",
        provider="auth0", status=403,
        body={"error": "mfa_required", "error_description": "Multifactor authentication required", "mfa_token": "Fe26.2*abc"},
    ),
    case(
        "auth0.access_denied.rate_limited", TRANSIENT, "access_denied",
        provider="auth0", status=500,
        headers={"X-RateLimit-Limit": "30", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(int(NOW) + 12)},
        body={"error": "access_denied", "error_description": "Global limit has been reached"},
    ),
    case(
        "auth0.access_denied", INTERACTION, "access_denied",
        provider="auth0", status=403,
        body={"error": "access_denied", "error_description": "Please verify your email before continuing."},
    ),
    # --- Nango
    case(
        "nango.connection_refresh_exhausted", DEAD, "connection_refresh_exhausted",
        provider="nango", status=424,
        body=nango("connection_refresh_exhausted", "The refresh limit has been reached for this connection."),
    ),
    case(
        "nango.invalid_credentials", DEAD, "invalid_credentials",
        provider="nango", status=424,
        body={"error": {"message": "An error occurred during an HTTP call", "payload": {"error": {
            "code": "invalid_credentials", "payload": {}, "message": "The refresh limit has been reached for this connection.",
        }}}},
    ),
    case(
        "nango.connection_refresh_backoff", TRANSIENT, "connection_refresh_backoff",
        provider="nango", status=424,
        body=nango("connection_refresh_backoff", "A recent refresh attempt failed. Backing off before retrying."),
    ),
    case(
        "nango.refresh_token_lock_timeout", TRANSIENT, "refresh_token_lock_timeout",
        provider="nango", status=503,
        body=nango("refresh_token_lock_timeout", "Timed out waiting for the refresh lock."),
    ),
    case(
        "nango.refresh_token_external_error/oauth.error.invalid_grant", DEAD, "invalid_grant",
        provider="nango", status=400,
        body=nango(
            "refresh_token_external_error",
            "The external API returned an error when trying to refresh the access token. Please try again later.",
            payload={"dataMessage": {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}},
        ),
    ),
    case(
        "nango.refresh_token_external_error", UNKNOWN, "refresh_token_external_error",
        provider="nango", status=400,
        body=nango(
            "refresh_token_external_error",
            "The external API returned an error when trying to refresh the access token. Please try again later.",
            payload={"dataMessage": {"error": "weird_vendor_error", "error_description": "Something happened."}},
        ),
    ),
    case(
        "nango.api_credentials_rejected", MISCONFIG, "invalid_secret_key",
        provider="nango", status=401,
        body=nango("invalid_secret_key", "Authentication failed. The provided secret key is invalid."),
    ),
    # --- Scalekit
    case(
        "scalekit.connected_account.inactive", DEAD, "EXPIRED",
        provider="scalekit", status=200,
        body={"connected_account": {"id": "ca_1", "identifier": "user_123", "connector": "gmail", "status": "EXPIRED"}},
    ),
    case(
        "scalekit.connected_account.active_401", REFRESHABLE, "ACTIVE",
        provider="scalekit", status=401, body={"connected_account": {"status": "ACTIVE"}},
    ),
    # --- RFC 6749 / 6750 / OIDC (generic provider)
    case(
        "oauth.error.invalid_grant", DEAD, "invalid_grant",
        provider="oidc", status=400,
        body={"error": "invalid_grant", "error_description": "The refresh token is invalid, expired or revoked."},
    ),
    case("oauth.error.invalid_client", MISCONFIG, "invalid_client", provider="auth0", status=401,
         body={"error": "invalid_client", "error_description": "Client authentication failed."}),
    case("oauth.error.unauthorized_client", MISCONFIG, "unauthorized_client", provider="auth0", status=403,
         body={"error": "unauthorized_client", "error_description": "Grant type 'refresh_token' not allowed for the client."}),
    case("oauth.error.unsupported_grant_type", MISCONFIG, "unsupported_grant_type", provider="oidc", status=400,
         body={"error": "unsupported_grant_type"}),
    case("oauth.error.invalid_scope", MISCONFIG, "invalid_scope", provider="oidc", status=400,
         body={"error": "invalid_scope", "error_description": "Unknown scope"}),
    case("oauth.error.invalid_request", MISCONFIG, "invalid_request", provider="oidc", status=400,
         body={"error": "invalid_request", "error_description": "Missing parameter: refresh_token"}),
    case("oauth.error.invalid_token", REFRESHABLE, "invalid_token", provider="oidc", status=401,
         headers={"WWW-Authenticate": 'Bearer realm="api", error="invalid_token", error_description="The access token expired"'}),
    case("oauth.error.insufficient_scope", INTERACTION, "insufficient_scope", provider="oidc", status=403,
         body={"error": "insufficient_scope", "error_description": "Requires scope mail.send"}),
    case("oauth.error.interaction_required", INTERACTION, "interaction_required", provider="entra", status=400,
         body=entra("interaction_required", None, "The request requires user interaction.")),
    case("oauth.error.login_required", INTERACTION, "login_required", provider="oidc", status=400,
         body={"error": "login_required"}),
    case("oauth.error.consent_required", INTERACTION, "consent_required", provider="auth0", status=400,
         body={"error": "consent_required", "error_description": "Consent required"}),
    case("oauth.error.account_selection_required", INTERACTION, "account_selection_required", provider="oidc",
         status=400, body={"error": "account_selection_required"}),
    case("oauth.error.temporarily_unavailable", TRANSIENT, "temporarily_unavailable", provider="entra", status=400,
         body=entra("temporarily_unavailable", None, "The server is temporarily too busy.")),
    case("oauth.error.server_error", TRANSIENT, "server_error", provider="oidc", status=400,
         body={"error": "server_error"}),
    case("oauth.error.slow_down", TRANSIENT, "slow_down", provider="oidc", status=400, body={"error": "slow_down"}),
    # --- HTTP status fallbacks
    case("http.401", REFRESHABLE, "http_401", provider="oidc", status=401, body={"message": "Unauthorized"}),
    case("http.403", UNKNOWN, "http_403", provider="auth0", status=403, body={"message": "Forbidden"}),
    case("http.408", TRANSIENT, "http_408", provider="oidc", status=408, body=""),
    case("http.429", TRANSIENT, "http_429", provider="auth0", status=429, headers={"Retry-After": "7"},
         body={"error": "too_many_requests", "error_description": "Too Many Requests"}),
    case("http.5xx", TRANSIENT, "http_502", provider="entra", status=502, body="<html><h1>502 Bad Gateway</h1></html>"),
]


@pytest.mark.parametrize(("signature", "expected", "code", "kwargs"), ROW_CASES)
def test_row(signature, expected, code, kwargs):
    result = classify(**kwargs)

    assert isinstance(result, Classification)
    assert (result.failure_class, result.code, result.signature) == (expected, code, signature)


def test_every_row_has_a_case():
    covered = {param.values[0].split("/")[0] for param in ROW_CASES}

    assert set(SIGNATURES) - covered == set()
    assert covered - set(SIGNATURES) == set()
    assert len(SIGNATURES) == len(set(SIGNATURES))


# --- decision order -----------------------------------------------------------


def test_entra_error_code_refines_error_and_suberror():
    body = entra("invalid_grant", 50076, "Due to a configuration change you must use MFA.", suberror="bad_token")

    result = classify(provider="entra", status=400, body=body)

    assert result.failure_class == INTERACTION
    assert result.signature == "entra.error_code.50076"


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
        "payload": {"dataMessage": {"error_description": "Token has been expired or revoked.", "error": "invalid_grant"}},
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
        ("opaque 0.ARwA6WgJ0rDf2kSGvb4bBpaXD5yUJYkIWoNEq2j2QmBdGB0cAN4 blob", "ARwA6WgJ0rDf2kSGvb4bBpaXD5yUJYkIWoNEq2j2QmBdGB0cAN4"),
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


@pytest.mark.parametrize("provider", [*Provider.values, "unknown-idp", None])
@pytest.mark.parametrize("body", GARBAGE_BODIES, ids=lambda body: type(body).__name__)
def test_garbage_body_never_raises(provider, body):
    result = classify(provider=provider, body=body)

    assert isinstance(result, Classification)
    assert result.failure_class in FailureClass.values
    assert isinstance(result.description, str) and len(result.description) <= 500
    assert result.retry_after is None


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

    expected = TRANSIENT if isinstance(error_kind, str) and error_kind.strip().lower() in ("timeout", "connection_error") else UNKNOWN
    assert result.failure_class == expected


def test_classification_is_frozen():
    result = classify(provider="oidc", status=500)

    with pytest.raises(AttributeError):
        result.failure_class = FailureClass.DEAD_GRANT  # type: ignore[misc]


def test_module_imports_without_django_settings():
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SETTINGS_MODULE"}
    root = Path(__file__).resolve().parents[2]
    script = (
        "from reauth.classification import classify;"
        "print(classify(provider='entra', status=400, body={'error': 'invalid_grant'}).failure_class)"
    )

    completed = subprocess.run(
        [sys.executable, "-c", script], cwd=root, env=env, capture_output=True, text=True, timeout=60, check=False
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "dead_grant"
