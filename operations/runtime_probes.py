"""The doctor's probes of the durable runtimes Revive resumes runs on (``REVIVE_RUNTIMES``): each answers whether
Revive can reach the runtime as its adapter would, without changing anything there."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from django.conf import settings
from django.utils.module_loading import import_string

from audit.redaction import redact_text, redact_url

from .probes import DEGRADED, OK, UNREACHABLE, error_line, ms_since, worst_status

if TYPE_CHECKING:
    from .doctor import DoctorConfig


def _runtime_item(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "status": OK,
        "latencyMs": None,
        "target": None,
        "version": None,
        "components": None,
        "note": None,
        "error": None,
    }


def _postgres_target(conninfo: str) -> str:
    from psycopg.conninfo import conninfo_to_dict

    parts = conninfo_to_dict(conninfo)
    return f"postgresql://{parts.get('host') or 'localhost'}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


def _probe_langgraph(config: DoctorConfig) -> dict[str, Any]:
    """The checkpointer's database answers (PostgreSQL), or its SQLite file is usable."""
    from cases.runtimes.langgraph import checkpoint_url

    url = checkpoint_url()
    if url.startswith(("postgres://", "postgresql://")) or "dbname=" in url:
        import psycopg

        try:
            target = _postgres_target(url)
        except psycopg.Error:
            return {"status": DEGRADED, "error": "The checkpoint URL is not a valid PostgreSQL URL."}
        try:
            with psycopg.connect(url, connect_timeout=max(1, math.ceil(config.probe_timeout)), autocommit=True) as conn:
                conn.execute(f"SET statement_timeout = {int(config.probe_timeout * 1000)}")
                started = time.monotonic()
                conn.execute("SELECT 1").fetchone()
                latency = ms_since(started)
                row = conn.execute("SELECT to_regclass('checkpoints') IS NOT NULL").fetchone()
                assert row is not None  # a SELECT of one expression answers one row
                tables = row[0]
        except psycopg.OperationalError as exc:
            return {"status": UNREACHABLE, "target": target, "error": error_line(exc)}
        except psycopg.Error as exc:
            return {"status": DEGRADED, "target": target, "error": error_line(exc)}
        note = None if tables else "No checkpoint tables yet: the adapter creates them on first use."
        return {"status": OK, "latencyMs": latency, "target": target, "note": note}

    import sqlite3

    path = Path(url[len("sqlite:///") :] if url.startswith("sqlite:///") else url)
    target = f"sqlite:///{path}"
    if not path.exists():
        directory = next((p for p in path.parents if p.exists()), None)
        if directory is None or not os.access(directory, os.W_OK):
            return {"status": DEGRADED, "target": target, "error": f"{path} does not exist and cannot be created."}
        return {"status": OK, "target": target, "note": "No checkpoint file yet: the adapter creates it on first use."}
    try:
        started = time.monotonic()
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=config.probe_timeout)
        try:
            db.execute("SELECT 1").fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return {"status": DEGRADED, "target": target, "error": error_line(exc)}
    return {"status": OK, "latencyMs": ms_since(started), "target": target}


def _probe_temporal(config: DoctorConfig) -> dict[str, Any]:
    """The frontend answers at ``TEMPORAL_ADDRESS`` and describes ``TEMPORAL_NAMESPACE``.

    A bare TCP connect would call a hung server healthy, so the probe speaks
    Temporal's API, each step bounded.
    """
    address = str(settings.TEMPORAL_ADDRESS)
    namespace = str(settings.TEMPORAL_NAMESPACE)
    timeout = config.probe_timeout

    async def check() -> dict[str, Any]:
        from temporalio.api.workflowservice.v1 import DescribeNamespaceRequest, GetSystemInfoRequest
        from temporalio.client import Client

        client = await asyncio.wait_for(Client.connect(address, namespace=namespace), timeout)
        started = time.monotonic()
        await client.workflow_service.describe_namespace(
            DescribeNamespaceRequest(namespace=namespace), timeout=timedelta(seconds=timeout)
        )
        latency = ms_since(started)
        info = await client.workflow_service.get_system_info(GetSystemInfoRequest(), timeout=timedelta(seconds=timeout))
        return {"latencyMs": latency, "version": info.server_version or None}

    target = f"{address} (namespace {namespace})"
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except ValueError:
        return {"status": DEGRADED, "target": target, "error": "TEMPORAL_ADDRESS must be host:port."}
    except OSError as exc:
        return {
            "status": UNREACHABLE,
            "target": target,
            "error": f"{address}: {exc.strerror or error_line(exc)}"
            if not isinstance(exc, TimeoutError)
            else f"{address}: no TCP connection within {timeout:g}s.",
        }
    try:
        result = asyncio.run(asyncio.wait_for(check(), 2 * timeout))
    except TimeoutError:
        return {"status": UNREACHABLE, "target": target, "error": f"Temporal did not answer within {timeout:g}s."}
    except Exception as exc:
        from temporalio.service import RPCError, RPCStatusCode

        if isinstance(exc, RPCError) and exc.status not in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return {"status": DEGRADED, "target": target, "error": error_line(exc)}
        return {"status": UNREACHABLE, "target": target, "error": error_line(exc)}
    return {"status": OK, "target": target, **result}


