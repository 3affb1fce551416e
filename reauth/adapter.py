"""allauth adapters: the owner's sign-in proves an identity and nothing else.

allauth runs the OAuth2/OIDC flow (state, PKCE, code exchange, ID token
checks). Its ``pre_social_login`` hook is the first point where the proved
identity is known and the last before allauth would look up, create or log
in a local user. Here every sign-in ends: the identity is matched against
the connection, the request is settled by ``reauth.services``, and an
``ImmediateHttpResponse`` sends the browser to the done or refused page. So
allauth never creates a ``User``, ``SocialAccount`` or ``SocialToken`` for an
owner (``SOCIALACCOUNT_STORE_TOKENS`` is off as well), and the grant goes
only to the connection's custody.
"""

from __future__ import annotations

import logging

from allauth.account.adapter import DefaultAccountAdapter
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.providers.base.constants import AuthError
from django.shortcuts import redirect
from requests import RequestException

from . import providers, selectors, services, views
from .custody import Grant
from .errors import (
    ReconnectError,
    ReconnectLinkInvalid,
    ReconnectProviderUnreachable,
    ReconnectSessionRequired,
    ReconnectSignInCancelled,
    ReconnectSignInFailed,
)
from .identity import ProviderIdentity, presented_from_claims

logger = logging.getLogger(__name__)


class NoSignupAccountAdapter(DefaultAccountAdapter):
    """Revive has no self-service accounts: owners never get one, operators are created by an administrator."""

    def is_open_for_signup(self, request) -> bool:
        return False


def presented_identity(sociallogin, app: providers.SignInApp) -> ProviderIdentity:
    extra = sociallogin.account.extra_data or {}
    if sociallogin.provider.id == "openid_connect":
        # Verified ID token claims win over userinfo (Entra's userinfo has neither tid nor oid).
        claims = {**(extra.get("userinfo") or {}), **(extra.get("id_token") or {})}
    else:
        claims = dict(extra)
    return presented_from_claims(claims, rule=app.rule, issuer=app.issuer)


def grant_from(sociallogin) -> Grant:
    token = sociallogin.token
    if token is None:
        return Grant(access_token="")
    return Grant(access_token=token.token or "", refresh_token=token.token_secret or "", expires_at=token.expires_at)


class ReconnectSocialAccountAdapter(DefaultSocialAccountAdapter):
    def is_open_for_signup(self, request, sociallogin) -> bool:
        return False

    def pre_social_login(self, request, sociallogin) -> None:
        raise ImmediateHttpResponse(self._settle(request, sociallogin))

    def _settle(self, request, sociallogin):
        data = (sociallogin.state or {}).get("data")
        public_id = data.get("reauth_request") if isinstance(data, dict) else None
        if not public_id:
            return views.problem_response(request, ReconnectSignInFailed(data={"reason": "not_a_reconnect"}))
        req = selectors.reconnect_request_get(public_id)
        if req is None:
            return views.problem_response(request, ReconnectLinkInvalid())
        if not views.session_has_grant(request, req.public_id):
            return views.problem_response(request, ReconnectSessionRequired())
        app = providers.sign_in_app_by_id(request, req.connection, data.get("app", ""))
        if app is None or app.provider_id != sociallogin.provider.sub_id:
            return views.problem_response(request, ReconnectSignInFailed(data={"reason": "provider_app"}), req=req)
        presented = presented_identity(sociallogin, app)
        grant = grant_from(sociallogin)
        sociallogin.token = None  # the grant goes to custody only
        actor = f"owner:{presented.label or presented.subject or 'unknown'}"
        try:
            completion = services.reconnect_request_complete(
                public_id=req.public_id, presented=presented, grant=grant, actor=actor
            )
        except ReconnectError as exc:
            return views.problem_response(request, exc, req=req)
        if completion.consumed:
            return redirect("reauth:done", public_id=req.public_id)
        views.session_remember_refusal(request, req.public_id, completion.refusal_event_id)
        return redirect("reauth:refused", public_id=req.public_id)

    def on_authentication_error(self, request, provider, error=None, exception=None, extra_context=None) -> None:
        """Every failed sign-in (bad or replayed ``state``, cancelled, failed code exchange) ends on our page, unchanged."""
        extra_context = extra_context or {}
        state = extra_context.get("state") or {}
        data = state.get("data") if isinstance(state, dict) else None
        req = (
            selectors.reconnect_request_get(data["reauth_request"])
            if isinstance(data, dict) and data.get("reauth_request")
            else None
        )
        if error == AuthError.CANCELLED:
            exc: ReconnectError = ReconnectSignInCancelled()
        elif isinstance(exception, RequestException):
            exc = ReconnectProviderUnreachable()
        elif not state:
            exc = ReconnectSignInFailed(data={"reason": "state"})
        else:
            exc = ReconnectSignInFailed(data={"reason": "provider"})
        logger.warning("reconnect sign-in failed: %s (%s)", exc.code, type(exception).__name__ if exception else error)
        raise ImmediateHttpResponse(views.problem_response(request, exc, req=req))
