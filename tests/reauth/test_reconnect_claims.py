"""What the owner is asked to do, and claims challenges (Entra continuous access evaluation) on the owner's sign-in.

A CAE challenge from a resource API (401, ``WWW-Authenticate: Bearer error="insufficient_claims", claims="<base64>"``)
opens an interaction-required case that keeps the decoded claims (audited: they are not a secret); the owner's page
says what happened, and the sign-in at the provider carries the claims, merged into the app's client-capabilities
claims request (``cp1``), as the ``claims`` authorization parameter. The lab provider accepts it and the reconnect
completes as any other.
"""

from __future__ import annotations

import base64
import json
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from django.utils.html import escape

from audit.models import AuditEvent
from cases.models import CaseState
from reauth.provider_settings import socialaccount_providers
from reauth.providers import merge_claims
from reauth.views import OWNER_ACTIONS

from .test_reconnect_sign_in import Owner

pytestmark = pytest.mark.django_db

CAE_CLAIMS = {"access_token": {"nbf": {"essential": True, "value": "1764669600"}}}


def cae_error(claims=CAE_CLAIMS) -> dict:
    encoded = base64.b64encode(json.dumps(claims).encode()).decode()
    return {
        "status": 401,
        "body": "",
        "headers": {
            "WWW-Authenticate": (
                'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", '
                f'client_id="00000003-0000-0000-c000-000000000000", error="insufficient_claims", claims="{encoded}"'
            )
        },
    }


def entra_error(code: int, error: str = "invalid_grant", suberror: str | None = None) -> dict:
    body = {
        "error": error,
        "error_description": f"AADSTS{code}: see https://login.microsoftonline.com/error",
        "error_codes": [code],
    }
    if suberror:
        body["suberror"] = suberror
    return {"status": 400, "body": body}


