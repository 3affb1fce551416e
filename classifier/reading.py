"""Reading the raw inputs -- body, status, headers -- into the signals the rows look at; bounded, never raising past ``classify``."""

from __future__ import annotations

import base64
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl

from .model import (
    _EPOCH_THRESHOLD,
    _MAX_CLAIMS_CHARS,
    _MAX_DESCRIPTION_CHARS,
    _MAX_MESSAGE_CHARS,
    _MAX_PARSE_CHARS,
    _MAX_RETRY_AFTER_SECONDS,
    _PROVIDER_ALIASES,
    Provider,
    _Signals,
)

# Indirection so tests can pin "now" for HTTP-date and epoch reset headers.
_clock: Callable[[], float] = time.time


# --- reading the inputs -----------------------------------------------------


def _provider_of(value: object) -> Provider:
    if not isinstance(value, str):
        return Provider.OIDC
    key = value.strip().lower()
    if key in Provider.values:
        return Provider(key)
    return _PROVIDER_ALIASES.get(key, Provider.OIDC)


def _read(*, status: object, body: object, headers: dict[str, str]) -> _Signals:
    try:
        return _read_all(status=status, body=body, headers=headers)
    except Exception:  # noqa: BLE001 - a body that breaks when read says nothing; its status and headers still do
        return _read_all(status=status, body=None, headers=headers)


def _read_all(*, status: object, body: object, headers: dict[str, str]) -> _Signals:
    parsed, text = _parse_body(body)
    doc = _first_mapping(parsed)
    error = _token(doc.get("error")) if doc is not None else ""
    message = _message_of(doc) if doc is not None else ""
    claims = _claims_json(doc.get("claims")) if doc is not None else ""
    if not error:
        error, challenge_message, challenge_claims = _bearer_challenge(headers.get("www-authenticate", ""))
        message = message or challenge_message
        claims = claims or challenge_claims
    return _Signals(
        status=_status_of(status),
        body=doc,
        text=text,
        error=error,
        suberror=_token(doc.get("suberror")) if doc is not None else "",
        entra_codes=_entra_codes(doc, message),
        message=message,
        nango_codes=_nango_codes(doc),
        account_status=_account_status(doc),
        claims=claims,
    )


def _parse_body(value: object) -> tuple[object, str]:
    """Return (parsed document or None, raw text for a non-JSON body)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        value = bytes(value[: _MAX_PARSE_CHARS + 1]).decode("utf-8", "replace")
    if isinstance(value, str):
        text = value[:_MAX_MESSAGE_CHARS]
        if len(value) > _MAX_PARSE_CHARS:
            return None, text
        stripped = value.strip()
        if stripped[:1] in ("{", "["):
            try:
                return json.loads(stripped), ""
            except (ValueError, RecursionError):
                return None, text
        return _form_encoded(stripped), text
    if isinstance(value, (Mapping, list, tuple)):
        return value, ""
    return None, ""


_FORM_ENCODED = re.compile(r"[A-Za-z0-9_.~%+-]+=[^\s]*")


def _form_encoded(text: str) -> dict[str, str] | None:
    """Token endpoints that answer application/x-www-form-urlencoded (e.g. GitHub)."""
    if not _FORM_ENCODED.fullmatch(text) or "error=" not in text:
        return None
    pairs = dict(parse_qsl(text, keep_blank_values=True, max_num_fields=50))
    return pairs if "error" in pairs else None


def _first_mapping(value: object) -> Mapping | None:
    if isinstance(value, Mapping):
        return value
    if isinstance(value, (list, tuple)):
        return next((item for item in value[:5] if isinstance(item, Mapping)), None)
    return None


def _token(value: object) -> str:
    """A short machine identifier (error code, status), normalised; '' otherwise."""
    if isinstance(value, str) and len(value) <= 100:
        return value.strip().lower()
    return ""


def _text(value: object) -> str:
    if isinstance(value, str):
        return value[:_MAX_MESSAGE_CHARS].strip()
    return ""


_MESSAGE_KEYS = ("error_description", "message", "description", "detail", "error_message")


def _message_of(doc: Mapping) -> str:
    for key in _MESSAGE_KEYS:
        message = _text(doc.get(key))
        if message:
            return message
    nested = doc.get("error")
    if isinstance(nested, Mapping):
        for key in ("message", "description", "detail"):
            message = _text(nested.get(key))
            if message:
                return message
    return ""


_CHALLENGE_ERROR = re.compile(r'\berror="([^"]{1,100})"')
_CHALLENGE_DESCRIPTION = re.compile(r'\berror_description="([^"]{1,1000})"')
_CHALLENGE_CLAIMS = re.compile(r'\bclaims="([A-Za-z0-9+/=_-]{1,' + str(4 * _MAX_CLAIMS_CHARS // 3 + 4) + r'})"')


def _bearer_challenge(header: str) -> tuple[str, str, str]:
    """RFC 6750 §3: a resource server's 401 carries the error (and a claims challenge) in WWW-Authenticate."""
    error = _CHALLENGE_ERROR.search(header)
    if error is None:
        return "", "", ""
    description = _CHALLENGE_DESCRIPTION.search(header)
    claims = _CHALLENGE_CLAIMS.search(header)
    return (
        _token(error.group(1)),
        description.group(1) if description else "",
        _claims_from_base64(claims.group(1)) if claims else "",
    )


