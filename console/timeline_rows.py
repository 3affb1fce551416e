"""The recovery timeline of a case, read from the audit log.

``timeline_rows`` turns audit events into the rows an operator reads (what
happened, who did it, when), each placed in one of the seed's three systems:
the credential system (provider signal, owner link, identity, generation), the
continuity layer (Revive's case, ledger, reconciliation and approvals) and the
durable runtime (checkpoint, park, resume sent and acknowledged).
The console draws the same rows (``console.timeline.timeline_svg``). Both are
pure: they read only the events given.

What an event's JSON holds was redacted when it was written; it is redacted
again here before it is shown.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from audit.redaction import redact
from cases.services import LIVE_TRANSITIONS

CREDENTIAL, REVIVE, RUNTIME = "credential", "revive", "runtime"
LANES = (
    (CREDENTIAL, ("CREDENTIAL", "SYSTEM")),
    (REVIVE, ("CONTINUITY", "LAYER")),
    (RUNTIME, ("DURABLE", "RUNTIME")),
)
REFUSED_OUTCOMES = {"refused", "error", "failed", "expired", "revoked", "locked"}


@dataclass(frozen=True)
class TimelineRow:
    event_id: int
    at: datetime
    actor: str
    action: str
    lane: str
    label: str
    detail: str
    live: int | None
    """1..4 for the seed's four live transitions, else None."""
    outcome: str
    trace_id: str = ""
    """The W3C trace id the change happened under: find the request, the task and their spans by it."""

    @property
    def refused(self) -> bool:
        return self.outcome in REFUSED_OUTCOMES or self.action in ("case.resume_failed", "action.reconcile_failed")

    @property
    def by_operator(self) -> bool:
        return self.actor.startswith("operator:")