def authorize_params(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_a_cae_challenge_keeps_its_claims_on_the_case_and_in_the_audit(owner_case):
    oc = owner_case(provider_error=cae_error())

    case = oc.refresh()
    assert (case.failure_class, case.provider_code) == ("interaction_required", "insufficient_claims")
    assert case.provider_error["reason"] == "claims_challenge"
    assert json.loads(case.provider_error["claims"]) == CAE_CLAIMS
    opened = AuditEvent.objects.get(action="case.opened", case_reference=case.reference)
    assert json.loads(opened.arguments["provider_error"]["claims"]) == CAE_CLAIMS
    assert oc.request is not None  # the owner is asked, not an operator


def test_the_owner_signs_in_with_the_claims_and_the_reconnect_completes(
    client, owner_case, issue_link, lab_sign_in, idp_browser
):
    oc = owner_case(provider_error=cae_error())
    link, _ = issue_link(oc)
    owner = Owner(client, idp_browser, link)
    assert escape(OWNER_ACTIONS["claims_challenge"]) in owner.pages[0]

    start = client.post(f"/reconnect/r/{owner.public_id}/start")

    assert start.status_code == 302
    params = authorize_params(start["Location"])
    assert json.loads(params["claims"]) == {
        "access_token": {**CAE_CLAIMS["access_token"], "xms_cc": {"values": ["cp1"]}}
    }
    started = AuditEvent.objects.get(action="reconnect.sign_in_started", entity_id=str(oc.request.public_id))
    assert json.loads(started.arguments["claims"]) == CAE_CLAIMS
    callback = urlsplit(idp_browser.authorize(start["Location"], "ada"))
    assert "error" not in parse_qs(callback.query), callback.query
    response = client.get(f"{callback.path}?{callback.query}")
    assert response.status_code == 302 and response["Location"].endswith("/done")
    received = httpx.get(f"{lab_sign_in.url}/lab/claims-requests", timeout=10).json()["requests"]
    assert received[-1]["claims"] == json.loads(params["claims"])
    assert oc.refresh().state == CaseState.REAUTHORIZED and oc.refresh().resumed_generation == 2


def test_without_a_challenge_the_sign_in_carries_only_the_client_capabilities(
    client, owner_case, issue_link, lab_sign_in, idp_browser
):
    oc = owner_case()
    owner = Owner(client, idp_browser, issue_link(oc)[0])

    start = client.post(f"/reconnect/r/{owner.public_id}/start")

    assert json.loads(authorize_params(start["Location"])["claims"]) == {
        "access_token": {"xms_cc": {"values": ["cp1"]}}
    }
    started = AuditEvent.objects.get(action="reconnect.sign_in_started", entity_id=str(oc.request.public_id))
    assert "claims" not in started.arguments


def test_a_claims_challenge_is_not_sent_to_a_provider_other_than_entra(
    client, owner_case, issue_link, lab_sign_in, idp_browser
):
    oc = owner_case(provider="oidc", subject="sub-ada", tenant="", issuer=lab_sign_in.url, provider_error=cae_error())
    owner = Owner(client, idp_browser, issue_link(oc)[0])

    start = client.post(f"/reconnect/r/{owner.public_id}/start")

    assert start.status_code == 302
    assert CAE_CLAIMS["access_token"]["nbf"]["value"] not in start["Location"]


@pytest.mark.parametrize(
    ("provider_error", "reason"),
    [
        (entra_error(50076), "mfa"),
        (entra_error(50079, "interaction_required"), "mfa_registration"),
        (entra_error(65001, "consent_required"), "consent"),
        (entra_error(53000, "interaction_required"), "compliant_device"),
        (entra_error(53002, "interaction_required"), "approved_app"),
        (entra_error(53003, "invalid_grant", "message_only"), "conditional_access"),
        (entra_error(50055), "password_change"),
        (entra_error(9999999, "invalid_grant", "user_password_expired"), "password_change"),
        (entra_error(50053, "interaction_required"), "account_locked"),
        (entra_error(53011), "risk"),
        (entra_error(9999999, "interaction_required", "additional_action"), "additional_action"),
        (cae_error(), "claims_challenge"),
    ],
)
def test_the_landing_page_says_what_the_owner_must_do(
    client, owner_case, issue_link, sign_in_configured, idp_browser, provider_error, reason
):
    oc = owner_case(provider_error=provider_error)
    assert oc.refresh().provider_error["reason"] == reason

    page = Owner(client, idp_browser, issue_link(oc)[0]).pages[0]

    assert "What you need to do" in page and escape(OWNER_ACTIONS[reason]) in page


def test_a_dead_grant_without_a_reason_has_no_instruction(
    client, owner_case, issue_link, sign_in_configured, idp_browser
):
    page = Owner(client, idp_browser, issue_link(owner_case())[0]).pages[0]

    assert "What you need to do" not in page


@pytest.mark.parametrize("code", [90094, 90095])
def test_admin_consent_goes_to_an_operator_not_the_owner(owner_case, code):
    oc = owner_case(provider_error=entra_error(code, "interaction_required", "consent_required"))

    case = oc.refresh()
    assert (case.failure_class, case.provider_error["reason"], case.owner_required) == (
        "misconfiguration",
        "admin_consent",
        False,
    )
    assert oc.request is None  # no owner link: an administrator has to consent


def test_every_reason_an_owner_can_act_on_has_words():
    from classifier import Reason

    operator_only = {"admin_consent", "account_disabled"}
    assert set(Reason.values) - operator_only == set(OWNER_ACTIONS)


def test_entra_apps_declare_client_capabilities_and_the_setting_turns_it_off():
    on = socialaccount_providers(entra_client_id="app", entra_tenants=["t1"])
    off = socialaccount_providers(entra_client_id="app", entra_tenants=["t1"], entra_client_capabilities=[])

    assert json.loads(on["openid_connect"]["APPS"][0]["settings"]["auth_params"]["claims"]) == {
        "access_token": {"xms_cc": {"values": ["cp1"]}}
    }
    assert "claims" not in off["openid_connect"]["APPS"][0]["settings"]["auth_params"]


@pytest.mark.parametrize(
    ("requests", "expected"),
    [
        (("", ""), ""),
        (
            ('{"access_token":{"xms_cc":{"values":["cp1"]}}}', '{"access_token":{"nbf":{"essential":true}}}'),
            {"access_token": {"xms_cc": {"values": ["cp1"]}, "nbf": {"essential": True}}},
        ),
        (('{"id_token":{"acrs":{"essential":true}}}', "not json"), {"id_token": {"acrs": {"essential": True}}}),
        (("[1]", '{"access_token":{"acrs":{"values":["c1"]}}}'), {"access_token": {"acrs": {"values": ["c1"]}}}),
    ],
)
def test_merge_claims(requests, expected):
    merged = merge_claims(*requests)

    assert (json.loads(merged) if merged else "") == expected
