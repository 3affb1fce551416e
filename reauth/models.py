import uuid

from django.db import models
from django.db.models import Q

from cases.models import Connection, RecoveryCase


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
            models.UniqueConstraint(fields=["case"], condition=Q(state="active"), name="one_active_reconnect_request_per_case"),
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
        constraints = [models.UniqueConstraint(fields=["connection", "generation"], name="custody_grant_unique_per_generation")]

    def __str__(self) -> str:
        return f"custody {self.connection_id} g{self.generation}"

    def __repr__(self) -> str:
        return f"<CustodyGrant {self.connection_id} g{self.generation}>"