def _d(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _compact(value: Any, limit: int = 160) -> str:
    if value in (None, "", {}, []):
        return ""
    text = value if isinstance(value, str) else json.dumps(redact(value), sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _gen(value: Any) -> str:
    return f"{value:02d}" if isinstance(value, int) else str(value or "?")


def _identity(value: Any) -> str:
    ident = _d(value)
    return ", ".join(f"{k}={v}" for k, v in sorted(ident.items())) or "—"


# Each describer returns (lane, label, detail) for one event.
Describer = Callable[[Any], tuple[str, str, str]]


def _case_opened(e) -> tuple[str, str, str]:
    after, args = _d(e.after), _d(e.arguments)
    code = after.get("provider_code") or "provider error"
    return (
        CREDENTIAL,
        f"Provider signal: grant rejected ({code})",
        f"{after.get('failure_class', '')}, generation {_gen(after.get('rejected_generation'))} rejected"
        + (f"; checkpoint {args['checkpoint']}" if args.get("checkpoint") else "")
        + (f", action {args['action_key']}" if args.get("action_key") else ""),
    )


def _action_state(e) -> tuple[str, str, str]:
    to = e.action.split(".", 1)[1]
    after, args = _d(e.after), _d(e.arguments)
    if to in ("reconciled_committed", "reconciled_absent"):
        found = "found (counts as committed)" if to == "reconciled_committed" else "absent (may execute again)"
        return (REVIVE, f"Reconciled {e.entity_id}: {found}", f"evidence {_compact(args.get('evidence')) or 'none'}")
    if to == "ambiguous":
        return (REVIVE, f"Action {e.entity_id} ambiguous", _compact(args.get("reason")))
    if to == "failed":
        return (CREDENTIAL, f"Provider refused {e.entity_id}", _compact(args.get("failure_class")))
    if to == "executing":
        return (
            REVIVE,
            f"Action {e.entity_id} executing",
            f"attempt {after.get('attempts', '?')}, generation {_gen(after.get('generation'))}",
        )
    return (REVIVE, f"Action {e.entity_id} {to.replace('_', ' ')}", _compact(args))


def _case_state(e) -> tuple[str, str, str]:
    to = e.action.split(".", 1)[1]
    args, after = _d(e.arguments), _d(e.after)
    if to == "reauthorized":
        ident = _d(args.get("identity"))
        return (
            CREDENTIAL,
            "Access restored: identity verified",
            (f"{_identity(ident)}; " if ident else "") + f"next generation {_gen(after.get('resumed_generation'))}",
        )
    if to == "awaiting_approval":
        return (
            REVIVE,
            "Waiting for an operator's approval",
            "; ".join(args.get("reasons") or []) or args.get("policy", ""),
        )
    if to == "resuming":
        if args.get("approved"):
            return (RUNTIME, f"Approved by {e.actor}: resume sent", _compact(args.get("reason")))
        pending = args.get("reconcile_in_worker")
        return (RUNTIME, "Resume sent", f"worker reconciles {', '.join(pending)}" if pending else "")
    if to == "resumed":
        return (RUNTIME, "Execution resumed", "every blocked run is past the action it was parked on")
    if to == "resume_failed":
        return (RUNTIME, "Resume failed: an operator decides", _compact(args.get("reason") or args.get("error")))
    if to == "abandoned":
        verb = "Rejected" if args.get("rejected") else "Abandoned"
        return (REVIVE, f"{verb} by {e.actor}", _compact(args.get("reason")))
    labels = {
        "awaiting_owner": "Waiting for the owner to reconnect",
        "reconciling": "Reconciling ambiguous actions",
        "closed": "Case closed",
    }
    return (REVIVE, labels.get(to, f"Case {to.replace('_', ' ')}"), "")


def _reconnect(e) -> tuple[str, str, str]:
    what = e.action.split(".", 1)[1]
    after, args = _d(e.after), _d(e.arguments)
    if what == "requested":
        return (CREDENTIAL, "Owner link requested", "replaces an earlier link" if args.get("replaces") else "")
    if what == "link_issued":
        return (CREDENTIAL, "Owner link issued", f"expires {after.get('expires_at', '?')}")
    if what == "notified":
        return (CREDENTIAL, "Owner link sent", f"{after.get('channel', '')} to {after.get('to', '')}")
    if what == "webhook_delivered":
        return (CREDENTIAL, "Owner link sent by webhook", f"status {after.get('status', '?')}")
    if what in ("sign_in_started", "opened", "link_opened"):
        return (CREDENTIAL, "Owner opened the link", _compact(args.get("provider_app")))
    if what == "identity_mismatch":
        held = (
            (
                f"; {args['custody']} now holds this other account's grant: the connection stays blocked until the "
                f"expected account reconnects"
            )
            if args.get("custody")
            else ""
        )
        return (
            CREDENTIAL,
            "Identity refused",
            f"expected {_identity(args.get('expected'))}; presented {_identity(args.get('presented'))}"
            f" (mismatched: {', '.join(args.get('mismatched') or []) or '?'}){held}",
        )
    if what == "consumed":
        return (CREDENTIAL, "Identity verified", _identity(args.get("identity")))
    if what == "notify_failed":
        return (CREDENTIAL, "Owner link could not be sent", _compact(args.get("error") or args.get("channel")))
    return (CREDENTIAL, f"Owner link {what.replace('_', ' ')}", _compact(after.get("revoked_reason") or args))


def _run_parked(e) -> tuple[str, str, str]:
    args = _d(e.arguments)
    where = f"at checkpoint {args['checkpoint']}" if args.get("checkpoint") else _compact(args.get("reason"))
    return (RUNTIME, f"Run {e.run_id} parked", where)


def _simple(lane: str, label: str, detail: Callable[[Any], str] = lambda e: "") -> Describer:
    return lambda e: (lane, label.format(e=e), detail(e))


DESCRIBERS: dict[str, Describer] = {
    "case.opened": _case_opened,
    "lease.advanced": _simple(
        CREDENTIAL,
        "Generation advanced",
        lambda e: f"{_gen(_d(e.before).get('generation'))} → {_gen(_d(e.after).get('generation'))}",
    ),
    "credential.custody_stored": _simple(
        CREDENTIAL,
        "New grant handed to custody",
        lambda e: f"{_d(e.after).get('custody', '')}, generation {_gen(_d(e.after).get('generation'))}",
    ),
    "credential.custody_broker": _simple(
        CREDENTIAL,
        "Grant stays with the broker",
        lambda e: f"{_d(e.after).get('custody', '')} {_d(e.after).get('reference', '')}, "
        f"identity proved by {_d(e.after).get('proof', '?')}, "
        f"generation {_gen(_d(e.after).get('generation'))}",
    ),
    "broker.signal": _simple(
        CREDENTIAL,
        "Broker signal",
        lambda e: f"{_d(e.arguments).get('kind', '')}: {_d(e.arguments).get('outcome', '')}"
        + (f" ({_d(e.arguments).get('code')})" if _d(e.arguments).get("code") else ""),
    ),
    "checkpoint.recorded": _simple(
        RUNTIME,
        "Checkpoint saved",
        lambda e: " / ".join(
            dict.fromkeys(str(v) for v in (_d(e.after).get("checkpoint_id"), _d(e.after).get("label")) if v)
        ),
    ),
    "run.parked": _run_parked,
    "run.park_observed": _simple(RUNTIME, "Runtime holds {e.run_id} at its wait", lambda e: _compact(e.after)),
    "run.unparked": _simple(RUNTIME, "Run {e.run_id} released"),
    "run.resume_delivered": _simple(
        RUNTIME,
        "Resume delivered to {e.run_id}",
        lambda e: f"{_d(e.arguments).get('runtime', '')}"
        + (" (already past its wait)" if _d(e.after).get("already") else ""),
    ),
    "run.resume_acknowledged": _simple(
        RUNTIME, "Run {e.run_id} acknowledged the resume", lambda e: f"generation {_gen(_d(e.after).get('generation'))}"
    ),
    "run.resumed": _simple(
        RUNTIME,
        "Run {e.run_id} is past its parked action",
        lambda e: f"{_d(e.after).get('past') or ''} {_d(e.after).get('how') or ''}, "
        f"generation {_gen(_d(e.after).get('generation'))}",
    ),
    "run.redriven": _simple(
        RUNTIME,
        "Run {e.run_id} stalled: re-driven",
        lambda e: f"re-drive {_d(e.arguments).get('re_drive')} of {_d(e.arguments).get('of')}",
    ),
    "case.resume_problem": _simple(RUNTIME, "Resume problem", lambda e: _compact(_d(e.arguments).get("reason"))),
    "outbox.retried": _simple(REVIVE, "Failed step {e.entity_id} retried by {e.actor}"),
    "reconnect.notify_exhausted": _simple(
        CREDENTIAL, "Owner could not be notified", lambda e: _compact(_d(e.arguments).get("error"))
    ),
    "run.resume_failed": _simple(
        RUNTIME, "Resume of {e.run_id} failed", lambda e: _compact(_d(e.arguments).get("error"))
    ),
    "action.reconcile_failed": _simple(
        REVIVE, "Reconciler failed for {e.entity_id}", lambda e: _compact(_d(e.arguments).get("error"))
    ),
}


def describe(event) -> TimelineRow:
    """One audit event as a timeline row."""
    action = event.action
    if action in DESCRIBERS:
        lane, label, detail = DESCRIBERS[action](event)
    elif action.startswith("action."):
        lane, label, detail = _action_state(event)
    elif action.startswith("case."):
        lane, label, detail = _case_state(event)
    elif action.startswith("reconnect."):
        lane, label, detail = _reconnect(event)
    elif action.endswith(".fenced"):
        args = _d(event.arguments)
        lane, label, detail = (
            CREDENTIAL,
            f"Stale generation {_gen(args.get('generation'))} fenced out",
            f"{action.split('.')[0]} from {event.run_id or 'a worker'}; current {_gen(args.get('current_generation'))}",
        )
    elif action.startswith("console."):
        args = _d(event.arguments)
        lane, label, detail = (
            REVIVE,
            f"Operator call refused: {args.get('operation', '?')}",
            _compact(args.get("why")),
        )
    else:
        lane, label, detail = (REVIVE, action, _compact(event.arguments))
    live = LIVE_TRANSITIONS.get(action)
    return TimelineRow(
        event_id=event.pk,
        at=event.occurred_at,
        actor=event.actor,
        action=action,
        lane=lane,
        label=label,
        detail=detail,
        live=live[0] if live else None,
        outcome=event.outcome,
        trace_id=getattr(event, "trace_id", "") or "",
    )


def timeline_rows(events: Iterable) -> list[TimelineRow]:
    return [describe(e) for e in events]


def live_transition_reached(actions: Iterable[str]) -> int:
    """The highest of the four live transitions among these audit actions (0 if none)."""
    return max((LIVE_TRANSITIONS[a][0] for a in actions if a in LIVE_TRANSITIONS), default=0)
