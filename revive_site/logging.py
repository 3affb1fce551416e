"""Log lines: the work context on every record, and one JSON object per line when asked for.

``REVIVE_LOG_FORMAT=json`` (the default with ``REVIVE_PRODUCTION=1``) writes
each record as one JSON object: ``time``, ``level``, ``logger``, ``message``,
``request_id``, ``trace_id``, ``namespace``, ``run_id``, ``case_id`` (empty
where not known), any ``extra=`` fields, and ``exc_info`` as text. Every
string in it, whatever the field, passes through the same redaction as the
plain format's message (``reauth.logging.redact_line``): link tokens, OAuth
codes and states never reach a log line.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from audit.context import FIELDS, work_context
from reauth.logging import redact_line


class WorkContextFilter(logging.Filter):
    """Copy the work context (request, trace, namespace, run, case) onto the record, unless it carries its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = work_context()
        for field in FIELDS:
            if not getattr(record, field, ""):
                setattr(record, field, context[field])
        return True


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact_line(value)
    if isinstance(value, dict):
        return {key: _redacted(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redacted(item) for item in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    # anything else (django.request's ``request``, an exception, a datetime) as the text JSON would carry
    return redact_line(str(value))


class ReviveJsonFormatter(JsonFormatter):
    """One JSON object per line, fields in a fixed order, every string redacted."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        super().__init__("%(levelname)s %(name)s %(message)s", *args, **kwargs)

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds")
        super().add_fields(log_data, record, message_dict)
        for field in FIELDS:
            log_data.setdefault(field, getattr(record, field, ""))

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return _redacted(log_data)
