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
    (
        re.compile(
            r"([?&](?:code|state|token|access_token|refresh_token|id_token|code_verifier|client_secret)=)[^&\s\"']+"
        ),
        r"\1[redacted]",
    ),
    (re.compile(r"\brvr_[A-Za-z0-9_-]{20,}"), "rvr_[redacted]"),
)


def redact_line(text: str) -> str:
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


# What every LogRecord has; anything else on a record came from ``extra=`` (or a filter) and is redacted too.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class RedactCredentialsFilter(logging.Filter):
    """Redacts the message and every string field added with ``extra=``."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in list(vars(record).items()):
            if name not in _RECORD_ATTRIBUTES and isinstance(value, str):
                setattr(record, name, redact_line(value))
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix here
            return True
        redacted = redact_line(message)
        if redacted != message:
            record.msg = redacted
            record.args = ()
        return True
