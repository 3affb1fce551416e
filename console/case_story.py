"""The story of one case -- its incident record and its recovery timeline -- as the console draws it.

``templates/cases/_case_story.html`` draws it; the console's case page (``console.admin.cases``) and the recovery lab's
page (``lab.views``) both render that template from ``case_story_context``, so the two cannot drift apart.
The links to other admin pages are passed in by the caller, which knows what its viewer may open; none is
drawn when a caller passes none.
"""

from __future__ import annotations

from django.conf import settings

from audit.admin import redacted_json
from cases.services import LIVE_TRANSITIONS, case_four_eyes

from .selectors import CaseDetail, case_links_out
from .timeline import timeline_svg


def case_owner_link(detail: CaseDetail) -> str:
    case = detail.case
    latest = detail.reconnect_requests[0] if detail.reconnect_requests else None
    if latest is None:
        return "none (this case does not need the owner)" if not case.owner_required else "none"
    if latest.state == "active" and case.state not in ("opened", "awaiting_owner"):
        return "no longer needed (the case moved on)"
    return latest.state + (
        f" (expires {latest.expires_at:%H:%M} UTC)" if latest.state == "active" and latest.expires_at else ""
    )


def case_story_context(detail: CaseDetail, *, case_url: str = "", audit_url: str = "") -> dict:
    """What ``cases/_case_story.html`` needs. ``case_url``: the case page, when the viewer may open it (the case
    id becomes a link); ``audit_url``: the case's audit log, when the viewer may read it."""
    case = detail.case
    return {
        "detail": detail,
        "case": case,
        "case_url": case_url,
        "audit_url": audit_url,
        "live_label": next((label for n, label in LIVE_TRANSITIONS.values() if n == detail.live_transition), ""),
        "owner_link": case_owner_link(detail),
        "timeline_svg": timeline_svg(detail.timeline, title=f"Recovery timeline of {case.reference}"),
        "ledger": [
            {
                "action": a,
                "evidence": redacted_json(a.evidence),
                "result": redacted_json(a.result),
                "error": redacted_json(a.error),
                "duplicate": f"{a.run_id}/{a.action_key}" in detail.duplicate_actions,
            }
            for a in detail.ledger
        ],
        "four_eyes": case_four_eyes(case) if settings.REVIVE_FOUR_EYES and case.state == "awaiting_approval" else None,
        "links_out": case_links_out(case, detail.case_runs),
    }
