"""The synchronous client's wire: kept-alive http.client connections to a plain http Revive, httpx otherwise.

The server here is a real HTTP/1.1 server on loopback that answers each request with what it received, so a test
sees exactly what went over the wire and on which connection.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from revive_sdk import Revive, ReviveError, ReviveUnavailable
from revive_sdk.wire import HttpxWire, KeepAliveWire, wire_for


class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EchoServer

    def setup(self) -> None:
        super().setup()
        self.number = self.server.connection_accepted()  # one handler per connection: its number, in accept order

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = json.dumps(
            {
                "path": self.path,
                "body": json.loads(body) if body else None,
                "key": self.headers.get("X-Api-Key"),
                "traceparent": self.headers.get("traceparent"),
                "connection": self.number,
            }
        ).encode()
        self.send_response(self.server.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)
        if self.server.hang_up:  # a keep-alive timeout: the server closes without saying so in the answer
            self.close_connection = True

    do_GET = do_POST

    def log_message(self, *args: object) -> None:
        pass


class EchoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Echo)
        self.status, self.hang_up = 200, False
        self.closed = threading.Event()  # a connection's socket was closed by the server
        self._accepted = 0
        self._lock = threading.Lock()

    def shutdown_request(self, request) -> None:
        super().shutdown_request(request)
        self.closed.set()

    def connection_accepted(self) -> int:
        with self._lock:
            self._accepted += 1
            return self._accepted

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def echo_server() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_requests_reuse_one_kept_alive_connection():
    with echo_server() as server:
        wire = KeepAliveWire(server.url + "/api/v1", {"X-Api-Key": "rvk_test"}, 5.0)
        answers = [json.loads(wire.send("POST", f"/runs/r/actions/a{i}/begin", {"n": i})[1]) for i in range(5)]
        wire.close()
    assert [a["path"] for a in answers] == [f"/api/v1/runs/r/actions/a{i}/begin" for i in range(5)]
    assert [a["body"] for a in answers] == [{"n": i} for i in range(5)]
    assert {a["key"] for a in answers} == {"rvk_test"}
    assert {a["connection"] for a in answers} == {1}


def test_a_connection_the_server_closed_while_idle_is_replaced_not_an_error():
    with echo_server() as server:
        server.hang_up = True
        wire = KeepAliveWire(server.url, {}, 5.0)
        first = json.loads(wire.send("POST", "/one", {})[1])
        assert server.closed.wait(60), "the server never closed the connection"
        second = json.loads(wire.send("POST", "/two", {})[1])
        wire.close()
    assert (first["path"], second["path"]) == ("/one", "/two")
    assert first["connection"] != second["connection"]


def test_concurrent_requests_each_get_their_own_answer():
    with echo_server() as server:
        wire = KeepAliveWire(server.url, {}, 10.0)

        def call(n: int) -> tuple[int, dict]:
            status, content = wire.send("POST", f"/call/{n}", {"n": n})
            return status, json.loads(content)

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(call, range(200)))
        wire.close()
    assert all(status == 200 for status, _ in answers)
    assert [a["body"]["n"] for _, a in answers] == list(range(200))
    assert [a["path"] for _, a in answers] == [f"/call/{n}" for n in range(200)]


def test_errors_arrive_as_revive_errors_and_trace_headers_go_along():
    with echo_server() as server, Revive(server.url, "rvk_test") as revive:
        answer = revive.lease("conn/1")  # the echo is the answer
        assert answer["path"] == "/api/v1/connections/conn%2F1/lease"
        assert answer["traceparent"] and answer["traceparent"].startswith("00-")
        server.status = 503
        with pytest.raises(ReviveError) as err:
            revive.lease("conn")
    assert err.value.status == 503


def test_an_unreachable_revive_is_unavailable():
    with echo_server() as server:
        url = server.url
    with Revive(url, "k", timeout=2) as revive, pytest.raises(ReviveUnavailable) as err:
        revive.lease("conn")
    assert "ConnectionRefusedError" in str(err.value)


def test_httpx_carries_https_proxies_and_own_transports(monkeypatch):
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert isinstance(wire_for("http://127.0.0.1:8000/api/v1", {}, 5.0), KeepAliveWire)
    assert isinstance(wire_for("https://revive.example/api/v1", {}, 5.0), HttpxWire)
    assert isinstance(wire_for("http://revive/api/v1", {}, 5.0, httpx.HTTPTransport()), HttpxWire)
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    assert isinstance(wire_for("http://revive.internal/api/v1", {}, 5.0), HttpxWire)
    monkeypatch.setenv("NO_PROXY", "revive.internal")
    assert isinstance(wire_for("http://revive.internal/api/v1", {}, 5.0), KeepAliveWire)
