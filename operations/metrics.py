"""Metrics read from the database when ``/metrics`` is scraped: cases by state and failure class, the age of the
oldest open case, and the outbox backlog. A handful of grouped queries per scrape, none per action (the counters of
the recovery path itself are ``cases.metrics``)."""

from __future__ import annotations

from django.apps import apps
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cases.models import OPEN_CASE_STATES, CaseState, FailureClass, RecoveryCase


class CasesCollector(Collector):
    """Case and outbox figures read from the database at scrape time."""

    def collect(self):
        by_state = GaugeMetricFamily(
            "revive_cases", "Recovery cases now, by state and failure class.", labels=["state", "failure_class"]
        )
        opened = CounterMetricFamily(
            "revive_cases_opened", "Recovery cases ever opened, by failure class.", labels=["failure_class"]
        )
        counts = {(state, fc): 0 for state in CaseState.values for fc in FailureClass.values}
        for row in RecoveryCase.objects.values("state", "failure_class").annotate(n=Count("pk")).order_by():
            counts[(row["state"], row["failure_class"])] = row["n"]
        per_class: dict[str, int] = {fc: 0 for fc in FailureClass.values}
        for (state, fc), n in sorted(counts.items()):
            by_state.add_metric([state, fc], n)
            per_class[fc] = per_class.get(fc, 0) + n
        for fc, n in sorted(per_class.items()):
            opened.add_metric([fc], n)
        yield by_state
        yield opened

        oldest = RecoveryCase.objects.filter(state__in=OPEN_CASE_STATES).aggregate(at=Min("opened_at"))["at"]
        age = GaugeMetricFamily(
            "revive_case_oldest_open_age_seconds", "Age of the oldest case still open (0 when none is)."
        )
        age.add_metric([], (timezone.now() - oldest).total_seconds() if oldest else 0.0)
        yield age
        yield from self._outbox()

    def _outbox(self):
        """The outbox of owed steps (``cases.OutboxItem``: kind, state pending/done/failed), once it exists.

        Its ``run.resume`` rows are the resumes Revive owes: ``done`` is a resume delivered, ``failed`` one that ran
        out of attempts and waits for an operator.
        """
        try:
            outbox = apps.get_model("cases", "OutboxItem")
        except LookupError:  # no outbox in this schema yet: nothing to report
            return
        backlog = GaugeMetricFamily("revive_outbox_backlog", "Owed steps still pending, by kind.", labels=["kind"])
        done = CounterMetricFamily(
            "revive_outbox_done", "Owed steps done, by kind (run.resume: resumes delivered).", labels=["kind"]
        )
        failed = GaugeMetricFamily(
            "revive_outbox_failed",
            "Owed steps that ran out of attempts, by kind (run.resume: resumes failed).",
            labels=["kind"],
        )
        families = {"pending": backlog, "done": done, "failed": failed}
        rows = outbox.objects.values("state", "kind").annotate(n=Count("pk"), oldest=Min("created_at")).order_by()
        oldest = None
        for row in rows:
            if row["state"] in families:
                families[row["state"]].add_metric([row["kind"]], row["n"])
            if row["state"] == "pending" and (oldest is None or row["oldest"] < oldest):
                oldest = row["oldest"]
        age = GaugeMetricFamily(
            "revive_outbox_oldest_pending_age_seconds", "Age of the oldest owed step still pending (0 when none is)."
        )
        age.add_metric([], (timezone.now() - oldest).total_seconds() if oldest else 0.0)
        yield backlog
        yield done
        yield failed
        yield age
