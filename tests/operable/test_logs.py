"""JSON logs: one object per line with the work context, every field redacted; gunicorn's access log too."""

from __future__ import annotations

import copy
import io
import json
import logging
import logging.config
import secrets

import httpx
import pytest
from django.conf import settings

from audit.context import work_context_bound

TOKEN = "rvr_" + secrets.token_urlsafe(32)
CODE = "authcode-" + secrets.token_hex(8)


@pytest.fixture
def json_log():
    """The settings' own handler (filters and JSON formatter), writing to a buffer."""
    stream = io.StringIO()
    config = copy.deepcopy(settings.LOGGING)  # the configurator pops the factories out of what it is given
    handler = logging.StreamHandler(stream)
    filters = [
        logging.config.DictConfigurator({"version": 1}).configure_filter(config["filters"][name])
        for name in config["handlers"]["console"]["filters"]
    ]
    for log_filter in filters:
        handler.addFilter(log_filter)
    handler.setFormatter(
        logging.config.DictConfigurator({"version": 1}).configure_formatter(config["formatters"]["json"])
    )
    logger = logging.getLogger("revive.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)


def _lines(stream) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_one_object_per_line_with_the_work_context(json_log):
    logger, stream = json_log
    with work_context_bound(
        request_id="req_abc12345", trace_id="0af7651916cd43dd8448eb211c80319c", run_id="run_7f2", case_id="CASERV-0248"
    ):
        logger.info("resume delivered to %s", "run_7f2", extra={"attempt": 2})
    logger.warning("outside any request")

    first, second = _lines(stream)
    assert list(first)[:4] == ["time", "level", "logger", "message"]
    assert first["level"] == "INFO" and first["logger"] == "revive.test.json"
    assert first["message"] == "resume delivered to run_7f2" and first["attempt"] == 2
    assert (first["request_id"], first["trace_id"], first["run_id"], first["case_id"], first["namespace"]) == (
        "req_abc12345",
        "0af7651916cd43dd8448eb211c80319c",
        "run_7f2",
        "CASERV-0248",
        "",
    )
    assert first["time"].endswith("+00:00")
    assert (second["request_id"], second["run_id"], second["case_id"]) == ("", "", "")


def test_a_token_bearing_url_is_redacted_in_every_field(json_log):
    logger, stream = json_log
    url = f"https://revive.example.com/reconnect/l/{TOKEN}?code={CODE}&state=st-{CODE}"
    logger.info("owner opened %s", url, extra={"callback": url, "nested": {"link": url}})
    try:
        raise RuntimeError(f"callback failed for {url}")
    except RuntimeError:
        logger.exception("sign-in failed")

    text = stream.getvalue()
    assert TOKEN not in text and CODE not in text
    opened, failed = _lines(stream)
    assert opened["message"] == (
        "owner opened https://revive.example.com/reconnect/l/[redacted]?code=[redacted]&state=[redacted]"
    )
    assert opened["callback"] == opened["nested"]["link"] == opened["message"].removeprefix("owner opened ")
    assert "RuntimeError: callback failed for https://revive.example.com/reconnect/l/[redacted]" in failed["exc_info"]


def test_gunicorn_access_and_app_logs_are_json_lines_without_queries_or_tokens(served):
    server = served(REVIVE_LOG_FORMAT="json")
    link = httpx.get(f"{server.url}/reconnect/l/{TOKEN}?code={CODE}")
    api = httpx.get(f"{server.url}/api/v1/runs/run_7f2/recovery", headers={"X-Request-Id": "req-from-client-1"})
    assert link.status_code in (200, 302, 400, 404, 410) and api.status_code == 401
    assert api.headers["X-Request-Id"] == "req-from-client-1"

    def access_lines():
        return [
            json.loads(line)
            for line in server.log().splitlines()
            if line.startswith("{") and '"gunicorn.access"' in line
        ]

    import time

    deadline = time.monotonic() + 30
    while len(access_lines()) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    log = server.log()
    assert TOKEN not in log and CODE not in log
    lines = [line for line in log.splitlines() if line.strip()]
    assert any('"gunicorn.error"' in line for line in lines), "gunicorn's own lines are there"
    for line in lines:
        json.loads(line)  # every line of the output, the master's included, parses on its own
    paths = [line["message"] for line in access_lines()]
    assert any('"GET /reconnect/l/[redacted] HTTP/1.1"' in message for message in paths), paths
    assert not any("?" in message for message in paths), paths
    [api_line] = [line for line in access_lines() if "/recovery" in line["message"]]
    message = api_line["message"]
    assert '"GET /api/v1/runs/run_7f2/recovery HTTP/1.1" 401' in message, message
    assert message.endswith(" req-from-client-1"), message  # the id the response carried, to join with app lines
