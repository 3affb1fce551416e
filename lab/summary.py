"""What a scenario's run left behind -- read back from the ledger, the audit log and the mail service -- and what is
wrong with it (``problems``: empty when the recovery kept the contract)."""

from __future__ import annotations

import json

from audit.models import AuditEvent
from cases.models import Action, Connection, RecoveryCase, Run

from . import briefing
from .world import ALL_SCENARIOS, TOKEN_VAULT


class ScenarioSummary:
    """The record part of ``lab.scenarios.Scenario``."""

    def events(self) -> list[AuditEvent]:
        from django.db.models import Q

        return list(
            AuditEvent.objects.filter(id__gt=self.first_event)
            .filter(Q(run_id=self.run_id) | Q(case_reference=self.case_reference) | Q(connection_id=self.connection_id))
            .order_by("id")
        )

    def summary(self, generation_before: int, seconds: float) -> dict:
        from .timeline import describe

        case = RecoveryCase.objects.select_related("checkpoint", "action").get(reference=self.case_reference)
        send = Action.objects.get(run_id=self.run_id, action_key=briefing.SEND_ACTION)
        messages = self.world.standin.messages_for(self.run_id)
        keys = [m["idempotency_key"] for m in messages]
        events = [describe(e) for e in self.events()]
        live = [e["live_transition"] for e in events if e["live_transition"]]
        result = {
            "scenario": self.name,
            "title": ALL_SCENARIOS[self.name],
            "provider": self.provider,
            "runtime": self.runtime,
            "sdk": self.sdk,
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "case_id": case.reference,
            "case_pk": case.pk,
            "case_state": case.state,
            "run_state": Run.objects.get(pk=self.run_id).state,
            "checkpoint": case.checkpoint.label if case.checkpoint_id else "",
            "action_key": case.action.action_key if case.action_id else "",
            "failure_class": case.failure_class,
            "provider_code": case.provider_code,
            "generation_before": generation_before,
            "generation_after": Connection.objects.get(pk=self.connection_id).current_generation,
            "messages_accepted": len(messages),
            "duplicate_effects_observed": len(keys) - len(set(keys)),
            "send_state": send.state,
            "send_attempts": send.attempts,
            "brief_sent_by_pid": messages[-1].get("pid") if messages else None,
            "checkpoints_completed": self.checkpoints_completed(),
            "live_transitions": live,
            "transitions": events,
            "notes": self.notes,
            "seconds": round(seconds, 2),
        }
        result["problems"] = self.problems(result)
        result["ok"] = not result["problems"]
        return result

    def _cae_problems(self, notes: dict) -> list[str]:
        problems = []
        challenge = json.loads(notes.get("challenge_claims") or "{}")
        if not challenge or json.loads(notes.get("case_claims") or "{}") != challenge:
            problems.append("the case did not keep the claims the resource API asked for")
        if notes.get("case_reason") != "claims_challenge":
            problems.append(f"the case's reason was {notes.get('case_reason')!r}, not claims_challenge")
        if self.interactive:
            return problems
        sent = json.loads((notes.get("sign_in") or [{}])[-1].get("claims") or "{}")
        received = notes.get("idp_claims") or {}
        for name, where in (("the owner's sign-in", sent), ("the identity provider", received)):
            wanted = challenge.get("access_token", {})
            if any((where.get("access_token") or {}).get(k) != v for k, v in wanted.items()):
                problems.append(f"{name} did not carry the claims challenge")
        return problems

    def problems(self, r: dict) -> list[str]:
        problems = []
        if r["messages_accepted"] != 1 or r["duplicate_effects_observed"]:
            problems.append(
                f"the mail service accepted {r['messages_accepted']} message(s) for the run, not exactly one"
            )
        if r["case_state"] != "resumed":
            problems.append(f"the case ended {r['case_state']}, not resumed")
        if r["generation_after"] != r["generation_before"] + 1:
            problems.append(f"the generation went {r['generation_before']} → {r['generation_after']}, not up by one")
        if r["live_transitions"] != [1, 2, 3, 4]:
            problems.append(f"the live transitions were {r['live_transitions']}, not 1, 2, 3, 4 in order")
        if not r["checkpoint"].startswith("05") or r["action_key"] != briefing.SEND_ACTION:
            problems.append(
                f"the case points at {r['checkpoint']!r}/{r['action_key']!r}, not 05 / {briefing.SEND_ACTION}"
            )
        if r["checkpoints_completed"] != ["01", "02", "03", "04", "05"]:
            problems.append(f"the run completed checkpoints {r['checkpoints_completed']}")
        expected_class = (
            "interaction_required"
            if self.name == "cae"
            else "relink_required"
            if self.provider == TOKEN_VAULT
            else "dead_grant"
        )
        if r["failure_class"] != expected_class:
            problems.append(f"the failure was classified {r['failure_class']}, not {expected_class}")
        if self.name == "cae":
            problems.extend(self._cae_problems(r["notes"]))
        sign_ins = r["notes"].get("sign_in") or []
        if not sign_ins or not sign_ins[-1].get("consumed"):
            problems.append("the owner's sign-in did not reconnect")
        if (
            self.name == "wrong-account"
            and not self.interactive
            and not (sign_ins and sign_ins[0].get("refused") and r["notes"].get("refused"))
        ):
            problems.append("the wrong account was not refused with both identities recorded")
        if self.name == "timeout":
            if r["notes"].get("after_timeout") != "ambiguous":
                problems.append(f"after the timeout the send was {r['notes'].get('after_timeout')}, not ambiguous")
            if r["send_state"] != "reconciled_committed":
                problems.append(f"the send ended {r['send_state']}, not reconciled_committed")
        if self.name == "worker-lost":
            killed = r["notes"].get("killed_pid")
            if not killed or r["brief_sent_by_pid"] in (None, killed):
                problems.append("the brief was not sent by a process other than the killed worker")
        return problems