def _probe_restate(config: DoctorConfig) -> dict[str, Any]:
    """The Restate doctor, summarised: one status per Restate component, the worst one for the runtime."""
    from .restate.errors import RestateAdminUnreachable
    from .restate.operator import restate_doctor

    target = redact_url(str(getattr(settings, "RESTATE_ADMIN_URL", "") or "")) or None
    try:
        readout = restate_doctor()
    except RestateAdminUnreachable as exc:
        return {"status": UNREACHABLE, "target": target, "error": exc.message}
    components = {name: part["status"] for name, part in readout.items()}
    errors = [
        f"{name}: {part['error']}" for name, part in readout.items() if part["status"] != OK and part.get("error")
    ]
    return {
        "status": worst_status(components.values()),
        "latencyMs": readout["admin"].get("latencyMs"),
        "target": target,
        "version": readout["admin"].get("version"),
        "components": components,
        "error": redact_text("; ".join(errors))[:500] or None,
    }


def _probe_langgraph_server(config: DoctorConfig) -> dict[str, Any]:
    """The Agent Server answers ``GET /ok`` at ``REVIVE_LANGGRAPH_SERVER_URL``; ``GET /info`` gives its version."""
    base = str(settings.REVIVE_LANGGRAPH_SERVER_URL or "").rstrip("/")
    target = redact_url(base) or None
    if not base:
        return {"status": DEGRADED, "error": "REVIVE_LANGGRAPH_SERVER_URL is not set."}
    key = settings.REVIVE_LANGGRAPH_SERVER_API_KEY
    headers = {"x-api-key": key} if key else {}
    try:
        started = time.monotonic()
        ok = httpx.get(f"{base}/ok", headers=headers, timeout=config.probe_timeout)
        latency = ms_since(started)
        info = (
            httpx.get(f"{base}/info", headers=headers, timeout=config.probe_timeout) if ok.status_code == 200 else None
        )
    except httpx.HTTPError as exc:
        return {
            "status": UNREACHABLE,
            "target": target,
            "error": f"The Agent Server cannot be reached: {error_line(exc)}",
        }
    if ok.status_code != 200:
        return {
            "status": DEGRADED,
            "target": target,
            "latencyMs": latency,
            "error": f"GET /ok answered {ok.status_code}.",
        }
    version = None
    if info is not None and info.status_code == 200:
        with contextlib.suppress(ValueError, AttributeError):
            version = info.json().get("version")
    return {"status": OK, "target": target, "latencyMs": latency, "version": version}


RUNTIME_PROBES: dict[str, Callable[[DoctorConfig], dict[str, Any]]] = {
    "langgraph": _probe_langgraph,
    "langgraph-server": _probe_langgraph_server,
    "temporal": _probe_temporal,
    "restate": _probe_restate,
}


def _probe_runtime(name: str, adapter_path: str | None, config: DoctorConfig) -> dict[str, Any]:
    item = _runtime_item(name)
    if adapter_path is None:
        return {
            **item,
            "status": DEGRADED,
            "error": f"REVIVE_RUNTIMES names {name!r}, which has no adapter in REVIVE_RUNTIME_ADAPTERS.",
        }
    try:
        import_string(adapter_path)
    except Exception as exc:
        return {
            **item,
            "status": DEGRADED,
            "error": f"The adapter {adapter_path} cannot be imported: {error_line(exc)}",
        }
    probe = RUNTIME_PROBES.get(name)
    if probe is None:
        return {**item, "note": "Revive has no reachability probe for this runtime; its adapter imports."}
    return {**item, **probe(config)}


# -- the doctor -----------------------------------------------------------------------------------------------------
