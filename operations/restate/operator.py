"""Operator recovery services for Revive's Restate runtime (seed ``002_…``).

Inspect, act once, verify: :func:`restate_doctor` reads, the other three each
change one thing through the Restate admin API.

Settings (``django.conf.settings``, all optional):

* ``RESTATE_ADMIN_URL``: the admin API base URL;
* ``RESTATE_INGRESS_URL``: the ingress base URL (else the one the admin API advertises);
* ``RESTATE_PROBE_TIMEOUT``: seconds per doctor probe call;
* ``RESTATE_DRAIN_TIMEOUT``: seconds cleanup waits, in total, for stale deployments to drain;
* ``RESTATE_ADMIN_TIMEOUT``: seconds per admin call of the write routes (registration
  includes Restate's discovery call to the service, so it gets longer than a probe).

Restate 1.7 deletes deployments only by force, so "drain" is Revive's: before
deleting a stale deployment, cleanup waits (bounded) until no unfinished
invocation is pinned to it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import re
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from audit.redaction import redact_text, redact_url
from cases.runtimes.restate_admin import (
    TERMINAL_STATUSES,
    RestateAdminClient,
    RestateAdminError,
    RestateIngressClient,
    RestateResponseError,
    RestateTransportError,
    sql_text,
)
from revive_site.errors import ValidationFailed

from ..probes import DEGRADED, OK, UNREACHABLE, ms_since, probes_run, start
from .errors import (
    RestateAdminUnreachable,
    RestateDeploymentNotFound,
    RestateDeploymentRegistrationFailed,
    RestateServiceNotFound,
    RestateWorkflowRetryBlocked,
)

logger = logging.getLogger(__name__)

RECENT_FAILURES_LIMIT = 20
IDENTIFIER = re.compile(r"^[a-zA-Z0-9_-]+$")
DRAIN_POLL_INTERVAL = 0.25


@dataclasses.dataclass(frozen=True)
class RestateConfig:
    admin_url: str
    ingress_url: str
    probe_timeout: float
    drain_timeout: float
    admin_timeout: float


def restate_config() -> RestateConfig:
    probe_timeout = float(getattr(settings, "RESTATE_PROBE_TIMEOUT", 3.0))
    return RestateConfig(
        admin_url=str(getattr(settings, "RESTATE_ADMIN_URL", "") or ""),
        ingress_url=str(getattr(settings, "RESTATE_INGRESS_URL", "") or ""),
        probe_timeout=probe_timeout,
        drain_timeout=float(getattr(settings, "RESTATE_DRAIN_TIMEOUT", 30.0)),
        admin_timeout=float(getattr(settings, "RESTATE_ADMIN_TIMEOUT", max(30.0, probe_timeout))),
    )


def restate_admin_url_resolve(admin_url: str, *, timeout: float) -> str:
    """Check that the admin URL is usable and its host resolves, before any probe or write.

    Raises ``RESTATE_ADMIN_UNREACHABLE`` otherwise: this is the one failure that
    fails doctor as a whole.
    """
    if not admin_url:
        raise RestateAdminUnreachable("RESTATE_ADMIN_URL is not configured.")
    try:
        parts = urlsplit(admin_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise RestateAdminUnreachable("RESTATE_ADMIN_URL is not a valid URL.") from None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise RestateAdminUnreachable("RESTATE_ADMIN_URL must be an http(s) URL with a host.")
    host = parts.hostname
    try:
        start("restate-resolve", lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)).result(timeout)
    except concurrent.futures.TimeoutError:
        raise RestateAdminUnreachable(
            f"Resolving the admin host {host!r} did not finish within {timeout:g}s."
        ) from None
    except (OSError, UnicodeError) as exc:
        raise RestateAdminUnreachable(f"The admin host {host!r} cannot be resolved: {exc}.") from None
    return admin_url


def _iso_utc(value: Any) -> str | None:
    """Restate timestamps (nanosecond precision, any offset) as ISO 8601 UTC with milliseconds."""
    if not isinstance(value, str) or not value:
        return None
    match = re.fullmatch(r"(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?", value.strip())
    if not match:
        return value
    base, fraction, offset = match.groups()
    micros = (fraction or "0")[:6].ljust(6, "0")
    offset = "+00:00" if offset in (None, "Z") else offset
    try:
        parsed = datetime.fromisoformat(f"{base.replace(' ', 'T')}.{micros}{offset}").astimezone(UTC)
    except ValueError:
        return value
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}Z"


def _failure(exc: RestateAdminError) -> tuple[str, str]:
    return (UNREACHABLE if isinstance(exc, RestateTransportError) else DEGRADED), exc.message


# -- doctor -------------------------------------------------------------------


def _probe_ingress(config: RestateConfig, admin_url: str) -> dict[str, Any]:
    ingress_url = config.ingress_url
    try:
        if not ingress_url:
            with RestateAdminClient(admin_url, timeout=config.probe_timeout) as admin:
                ingress_url = admin.version().ingress_endpoint or ""
        if not ingress_url:
            return {"status": UNREACHABLE, "latencyMs": None, "error": "No ingress URL is configured or advertised."}
        started = time.monotonic()
        RestateIngressClient(ingress_url, timeout=config.probe_timeout).health()
        return {"status": OK, "latencyMs": ms_since(started), "error": None}
    except RestateAdminError as exc:
        status, error = _failure(exc)
        return {"status": status, "latencyMs": None, "error": error}


def _probe_admin(config: RestateConfig, admin_url: str) -> dict[str, Any]:
    with RestateAdminClient(admin_url, timeout=config.probe_timeout) as admin:
        started = time.monotonic()
        try:
            admin.health()
        except RestateAdminError as exc:
            status, error = _failure(exc)
            return {"status": status, "latencyMs": None, "version": None, "error": error}
        latency = ms_since(started)
        try:
            version = admin.version().version
        except RestateAdminError as exc:
            return {"status": DEGRADED, "latencyMs": latency, "version": None, "error": exc.message}
    return {"status": OK, "latencyMs": latency, "version": version, "error": None}


def _probe_listing(
    config: RestateConfig, admin_url: str, listing: Callable[[RestateAdminClient], list[dict[str, Any]]]
) -> dict[str, Any]:
    try:
        with RestateAdminClient(admin_url, timeout=config.probe_timeout) as admin:
            items = listing(admin)
    except RestateAdminError as exc:
        status, error = _failure(exc)
        return {"status": status, "items": [], "error": error}
    return {"status": OK, "items": items, "error": None}


def _probe_deployments(config: RestateConfig, admin_url: str) -> dict[str, Any]:
    return _probe_listing(
        config,
        admin_url,
        lambda admin: [
            {"id": d.id, "serviceUrl": d.service_url, "createdAt": _iso_utc(d.created_at)}
            for d in sorted(admin.list_deployments(), key=lambda d: (d.created_at, d.id), reverse=True)
        ],
    )


def _probe_services(config: RestateConfig, admin_url: str) -> dict[str, Any]:
    return _probe_listing(
        config,
        admin_url,
        lambda admin: [
            {"name": s.name, "revision": s.revision} for s in sorted(admin.list_services(), key=lambda s: s.name)
        ],
    )


_BY_STATUS_SQL = "SELECT status, COUNT(*) AS count FROM sys_invocation GROUP BY status"
_RECENT_FAILURES_SQL = (
    "SELECT id, target_service_name, target_service_key, completed_at, modified_at, completion_failure "
    "FROM sys_invocation WHERE status = 'completed' AND completion_result = 'failure' "
    f"ORDER BY modified_at DESC, id DESC LIMIT {RECENT_FAILURES_LIMIT}"
)


def _probe_invocations(config: RestateConfig, admin_url: str) -> dict[str, Any]:
    """Counts by status, and the terminal failures most recently modified first (what recovery acts on)."""
    try:
        with RestateAdminClient(admin_url, timeout=config.probe_timeout) as admin:
            counts = admin.query(_BY_STATUS_SQL)
            failures = admin.query(_RECENT_FAILURES_SQL)
        by_status: dict[str, int] = {}
        for row in counts:
            status, count = row.get("status"), row.get("count")
            if not isinstance(status, str) or not isinstance(count, int) or isinstance(count, bool):
                raise RestateResponseError("sys_invocation counts have an unexpected shape")
            by_status[status] = by_status.get(status, 0) + count
        recent = []
        for row in failures[:RECENT_FAILURES_LIMIT]:
            if not isinstance(row.get("id"), str):
                raise RestateResponseError("sys_invocation failures have an unexpected shape")
            recent.append(
                {
                    "id": row["id"],
                    "serviceName": str(row.get("target_service_name") or ""),
                    "serviceKey": row.get("target_service_key") or None,
                    "failedAt": _iso_utc(row.get("completed_at")) or _iso_utc(row.get("modified_at")),
                    "errorMessage": redact_text(str(row.get("completion_failure") or "")) or None,
                }
            )
    except RestateAdminError as exc:
        status, error = _failure(exc)
        return {"status": status, "byStatus": {}, "recentFailures": [], "error": error}
    return {"status": OK, "byStatus": by_status, "recentFailures": recent, "error": None}


_PROBES: dict[str, Callable[[RestateConfig, str], dict[str, Any]]] = {
    "ingress": _probe_ingress,
    "admin": _probe_admin,
    "deployments": _probe_deployments,
    "services": _probe_services,
    "invocations": _probe_invocations,
}

_EMPTY_READOUT: dict[str, dict[str, Any]] = {
    "ingress": {"latencyMs": None},
    "admin": {"latencyMs": None, "version": None},
    "deployments": {"items": []},
    "services": {"items": []},
    "invocations": {"byStatus": {}, "recentFailures": []},
}


def restate_doctor() -> dict[str, Any]:
    """Read the health of every Restate component, changing nothing.

    The five probes run in parallel; each makes at most two calls bounded by
    ``RESTATE_PROBE_TIMEOUT``, and doctor stops waiting after twice that (plus
    a second), so it answers in bounded time even when the engine hangs. A
    probe that fails marks only its own component. Only an admin URL that
    cannot be resolved fails the whole call (``RESTATE_ADMIN_UNREACHABLE``).
    """
    config = restate_config()
    admin_url = restate_admin_url_resolve(config.admin_url, timeout=config.probe_timeout)
    return probes_run(
        {name: functools.partial(probe, config, admin_url) for name, probe in _PROBES.items()},
        budget=2 * config.probe_timeout + 1.0,
        unfinished=lambda name, error: {"status": UNREACHABLE, **_EMPTY_READOUT[name], "error": error},
        doctor="restate-doctor",
    )


# -- force-redeploy -----------------------------------------------------------


def restate_force_redeploy(*, service_url: str, force: bool = True) -> str:
    """Register ``service_url`` with the admin API (forced by default) and return the deployment id.

    Registration only: old deployments are neither drained nor deleted.
    """
    config = restate_config()
    admin_url = restate_admin_url_resolve(config.admin_url, timeout=config.probe_timeout)
    try:
        with RestateAdminClient(admin_url, timeout=config.admin_timeout) as admin:
            registered = admin.register_deployment(service_url, force=force)
    except RestateTransportError as exc:
        raise RestateAdminUnreachable(f"The Restate admin API cannot be reached: {exc.message}") from None
    except RestateResponseError as exc:
        raise RestateDeploymentRegistrationFailed(
            f"The Restate admin API did not register the deployment: {exc.message}",
            data={"adminStatus": exc.status_code},
        ) from None
    logger.info(
        "restate force-redeploy: %s deployment %s for %s (force=%s)",
        "created" if registered.created else "re-registered",
        registered.id,
        redact_url(service_url),
        force,
    )
    return registered.id


# -- cleanup-stale-deployments ------------------------------------------------


def _pinned_unfinished(admin: RestateAdminClient, deployment_id: str) -> list[str]:
    terminal = ", ".join(sql_text(s) for s in sorted(TERMINAL_STATUSES))
    rows = admin.query(
        f"SELECT id FROM sys_invocation WHERE pinned_deployment_id = {sql_text(deployment_id)} "
        f"AND status NOT IN ({terminal})"
    )
    return [str(row.get("id")) for row in rows]


def _service_url_reachable(service_url: str | None, timeout: float) -> bool:
    """Whether anything accepts a TCP connection at the deployment's host and port."""
    if not service_url:
        return True  # not an HTTP deployment: assume it can drain
    try:
        parts = urlsplit(service_url)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _drain_and_delete(
    admin: RestateAdminClient, deployment, *, force_drain: bool, deadline: float, probe_timeout: float
) -> None:
    label = f"{deployment.id} ({redact_url(deployment.service_url or 'no URL')})"
    if not force_drain:
        pending = _pinned_unfinished(admin, deployment.id)
        if pending and not _service_url_reachable(deployment.service_url, probe_timeout):
            logger.warning(
                "restate cleanup: stale deployment %s is unreachable and cannot drain; killing %d pinned invocation(s)",
                label,
                len(pending),
            )
            for invocation_id in pending:
                try:
                    admin.kill_invocation(invocation_id)
                except RestateResponseError as exc:
                    if exc.status_code not in (404, 409):
                        raise
            pending = []
        while pending and time.monotonic() < deadline:
            time.sleep(min(DRAIN_POLL_INTERVAL, max(0.0, deadline - time.monotonic())))
            pending = _pinned_unfinished(admin, deployment.id)
        if pending:
            logger.warning(
                "restate cleanup: stale deployment %s did not drain in time; %d invocation(s) still pinned "
                "(%s); left registered",
                label,
                len(pending),
                ", ".join(pending[:20]),
            )
            return
    admin.delete_deployment(deployment.id, force=True)
    logger.info("restate cleanup: deleted stale deployment %s (forceDrain=%s)", label, force_drain)


