"""How the synchronous client's requests reach Revive: kept-alive ``http.client`` connections, or httpx.

Every protected action is two requests, so the client's own cost per request is on every action's path.
httpx's client (request and header models, cookies, auth and event hooks, its connection pool) spends about
three times the CPU of the standard library's ``http.client`` on a small JSON POST (0.64 ms against 0.20 ms
here), so a plain ``http://`` Revive -- the usual sidecar or in-cluster address -- is spoken to over a small
pool of kept-alive ``http.client`` connections. httpx stays for everything that needs what only it has:
``https://`` (its certificate bundle and TLS settings), a proxy from the environment (``HTTP_PROXY`` /
``ALL_PROXY`` / ``NO_PROXY``, which httpx honours), and a caller's own ``transport`` (tests, mTLS, retries).

Both answer ``(status, body bytes)`` and raise ``WireError`` when Revive cannot be reached; neither retries
a request (a ``begin`` sent twice must not look like two), but a kept-alive connection that the server has
closed while it sat idle (gunicorn closes idle ones after its keep-alive) is noticed before the request is
written and replaced, so it never costs an error.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import httpx

__all__ = ["HttpxWire", "KeepAliveWire", "WireError", "wire_for"]


class WireError(Exception):
    """Revive could not be reached, or the connection broke before its answer arrived."""


class KeepAliveWire:
    """A thread-safe pool of kept-alive ``http.client`` connections to one ``http://`` origin."""

    MAX_IDLE = 8  # connections kept for reuse; more concurrent requests open (and then close) their own

    def __init__(self, url: str, headers: dict[str, str], timeout: httpx.Timeout | float) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "localhost", parts.port or 80
        self._prefix = parts.path.rstrip("/")
        self._headers = {**headers, "Content-Type": "application/json", "Accept": "application/json"}
        if isinstance(timeout, httpx.Timeout):
            self._connect_timeout, self._timeout = timeout.connect, timeout.read
        else:
            self._connect_timeout = self._timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _take(self) -> http.client.HTTPConnection:
        with self._lock:
            while self._idle:
                conn = self._idle.pop()
                if _still_open(conn):
                    return conn
                conn.close()
        conn = http.client.HTTPConnection(self._host, self._port, timeout=self._connect_timeout)
        try:
            conn.connect()
        except OSError as exc:
            conn.close()
            raise WireError(f"cannot connect to {self._host}:{self._port}: {type(exc).__name__}") from exc
        if conn.sock is not None:
            conn.sock.settimeout(self._timeout)
        return conn

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self.MAX_IDLE:
                self._idle.append(conn)
                return
        conn.close()

    def send(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        payload = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        conn = self._take()
        try:
            conn.request(method, self._prefix + path, payload, {**self._headers, **(headers or {})})
            response = conn.getresponse()
            content = response.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise WireError(f"{method} {path}: {type(exc).__name__}") from exc
        if response.will_close:
            conn.close()
        else:
            self._give_back(conn)
        return response.status, content

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _still_open(conn: http.client.HTTPConnection) -> bool:
    """An idle kept-alive socket that has become readable was closed by the server (or holds junk): not reusable."""
    sock = conn.sock
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


class HttpxWire:
    """httpx's client, for https, proxies and callers' own transports."""

    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        timeout: httpx.Timeout | float,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout, transport=transport)

    def send(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        try:
            response = self._http.request(method, path, json=body, headers=headers)
        except httpx.TransportError as exc:
            raise WireError(f"{method} {path}: {type(exc).__name__}") from exc
        return response.status_code, response.content

    def close(self) -> None:
        self._http.close()


def wire_for(
    url: str,
    headers: dict[str, str],
    timeout: httpx.Timeout | float,
    transport: httpx.BaseTransport | None = None,
) -> KeepAliveWire | HttpxWire:
    """The lean wire for a plain ``http://`` URL that no proxy setting applies to; httpx for anything else."""
    parts = urlsplit(url)
    if transport is None and parts.scheme == "http" and not _proxied(parts.hostname or ""):
        return KeepAliveWire(url, headers, timeout)
    return HttpxWire(url, headers, timeout, transport)


def _proxied(host: str) -> bool:
    """Whether the environment sends ``http://host`` through a proxy (as httpx would read it)."""
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get("http") or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(host)  # NO_PROXY (and, on macOS, the system's exceptions)
