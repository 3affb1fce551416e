"""Operations audit of the operator routes (``/api/v2/admin/operator/...``).

Every attempt at an operator route, including refused (401/403), invalid (4xx)
and failed ones, becomes one :class:`~audit.models.OperationAudit` row with
the actor and its role at the time, the route, the sanitized arguments (URL
user-info becomes ``REDACTED``), the reason when supplied
(``X-Operator-Reason``), start and finish time, outcome, and error code and
message on failure. The row carries the request identifier that the response
sends back in ``X-Request-Id`` (and in ``requestId`` of an error body), so an
incident record, a response and a row can be joined.

The rows are written by ``revive_site.middleware.OperationsAuditMiddleware``, which sits outside
django-ninja, so it sees attempts that never reach a handler (authentication, validation) as well as
those that do.
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime
from typing import Any

from django.http import HttpRequest

from .models import OperationAudit
from .redaction import redact, redact_text

logger = logging.getLogger(__name__)

OPERATOR_PATH_PREFIX = "/api/v2/admin/operator/"
REQUEST_ID_HEADER = "X-Request-Id"
REASON_HEADER = "X-Operator-Reason"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")


def operation_audit_record(
    *,
    request_id: str,
    actor: str,
    role: str,
    route: str,
    arguments: dict[str, Any],
    reason: str,
    started_at: datetime,
    finished_at: datetime,
    outcome: str,
    error_code: str = "",
    error: str = "",
) -> OperationAudit:
    """Append one operations audit row; arguments, reason and error are redacted here, whatever the caller did."""
    return OperationAudit.objects.create(
        request_id=request_id[:64],
        actor=actor[:200],
        role=role[:60],
        route=route[:200],
        arguments=redact(arguments),
        reason=redact_text(reason),
        started_at=started_at,
        finished_at=finished_at,
        outcome=outcome,
        error_code=error_code[:80],
        error=redact_text(error),
    )


def request_id_for(request: HttpRequest) -> str:
    """The request's id: the one already given to it, the client's ``X-Request-Id`` if well-formed, or a new one."""
    given = getattr(request, "request_id", "")
    if given:
        return given
    supplied = request.headers.get(REQUEST_ID_HEADER, "")
    return supplied if _CLIENT_REQUEST_ID.fullmatch(supplied) else f"req_{uuid.uuid4().hex}"
