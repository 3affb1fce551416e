"""A small typed client for the Restate admin API (and the ingress health probe).

Written against restate-server 1.7 (the version pinned in ``package.json``);
the endpoints used are the unversioned admin routes that server serves:
``/version``, ``/health``, ``/deployments``, ``/services``, ``/query``,
``/invocations/{id}/kill``, ``/invocations/{id}/purge`` and
``/services/{service}/state``.

Every call carries a timeout. Failures come out as exactly two types:

* :class:`RestateTransportError`: the admin API could not be reached or did
  not answer in time (DNS, refused connection, timeout, broken stream, an
  unusable URL);
* :class:`RestateResponseError`: it answered, but with an HTTP error status
  or with a body that is not the JSON this client expects.

Messages are redacted: a URL with user information never leaves this module
with its credentials, since Restate echoes service URLs back in its errors.
"""

from __future__ import annotations

import dataclasses
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import httpx

from audit.redaction import redact_text

DEFAULT_TIMEOUT = 3.0

TERMINAL_STATUSES = frozenset({"completed", "killed", "cancelled"})
"""Invocation statuses (``sys_invocation.status``) that are over. Every other status, known or not, is active."""


def sql_text(value: str) -> str:
    """``value`` as a SQL string literal for :meth:`RestateAdminClient.query`."""
    return "'" + value.replace("'", "''") + "'"


class RestateAdminError(Exception):
    """Base of the two failure types below."""

    def __init__(self, message: str) -> None:
        self.message = redact_text(message)
        super().__init__(self.message)


class RestateTransportError(RestateAdminError):
    """The endpoint could not be reached, or did not answer within the timeout."""


