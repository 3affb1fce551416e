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
* The package needs no Django settings: it imports ``django.db.models`` only for
  ``TextChoices``, so workers and the SDK side can use it outside a project.

The package: ``model`` (the vocabulary and the rows' types), ``tables`` (the rows and their matchers), ``reading``
(turning raw inputs into signals, and scrubbing descriptions), and here the entry point.
"""

from __future__ import annotations

from collections.abc import Mapping

from .model import Classification, FailureClass, Provider, Reason, _Hit, _Signals
from .reading import _headers_of, _provider_of, _read, _retry_after, _scrub, _token, _upstream_bodies
from .tables import (
    _NETWORK_ROWS,
    _OAUTH_ROWS,
    _PROVIDER_TABLES,
    _STATUS_ROWS,
    _UPSTREAM_TABLES,
    SIGNATURES,
    _first_match,
    _rows,
)

__all__ = ["SIGNATURES", "Classification", "FailureClass", "Provider", "Reason", "classify"]


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
        return _classification(
            provider, network.row.failure_class, code=network.code, signature=network.row.signature, description=""
        )
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