def _claims_from_base64(value: str) -> str:
    """The challenge's ``claims`` is base64 (standard or URL-safe, padding optional) of a JSON object."""
    try:
        raw = base64.urlsafe_b64decode(value.replace("+", "-").replace("/", "_") + "=" * (-len(value) % 4))
        return _claims_json(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return ""


def _claims_json(value: object) -> str:
    """A claims request as compact JSON text if ``value`` is a JSON object of bounded size, else ''."""
    if not isinstance(value, str) or len(value) > _MAX_CLAIMS_CHARS:
        return ""
    try:
        parsed = json.loads(value)
    except (ValueError, RecursionError):
        return ""
    if not isinstance(parsed, dict) or not parsed:
        return ""
    return json.dumps(parsed, separators=(",", ":"), sort_keys=True)


_AADSTS = re.compile(r"AADSTS([0-9]{4,9})")
_DIGITS = re.compile(r"[0-9]{1,9}")


def _entra_codes(doc: Mapping | None, message: str) -> tuple[int, ...]:
    codes: list[int] = []
    raw = doc.get("error_codes") if doc is not None else None
    if isinstance(raw, (list, tuple)):
        for item in raw[:10]:
            if isinstance(item, bool):
                continue
            if isinstance(item, int):
                codes.append(item)
            elif isinstance(item, str) and _DIGITS.fullmatch(item.strip()):
                codes.append(int(item.strip()))
    codes.extend(int(number) for number in _AADSTS.findall(message))
    return tuple(dict.fromkeys(codes))


def _nango_codes(doc: Mapping | None) -> tuple[str, ...]:
    """Nango puts its code in error.code (API), error.type (webhooks) or type (logs)."""
    if doc is None:
        return ()
    envelopes = [doc]
    error = doc.get("error")
    if isinstance(error, Mapping):
        envelopes.append(error)
        payload = error.get("payload")
        nested = payload.get("error") if isinstance(payload, Mapping) else None
        if isinstance(nested, Mapping):
            envelopes.append(nested)
    codes = (_token(envelope.get(key)) for envelope in envelopes for key in ("code", "type"))
    return tuple(code for code in codes if code)


def _account_status(doc: Mapping | None) -> str:
    if doc is None:
        return ""
    for key in ("connected_account", "connectedAccount"):
        account = doc.get(key)
        if isinstance(account, Mapping):
            return _token(account.get("status")).upper()
    return _token(doc.get("status")).upper()


def _upstream_bodies(doc: Mapping | None, depth: int = 0) -> Iterator[Mapping]:
    """Bodies Nango may have wrapped, innermost first.

    Nango carries the upstream token response as ``payload.dataMessage`` (a
    dict, or the raw response text), and older versions and webhooks append the
    payload as JSON to the error text (``error``, ``message`` or ``description``).
    """
    if doc is None or depth > 3:
        return
    for key in ("error", "payload", "dataMessage"):
        child = doc.get(key)
        if isinstance(child, str) and key == "dataMessage":
            child = _first_mapping(_parse_body(child)[0])
        if isinstance(child, Mapping):
            yield from _upstream_bodies(child, depth + 1)
    for key in ("error", "message", "description", "external_message"):
        embedded = _embedded_json(doc.get(key))
        if embedded is not None:
            yield from _upstream_bodies(embedded, depth + 1)
    yield doc


def _embedded_json(value: object) -> Mapping | None:
    if not isinstance(value, str) or len(value) > _MAX_PARSE_CHARS:
        return None
    start = value.find("{")
    if start < 0:
        return None
    try:
        found, _ = json.JSONDecoder().raw_decode(value, start)
    except (ValueError, RecursionError):
        return None
    return found if isinstance(found, Mapping) else None


def _headers_of(value: object) -> dict[str, str]:
    """Lower-cased header names; anything that is not a name/value pair is skipped."""
    pairs: Iterable[object]
    if isinstance(value, Mapping):
        pairs = value.items()
    elif isinstance(value, (list, tuple)):
        pairs = value
    else:
        return {}
    headers: dict[str, str] = {}
    for index, pair in enumerate(pairs):
        if index >= 100:
            break
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            continue
        name, header_value = (_header_text(part) for part in pair)
        if name and header_value is not None:
            headers.setdefault(name.strip().lower(), header_value.strip())
    return headers


def _header_text(value: object) -> str | None:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value[:1024]).decode("latin-1")
    if isinstance(value, str):
        return value[:1024]
    return None


