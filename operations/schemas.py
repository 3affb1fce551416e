"""Response shape of Revive's doctor (``GET /api/v2/admin/operator/doctor``), in the Restate doctor's style.

Wire names are camelCase like the Restate operator routes (seed ``002_…``, :mod:`operations.restate.schemas`),
which share :data:`ComponentStatus`.
"""

from __future__ import annotations

from typing import Literal

from ninja import Schema

ComponentStatus = Literal["ok", "degraded", "unreachable"]


class DatabaseReadout(Schema):
    status: ComponentStatus
    latencyMs: int | None
    vendor: str | None
    version: str | None
    migrationsPending: list[str] | None
    """Migrations not applied yet (at most 50); null when they could not be read."""
    error: str | None


class RedisReadout(Schema):
    status: ComponentStatus
    latencyMs: int | None
    version: str | None
    target: str | None
    """REDIS_URL with any user information replaced by REDACTED; null when it is not set."""
    note: str | None
    error: str | None


class CeleryWorker(Schema):
    name: str
    queues: list[str]


class CeleryWorkersReadout(Schema):
    status: ComponentStatus
    latencyMs: int | None
    eager: bool
    queue: str
    """The queue Revive publishes its tasks to; a worker must consume it."""
    items: list[CeleryWorker]
    note: str | None
    error: str | None


class RuntimeReadout(Schema):
    name: str
    status: ComponentStatus
    latencyMs: int | None
    target: str | None
    version: str | None
    components: dict[str, ComponentStatus] | None
    """Restate only: the status of each component of the Restate doctor."""
    note: str | None
    error: str | None


class RuntimesReadout(Schema):
    status: ComponentStatus
    items: list[RuntimeReadout]
    error: str | None


class ReviveDoctorOut(Schema):
    database: DatabaseReadout
    redis: RedisReadout
    celeryWorkers: CeleryWorkersReadout
    runtimes: RuntimesReadout
