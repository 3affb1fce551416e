from django.conf import settings
from django.core.validators import URLValidator, validate_email
from django.db import models
from django.db.models import Q

from classifier import FailureClass, Provider
from revive_sdk import names

# Connections whose grant a broker holds; Revive keeps references and the identity, never a token.
BROKER_PROVIDERS = (Provider.NANGO, Provider.SCALEKIT)
UPSTREAM_PROVIDERS = (Provider.ENTRA, Provider.AUTH0, Provider.OIDC)


class Runtime(models.TextChoices):
    LANGGRAPH = names.RUNTIME_LANGGRAPH, "LangGraph"
    LANGGRAPH_SERVER = names.RUNTIME_LANGGRAPH_SERVER, "LangGraph Agent Server"
    TEMPORAL = names.RUNTIME_TEMPORAL, "Temporal"
    RESTATE = names.RUNTIME_RESTATE, "Restate"


DEFAULT_NAMESPACE = "default"


def email_list_split(value: str) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def email_list_validate(value: str) -> None:
    for address in email_list_split(value):
        validate_email(address)


class Namespace(models.Model):
    """A tenant of Revive (Temporal's word): its connections, runs, cases and worker keys see nothing of another's.

    Worker-facing ids (run ids, connection ids) are unique per namespace; see ``cases.namespaces`` for how they are
    stored. Console users listed in ``operators`` see only the namespaces they are listed in (superusers, and staff
    listed in none, see every namespace).
    """

    name = models.SlugField(primary_key=True, max_length=63)
    description = models.CharField(max_length=200, blank=True, default="")
    operators = models.ManyToManyField(
        settings.AUTH_USER_MODEL,
        blank=True,
        related_name="revive_namespaces",
        help_text="Console users limited to this namespace (and any other they are listed in).",
    )
    # Operator notifications (``operations.notifications``): blank uses the global settings.
    operator_emails = models.CharField(
        max_length=1000,
        blank=True,
        default="",
        validators=[email_list_validate],
        help_text="Comma-separated addresses notified about this namespace's cases instead of REVIVE_OPERATOR_EMAILS.",
    )
    operator_webhook_url = models.URLField(
        max_length=500,
        blank=True,
        default="",
        validators=[URLValidator(schemes=["http", "https"])],
        help_text="Webhook notified about this namespace's cases instead of REVIVE_OPERATOR_WEBHOOK_URL "
        "(signed with REVIVE_OPERATOR_WEBHOOK_SECRET).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


def _namespace_fk(related_name: str) -> "models.ForeignKey[Namespace, Namespace]":
    return models.ForeignKey(
        Namespace, on_delete=models.PROTECT, default=DEFAULT_NAMESPACE, related_name=related_name, db_index=True
    )


# Worker-facing ids are stored qualified by their namespace (``cases.namespaces``), so they need room for its name.
QUALIFIED_ID_LENGTH = 300


class ApiKey(models.Model):
    """A key for the worker API or the operator API. Only its SHA-256 is stored."""

    class Role(models.TextChoices):
        WORKER = "worker", "Worker"
        OPERATOR = "operator", "Operator"

    name = models.CharField(max_length=100, unique=True)
    namespace = _namespace_fk("api_keys")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.WORKER)
    system_operate = models.BooleanField(
        default=False, help_text="May call the operator recovery routes (/api/v2/admin/operator/...)."
    )
    prefix = models.CharField(max_length=16, editable=False)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def actor(self) -> str:
        return f"{self.role}:{self.name}"


