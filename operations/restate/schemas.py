"""Request and response shapes of the Restate operator routes, field for field as in seed ``002_…``.

Field names are the wire names (camelCase) because the seed fixes them.
Bodies accept exactly the documented fields; booleans are strict JSON
booleans; service URLs are kept byte for byte (no normalisation), since
cleanup matches them exactly.
"""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from ninja import Field, Schema
from pydantic import AfterValidator, ConfigDict, StrictBool

from revive_site.schemas import InputSchema

from ..schemas import ComponentStatus

MAX_URL_LENGTH = 2048


def _service_url(value: str) -> str:
    if value != value.strip() or any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ValueError("must be a URL without whitespace")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises on a malformed port)
    except ValueError:
        raise ValueError("must be a valid URL") from None
    if parts.scheme not in {"http", "https"}:
        raise ValueError("must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError("must be a URL with a host")
    return value


ServiceUrl = Annotated[str, Field(min_length=1, max_length=MAX_URL_LENGTH), AfterValidator(_service_url)]
RestateName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[a-zA-Z0-9_-]+$")]


class _Body(InputSchema):
    model_config = ConfigDict(extra="forbid")


class DoctorIn(_Body):
    """An empty JSON object."""


class ForceRedeployIn(_Body):
    serviceUrl: ServiceUrl
    force: StrictBool = True


class CleanupStaleDeploymentsIn(_Body):
    serviceUrl: ServiceUrl
    forceDrain: StrictBool = False


class RecoverStuckWorkflowIn(_Body):
    serviceName: RestateName
    serviceKey: RestateName


class AcknowledgedOut(Schema):
    acknowledged: Literal[True] = True


class ForceRedeployOut(AcknowledgedOut):
    deploymentId: str


class IngressReadout(Schema):
    status: ComponentStatus
    latencyMs: int | None
    error: str | None


class AdminReadout(Schema):
    status: ComponentStatus
    latencyMs: int | None
    version: str | None
    error: str | None


class DeploymentItem(Schema):
    id: str
    serviceUrl: str | None
    createdAt: str | None


class DeploymentsReadout(Schema):
    status: ComponentStatus
    items: list[DeploymentItem]
    error: str | None


class ServiceItem(Schema):
    name: str
    revision: int | None = Field(None, exclude_if=lambda revision: revision is None)
    """Omitted when the admin API gives none."""


class ServicesReadout(Schema):
    status: ComponentStatus
    items: list[ServiceItem]
    error: str | None


class FailedInvocation(Schema):
    id: str
    serviceName: str
    serviceKey: str | None
    failedAt: str | None
    errorMessage: str | None


class InvocationsReadout(Schema):
    status: ComponentStatus
    byStatus: dict[str, int]
    recentFailures: list[FailedInvocation] = Field(..., max_length=20)
    error: str | None


class DoctorOut(Schema):
    ingress: IngressReadout
    admin: AdminReadout
    deployments: DeploymentsReadout
    services: ServicesReadout
    invocations: InvocationsReadout
