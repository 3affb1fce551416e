"""Print the audit log as a live recovery timeline."""

from __future__ import annotations

from collections.abc import Callable

from audit.models import AuditEvent
from cases.services import LIVE_TRANSITIONS


def _state(snapshot) -> str:
    if not isinstance(snapshot, dict):
        return "—"
    for key in ("state", "generation"):
        if key in snapshot:
            return "·" if snapshot[key] is None else str(snapshot[key])
    return "—"


def middle(value: str, width: int) -> str:
    """``value`` in ``width`` characters: cut in the middle (the start and the end say the most), padded."""
    if len(value) > width:
        head = (width - 1) // 2
        value = value[:head] + "…" + value[len(value) - (width - 1 - head) :]
    return f"{value:<{width}}"


def describe(event: AuditEvent) -> dict:
    live = LIVE_TRANSITIONS.get(event.action)
    generation = None
    for snap in (event.after, event.before, event.arguments):
        if isinstance(snap, dict):
            generation = snap.get("generation") or snap.get("rejected_generation") or generation
            if generation:
                break
    return {
        "id": event.pk,
        "at": event.occurred_at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "entity": f"{event.entity_type}:{event.entity_id}",
        "case_id": event.case_reference or None,
        "from": _state(event.before) if event.before is not None else None,
        "to": _state(event.after),
        "live_transition": live[0] if live else None,
        "live_label": live[1] if live else None,
        "generation": generation,
        "outcome": event.outcome,
    }


class TimelinePrinter:
    """Prints every audit event written since the last call, in order."""

    def __init__(self, write: Callable[[str], None], *, style=None) -> None:
        self.write = write
        self.style = style
        last = AuditEvent.objects.order_by("-id").values_list("id", flat=True).first()
        self.last_id = last or 0
        self.events: list[dict] = []

    def flush(self, *, run_ids: set[str] | None = None) -> list[dict]:
        new = []
        for event in AuditEvent.objects.filter(id__gt=self.last_id).order_by("id"):
            self.last_id = event.pk
            if run_ids is not None and event.run_id and event.run_id not in run_ids:
                continue
            d = describe(event)
            new.append(d)
            if d["action"] == "checkpoint.recorded":  # declared up front; shown when the run reaches it
                continue
            self.write(self.format(d))
        self.events.extend(new)
        return new

    def format(self, d: dict) -> str:
        move = f"{d['from'] or '·'} → {d['to']}"
        live = f"  LIVE TRANSITION {d['live_transition']:02d} / 04 ({d['live_label']})" if d["live_transition"] else ""
        gen = f"  gen {d['generation']}" if d["generation"] else ""
        reached = ""
        if d["action"] == "action.committed" or d["to"] == "reconciled_committed":
            reached = f"  ▸ checkpoint {d['entity'][-2:]} reached" if d["entity"][-2:].isdigit() else ""
        line = (
            f"{d['at'][11:23]}  {middle(d['actor'], 24)} {middle(d['action'], 26)} {middle(d['entity'], 40)} "
            f"{move}{gen}{live}{reached}"
        )
        if self.style and d["live_transition"]:
            return self.style.SUCCESS(line)
        return line


class LiveTimeline:
    """Prints audit events as they are written, from a thread of its own, until ``stop``.

    ``scope`` says which events belong on the timeline (the lab's runs and cases); the
    rest of the database is not shown.
    """

    def __init__(self, write: Callable[[str], None], *, style=None, interval: float = 0.1) -> None:
        import threading

        self.printer = TimelinePrinter(write, style=style)
        self.interval = interval
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="lab-timeline", daemon=True)

    def start(self) -> LiveTimeline:
        self._thread.start()
        return self

    def flush(self) -> list[dict]:
        with self._lock:
            return self.printer.flush()

    def _loop(self) -> None:
        from django.db import connection

        try:
            while not self._stop.wait(self.interval):
                self.flush()
        finally:
            connection.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.flush()
