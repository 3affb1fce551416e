"""The filters of the case list: state (restated as urgency ranks, so it stays on the list's index), owner,
tenant, owner link and age."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.utils import timezone

from cases.models import CASE_URGENCY, OPEN_CASE_STATES, CaseState, Connection
from cases.namespaces import namespaces_visible_to

from ..selectors import urgency_ranks


class StateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request, model_admin):
        return [("open", "All open")] + [(s.value, s.label) for s in CASE_URGENCY]

    def queryset(self, request, queryset):
        value = self.value()
        states = OPEN_CASE_STATES if value == "open" else [value] if value in {s.value for s in CASE_URGENCY} else None
        if states is None:
            return queryset
        # The urgency ranks restate the state condition in the terms of the list's ordering index.
        return queryset.filter(state__in=states, urgency__in=urgency_ranks(states))


class TenantFilter(admin.SimpleListFilter):
    title = "tenant"
    parameter_name = "tenant"

    def lookups(self, request, model_admin):
        connections = Connection.objects.exclude(provider_tenant="")
        visible = namespaces_visible_to(request.user)
        if visible is not None:
            connections = connections.filter(namespace__in=visible)
        tenants = connections.order_by("provider_tenant").values_list("provider_tenant", flat=True).distinct()
        return [(t, t) for t in tenants]

    def queryset(self, request, queryset):
        if self.value():
            return queryset.filter(connection__provider_tenant=self.value())
        return queryset


class OwnerLinkFilter(admin.SimpleListFilter):
    title = "owner link"
    parameter_name = "link"

    def lookups(self, request, model_admin):
        return [("pending", "Pending"), ("locked", "Locked (resend a new one)")]

    def queryset(self, request, queryset):
        if self.value() == "pending":
            return queryset.filter(pending_link_id__isnull=False)
        if self.value() == "locked":
            return queryset.filter(state__in=[CaseState.OPENED, CaseState.AWAITING_OWNER], owner_link_state="locked")
        return queryset


class AgeFilter(admin.SimpleListFilter):
    title = "age"
    parameter_name = "age"
    BANDS = {
        "1h": ("Under an hour", None, timedelta(hours=1)),
        "24h": ("1 to 24 hours", timedelta(hours=1), timedelta(hours=24)),
        "7d": ("1 to 7 days", timedelta(hours=24), timedelta(days=7)),
        "older": ("Over 7 days", timedelta(days=7), None),
    }

    def lookups(self, request, model_admin):
        return [(key, label) for key, (label, _, _) in self.BANDS.items()]

    def queryset(self, request, queryset):
        band = self.BANDS.get(self.value() or "")
        if band is None:
            return queryset
        _, at_least, under = band
        now = timezone.now()
        if at_least is not None:
            queryset = queryset.filter(opened_at__lte=now - at_least)
        if under is not None:
            queryset = queryset.filter(opened_at__gt=now - under)
        return queryset


class AssigneeFilter(admin.SimpleListFilter):
    title = "owner"
    parameter_name = "assignee"

    def lookups(self, request, model_admin):
        return [("me", "My cases"), ("none", "Unassigned")]

    def queryset(self, request, queryset):
        if self.value() == "me":
            return queryset.filter(assignee=request.user)
        if self.value() == "none":
            return queryset.filter(assignee__isnull=True)
        return queryset
