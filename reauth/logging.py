"""A logging filter that keeps link tokens and OAuth codes out of every log line.

The reconnect link carries its token in the path and the sign-in callback
carries the authorization code and state in the query, and request logs
(``django.server``, ``django.request``) print both. This filter rewrites them
before any handler sees the record.
"""

from __future__ import annotations

import logging
import re

_PATTERNS = (
    (re.compile(r"(/reconnect/l/)[^/\s?\"']+"), r"\1[redacted]"),
    (re.compile(r"([?&](?:code|state|token|access_token|refresh_token|id_token|code_verifier|client_secret)=)[^&\s\"']+"),
     r"\1[redacted]"),
    (re.compile(r"\brvr_[A-Za-z0-9_-]{20,}"), "rvr_[redacted]"),
)


def redact_line(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactCredentialsFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix here
            return True
        redacted = redact_line(message)
        if redacted != message:
            record.msg = redacted
            record.args = ()
        return True
