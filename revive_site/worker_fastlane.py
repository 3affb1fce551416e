"""The two calls every protected action makes -- ``begin`` and ``commit`` -- without URL resolution or ninja's dispatch.

A protected action is two worker-API requests, so their fixed cost is most of what Revive adds to an action. For
``POST /api/v1/runs/{run_id}/actions/{action_key}/begin`` and ``…/commit`` the worker API's handler
(``revive_site.wsgi.WorkerApiHandler``, its middleware chain unchanged) skips Django's URL resolver and ninja's
per-operation machinery (authentication callbacks, parameter models, the temporal response) and does the same
steps directly with the same parts:

* the key: ``api_key_authenticate`` (the cached lookup ``WorkerKey`` uses);
* the body: the route's own schema (``BeginIn`` / ``CommitIn``), on the JSON object the request carries;
* the view: the route's own function (``worker_routes.begin_action`` / ``commit_action``): metrics, namespaces,
  the service call;
* the answer: ninja's own serialisation of the route's response model, and the API's own exception handlers
  (``DomainError`` shapes, ids unqualified).

Whenever a request is not that plain case -- no or an unknown key, a body that is not a JSON object or fails its
schema, a declared length over the limit, an id the route's pattern refuses -- nothing has run yet, and the request
goes the ordinary way (resolver, ninja), which answers it as it always has: 401, 413, 422 with their stable codes.
``tests/api/test_worker_fastlane.py`` sends the same requests both ways and compares status, body and headers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase
from ninja import Schema
from ninja.operation import Operation
from pydantic import ValidationError as PydanticValidationError

from cases.services import api_key_authenticate

from .api import worker_api
from .schemas import BeginIn, CommitIn
from .worker_routes import begin_action, commit_action

# The route's identifiers (``worker_routes.ID``) as one path segment each: ninja's ``{run_id}`` never spans a '/'.
_SEGMENT = r"[A-Za-z0-9_.:@-]{1,200}"
ROUTE = re.compile(rf"^/api/v1/runs/(?P<run_id>{_SEGMENT})/actions/(?P<action_key>{_SEGMENT})/(?P<call>begin|commit)$")

_CALLS: dict[str, tuple[type[Schema], Callable[..., Any]]] = {
    "begin": (BeginIn, begin_action),
    "commit": (CommitIn, commit_action),
}


def _operation(view: Callable[..., Any]) -> Operation:
    """The worker API's operation that serves ``view`` (bound to the API): its response models serialise the answer."""
    for bound in worker_api._get_bound_routers():
        for path_view in bound.path_operations.values():
            for operation in path_view.operations:
                if operation.view_func is view:
                    return operation
    raise LookupError(f"{view.__name__} is not a route of the worker API")


_OPERATIONS = {call: _operation(view) for call, (_, view) in _CALLS.items()}


def answer(request: HttpRequest) -> HttpResponseBase | None:
    """The response to a plain begin or commit, or None: not one, let the resolver and ninja answer it."""
    if request.method != "POST":
        return None
    route = ROUTE.match(request.path_info)
    if route is None:
        return None
    try:
        if int(request.META.get("CONTENT_LENGTH") or 0) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            return None
    except ValueError:
        return None
    key = api_key_authenticate(request.headers.get("X-Api-Key"))
    if key is None:
        return None
    schema, view = _CALLS[route["call"]]
    try:
        body = json.loads(request.body)
        if not isinstance(body, dict):
            return None
        payload = schema.model_validate(body)
    except (ValueError, PydanticValidationError):  # not JSON, not text, or refused by the schema
        return None
    request.auth = key  # type: ignore[attr-defined]  # what ninja's authentication sets
    operation = _OPERATIONS[route["call"]]
    try:
        result = view(request, payload, run_id=route["run_id"], action_key=route["action_key"])
        return operation._result_to_response(request, result, worker_api.create_temporal_response(request))
    except Exception as exc:  # noqa: BLE001 -- the API's handlers answer what they know and re-raise the rest
        return worker_api.on_exception(request, exc)
