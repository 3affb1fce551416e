"""schemathesis against both APIs: no input is a 5xx, and every answer matches the OpenAPI document.

Each operation of ``/api/v1`` (worker) and ``/api/v2/admin/operator`` gets a bounded number of generated
requests, valid and invalid (``MAX_EXAMPLES``), through Django's WSGI application in this process, on the test
database. The worker API runs against a world with one connection and one run, and about half of the generated
requests are aimed at them, so generated bodies also reach the services behind the 404s. The operator API runs
against the real restate-server of ``tests/restate/conftest.py``; service URLs that would send Restate's
discovery to the network are pointed at a closed loopback port (their shape is kept, so validation still sees
every generated variation).

Here, not in ``tests/cases``: the operator half needs this directory's Restate fixtures.
"""

from __future__ import annotations

import socket
import zlib
from urllib.parse import urlsplit

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from cases import services
from cases.models import ApiKey

MAX_EXAMPLES = 40
CHECKS = [not_a_server_error, response_schema_conformance, status_code_conformance, content_type_conformance]
RUN = "run_fuzz"
CONN = "conn_fuzz"

fuzz = hypothesis_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same requests on every run: a red build is reproducible
    database=None,
    suppress_health_check=list(HealthCheck),
)


def _load(api, prefix: str):
    schema = schemathesis.openapi.from_dict(api.get_openapi_schema(path_prefix=prefix))
    schema.app = get_wsgi_application()
    return schema


from revive_site.api import operator_api, worker_api  # noqa: E402  (after Django is set up by pytest-django)

worker = _load(worker_api, "/api/v1")
operator = _load(operator_api, "/api/v2/admin/operator")


@pytest.fixture(autouse=True)
def wsgi_keeps_the_test_transaction():
    """As Django's test client does: a request does not close the connection that holds the test's transaction."""
    from django.core import signals
    from django.db import close_old_connections

    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def fuzz_world(make_connection, make_run):
    make_connection(CONN)
    make_run(RUN)
    _, raw = services.api_key_create(name="fuzz-worker")
    return raw


def _aim_at_the_world(case) -> None:
    """Half of the requests (by a hash of what was generated) address the existing run and connection."""
    if zlib.crc32(repr((case.path_parameters, case.body)).encode()) % 2:
        return
    if case.path_parameters:
        case.path_parameters = {
            **case.path_parameters,
            **{k: v for k, v in (("run_id", RUN), ("connection_id", CONN)) if k in case.path_parameters},
        }
    if isinstance(case.body, dict) and "connection_id" in case.body:
        case.body = {**case.body, "connection_id": CONN}


@worker.parametrize()
@fuzz
def test_worker_api(case, fuzz_world):
    _aim_at_the_world(case)
    case.call_and_validate(headers={"X-Api-Key": fuzz_world}, checks=CHECKS)


@pytest.fixture(scope="module")
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def operator_key(db) -> str:
    _, raw = services.api_key_create(name="fuzz-operator", role=ApiKey.Role.OPERATOR, system_operate=True)
    return raw


def _offline(url, port: int):
    """The same URL with its host and port replaced by a closed loopback port (nothing else changed)."""
    if not isinstance(url, str):
        return url
    try:
        parts = urlsplit(url)
        if not parts.hostname:
            return url
    except ValueError:
        return url
    host_and_port = parts.netloc.rsplit("@", 1)[-1]
    return url.replace(host_and_port, f"127.0.0.1:{port}", 1)


@operator.parametrize()
@fuzz
def test_operator_api(case, restate, operator_key, closed_port):
    if isinstance(case.body, dict) and "serviceUrl" in case.body:
        case.body = {**case.body, "serviceUrl": _offline(case.body["serviceUrl"], closed_port)}
    case.call_and_validate(headers={"X-Api-Key": operator_key}, checks=CHECKS)
