"""API-key authentication for the worker and operator APIs (``X-Api-Key``)."""

from __future__ import annotations

from ninja.security import APIKeyHeader

from cases.models import ApiKey
from cases.services import api_key_authenticate

from .errors import AuthenticationRequired, PermissionDenied


class WorkerKey(APIKeyHeader):
    """Any live key may call the worker API."""

    param_name = "X-Api-Key"

    def authenticate(self, request, key: str | None) -> ApiKey:
        api_key = api_key_authenticate(key)
        if api_key is None:
            raise AuthenticationRequired()
        return api_key


class OperatorKey(WorkerKey):
    """A key holding the *system operate* permission."""

    def authenticate(self, request, key: str | None) -> ApiKey:
        api_key = super().authenticate(request, key)
        if not api_key.system_operate:
            raise PermissionDenied(data={"required": "system_operate", "key": api_key.name})
        return api_key