class RestateResponseError(RestateAdminError):
    """The endpoint answered with an HTTP error status or an unexpected body."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclasses.dataclass(frozen=True)
class VersionInfo:
    version: str
    ingress_endpoint: str | None


@dataclasses.dataclass(frozen=True)
class Deployment:
    id: str
    service_url: str | None
    """The registered HTTP URI, exactly as Restate stores it; ``None`` for a Lambda deployment."""
    created_at: str
    pinned_services: tuple[tuple[str, int], ...] = ()


@dataclasses.dataclass(frozen=True)
class Handler:
    name: str
    ty: str | None
    """``Workflow``, ``Exclusive`` or ``Shared`` (``None`` for a plain service handler)."""


@dataclasses.dataclass(frozen=True)
class Service:
    name: str
    revision: int | None
    ty: str | None = None
    deployment_id: str | None = None
    handlers: tuple[Handler, ...] = ()


@dataclasses.dataclass(frozen=True)
class RegisteredDeployment:
    id: str
    created: bool
    """``True`` when Restate created a deployment (201), ``False`` when one already existed (200)."""


def _split_credentials(base_url: str) -> tuple[str, httpx.BasicAuth | None]:
    """Move URL user-info into a Basic auth header, so that no logged request URL carries it."""
    try:
        parts = urlsplit(base_url.rstrip("/"))
    except ValueError:
        return base_url.rstrip("/"), None
    if "@" not in parts.netloc:
        return urlunsplit(parts), None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    return urlunsplit(parts._replace(netloc=hostport)), httpx.BasicAuth(unquote(user), unquote(password))


def _require(mapping: Any, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(mapping, dict) or key not in mapping or not isinstance(mapping[key], kind):
        raise RestateResponseError(f"unexpected admin API answer for {what}: missing or invalid '{key}'")
    return mapping[key]


def _service_from(raw: Any, what: str) -> Service:
    name = _require(raw, "name", str, what)
    revision = raw.get("revision")
    handlers = tuple(
        Handler(name=str(h.get("name", "")), ty=h.get("ty")) for h in raw.get("handlers") or [] if isinstance(h, dict)
    )
    return Service(
        name=name,
        revision=revision if isinstance(revision, int) and not isinstance(revision, bool) else None,
        ty=raw.get("ty") if isinstance(raw.get("ty"), str) else None,
        deployment_id=raw.get("deployment_id") if isinstance(raw.get("deployment_id"), str) else None,
        handlers=handlers,
    )


class RestateAdminClient:
    """Synchronous admin API client; use as a context manager or call :meth:`close`."""

    def __init__(self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url, auth = _split_credentials(base_url)
        self.timeout = timeout
        self._http = httpx.Client(timeout=httpx.Timeout(timeout), follow_redirects=False, auth=auth)

    def __enter__(self) -> RestateAdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- plumbing -----------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        what: str,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, self.base_url + path, json=json, params=params, headers=headers)
        except (httpx.TransportError, httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise RestateTransportError(f"{what}: {type(exc).__name__}: {exc or 'no detail'}") from None
        except httpx.HTTPError as exc:
            raise RestateResponseError(f"{what}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise RestateResponseError(
                f"{what}: HTTP {response.status_code}: {self._error_text(response)}",
                status_code=response.status_code,
            )
        return response

    @staticmethod
    def _error_text(response: httpx.Response) -> str:
        try:
            body = response.json()
        except ValueError:
            return (response.text or "").strip()[:500] or "no message"
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return body["message"][:500]
        return str(body)[:500]

    @staticmethod
    def _json(response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            raise RestateResponseError(
                f"{what}: the admin API answered with a body that is not JSON", status_code=response.status_code
            ) from None

    # -- read ---------------------------------------------------------------

    def version(self) -> VersionInfo:
        what = "GET /version"
        body = self._json(self._request("GET", "/version", what=what), what)
        version = _require(body, "version", str, what)
        ingress = body.get("ingress_endpoint")
        return VersionInfo(version=version, ingress_endpoint=ingress if isinstance(ingress, str) else None)

    def health(self) -> None:
        self._request("GET", "/health", what="GET /health")

    def list_deployments(self) -> list[Deployment]:
        what = "GET /deployments"
        body = self._json(self._request("GET", "/deployments", what=what), what)
        deployments = []
        for raw in _require(body, "deployments", list, what):
            deployment_id = _require(raw, "id", str, what)
            uri = raw.get("uri")
            pinned = tuple(
                (str(s.get("name")), revision)
                for s in raw.get("services") or []
                if isinstance(s, dict) and isinstance(revision := s.get("revision"), int)
            )
            deployments.append(
                Deployment(
                    id=deployment_id,
                    service_url=uri if isinstance(uri, str) else None,
                    created_at=str(raw.get("created_at") or ""),
                    pinned_services=pinned,
                )
            )
        return deployments

    def list_services(self) -> list[Service]:
        what = "GET /services"
        body = self._json(self._request("GET", "/services", what=what), what)
        return [_service_from(raw, what) for raw in _require(body, "services", list, what)]

    def get_service(self, name: str) -> Service:
        what = "GET /services/{service}"
        body = self._json(self._request("GET", f"/services/{quote(name, safe='')}", what=what), what)
        return _service_from(body, what)

    def query(self, sql: str) -> list[dict[str, Any]]:
        """Run one SQL statement on the introspection tables (``sys_invocation``, ``state``, ...)."""
        what = "POST /query"
        response = self._request(
            "POST", "/query", json={"query": sql}, headers={"accept": "application/json"}, what=what
        )
        rows = _require(self._json(response, what), "rows", list, what)
        if not all(isinstance(row, dict) for row in rows):
            raise RestateResponseError(f"{what}: rows are not JSON objects")
        return rows

    # -- write --------------------------------------------------------------

    def register_deployment(self, uri: str, *, force: bool) -> RegisteredDeployment:
        what = "POST /deployments"
        response = self._request("POST", "/deployments", json={"uri": uri, "force": force}, what=what)
        deployment_id = _require(self._json(response, what), "id", str, what)
        return RegisteredDeployment(id=deployment_id, created=response.status_code == 201)

    def delete_deployment(self, deployment_id: str, *, force: bool = True) -> None:
        """Delete a deployment. Restate 1.7 implements only forced deletion (501 otherwise)."""
        self._request(
            "DELETE",
            f"/deployments/{quote(deployment_id, safe='')}",
            params={"force": "true" if force else "false"},
            what="DELETE /deployments/{deployment}",
        )

    def kill_invocation(self, invocation_id: str) -> None:
        self._request(
            "PATCH", f"/invocations/{quote(invocation_id, safe='')}/kill", what="PATCH /invocations/{id}/kill"
        )

    def purge_invocation(self, invocation_id: str) -> None:
        self._request(
            "PATCH", f"/invocations/{quote(invocation_id, safe='')}/purge", what="PATCH /invocations/{id}/purge"
        )

    def clear_state(self, service_name: str, service_key: str) -> None:
        """Replace the keyed state of a virtual object or workflow key with nothing.

        Restate accepts the change (202) and applies it on the key's partition
        ahead of any invocation submitted afterwards.
        """
        self._request(
            "POST",
            f"/services/{quote(service_name, safe='')}/state",
            json={"object_key": service_key, "new_state": {}},
            what="POST /services/{service}/state",
        )


class RestateIngressClient:
    """The one ingress call Revive's operator needs: its health endpoint."""

    def __init__(self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.base_url, self._auth = _split_credentials(base_url)
        self.timeout = timeout

    def health(self) -> None:
        what = "GET /restate/health"
        try:
            with httpx.Client(timeout=httpx.Timeout(self.timeout), follow_redirects=False, auth=self._auth) as http:
                response = http.get(self.base_url + "/restate/health")
        except (httpx.TransportError, httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            raise RestateTransportError(f"{what}: {type(exc).__name__}: {exc or 'no detail'}") from None
        except httpx.HTTPError as exc:
            raise RestateResponseError(f"{what}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            raise RestateResponseError(f"{what}: HTTP {response.status_code}", status_code=response.status_code)
