"""Template helpers of the operator console: the admin index dashboard and small formatters."""

from __future__ import annotations

from datetime import timedelta

from django import template
from django.utils import timezone

from cases.namespaces import namespaces_visible_to
from console.selectors import console_case_detail, console_dashboard
from console.timeline import timeline_svg

register = template.Library()


@register.simple_tag(takes_context=True)
def console_dashboard_for(context):
    """The dashboard for a user who may read cases, else None. ``?case=CASERV-0001`` picks the drawn timeline
    (the oldest waiting case by default)."""
    request = context.get("request")
    if request is None or not request.user.has_perm("cases.view_recoverycase"):
        return None
    visible = namespaces_visible_to(request.user)
    data = console_dashboard(namespaces=visible)
    chosen = request.GET.get("case", "").strip()[:40]
    detail = console_case_detail(case_id=chosen) if chosen else None
    if detail is not None and visible is not None and detail.case.namespace_id not in visible:
        detail = None
    if detail is None and data["oldest"] is not None:
        detail = console_case_detail(case_id=data["oldest"].pk)
    data["selected"] = detail
    data["selected_svg"] = (
        timeline_svg(detail.timeline, title=f"Recovery timeline of {detail.case.reference}") if detail else None
    )
    return data


@register.filter
def gen(value) -> str:
    """A generation as the incident record writes it: ``01``."""
    return f"{value:02d}" if isinstance(value, int) else "—"


@register.filter
def age(value) -> str:
    """How long ago ``value`` (a datetime) or how long ``value`` (a timedelta) is, compactly: ``3h 05m``."""
    if value is None:
        return "—"
    delta = value if isinstance(value, timedelta) else timezone.now() - value
    minutes = max(int(delta.total_seconds() // 60), 0)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours:02d}h"
