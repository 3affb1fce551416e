"""What the conformance scenarios (``sdk/conformance/*.json``) ask of the server, beside the SDK's own calls.

Both runners use these: the Python SDK's tests call them in-process beside pytest-django's live server, and
``live_server.py`` performs them for the other SDKs' runners on a line of JSON each. They call the services a
person or Revive itself would (register a connection, the owner's reconnect), never the database directly.
"""

from __future__ import annotations

from typing import Any

from cases import pipeline, services

ACTOR = "conformance"


def connection_create(
    *, connection_id: str, provider: str = "entra", provider_tenant: str = "tid-conformance", provider_issuer: str = ""
) -> dict[str, Any]:
    conn = services.connection_create(
        connection_id=connection_id,
        provider=provider,
        owner_email="owner@example.com",
        provider_subject=f"oid-{connection_id}",
        provider_tenant=provider_tenant,
        provider_issuer=provider_issuer,
    )
    return {"connection_id": conn.pk, "generation": conn.current_generation}


def reconnect(*, case_id: str) -> dict[str, Any]:
    """The owner reconnected the same identity: the generation advances and the case releases its runs.

    Ambiguous actions are left to the resumed worker's ``reconcile`` callback, as after a real resume.
    """
    services.case_reauthorize(case_id=case_id, actor="owner")
    case = services.case_resume_begin(case_id=case_id, actor="system", defer_ambiguous=True)
    return {"case_id": case.reference, "state": case.state, "generation": case.resumed_generation}


def owner_reconnected(*, case_id: str) -> dict[str, Any]:
    """The owner's verified reconnect as ``reauth`` completes it: the generation advances, then Revive's own
    recovery runs (reconcile, release, deliver the resume through the run's runtime adapter -- the Temporal
    adapter signals ``revive_reauthorized``; Celery runs inline in this server).
    """
    case = pipeline.recovery_reauthorized(case_id=case_id, actor="owner")  # the outbox dispatches on commit
    case.refresh_from_db()
    return {"case_id": case.reference, "state": case.state, "generation": case.resumed_generation}


def abandoned(*, case_id: str, reason: str = "the operator gave up") -> dict[str, Any]:
    """An operator abandoned the case and its reopen window passed: Revive takes each parked run back (what the
    delayed ``run.abandon`` step does before it tells the runtime), so the run's next ``begin`` is refused."""
    from django.db import transaction

    case = services.case_abandon(case_id=case_id, actor="operator:conformance", reason=reason)
    taken = []
    for run_id in case.case_runs.values_list("run_id", flat=True):
        with transaction.atomic():
            taken.append(services.run_abandon_claim(run_id=run_id, case_id=case.pk, actor=ACTOR, reason=reason).outcome)
    return {"case_id": case.reference, "state": case.state, "runs": taken}


# --------------------------------------------------------------------------- the lab's stand-ins
# For the credential helpers' tests of another SDK: the stand-ins run in this process (real HTTP servers on
# loopback); the runner talks to them over HTTP like a worker would and asks here only for set-up, faults and counts.

_STANDINS: dict[str, Any] = {}


def _replace(kind: str, server: Any) -> Any:
    old = _STANDINS.pop(kind, None)
    if old is not None:
        old.stop()
    _STANDINS[kind] = server.start()
    return server


def token_vault_start() -> dict[str, Any]:
    """A new Auth0 Token Vault stand-in (``lab/token_vault_standin.py``), replacing the previous one."""
    from lab.token_vault_standin import TokenVaultStandIn

    vault = _replace("token_vault", TokenVaultStandIn())
    return {
        "url": vault.url,
        "client_id": vault.client_id,
        "client_secret": vault.client_secret,
        "upstream_issuer": vault.upstream_issuer,
    }


def token_vault_sign_in(*, user: str, connection: str, upstream: str) -> dict[str, Any]:
    """The user's Auth0 session with ``upstream`` connected; its refresh token is the exchange's subject token."""
    return {"subject_token": _STANDINS["token_vault"].sign_in(user, connection=connection, upstream=upstream)}


def token_vault_revoke_upstream(*, user: str, connection: str) -> dict[str, Any]:
    """The upstream grant behind the connected account is gone."""
    _STANDINS["token_vault"].revoke_upstream(user, connection)
    return {}


def token_vault_counts() -> dict[str, Any]:
    vault = _STANDINS["token_vault"]
    return {"exchanges": vault.exchanges, "exchange_failures": vault.exchange_failures}


def provider_start(*, provider: str = "auth0", rotating: bool = False, token_delay: float = 0.0) -> dict[str, Any]:
    """A new provider stand-in (``lab/provider_standin.py``), replacing the previous one; with ``rotating``, refresh
    tokens rotate as Auth0's do and a reused one revokes its family."""
    from lab.provider_standin import ProviderStandIn

    standin = ProviderStandIn(provider=provider, rotating=rotating)
    standin.token_delay = token_delay
    _replace("provider", standin)
    return {"url": standin.url}


def provider_issue_refresh_token() -> dict[str, Any]:
    return {"refresh_token": _STANDINS["provider"].issue_refresh_token()}


def provider_revoke_all() -> dict[str, Any]:
    """The provider refuses every refresh from now on (its documented dead-grant answer)."""
    _STANDINS["provider"].revoked = True
    return {}


def provider_counts() -> dict[str, Any]:
    standin = _STANDINS["provider"]
    return {
        "refreshes": standin.refreshes,
        "reuse_detected": standin.reuse_detected,
        "token_requests": standin.token_requests,
    }


def stop_standins() -> None:
    while _STANDINS:
        _STANDINS.popitem()[1].stop()


def api_key_create(*, name: str) -> str:
    _key, raw = services.api_key_create(name=name)
    return raw


OPS = {
    "connection_create": connection_create,
    "reconnect": reconnect,
    "owner_reconnected": owner_reconnected,
    "abandoned": abandoned,
    "token_vault_start": token_vault_start,
    "token_vault_sign_in": token_vault_sign_in,
    "token_vault_revoke_upstream": token_vault_revoke_upstream,
    "token_vault_counts": token_vault_counts,
    "provider_start": provider_start,
    "provider_issue_refresh_token": provider_issue_refresh_token,
    "provider_revoke_all": provider_revoke_all,
    "provider_counts": provider_counts,
}


def perform(op: dict[str, Any]) -> dict[str, Any]:
    """One scenario step's server side: ``{"op": name, ...arguments}``."""
    arguments = {k: v for k, v in op.items() if k != "op"}
    return OPS[op["op"]](**arguments)
