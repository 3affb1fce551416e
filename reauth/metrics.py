"""Prometheus figures of the owner's reconnect, read from the database at scrape time.

The reconnect requests already record every outcome durably, so the counters
are read from them (one grouped query per scrape) rather than counted in
whichever process served the callback: exact across processes and restarts.
"""

from __future__ import annotations

from django.db.models import Count, Sum
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from .models import ReconnectRequest

OUTCOMES = ("matched", "refused", "expired", "locked", "revoked")
_BY_STATE = {
    ReconnectRequest.State.CONSUMED: "matched",
    ReconnectRequest.State.EXPIRED: "expired",
    ReconnectRequest.State.LOCKED: "locked",
    ReconnectRequest.State.REVOKED: "revoked",
}


class ReconnectCollector(Collector):
    def collect(self):
        outcomes = CounterMetricFamily(
            "revive_reconnect_outcomes",
            "Owner reconnects by outcome: matched (same identity, link consumed), refused (another identity signed "
            "in; one per refusal), expired, locked (too many refusals), revoked (the case moved on).",
            labels=["outcome"],
        )
        figures = dict.fromkeys(OUTCOMES, 0)
        for row in (
            ReconnectRequest.objects.values("state").annotate(n=Count("pk"), refusals=Sum("refusals")).order_by()
        ):
            figures["refused"] += row["refusals"] or 0
            if row["state"] in _BY_STATE:
                figures[_BY_STATE[row["state"]]] += row["n"]
        for outcome in OUTCOMES:
            outcomes.add_metric([outcome], figures[outcome])
        yield outcomes