class Connection(models.Model):
    """One provider connection: whose account, which identity, which generation."""

    id = models.CharField(primary_key=True, max_length=QUALIFIED_ID_LENGTH)
    namespace = _namespace_fk("connections")
    provider = models.CharField(max_length=20, choices=Provider.choices)
    display_name = models.CharField(max_length=200, blank=True, default="")
    owner_email = models.EmailField()
    owner_name = models.CharField(max_length=200, blank=True, default="")
    provider_subject = models.CharField(max_length=255, help_text="Entra: oid; Auth0/OIDC: sub.")
    provider_tenant = models.CharField(max_length=255, blank=True, default="", help_text="Entra: tid.")
    provider_issuer = models.CharField(max_length=500, blank=True, default="", help_text="Auth0/OIDC: iss.")
    provider_org = models.CharField(max_length=255, blank=True, default="", help_text="Auth0: org_id, if any.")
    # A broker-held connection (provider ``nango`` or ``scalekit``): the broker keeps the grant, Revive keeps these
    # references and the upstream identity above; it stores no token of such a connection.
    upstream_provider = models.CharField(
        max_length=20,
        blank=True,
        default="",
        choices=[(p.value, p.label) for p in Provider if p in UPSTREAM_PROVIDERS],
        help_text="Broker-held connections: whose identity the broker holds (entra, auth0 or oidc); decides the identity rule.",
    )
    broker_integration = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="Nango: the integration id (providerConfigKey). Scalekit: the connector.",
    )
    broker_connection = models.CharField(
        max_length=200,
        blank=True,
        default="",
        help_text="Nango: the connection id. Scalekit: the identifier.",
    )
    broker_account = models.CharField(
        max_length=200, blank=True, default="", help_text="Scalekit: the connected account id."
    )
    # Polled brokers (Scalekit): when the account's status is next due, and the failed reads in a row (backoff).
    broker_next_check_at = models.DateTimeField(null=True, blank=True, editable=False)
    broker_check_failures = models.PositiveIntegerField(default=0, editable=False)
    current_generation = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["provider", "provider_tenant"]),
            models.Index(fields=["owner_email"]),
            models.Index(fields=["provider_tenant"], name="connection_tenant_idx"),  # the console's tenant filter
            models.Index(
                fields=["provider", "broker_integration", "broker_connection"], name="connection_broker_ref_idx"
            ),
        ]

    def __str__(self) -> str:
        return self.id

    @property
    def broker_held(self) -> bool:
        return self.provider in BROKER_PROVIDERS

    @property
    def identity_provider(self) -> str:
        """Whose identity rule applies: the upstream provider of a broker-held connection, else the provider."""
        return self.upstream_provider if self.broker_held else self.provider


class CredentialGeneration(models.Model):
    class State(models.TextChoices):
        ISSUED = "issued"
        REJECTED = "rejected"
        SUPERSEDED = "superseded"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="generations")
    number = models.PositiveIntegerField()
    state = models.CharField(max_length=20, choices=State.choices, default=State.ISSUED)
    issued_at = models.DateTimeField(auto_now_add=True)
    rejected_at = models.DateTimeField(null=True, blank=True)
    superseded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connection", "number"], name="generation_unique_per_connection")
        ]
        ordering = ["connection", "number"]

    def __str__(self) -> str:
        return f"{self.connection_id} g{self.number} ({self.state})"


class Run(models.Model):
    class State(models.TextChoices):
        ACTIVE = "active"
        PARKED = "parked"
        COMPLETED = "completed"
        FAILED = "failed"
        ABANDONED = "abandoned"
        """Its case was abandoned and the run was told so through its runtime: it ends, it is never resumed."""

    id = models.CharField(primary_key=True, max_length=QUALIFIED_ID_LENGTH)
    namespace = _namespace_fk("runs")
    runtime = models.CharField(max_length=20, choices=Runtime.choices)
    runtime_ref = models.JSONField(default=dict, blank=True)
    workflow_name = models.CharField(max_length=200)
    state = models.CharField(max_length=20, choices=State.choices, default=State.ACTIVE)
    resume_claimed_until = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="A resume of this run is being delivered to its runtime until then (see cases.resume).",
    )
    resume_claimed_by = models.CharField(
        max_length=64,
        blank=True,
        default="",
        editable=False,
        help_text="The delivery (Celery message) holding that claim.",
    )
    hosted_at = models.DateTimeField(
        null=True,
        blank=True,
        editable=False,
        help_text="Revive itself started executing this run then (a runtime it hosts: LangGraph graphs in its worker) "
        "and that execution has not returned yet; the watchdog continues a run left so (cases.pipeline).",
    )
    continuations = models.PositiveSmallIntegerField(
        default=0,
        editable=False,
        help_text="How many times the watchdog continued this run since its last execution returned.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [
            models.Index(fields=["state", "updated_at"]),
            models.Index(fields=["workflow_name"], name="run_workflow_name_idx"),  # the console's exact search
            # The watchdog's look for hosted runs whose execution stopped: few rows ever have it set.
            models.Index(fields=["hosted_at"], name="run_hosted_idx", condition=models.Q(hosted_at__isnull=False)),
        ]

    def __str__(self) -> str:
        return self.id


