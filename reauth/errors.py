"""Domain errors of the owner reconnect.

Each one has a stable ``code`` and an HTTP status; the hosted pages render
them (status, ``X-Revive-Code`` header and the code on the page), so every bad
link or bad form answers a 4xx page the owner can read.
"""

from __future__ import annotations

from revive_site.errors import DomainError


class ReconnectError(DomainError):
    code = "RECONNECT_ERROR"
    status = 400
    default_message = "This reconnect link cannot be used."
    template = "reauth/error.html"


class ReconnectLinkInvalid(ReconnectError):
    code = "RECONNECT_LINK_INVALID"
    status = 404
    default_message = "This reconnect link is not valid. Check that you opened the whole link from the message."
    template = "reauth/invalid.html"


class ReconnectLinkExpired(ReconnectError):
    code = "RECONNECT_LINK_EXPIRED"
    status = 410
    default_message = "This reconnect link has expired."
    template = "reauth/expired.html"


class ReconnectLinkUsed(ReconnectError):
    code = "RECONNECT_LINK_USED"
    status = 410
    default_message = "This reconnect link has already been used."
    template = "reauth/used.html"


class ReconnectLinkRevoked(ReconnectError):
    code = "RECONNECT_LINK_REVOKED"
    status = 410
    default_message = "This reconnect link has been replaced or is no longer needed."
    template = "reauth/revoked.html"


class ReconnectLinkLocked(ReconnectError):
    code = "RECONNECT_LINK_LOCKED"
    status = 423
    default_message = "This reconnect link is locked after too many sign-ins with the wrong account."
    template = "reauth/locked.html"


class ReconnectSessionRequired(ReconnectError):
    code = "RECONNECT_SESSION_REQUIRED"
    status = 403
    default_message = "Open the reconnect link from your message in this browser first."
    template = "reauth/session_required.html"


class ReconnectNextNotAllowed(ReconnectError):
    code = "RECONNECT_NEXT_NOT_ALLOWED"
    status = 400
    default_message = "The address to return to after reconnecting is not an allowed one."


class ReconnectFormInvalid(ReconnectError):
    code = "RECONNECT_FORM_INVALID"
    status = 400
    default_message = "The reconnect form was not valid. Open the link from your message again."


class ReconnectSignInFailed(ReconnectError):
    code = "RECONNECT_SIGN_IN_FAILED"
    status = 400
    default_message = "The sign-in did not complete. Nothing was changed; you can try again."
    template = "reauth/sign_in_failed.html"


class ReconnectSignInCancelled(ReconnectSignInFailed):
    code = "RECONNECT_SIGN_IN_CANCELLED"
    status = 400
    default_message = "The sign-in was cancelled. Nothing was changed; you can try again."


class ReconnectProviderUnreachable(ReconnectSignInFailed):
    code = "RECONNECT_PROVIDER_UNREACHABLE"
    status = 502
    default_message = "The identity provider could not be reached. Nothing was changed; try again in a minute."


class ReconnectProviderNotConfigured(ReconnectError):
    code = "RECONNECT_PROVIDER_NOT_CONFIGURED"
    status = 503
    default_message = (
        "Sign-in for this connection's provider is not set up on this Revive installation. Contact your operator."
    )


class ReconnectIdentityMismatch(ReconnectError):
    code = "RECONNECT_IDENTITY_MISMATCH"
    status = 403
    default_message = "You signed in with a different account than the one this connection belongs to."
    template = "reauth/mismatch.html"


class ReconnectNotNeeded(ReconnectError):
    code = "RECONNECT_NOT_NEEDED"
    status = 409
    default_message = "This case no longer waits for its owner."


class ReconnectNotCompleted(ReconnectError):
    code = "RECONNECT_NOT_COMPLETED"
    status = 409
    default_message = "This reconnect has not been completed."


class MethodNotAllowed(ReconnectError):
    code = "METHOD_NOT_ALLOWED"
    status = 405
    default_message = "This page does not accept that kind of request."


class CsrfFailed(ReconnectError):
    code = "CSRF_FAILED"
    status = 403
    default_message = "The form could not be verified. Reload the page and try again."


class NotificationDeliveryFailed(Exception):
    """A transient failure delivering the owner's notification (SMTP, webhook 5xx, timeout): the task retries."""
