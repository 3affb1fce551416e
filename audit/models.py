from django.db import models


class AppendOnlyError(Exception):
    """Raised when code tries to change or remove an append-only row."""


class AppendOnlyQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only")

    def delete(self):
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only")

    def _raw_delete(self, using):  # the collector's fast delete (a cascade from a parent row)
        raise AppendOnlyError(f"{self.model.__name__} rows are append-only")


class AppendOnlyModel(models.Model):
    """A row that is written once and never changed or removed.

    The ORM refuses here; on PostgreSQL a trigger (see the migrations) refuses
    UPDATE and DELETE from any SQL client too.
    """

    objects = AppendOnlyQuerySet.as_manager()

    class Meta:
        abstract = True

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError(f"{type(self).__name__} rows are append-only")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError(f"{type(self).__name__} rows are append-only")


class AuditEvent(AppendOnlyModel):
    """One state change or operator call, with its evidence.

    Holds plain identifiers rather than foreign keys so that no cascade can
    ever reach it.
    """

    occurred_at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.CharField(max_length=200)
    action = models.CharField(max_length=80)
    entity_type = models.CharField(max_length=40)
    entity_id = models.CharField(max_length=200)
    case_id = models.BigIntegerField(null=True, blank=True)
    case_reference = models.CharField(max_length=32, blank=True, default="")
    run_id = models.CharField(
        max_length=300, blank=True, default=""
    )  # as stored: qualified by namespace (cases.namespaces)
    connection_id = models.CharField(max_length=300, blank=True, default="")
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    arguments = models.JSONField(default=dict, blank=True)
    outcome = models.CharField(max_length=40, default="ok")
    # The W3C trace id the change happened under (the worker's traceparent, or the active span): join with traces.
    trace_id = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        ordering = ["occurred_at", "id"]
        indexes = [
            models.Index(fields=["case_id", "occurred_at"]),
            models.Index(fields=["case_reference"]),
            models.Index(fields=["run_id"]),
            # The console searches an entity id, an actor or action prefix (``operator:``) over the whole log: the
            # entity id leads its index, and the prefix indexes compare bytes (LIKE 'x%' uses them in any collation).
            models.Index(fields=["entity_id", "entity_type"], name="audit_entity_id_type_idx"),
            models.Index(fields=["actor"], name="audit_actor_prefix_idx", opclasses=["varchar_pattern_ops"]),
            models.Index(fields=["action"], name="audit_action_prefix_idx", opclasses=["varchar_pattern_ops"]),
            models.Index(fields=["trace_id"], name="audit_event_trace_idx", condition=~models.Q(trace_id="")),
        ]

    def __str__(self) -> str:
        return f"{self.occurred_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.action} {self.entity_type}:{self.entity_id}"


class OperationAudit(AppendOnlyModel):
    """One attempt at an operator route (platform-global, keyed by actor)."""

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        REFUSED = "refused"

    request_id = models.CharField(max_length=64, db_index=True)
    actor = models.CharField(max_length=200)
    role = models.CharField(max_length=60, blank=True, default="")
    route = models.CharField(max_length=200)
    arguments = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True, default="")
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField()
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    error_code = models.CharField(max_length=80, blank=True, default="")
    error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["actor", "started_at"]), models.Index(fields=["route", "started_at"])]

    def __str__(self) -> str:
        return f"{self.started_at:%Y-%m-%d %H:%M:%S} {self.actor} {self.route} {self.outcome}"


class OperationsPanel(OperationAudit):
    """The admin's doctor-and-recovery panel (``operations.admin``), which also lists the latest attempts.

    A proxy, so that the admin has a page of its own for the doctors' readouts
    and the recovery forms; it adds no table and no permission (who may see and
    who may act is decided in the admin module).
    """

    class Meta:
        proxy = True
        default_permissions = ()
        verbose_name = "doctor and recovery"
        verbose_name_plural = "doctor and recovery"