class Checkpoint(models.Model):
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="checkpoints")
    checkpoint_id = models.CharField(max_length=200)
    label = models.CharField(max_length=200, blank=True, default="")
    runtime_ref = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "checkpoint_id"], name="checkpoint_unique_per_run")]
        ordering = ["run", "created_at", "id"]

    def __str__(self) -> str:
        return self.label or self.checkpoint_id

    @property
    def display_name(self) -> str:
        """``05 / prepare brief`` once, whether the worker's label repeats the checkpoint id or not."""
        label = self.label.strip()
        if not label or label == self.checkpoint_id:
            return self.checkpoint_id
        if label.startswith(f"{self.checkpoint_id} /"):
            return label
        return f"{self.checkpoint_id} / {label}"


class Action(models.Model):
    """One mutating action of a run: the ledger entry that makes it at-most-once."""

    class State(models.TextChoices):
        BEGUN = "begun"
        EXECUTING = "executing"
        COMMITTED = "committed"
        AMBIGUOUS = "ambiguous"
        RECONCILED_COMMITTED = "reconciled_committed"
        RECONCILED_ABSENT = "reconciled_absent"
        FAILED = "failed"

    # Every row written is an index entry to write (and, on the commit's update, to write again): the ledger keeps the
    # indexes its reads use and no more. No index of its own on ``run`` (the unique (run, action key) leads with it)
    # and no pattern indexes (``*_like``, for LIKE 'prefix%'): the ledger is searched by exact identifiers.
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="actions", db_index=False)
    action_key = models.CharField(max_length=200)
    idempotency_key = models.CharField(max_length=64)
    connection = models.ForeignKey(Connection, on_delete=models.PROTECT, related_name="actions", db_index=False)
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    params_hash = models.CharField(max_length=64, blank=True, default="")
    state = models.CharField(max_length=24, choices=State.choices, default=State.BEGUN)
    generation = models.PositiveIntegerField()
    attempts = models.PositiveIntegerField(default=0)
    result = models.JSONField(null=True, blank=True)
    external_ref = models.CharField(max_length=500, blank=True, default="")
    error = models.JSONField(null=True, blank=True)
    evidence = models.JSONField(null=True, blank=True)
    reconciled_by = models.CharField(max_length=200, blank=True, default="")
    reconciliations = models.JSONField(
        default=list,
        blank=True,
        help_text="Every settling of this action, oldest first: who (actor), when (at, ISO 8601) and with what "
        "evidence. The resume approval policy and the four-eyes rule read it (a re-execution after "
        "reconciled_absent keeps the earlier ones here).",
    )
    lock_expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["run", "action_key"], name="action_unique_per_run"),
            models.UniqueConstraint(fields=["idempotency_key"], name="action_idempotency_key_unique"),
        ]
        indexes = [
            models.Index(fields=["state", "lock_expires_at"]),
            models.Index(fields=["connection"], name="action_connection_idx"),
            # A common key matches one row per run: the console lists them newest first straight off this index.
            models.Index(fields=["action_key", "id"], name="action_key_id_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.run_id}/{self.action_key}"


class CaseState(models.TextChoices):
    OPENED = "opened"
    AWAITING_OWNER = "awaiting_owner"
    REAUTHORIZED = "reauthorized"
    RECONCILING = "reconciling"
    AWAITING_APPROVAL = "awaiting_approval"
    RESUMING = "resuming"
    RESUMED = "resumed"
    CLOSED = "closed"
    ABANDONED = "abandoned"
    RESUME_FAILED = "resume_failed"


# Most urgent first: the console lists cases in this order, then oldest first (``case_urgency_age_idx`` serves it).
CASE_URGENCY = (
    CaseState.RESUME_FAILED,
    CaseState.AWAITING_APPROVAL,
    CaseState.RECONCILING,
    CaseState.OPENED,
    CaseState.AWAITING_OWNER,
    CaseState.REAUTHORIZED,
    CaseState.RESUMING,
    CaseState.RESUMED,
    CaseState.ABANDONED,
    CaseState.CLOSED,
)


def case_urgency() -> models.Case:
    """A case's rank in ``CASE_URGENCY`` (0 is the most urgent), as an SQL expression."""
    return models.Case(
        *[models.When(state=state.value, then=models.Value(rank)) for rank, state in enumerate(CASE_URGENCY)],
        default=models.Value(len(CASE_URGENCY)),
        output_field=models.IntegerField(),
    )


# A case in one of these states still blocks its runs: its release has not been decided. A ``resume_failed`` case
# has released its runs (the reconnect is verified); it only failed to deliver the resume, so it blocks nothing:
# a run that comes back with the new generation goes on (``cases.services.action_begin``).
BLOCKING_CASE_STATES = (
    CaseState.OPENED,
    CaseState.AWAITING_OWNER,
    CaseState.REAUTHORIZED,
    CaseState.RECONCILING,
    CaseState.AWAITING_APPROVAL,
)
# A case released but not yet resumed: its runs are being resumed and watched (``cases.pipeline``).
RELEASED_CASE_STATES = (CaseState.RESUMING, CaseState.RESUME_FAILED)
# A case in one of these states is still open work (it may be joined).
OPEN_CASE_STATES = BLOCKING_CASE_STATES + (CaseState.RESUME_FAILED, CaseState.RESUMING)


class ReturnedCharField(models.CharField):
    """A column the database may fill on INSERT (a trigger): Django reads it back in the INSERT's ``RETURNING``."""

    @property
    def db_returning(self) -> bool:
        from django.db import connection

        return connection.features.can_return_columns_from_insert


class RecoveryCase(models.Model):
    """Joins the rejected generation, the runs it blocks, their checkpoint and failed action."""

    # ``CASERV-0001`` from the id. On PostgreSQL a trigger writes it in the INSERT (migration 0017) and the INSERT
    # returns it; elsewhere ``_case_open`` writes it after.
    reference = ReturnedCharField(max_length=32, unique=True, null=True, blank=True)
    namespace = _namespace_fk("cases")
    # Indexed with the case's age (``case_connection_opened_idx``), which serves every lookup by connection too.
    connection = models.ForeignKey(Connection, on_delete=models.PROTECT, related_name="cases", db_index=False)
    rejected_generation = models.PositiveIntegerField()
    resumed_generation = models.PositiveIntegerField(null=True, blank=True)
    failure_class = models.CharField(max_length=24, choices=FailureClass.choices)
    provider = models.CharField(max_length=20, choices=Provider.choices)
    provider_code = models.CharField(max_length=80, blank=True, default="")
    provider_message = models.TextField(blank=True, default="")
    provider_error = models.JSONField(default=dict, blank=True)
    owner_required = models.BooleanField(default=True)
    state = models.CharField(max_length=24, choices=CaseState.choices, default=CaseState.OPENED)
    # The first run the case blocked; empty while a case a broker opened proactively has blocked no run yet.
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="first_cases", null=True, blank=True)
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    action = models.ForeignKey(Action, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    opened_at = models.DateTimeField(auto_now_add=True)
    state_changed_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    # Annotated for the type checker, which cannot resolve the through model by name (a string: CaseRun comes later).
    runs: "models.ManyToManyField[Run, CaseRun]" = models.ManyToManyField(Run, through="CaseRun", related_name="cases")
    assignee = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="assigned_cases",
        help_text="The operator who owns this case now.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "rejected_generation"],
                condition=Q(state__in=[s.value for s in OPEN_CASE_STATES]),
                name="one_open_case_per_connection_generation",
            )
        ]
        indexes = [
            models.Index(fields=["state", "opened_at"]),
            models.Index(fields=["provider", "state"]),
            models.Index(fields=["failure_class", "state"]),
            models.Index(fields=["opened_at", "id"], name="case_opened_at_idx"),
            # ``state`` rides along (INCLUDE) so that walking the list for the ids of a deep page reads the index alone.
            models.Index(
                case_urgency(), models.F("opened_at"), models.F("id"), name="case_urgency_age_idx", include=["state"]
            ),
            # The console's tenant and age filters count their cases off this index alone (tenant: its connections).
            models.Index(fields=["connection", "opened_at"], name="case_connection_opened_idx"),
            # The console's dashboard counts open cases by state and provider off this index alone (an index-only scan
            # of the open cases: its cost follows the open work, not the history of closed cases).
            models.Index(
                fields=["state", "provider"],
                name="case_open_state_provider_idx",
                condition=Q(state__in=[s.value for s in OPEN_CASE_STATES]),
            ),
        ]
        permissions = [("operate_case", "Can act on recovery cases in the operator console")]

    def __str__(self) -> str:
        return self.reference or f"case {self.pk}"


