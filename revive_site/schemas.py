from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Field, Schema
from pydantic import BaseModel, StrictBool, field_validator

from cases.models import Runtime

Identifier = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/@-]+$")
ActionKey = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/@-]+$")
# A JSON integer only: ``true``, ``"1"`` and ``1.0`` are refused, not read as 1.
Generation = Annotated[int, Field(ge=1, le=2**31 - 1, strict=True)]

# PostgreSQL stores neither NUL in text (nor ``\u0000`` in jsonb) nor a UTF-16 surrogate without its pair.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def unstorable_text_at(value: Any, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """Where in ``value`` (a JSON value) the first string PostgreSQL cannot store is, or None if there is none.

    Keys count as much as values: a JSON object's keys are stored too.
    """
    if isinstance(value, str):
        return path if _UNSTORABLE.search(value) else None
    if isinstance(value, BaseModel):
        value = value.__dict__
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and _UNSTORABLE.search(key):
                return path + (ascii(key),)
            if (found := unstorable_text_at(item, path + (str(key),))) is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            if (found := unstorable_text_at(item, path + (str(index),))) is not None:
                return found
    return None


def _storable(value: Any) -> Any:
    where = unstorable_text_at(value)
    if where is not None:
        inside = f" (at {'.'.join(where)})" if where else ""
        raise ValueError(f"text contains a NUL character or an unpaired surrogate, which cannot be stored{inside}")
    return value


class InputSchema(Schema):
    """A request body: every field, however deep, holds only text the database can store (422 naming the field)."""

    @field_validator("*")
    @classmethod
    def text_is_storable(cls, value: Any) -> Any:
        return _storable(value)


class InputModel(BaseModel):
    """``InputSchema`` for a nested plain pydantic model."""

    @field_validator("*")
    @classmethod
    def text_is_storable(cls, value: Any) -> Any:
        return _storable(value)


class RunIn(InputSchema):
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


class CheckpointIn(InputSchema):
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


class BeginIn(InputSchema):
    checkpoint_id: str = Identifier
    connection_id: str = Identifier
    generation: Generation
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


class CommitIn(InputSchema):
    generation: Generation
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


class ProviderErrorIn(InputModel):
    """The provider's raw answer, as the worker received it.

    A plain pydantic model: ninja's ``Schema`` reads attributes of any object, and this must be a JSON object.
    """

    status: Annotated[int, Field(ge=0, le=999, strict=True)] | None = None
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    error_kind: Literal["timeout", "connection_error"] | None = None


class FailIn(InputSchema):
    generation: Generation
    error: ProviderErrorIn


class HeartbeatIn(InputSchema):
    generation: Generation


class HeartbeatOut(Schema):
    run_id: str
    action_key: str
    state: str
    generation: int
    lock_expires_at: datetime
    lock_seconds: int


class AmbiguousIn(InputSchema):
    generation: Generation
    reason: str = Field(..., min_length=1, max_length=500)


class ReconcileIn(InputSchema):
    generation: Generation
    found: StrictBool
    evidence: dict[str, Any]
    result: Any = None
    external_ref: str = Field("", max_length=500)


class CredentialFailureIn(InputSchema):
    connection_id: str = Identifier
    generation: Generation
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


class RefreshClaimIn(InputSchema):
    generation: Generation
    holder: str = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/@-]+$")
    seen_round: int = Field(
        0, ge=0, le=2**31 - 1, strict=True, description="The refresh round of the credential that failed (0: unknown)."
    )


class RefreshReleaseIn(InputSchema):
    generation: Generation
    holder: str = Field(..., min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:/@-]+$")
    round: int = Field(..., ge=1, le=2**31 - 1, strict=True)
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
