"""What the conformance scenarios (``sdk/conformance/*.json``) ask of the server, beside the SDK's own calls.

Both runners use these: the Python SDK's tests call them in-process beside pytest-django's live server, and
``live_server.py`` performs them for the other SDKs' runners on a line of JSON each. They call the services a
person or Revive itself would (register a connection, the owner's reconnect), never the database directly.
"""

from __future__ import annotations

from typing import Any

from cases import pipeline, services

ACTOR = "conformance"


def connection_create(*, connection_id: str) -> dict[str, Any]:
    conn = services.connection_create(connection_id=connection_id, provider="entra", owner_email="owner@example.com",
                                      provider_subject=f"oid-{connection_id}", provider_tenant="tid-conformance")
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


def api_key_create(*, name: str) -> str:
    _key, raw = services.api_key_create(name=name)
    return raw


OPS = {"connection_create": connection_create, "reconnect": reconnect, "owner_reconnected": owner_reconnected,
       "abandoned": abandoned}


def perform(op: dict[str, Any]) -> dict[str, Any]:
    """One scenario step's server side: ``{"op": name, ...arguments}``."""
    arguments = {k: v for k, v in op.items() if k != "op"}
    return OPS[op["op"]](**arguments)