def restate_cleanup_stale_deployments(*, service_url: str, force_drain: bool = False) -> None:
    """Keep the deployment registered at exactly ``service_url``; drain and delete every other one.

    With ``force_drain=False`` a stale deployment is deleted once no unfinished
    invocation is pinned to it, waiting at most ``RESTATE_DRAIN_TIMEOUT``
    seconds over the whole call; one whose service is unreachable cannot
    drain, so its pinned invocations are killed first. With
    ``force_drain=True`` stale deployments are deleted at once, pending
    invocations or not. Failures on one stale deployment are logged and the
    others still get their turn.
    """
    config = restate_config()
    admin_url = restate_admin_url_resolve(config.admin_url, timeout=config.probe_timeout)
    with RestateAdminClient(admin_url, timeout=config.admin_timeout) as admin:
        try:
            deployments = admin.list_deployments()
        except RestateAdminError as exc:
            raise RestateAdminUnreachable(f"Listing Restate deployments failed: {exc.message}") from None
        keep = next((d for d in deployments if d.service_url == service_url), None)
        if keep is None:
            raise RestateDeploymentNotFound()
        deadline = time.monotonic() + config.drain_timeout
        for deployment in deployments:
            if deployment.id == keep.id:
                continue
            try:
                _drain_and_delete(
                    admin, deployment, force_drain=force_drain, deadline=deadline, probe_timeout=config.probe_timeout
                )
            except RestateAdminError as exc:
                logger.warning("restate cleanup: stale deployment %s not removed: %s", deployment.id, exc.message)


