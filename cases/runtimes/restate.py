"""Restate: resolve the run's durable promise through its shared handler; status from ``sys_invocation``.

The workflow (``revive_sdk.restate``) awaits a durable promise named after the
connection and the *rejected* generation. Revive calls the workflow's shared
handler ``revive_reauthorized`` over the ingress; the handler resolves the
promise of every connection the resume names. A promise can be resolved before
the workflow awaits it (the value waits in Restate), so an early resume is not
lost; the ingress call carries an ``idempotency-key`` derived from the resume,
so a duplicate delivery is the same invocation, and the handler resolves a
promise only once.

A run whose case was abandoned is told through the same handler with an ``abandoned`` value (``AbandonRequest``,
its own idempotency key): the handler resolves the promise with it, and the SDK's wait raises ``RunAbandoned``
(a ``TerminalError``), which the workflow may catch; uncaught, the invocation ends failed instead of suspended.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from django.conf import settings

from revive_sdk.names import RESTATE_RESUME_HANDLER as RESUME_HANDLER

from .base import (
    AbandonRequest,
    ResumeRequest,
    ResumeResult,
    RunGone,
    RunNotWaiting,
    RunStatus,
    RuntimeAdapter,
    RuntimeMisconfigured,
    RuntimeUnavailable,
)
from .restate_admin import TERMINAL_STATUSES, RestateAdminClient, RestateAdminError, RestateTransportError, sql_text


class RestateAdapter(RuntimeAdapter):
    runtime = "restate"

    @staticmethod
    def _address(run) -> dict[str, str]:
        ref = run.runtime_ref or {}
        if not ref.get("service") or not ref.get("key"):
            raise RuntimeMisconfigured(
                f"run {run.pk} has no Restate service and key in its runtime reference", detail={"runtime_ref": ref}
            )
        return {
            "service": str(ref["service"]),
            "key": str(ref["key"]),
            "handler": str(ref.get("handler") or "run"),
            "resume_handler": str(ref.get("resume_handler") or RESUME_HANDLER),
        }

    def _invocations(self, address: dict[str, str]) -> list[dict[str, Any]]:
        sql = (
            "SELECT id, status, completion_failure, created_at, modified_at FROM sys_invocation "
            f"WHERE target_service_name = {sql_text(address['service'])} "
            f"AND target_service_key = {sql_text(address['key'])} "
            f"AND target_handler_name = {sql_text(address['handler'])} ORDER BY created_at DESC"
        )
        try:
            with RestateAdminClient(settings.RESTATE_ADMIN_URL, timeout=settings.RESTATE_PROBE_TIMEOUT) as admin:
                return admin.query(sql)
        except RestateTransportError as exc:
            raise RuntimeUnavailable(f"Restate admin API unreachable: {exc.message}") from exc
        except RestateAdminError as exc:
            raise RuntimeUnavailable(f"Restate admin API error: {exc.message}") from exc

    def park(self, run, case) -> dict[str, Any]:
        address = self._address(run)
        rows = self._invocations(address)
        if not rows:
            raise RunNotWaiting(f"no invocation of {address['service']}/{address['key']} yet", detail=address)
        row = rows[0]
        if row["status"] in TERMINAL_STATUSES:
            raise RunGone(f"invocation {row['id']} is {row['status']}", detail={**address, "invocation_id": row["id"]})
        return {**address, "invocation_id": row["id"], "status": row["status"]}

    def _post(self, run, payload: dict[str, Any], idempotency_key: str) -> ResumeResult:
        address = self._address(run)
        url = (
            f"{settings.RESTATE_INGRESS_URL.rstrip('/')}/{quote(address['service'], safe='')}/"
            f"{quote(address['key'], safe='')}/{quote(address['resume_handler'], safe='')}"
        )
        try:
            response = httpx.post(
                url, json=payload, timeout=settings.RESTATE_RESUME_TIMEOUT, headers={"idempotency-key": idempotency_key}
            )
        except httpx.HTTPError as exc:
            raise RuntimeUnavailable(f"Restate ingress unreachable: {type(exc).__name__}", detail=address) from exc
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise RuntimeUnavailable(f"Restate ingress answered {response.status_code}", detail=address)
        if response.status_code == 404:
            raise RuntimeMisconfigured(
                f"Restate has no handler {address['service']}/{address['resume_handler']}", detail=address
            )
        if response.status_code >= 400:
            raise RunGone(
                f"Restate refused the {payload.get('revive')}: HTTP {response.status_code} {response.text[:200]}",
                detail=address,
            )
        try:
            answer = response.json()
        except ValueError:
            answer = None
        return ResumeResult(detail={**address, "handler_answer": answer})

    def resume(self, case, new_generation: int, *, run, request: ResumeRequest) -> ResumeResult:
        return self._post(run, request.payload(), request.idempotency_key)

    def can_abandon(self, run) -> bool:
        return True

    def abandon(self, *, run, request: AbandonRequest) -> ResumeResult:
        """Resolve the run's promise with the ``abandoned`` value (a worker on an SDK without it answers 400:
        ``RunGone``, recorded as not told)."""
        return self._post(run, request.payload(), request.idempotency_key)

    def status(self, run) -> RunStatus:
        address = self._address(run)
        rows = self._invocations(address)
        if not rows:
            return RunStatus("unknown", address)
        row = rows[0]
        detail = {**address, "invocation_id": row["id"], "status": row["status"]}
        state = {"suspended": "waiting", "completed": "completed", "killed": "failed", "cancelled": "failed"}
        if row["status"] == "completed" and row.get("completion_failure"):
            return RunStatus("failed", {**detail, "failure": str(row["completion_failure"])[:500]})
        return RunStatus(state.get(row["status"], "running"), detail)
