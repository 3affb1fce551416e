from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from ninja import Field, Schema
from pydantic import BaseModel

from .models import Runtime

Identifier = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/@-]+$")
ActionKey = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/@-]+$")


class RunIn(Schema):
    run_id: str = Identifier
    runtime: Runtime
    runtime_ref: dict[str, Any] = Field(default_factory=dict)
    workflow_name: str = Field(..., min_length=1, max_length=200)


class RunOut(Schema):
    run_id: str
    runtime: str
    runtime_ref: dict[str, Any]
    workflow_name: str
    state: str


class CheckpointIn(Schema):
    checkpoint_id: str = Identifier
    label: str = Field("", max_length=200)
    runtime_ref: dict[str, Any] = Field(default_factory=dict)


class CheckpointOut(Schema):
    run_id: str
    checkpoint_id: str
    label: str
    runtime_ref: dict[str, Any]


class LeaseOut(Schema):
    connection_id: str
    generation: int
    usable: bool
    case_id: str | None


class BeginIn(Schema):
    checkpoint_id: str = Identifier
    connection_id: str = Identifier
    generation: int = Field(..., ge=1, le=2**31 - 1)
    params: dict[str, Any] | None = None


class BeginOut(Schema):
    decision: Literal["execute", "replay", "reconcile", "fenced", "parked"]
    idempotency_key: str
    generation: int
    current_generation: int
    action_state: str | None
    attempt: int
    result: Any = None
    external_ref: str = ""
    case_id: str | None = None
    lock_seconds: int | None = None


class CommitIn(Schema):
    generation: int = Field(..., ge=1, le=2**31 - 1)
    result: Any = None
    external_ref: str = Field("", max_length=500)


class ActionOut(Schema):
    run_id: str
    action_key: str
    idempotency_key: str
    state: str
    generation: int
    attempts: int
    result: Any = None
    external_ref: str = ""


class ProviderErrorIn(BaseModel):
    """The provider's raw answer, as the worker received it.

    A plain pydantic model: ninja's ``Schema`` reads attributes of any object, and this must be a JSON object.
    """

    status: int | None = Field(None, ge=0, le=999)
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    error_kind: Literal["timeout", "connection_error"] | None = None


class FailIn(Schema):
    generation: int = Field(..., ge=1, le=2**31 - 1)
    error: ProviderErrorIn


class HeartbeatIn(Schema):
    generation: int = Field(..., ge=1, le=2**31 - 1)


class HeartbeatOut(Schema):
    run_id: str
    action_key: str
    state: str
    generation: int
    lock_expires_at: datetime
    lock_seconds: int


class AmbiguousIn(Schema):
    generation: int = Field(..., ge=1, le=2**31 - 1)
    reason: str = Field(..., min_length=1, max_length=500)


class ReconcileIn(Schema):
    generation: int = Field(..., ge=1, le=2**31 - 1)
    found: bool
    evidence: dict[str, Any]
    result: Any = None
    external_ref: str = Field("", max_length=500)


class CredentialFailureIn(Schema):
    connection_id: str = Identifier
    generation: int = Field(..., ge=1, le=2**31 - 1)
    checkpoint_id: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/@-]+$")
    action_key: str | None = Field(None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/@-]+$")
    error: ProviderErrorIn


class FailureOut(Schema):
    outcome: Literal["parked", "retry", "refresh", "reacquire", "failed"]
    failure_class: str
    code: str
    message: str
    retry_after: float | None = None
    case_id: str | None = None
    current_generation: int | None = None


class RunCaseOut(Schema):
    case_id: str
    state: str
    failure_class: str
    provider: str
    provider_code: str
    connection_id: str
    rejected_generation: int
    current_generation: int
    checkpoint_id: str | None
    action_key: str | None
    blocking: bool
    resumed_at: datetime | None


class RunActionOut(Schema):
    action_key: str
    state: str
    generation: int
    attempts: int
    idempotency_key: str
    connection_id: str


class RecoveryStatusOut(Schema):
    run_id: str
    runtime: str
    runtime_ref: dict[str, Any]
    workflow_name: str
    state: str
    latest_checkpoint: str | None
    cases: list[RunCaseOut]
    actions: list[RunActionOut]


class ErrorOut(Schema):
    code: str
    message: str
    data: dict[str, Any]


class RefreshClaimIn(Schema):
    generation: int = Field(..., ge=1, le=2**31 - 1)
    holder: str = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/@-]+$")
    seen_round: int = Field(0, ge=0, le=2**31 - 1, description="The refresh round of the credential that failed (0: unknown).")


class RefreshReleaseIn(Schema):
    generation: int = Field(..., ge=1, le=2**31 - 1)
    holder: str = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/@-]+$")
    round: int = Field(..., ge=1, le=2**31 - 1)
    outcome: Literal["refreshed", "failed"]


class RefreshClaimOut(Schema):
    decision: Literal["refresh", "wait", "reload", "fenced", "released"]
    connection_id: str
    generation: int
    round: int
    holder: str
    held_until: datetime | None
    retry_after: float | None
    current_generation: int | None