# -- recover-stuck-workflow ---------------------------------------------------


def restate_recover_stuck_workflow(*, service_name: str, service_key: str) -> None:
    """Prepare one workflow key for a fresh run: purge its terminal failures, then clear its keyed state.

    Refuses (``RESTATE_WORKFLOW_RETRY_BLOCKED``) without changing anything when
    any invocation of the key is still active (every status but completed,
    killed and cancelled, unknown ones included), or when a run of the key
    already succeeded (a shared handler's invocation, such as a status query,
    is not a run). A key with no invocation left is cleared and acknowledged,
    so repeating a successful call is harmless. A service Restate does not know
    is ``RESTATE_SERVICE_NOT_FOUND`` (404), not an acknowledgement.
    """
    for field, value in (("serviceName", service_name), ("serviceKey", service_key)):
        if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
            raise ValidationFailed(f"{field} must match ^[a-zA-Z0-9_-]+$.", data={"field": field})
    blocked = RestateWorkflowRetryBlocked
    config = restate_config()
    admin_url = restate_admin_url_resolve(config.admin_url, timeout=config.probe_timeout)
    with RestateAdminClient(admin_url, timeout=config.admin_timeout) as admin:
        try:
            try:
                service = admin.get_service(service_name)
            except RestateResponseError as exc:
                if exc.status_code == 404:
                    raise RestateServiceNotFound(data={"serviceName": service_name}) from None
                raise
            rows = admin.query(
                "SELECT id, target_handler_name, status, completion_result FROM sys_invocation "
                f"WHERE target_service_name = {sql_text(service_name)} "
                f"AND target_service_key = {sql_text(service_key)} ORDER BY modified_at DESC"
            )
            if not all(isinstance(r.get("id"), str) and isinstance(r.get("status"), str) for r in rows):
                raise RestateResponseError("sys_invocation rows have an unexpected shape")
            active = [r["id"] for r in rows if r["status"] not in TERMINAL_STATUSES]
            if active:
                raise blocked(blocked.ACTIVE_INVOCATION, active)
            shared = {h.name for h in service.handlers if h.ty == "Shared"}
        except RestateTransportError as exc:
            raise RestateAdminUnreachable(f"The Restate admin API cannot be reached: {exc.message}") from None
        except RestateResponseError as exc:
            raise blocked(blocked.QUERY_FAILED, [], detail=exc.message) from None

        def is_failure(row: dict[str, Any]) -> bool:
            return row["status"] in ("killed", "cancelled") or row.get("completion_result") == "failure"

        succeeded = [r["id"] for r in rows if not is_failure(r) and r.get("target_handler_name") not in shared]
        if succeeded:
            raise blocked(blocked.ALREADY_SUCCEEDED, succeeded)

        failed = [r["id"] for r in rows if is_failure(r)]
        for invocation_id in failed:
            try:
                try:
                    admin.kill_invocation(invocation_id)
                except RestateResponseError as exc:
                    if exc.status_code not in (404, 409):  # gone, or already completed: nothing to kill
                        raise
                try:
                    admin.purge_invocation(invocation_id)
                except RestateResponseError as exc:
                    if exc.status_code != 404:  # already purged
                        raise
            except RestateTransportError as exc:
                raise RestateAdminUnreachable(f"The Restate admin API cannot be reached: {exc.message}") from None
            except RestateResponseError as exc:
                raise blocked(blocked.PURGE_FAILED, [invocation_id], detail=exc.message) from None
        try:
            admin.clear_state(service_name, service_key)
        except RestateTransportError as exc:
            raise RestateAdminUnreachable(f"The Restate admin API cannot be reached: {exc.message}") from None
        except RestateResponseError as exc:
            raise blocked(blocked.PURGE_FAILED, [], detail=f"clearing keyed state: {exc.message}") from None
    logger.info(
        "restate recover-stuck-workflow: %s/%s purged %d terminal-failed invocation(s) and cleared keyed state",
        service_name,
        service_key,
        len(failed),
    )
