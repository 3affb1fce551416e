from __future__ import annotations

from uuid import UUID

from django.core.exceptions import ValidationError

from .models import ReconnectRequest


def reconnect_request_get(public_id: UUID | str) -> ReconnectRequest | None:
    """A request with everything its pages show, or ``None`` (also for a malformed id)."""
    try:
        return (
            ReconnectRequest.objects.select_related(
                "case", "case__run", "case__checkpoint", "case__action", "connection"
            )
            .filter(public_id=public_id)
            .first()
        )
    except (ValueError, ValidationError):
        return None


def reconnect_requests_for_case(*, case_id: int):
    return ReconnectRequest.objects.filter(case_id=case_id).select_related("connection").order_by("-created_at", "-id")
