"""Pure parts of the Restate operator: no engine needed."""

from __future__ import annotations

import pytest

from cases.runtimes.restate_admin import RestateResponseError, RestateTransportError, _split_credentials
from operations.restate.errors import RestateWorkflowRetryBlocked
from operations.restate.operator import _iso_utc
from operations.restate.schemas import ServicesReadout


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2026-11-21T13:45:54.408000000Z", "2026-11-21T13:45:54.408Z"),
        ("2026-11-21T13:45:54Z", "2026-11-21T13:45:54.000Z"),
        ("2026-11-21T15:45:54.123+02:00", "2026-11-21T13:45:54.123Z"),
        ("2026-11-21 13:45:54.9", "2026-11-21T13:45:54.900Z"),
        ("yesterday", "yesterday"),
        ("", None),
        (None, None),
    ],
)
def test_timestamps_become_iso_8601_utc_with_milliseconds(raw, expected):
    assert _iso_utc(raw) == expected


def test_admin_errors_never_carry_url_credentials():
    message = "[META0003] error when calling 'http://user:secret@host:9080/v1': failed to lookup address"
    for error in (RestateResponseError(message, status_code=500), RestateTransportError(message)):
        assert "secret" not in error.message and "secret" not in str(error)
        assert "http://REDACTED@host:9080/v1" in error.message


def test_admin_url_credentials_move_into_a_basic_auth_header():
    url, auth = _split_credentials("http://ops:p%40ss@restate-admin:9070/")
    assert url == "http://restate-admin:9070" and auth is not None
    assert _split_credentials("http://restate-admin:9070") == ("http://restate-admin:9070", None)


def test_service_revision_is_omitted_when_unknown():
    readout = ServicesReadout(status="ok", items=[{"name": "A"}, {"name": "B", "revision": 3}], error=None)
    assert readout.model_dump(mode="json")["items"] == [{"name": "A"}, {"name": "B", "revision": 3}]


def test_retry_blocked_carries_reason_and_invocation_ids():
    error = RestateWorkflowRetryBlocked(RestateWorkflowRetryBlocked.ACTIVE_INVOCATION, ["inv_1"])
    assert (error.code, error.status) == ("RESTATE_WORKFLOW_RETRY_BLOCKED", 409)
    assert error.as_body() == {
        "code": "RESTATE_WORKFLOW_RETRY_BLOCKED",
        "message": "Workflow retry is blocked by an active invocation",
        "data": {"reason": "active-invocation", "invocationIds": ["inv_1"]},
    }
    with pytest.raises(ValueError):
        RestateWorkflowRetryBlocked("made-up", [])
