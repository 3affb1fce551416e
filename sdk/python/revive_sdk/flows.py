"""The SDK's protocol, written once without I/O.

Each flow is a generator that yields ``Http`` requests and ``Call``s of user
callbacks and receives their results (or has their exceptions thrown into it).
``Revive`` drives flows synchronously, ``AsyncRevive`` with ``await``; the rules
of ``protect_action`` live only here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .errors import (
    ActionAmbiguous,
    ActionFailed,
    LeaseFenced,
    ProviderError,
    RefreshRequired,
    RetryLater,
    ReviveError,
    RunParked,
)


@dataclass(frozen=True)
class Http:
    method: str
    path: str
    json: Any = None


@dataclass(frozen=True)
class Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    heartbeat: Http | None = None
    """Sent every ``every`` seconds while ``fn`` runs (an executing action's lock extension)."""
    every: float = 0.0


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` (``time.sleep`` or ``asyncio.sleep``, as the driver runs)."""

    seconds: float


@dataclass(frozen=True)
class ActionContext:
    """What ``execute`` and ``reconcile`` receive."""

    idempotency_key: str
    generation: int
    attempt: int
    credential: Any = None


@dataclass(frozen=True)
class Reconciliation:
    """What a ``reconcile`` callback may return to say precisely what it found."""

    found: bool
    evidence: dict[str, Any] = field(default_factory=dict)
    result: Any = None
    external_ref: str = ""


@dataclass(frozen=True)
class Committed:
    """What an ``execute`` callback may return to record an external reference beside its result."""

    result: Any
    external_ref: str = ""


Flow = Generator[Any, Any, Any]


def _seg(value: str) -> str:
    return quote(value, safe="")


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return {"repr": repr(value)[:2000]}


def lease(connection_id: str) -> Flow:
    return (yield Http("POST", f"/connections/{_seg(connection_id)}/lease"))


def register_run(*, run_id: str, runtime: str, workflow_name: str, runtime_ref: dict[str, Any] | None = None) -> Flow:
    return (
        yield Http(
            "POST",
            "/runs",
            {"run_id": run_id, "runtime": runtime, "workflow_name": workflow_name, "runtime_ref": runtime_ref or {}},
        )
    )


def record_checkpoint(
    *, run_id: str, checkpoint_id: str, label: str = "", runtime_ref: dict[str, Any] | None = None
) -> Flow:
    return (
        yield Http(
            "POST",
            f"/runs/{_seg(run_id)}/checkpoints",
            {"checkpoint_id": checkpoint_id, "label": label, "runtime_ref": runtime_ref or {}},
        )
    )


def recovery_status(run_id: str) -> Flow:
    return (yield Http("GET", f"/runs/{_seg(run_id)}/recovery"))


def report_credential_failure(
    *,
    run_id: str,
    connection_id: str,
    generation: int,
    error: ProviderError,
    checkpoint_id: str | None = None,
    action_key: str | None = None,
) -> Flow:
    answer = yield Http(
        "POST",
        f"/runs/{_seg(run_id)}/credential-failures",
        {
            "connection_id": connection_id,
            "generation": generation,
            "checkpoint_id": checkpoint_id,
            "action_key": action_key,
            "error": error.as_payload(),
        },
    )
    return answer


def raise_for_failure(answer: dict[str, Any], *, connection_id: str, generation: int) -> None:
    """Turn Revive's answer to a provider failure into the signal the worker acts on."""
    outcome = answer["outcome"]
    if outcome == "parked":
        raise RunParked(answer["case_id"], connection_id=connection_id, generation=generation)
    if outcome == "retry":
        raise RetryLater(float(answer.get("retry_after") or 0), code=answer.get("code", ""))
    if outcome == "refresh":
        raise RefreshRequired(answer.get("code", ""))
    if outcome == "reacquire":
        raise LeaseFenced(generation, answer.get("current_generation"))
    raise ActionFailed(answer.get("failure_class", "unknown"), answer.get("code", ""), answer.get("message", ""))


def protect_action(
    *,
    run_id: str,
    checkpoint_id: str,
    connection_id: str,
    action_key: str,
    execute: Callable[[ActionContext], Any],
    credential: Callable[[], Any] | None = None,
    reconcile: Callable[[ActionContext], Any] | None = None,
    params: dict[str, Any] | None = None,
    generation: int | None = None,
) -> Flow:
    """Run ``execute`` at most once for (run, action key); see ``Revive.protect_action``."""
    if generation is None:
        generation = (yield from lease(connection_id))["generation"]
    base = f"/runs/{_seg(run_id)}/actions/{_seg(action_key)}"
    # At most two rounds: a reconciliation that finds nothing lets the next begin execute.
    for _ in range(2):
        begun = yield Http(
            "POST",
            f"{base}/begin",
            {
                "checkpoint_id": checkpoint_id,
                "connection_id": connection_id,
                "generation": generation,
                "params": params,
            },
        )
        decision = begun["decision"]
        key = begun["idempotency_key"]
        if decision == "replay":
            return begun["result"]
        if decision == "fenced":
            raise LeaseFenced(generation, begun.get("current_generation"))
        if decision == "parked":
            raise RunParked(begun["case_id"], connection_id=connection_id, generation=generation)
        ctx = ActionContext(idempotency_key=key, generation=generation, attempt=begun.get("attempt", 0))
        if decision == "reconcile":
            if reconcile is None:
                raise ActionAmbiguous(action_key, key)
            try:
                found = yield Call(reconcile, (ctx,))
            except ProviderError as exc:
                # Looking the effect up needs the credential too: a rejected one parks the run (the action
                # stays ambiguous until it is reconciled, by a server-side reconciler or after the resume).
                answer = yield from report_credential_failure(
                    run_id=run_id,
                    connection_id=connection_id,
                    generation=generation,
                    error=exc,
                    checkpoint_id=checkpoint_id,
                    action_key=action_key,
                )
                raise_for_failure(answer, connection_id=connection_id, generation=generation)
            rec = (
                found
                if isinstance(found, Reconciliation)
                else (
                    Reconciliation(found=False, evidence={"source": "sdk reconcile callback", "found": False})
                    if found is None or found is False
                    else Reconciliation(
                        found=True,
                        evidence={"source": "sdk reconcile callback", "found": _jsonable(found)},
                        result=found,
                    )
                )
            )
            yield Http(
                "POST",
                f"{base}/reconcile",
                {
                    "generation": generation,
                    "found": rec.found,
                    "evidence": rec.evidence,
                    "result": _jsonable(rec.result),
                    "external_ref": rec.external_ref,
                },
            )
            if rec.found:
                return rec.result
            continue
        # decision == "execute": the ledger now holds this action as executing under our generation.
        try:
            cred = (yield Call(credential)) if credential is not None else None
        except ProviderError as exc:
            answer = yield Http("POST", f"{base}/fail", {"generation": generation, "error": exc.as_payload()})
            raise_for_failure(answer, connection_id=connection_id, generation=generation)
        except Exception as exc:
            # Nothing mutating ran: record the attempt as failed so it may run again later.
            yield Http(
                "POST",
                f"{base}/fail",
                {
                    "generation": generation,
                    "error": {
                        "status": None,
                        "body": {"error": "credential_unavailable", "error_description": type(exc).__name__},
                    },
                },
            )
            raise
        try:
            # The lock Revive holds for this attempt is short; while execute runs the driver extends it, so a
            # dead worker's action is known within one lock period, not after a long fixed timeout.
            lock = float(begun.get("lock_seconds") or 0)
            beat = Http("POST", f"{base}/heartbeat", {"generation": generation}) if lock > 0 else None
            outcome = yield Call(
                execute, (ActionContext(key, generation, ctx.attempt, cred),), heartbeat=beat, every=max(lock / 3, 0.5)
            )
        except ProviderError as exc:
            answer = yield Http("POST", f"{base}/fail", {"generation": generation, "error": exc.as_payload()})
            raise_for_failure(answer, connection_id=connection_id, generation=generation)
        except BaseException as exc:
            # The effect may or may not have happened: it must be reconciled before it can run again.
            try:
                yield Http(
                    "POST",
                    f"{base}/ambiguous",
                    {"generation": generation, "reason": f"{type(exc).__name__}: {exc}"[:480]},
                )
            except ReviveError:
                pass  # the reaper marks it ambiguous once its lock expires
            raise
        result, external_ref = (
            (outcome.result, outcome.external_ref) if isinstance(outcome, Committed) else (outcome, "")
        )
        yield Http(
            "POST",
            f"{base}/commit",
            {"generation": generation, "result": _jsonable(result), "external_ref": external_ref},
        )
        return result
    raise ActionAmbiguous(action_key, key)


# --------------------------------------------------------------------------- single-flight refresh


@dataclass
class RefreshMemo:
    """What one credential helper remembers between calls: the refresh round of what it last read, and whether
    that credential was rejected (so the next call refreshes even if it looks fresh)."""

    round: int = 0
    rejected: bool = False
    generation: int = 0


def refresh_single_flight(
    *,
    connection_id: str,
    generation: int,
    holder: str,
    refresh: Callable[[], Any],
    reload: Callable[[], Any],
    seen_round: int = 0,
    max_wait: float = 120.0,
) -> Flow:
    """Refresh this generation's credential once across all workers; return ``(credential, round)``.

    Revive answers with a decision, never a token: ``refresh`` (we hold the round: call ``refresh``, which talks
    to the provider and stores the new grant where the credential lives, then release), ``wait`` (someone else
    holds it), ``reload`` (a round newer than ours was refreshed: call ``reload``) or ``fenced``.
    """
    base = f"/connections/{_seg(connection_id)}/refresh-claims"
    waited = 0.0
    while True:
        answer = yield Http("POST", base, {"generation": generation, "holder": holder, "seen_round": seen_round})
        decision = answer["decision"]
        if decision == "fenced":
            raise LeaseFenced(generation, answer.get("current_generation"))
        if decision == "reload":
            return (yield Call(reload)), answer["round"]
        if decision == "wait":
            if waited >= max_wait:
                raise RetryLater(float(answer.get("retry_after") or 1.0), code="refresh_in_progress")
            delay = float(answer.get("retry_after") or 0.2)
            yield Sleep(delay)
            waited += delay
            continue
        held = answer["round"]
        release = {"generation": generation, "holder": holder, "round": held}
        try:
            credential = yield Call(refresh)
        except BaseException:
            try:
                yield Http("POST", f"{base}/release", {**release, "outcome": "failed"})
            except ReviveError:
                pass  # the claim expires on its own
            raise
        yield Http("POST", f"{base}/release", {**release, "outcome": "refreshed"})
        return credential, held


def credential(
    *,
    connection_id: str,
    holder: str,
    load: Callable[[], Any],
    refresh: Callable[[], Any],
    is_fresh: Callable[[Any], bool],
    memo: RefreshMemo,
) -> Flow:
    """A usable credential: the stored one if it is fresh and was not rejected, else a single-flight refresh."""
    if not memo.rejected:
        current = yield Call(load)
        if is_fresh(current):
            return current
    generation = (yield from lease(connection_id))["generation"]
    if generation != memo.generation:  # rounds count per generation
        memo.generation, memo.round = generation, 0
    value, memo.round = yield from refresh_single_flight(
        connection_id=connection_id,
        generation=generation,
        holder=holder,
        refresh=refresh,
        reload=load,
        seen_round=memo.round,
    )
    memo.rejected = False
    return value
