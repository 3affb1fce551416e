import uuid

from django.db import models
from django.db.models import Q

from cases.models import Connection, Namespace, RecoveryCase


class ReconnectRequest(models.Model):
    """The owner's capability to reconnect one case's connection.

    The link token is never stored: only its SHA-256 (``token_hash``). The
    token is minted by the notification task and exists only in the message it
    sends. ``public_id`` names the request in page URLs; it grants nothing on
    its own (the browser session must first have opened the link).
    """

    class State(models.TextChoices):
        ACTIVE = "active"
        CONSUMED = "consumed"
        EXPIRED = "expired"
        REVOKED = "revoked"
        LOCKED = "locked"

    public_id = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    case = models.ForeignKey(RecoveryCase, on_delete=models.PROTECT, related_name="reconnect_requests")
    connection = models.ForeignKey(Connection, on_delete=models.PROTECT, related_name="reconnect_requests")
    rejected_generation = models.PositiveIntegerField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    token_hash = models.CharField(max_length=64, unique=True, null=True, blank=True, editable=False)
    link_issued_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    notify_claimed_until = models.DateTimeField(null=True, blank=True, editable=False)
    notify_attempts = models.PositiveIntegerField(default=0)
    refusals = models.PositiveIntegerField(default=0)
    consumed_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=40, blank=True, default="")
    locked_at = models.DateTimeField(null=True, blank=True)
    replaced_by = models.ForeignKey("self", on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    created_by = models.CharField(max_length=200, default="system")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["case"], condition=Q(state="active"), name="one_active_reconnect_request_per_case"
            ),
        ]
        indexes = [models.Index(fields=["state", "expires_at"])]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"reconnect {self.public_id} ({self.state})"


class CustodyGrant(models.Model):
    """The embedded custody backend's row: one connection generation's grant, Fernet-encrypted.

    Kept out of the admin, the audit log and every API on purpose; only
    ``reauth.custody.DatabaseCustody`` reads or writes it.
    """

    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="+")
    generation = models.PositiveIntegerField()
    ciphertext = models.TextField()
    expires_at = models.DateTimeField(null=True, blank=True)
    stored_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "reauth_credential_custody"
        constraints = [
            models.UniqueConstraint(fields=["connection", "generation"], name="custody_grant_unique_per_generation")
        ]

    def __str__(self) -> str:
        return f"custody {self.connection_id} g{self.generation}"

    def __repr__(self) -> str:
        return f"<CustodyGrant {self.connection_id} g{self.generation}>"


class BrokerSignal(models.Model):
    """One signal from a broker (a Nango webhook delivery, a Scalekit status change), recorded once.

    ``digest`` keys one delivery: the SHA-256 of its raw body (``body_digest``) together with where the connection
    stood when it came -- its generation and the last different signal (Nango repeats identical bodies for two
    separate events, e.g. two refresh failures with a recovery between them) and, for a re-authorization, the
    owner's latest reconnect attempt. A retried or duplicated delivery finds its row and has no second effect. Only the non-secret fields of a delivery are
    kept (``payload``); broker auth webhooks carry no token. ``state`` says what Revive still owes for it: a
    ``pending`` signal is processed by a Celery task and, if that is lost, by the beat sweep, until it is
    ``processed``, ``ignored``, or ``failed`` (then it is on the connection's timeline for an operator).
    """

    class State(models.TextChoices):
        PENDING = "pending"
        PROCESSED = "processed"
        IGNORED = "ignored"
        FAILED = "failed"

    source = models.CharField(max_length=20)
    namespace = models.CharField(max_length=64, default="default")
    digest = models.CharField(max_length=64)
    body_digest = models.CharField(max_length=64, blank=True, default="")
    kind = models.CharField(max_length=60, help_text="type.operation (Nango) or status (Scalekit).")
    connection = models.ForeignKey(Connection, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    payload = models.JSONField(default=dict, blank=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING)
    outcome = models.CharField(max_length=60, blank=True, default="")
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["source", "namespace", "digest"], name="broker_signal_once")]
        indexes = [models.Index(fields=["state", "received_at"])]
        ordering = ["-received_at", "-id"]

    def __str__(self) -> str:
        return f"{self.source} {self.kind} ({self.state})"


class NangoSigningKey(models.Model):
    """The Nango webhook signing key of one namespace, set in the console; encrypted at rest (``reauth.custody``).

    Write-only: only ``reauth.brokers.services`` reads ``ciphertext``, to check a webhook's signature; the console
    shows whether a key is set, when and by whom. ``ciphertext`` is empty once the key was cleared (the namespace
    then falls back to the environment's keys).
    """

    namespace = models.OneToOneField(Namespace, on_delete=models.CASCADE, primary_key=True, related_name="+")
    ciphertext = models.TextField(blank=True, default="")
    changed_at = models.DateTimeField()
    changed_by = models.CharField(max_length=200)

    class Meta:
        verbose_name = "Nango webhook signing key"

    def __str__(self) -> str:
        return f"Nango webhook signing key of {self.namespace_id}"

    def __repr__(self) -> str:
        return f"<NangoSigningKey {self.namespace_id} {'set' if self.is_set else 'cleared'}>"

    @property
    def is_set(self) -> bool:
        return bool(self.ciphertext)