class CaseNote(models.Model):
    """One note in a case's thread (each is also an audit event, ``case.noted``)."""

    case = models.ForeignKey(RecoveryCase, on_delete=models.CASCADE, related_name="notes")
    author = models.CharField(max_length=200)
    body = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["case", "created_at"])]

    def __str__(self) -> str:
        return f"{self.case} · {self.author}"


class CaseRun(models.Model):
    """A run blocked by a case, with where it stopped.

    ``resume_sent_at`` is when a resume was last delivered to (or re-driven for) the run; ``resumed_at`` is when
    the run went past the action it was parked on under the new generation -- only then does it count as resumed.
    """

    case = models.ForeignKey(RecoveryCase, on_delete=models.CASCADE, related_name="case_runs")
    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="case_runs")
    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    action = models.ForeignKey(Action, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    joined_at = models.DateTimeField(auto_now_add=True)
    resume_sent_at = models.DateTimeField(null=True, blank=True)
    resume_attempts = models.PositiveIntegerField(default=0)
    resumed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["case", "run"], name="case_run_unique")]

    def __str__(self) -> str:
        return f"{self.case} ← {self.run_id}"


class RefreshClaim(models.Model):
    """Who refreshes a connection generation's credential now: one row per (connection, generation).

    Single flight (``cases.refresh``): one worker holds the claim and refreshes at the provider while the others
    wait, then re-read the credential from its custody (round ``round``). Holds no token.
    """

    class State(models.TextChoices):
        IDLE = "idle"
        HELD = "held"
        REFRESHED = "refreshed"
        FAILED = "failed"

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="refresh_claims")
    generation = models.PositiveIntegerField()
    round = models.PositiveIntegerField(default=0, help_text="How many times this generation's claim was taken.")
    state = models.CharField(max_length=16, choices=State.choices, default=State.IDLE)
    holder = models.CharField(max_length=200, blank=True, default="")
    held_until = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connection", "generation"], name="refresh_claim_per_generation")
        ]

    def __str__(self) -> str:
        return f"{self.connection_id} gen {self.generation} round {self.round} ({self.state})"


