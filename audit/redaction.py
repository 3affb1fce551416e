"""Redaction applied to everything stored as evidence.

URL user-info becomes ``REDACTED`` (host, path, query and fragment are kept);
values under secret-like keys and secret-looking strings (bearer tokens, JWTs)
are replaced.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

REDACTED = "REDACTED"

_SECRET_KEY = re.compile(
    r"(token|secret|password|passwd|authorization|api[_-]?key|cookie|assertion|credential|private[_-]?key|client[_-]?secret|^code$|refresh|access)",
    re.IGNORECASE,
)
_NOT_SECRET_KEYS = {"token_type", "refresh_failed", "access_restored", "error_codes", "credential_generation"}
_BEARER = re.compile(r"\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}(?:\.[A-Za-z0-9_-]*)?")
_URL_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@\s?#]+)@")
MAX_STRING = 2000


def redact_url(value: str) -> str:
    """Replace the user-info of a URL with REDACTED, keeping every other character exactly as written.

    Host case, port, path, an empty query or fragment: nothing else is normalised, so the stored value can be
    compared with the one the caller sent.
    """
    try:
        parts = urlsplit(value)
    except ValueError:
        return _URL_USERINFO.sub(rf"\1{REDACTED}@", value)
    if "@" not in parts.netloc:
        return value
    start = value.find("//") + 2
    if start < 2 or value[start : start + len(parts.netloc)] != parts.netloc:
        return _URL_USERINFO.sub(rf"\1{REDACTED}@", value)
    host_and_port = parts.netloc.rsplit("@", 1)[1]
    return f"{value[:start]}{REDACTED}@{host_and_port}{value[start + len(parts.netloc) :]}"


def redact_text(value: str) -> str:
    value = _URL_USERINFO.sub(rf"\1{REDACTED}@", value)
    value = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
    value = _JWT.sub(REDACTED, value)
    if len(value) > MAX_STRING:
        value = value[:MAX_STRING] + "…"
    return value


def is_secret_key(key: str) -> bool:
    return key.lower() not in _NOT_SECRET_KEYS and bool(_SECRET_KEY.search(key))


def redact(value: Any, *, _depth: int = 0) -> Any:
    """Return a JSON-safe copy of ``value`` with secrets removed."""
    if _depth > 20:
        return REDACTED
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            key = str(key)
            if is_secret_key(key) and item not in (None, "", [], {}):
                out[key] = REDACTED
            else:
                out[key] = redact(item, _depth=_depth + 1)
        return out
    if isinstance(value, (list, tuple)):
        return [redact(item, _depth=_depth + 1) for item in value[:200]]
    if isinstance(value, str):
        if "://" in value and "@" in value:
            value = redact_url(value) if " " not in value.strip() else value
        return redact_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return redact_text(str(value))
