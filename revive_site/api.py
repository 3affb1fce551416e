"""The HTTP APIs: the worker API (v1) and the operator API (v2), with one error shape."""

from __future__ import annotations

from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from ninja import NinjaAPI, Swagger
from ninja.errors import AuthenticationError, HttpError, ValidationError

from cases.namespaces import unqualify_data
from operations.api import operator_routers

from .auth import OperatorKey, WorkerKey
from .errors import DomainError
from .worker_routes import router as worker_router


def _error(api: NinjaAPI, request, status: int, code: str, message: str, data=None):
    return api.create_response(request, {"code": code, "message": message, "data": data or {}}, status=status)


def _install_error_handlers(api: NinjaAPI, *, unqualify_ids: bool = False) -> None:
    @api.exception_handler(DomainError)
    def domain_error(request, exc: DomainError):
        body = exc.as_body()
        if unqualify_ids:  # the worker API answers with the ids the worker sent, never their stored form
            body["data"] = unqualify_data(body["data"])
        return api.create_response(request, body, status=exc.status)

    @api.exception_handler(ValidationError)
    def validation_error(request, exc: ValidationError):
        errors = [
            {"loc": [str(p) for p in e.get("loc", [])], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors
        ]
        return _error(api, request, 422, "VALIDATION_ERROR", "The request is not valid.", {"errors": errors})

    @api.exception_handler(AuthenticationError)
    def authentication_error(request, exc):
        return _error(api, request, 401, "AUTHENTICATION_REQUIRED", "A valid X-Api-Key header is required.")

    @api.exception_handler(RequestDataTooBig)
    def too_big(request, exc):
        return _error(api, request, 413, "PAYLOAD_TOO_LARGE", "The request body is larger than this API accepts.")

    @api.exception_handler(Http404)
    def not_found(request, exc):
        return _error(api, request, 404, "NOT_FOUND", "Not found.")

    @api.exception_handler(HttpError)
    def http_error(request, exc: HttpError):
        code = {400: "BAD_REQUEST", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return _error(api, request, exc.status_code, code, str(exc))


# Swagger UI from ninja's own static files ("ninja" is an installed app); no validator badge, which would call out.
OFFLINE_DOCS = Swagger(settings={"validatorUrl": None})


class _WorkerAPI(NinjaAPI):
    def get_openapi_operation_id(self, operation) -> str:
        """The operation ids the worker API has always published (``cases_api_<view>``, from when its routes lived in
        ``cases.api``): clients generate code from them, so moving the routes does not rename them."""
        return f"cases_api_{operation.view_func.__name__}"


worker_api = _WorkerAPI(
    title="Revive worker API",
    version="1",
    urls_namespace="worker_api",
    auth=WorkerKey(),
    description="Protected actions, credential failures and recovery status for workers inside durable runs. "
    "No credential ever crosses this API: workers get generations and decisions.",
    docs_url="/docs",
    docs=OFFLINE_DOCS,
)
_install_error_handlers(worker_api, unqualify_ids=True)
worker_api.add_router("/", worker_router)

operator_api = NinjaAPI(
    title="Revive operator API",
    version="2",
    urls_namespace="operator_api",
    auth=OperatorKey(),
    description="Operator-only recovery routes (system operate permission). Every attempt is recorded in the "
    "operations audit log; error responses carry the request id also sent as the X-Request-Id header.",
    docs_url="/docs",
    docs=OFFLINE_DOCS,
)
_install_error_handlers(operator_api)
for prefix, router in operator_routers:
    operator_api.add_router(prefix, router)