class OutboxItem(models.Model):
    """One step Revive owes (notify the owner, reconcile, deliver a resume), written in the transaction that owes it.

    Dispatched by the Celery task ``cases.outbox_dispatch`` right after that transaction commits; the beat task
    ``cases.outbox_sweep`` dispatches again every row still ``pending`` after ``due_at`` (a lost message, a killed
    worker). Each dispatch is an attempt; after ``max_attempts`` the row is ``failed`` with ``last_error`` and its
    kind's exhaustion hook makes the failure visible on the case (see ``cases.outbox``).
    """

    class State(models.TextChoices):
        PENDING = "pending"
        DONE = "done"
        FAILED = "failed"

    kind = models.CharField(max_length=60)
    key = models.CharField(max_length=200, unique=True, help_text="One row per owed step: a repeated put is a no-op.")
    payload = models.JSONField(default=dict, blank=True)
    case = models.ForeignKey(
        RecoveryCase, on_delete=models.SET_NULL, null=True, blank=True, related_name="outbox_items"
    )
    run_id = models.CharField(max_length=QUALIFIED_ID_LENGTH, blank=True, default="")  # as stored: qualified
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    max_attempts = models.PositiveIntegerField(default=10)
    due_at = models.DateTimeField(help_text="Still pending after this: the sweep dispatches it again.")
    not_before = models.DateTimeField(
        null=True, blank=True, help_text="No attempt before this time (a step owed with a delay)."
    )
    claimed_until = models.DateTimeField(null=True, blank=True, editable=False)
    claimed_by = models.CharField(
        max_length=64,
        blank=True,
        default="",
        editable=False,
        help_text="The Celery message (task id) holding the claim: the same message "
        "delivered again means its earlier worker was lost.",
    )
    last_error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    done_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "outbox item"
        indexes = [models.Index(fields=["state", "due_at"], name="outbox_state_due_idx")]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.kind} {self.key} ({self.state})"