def _status_of(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or isinstance(value, str) and re.fullmatch(r"\s*[0-9]{3}\s*", value):
        number = int(value)
    else:
        return None
    return number if 100 <= number <= 599 else None


# --- retry hints ------------------------------------------------------------


def _retry_after(headers: dict[str, str], hint: float | None) -> float | None:
    """Seconds to wait: Retry-After, else X-RateLimit-Reset, else the row's hint."""
    for seconds in (
        _parse_retry_after(headers.get("retry-after")),
        _parse_rate_limit_reset(headers.get("x-ratelimit-reset")),
        hint,
    ):
        if seconds is not None:
            return min(max(seconds, 0.0), float(_MAX_RETRY_AFTER_SECONDS))
    return None


def _number(value: str | None) -> float | None:
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _parse_retry_after(value: str | None) -> float | None:
    """RFC 9110 §10.2.3: delta-seconds or an HTTP-date."""
    seconds = _number(value)
    if seconds is not None or not value:
        return seconds
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(moment.timestamp() - _clock(), 0.0)


def _parse_rate_limit_reset(value: str | None) -> float | None:
    """Auth0 sends epoch seconds; some APIs send seconds remaining."""
    number = _number(value)
    if number is None:
        return None
    if number >= _EPOCH_THRESHOLD:
        return max(number - _clock(), 0.0)
    return number


# --- description scrubbing --------------------------------------------------

_REDACTED = "[redacted]"
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}(?:\.[A-Za-z0-9_-]*){0,4}")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_SECRET_PAIR = re.compile(
    r"""
    (["']?)                                                       # optional quote
    ([a-z0-9_.-]{0,40}(?:token|secret|password|passwd|assertion|code)[a-z0-9_-]{0,40})  # key
    \1
    (\s*[:=]\s*)
    (?!\[redacted\])("[^"]*"|'[^']*'|[^\s,;&"'}\])]+)             # value
    """,
    re.IGNORECASE | re.VERBOSE,
)
_OPAQUE = re.compile(r"[A-Za-z0-9+/_-]{40,}={0,2}")


def _scrub(text: str) -> str:
    """Make a provider message safe to store and show: no credentials, bounded."""
    if not isinstance(text, str) or not text:
        return ""
    text = text[:_MAX_MESSAGE_CHARS]
    text = "".join(ch if ch.isprintable() else " " for ch in text)
    text = _JWT.sub(_REDACTED, text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {_REDACTED}", text)
    text = _OPAQUE.sub(_REDACTED, text)
    text = _SECRET_PAIR.sub(lambda m: f"{m.group(1)}{m.group(2)}{m.group(1)}{m.group(3)}{_REDACTED}", text)
    return " ".join(text.split())[:_MAX_DESCRIPTION_CHARS]
