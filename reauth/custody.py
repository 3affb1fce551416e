"""Credential custody: where the owner's new grant goes after a successful reconnect.

Revive is not a token vault: the grant is handed to the connection's custody
and Revive keeps only the generation. The backend is pluggable
(``REVIVE_CREDENTIAL_CUSTODY``, a dotted path to a class implementing
:class:`CredentialCustody`). ``store`` runs inside the reconnect transaction,
so a backend that talks to a network service should hand the grant over from
an on-commit hook of its own rather than hold the transaction open.

The embedded default, :class:`DatabaseCustody`, keeps the grant encrypted at
rest (Fernet: AES-128-CBC + HMAC-SHA256) in ``reauth_credential_custody``,
with a key derived by HKDF-SHA256 from ``SECRET_KEY``; keys derived from
``SECRET_KEY_FALLBACKS`` still decrypt, so the secret key can be rotated.
Only the newest generation's grant is kept. ``secret_seal`` / ``secret_open`` put other secrets Revive
must keep (a namespace's Nango webhook signing key) under the same keys.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Protocol

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.utils.module_loading import import_string


@dataclass(frozen=True)
class Grant:
    """An OAuth grant in transit. Its ``repr`` never shows a token."""

    access_token: str = field(repr=False)
    refresh_token: str = field(default="", repr=False)
    id_token: str = field(default="", repr=False)
    token_type: str = "Bearer"
    expires_at: datetime | None = None
    scope: str = ""

    def __repr__(self) -> str:
        return f"Grant(access_token=<redacted>, refresh_token={'<redacted>' if self.refresh_token else '<none>'}, expires_at={self.expires_at!r})"

    __str__ = __repr__


class CredentialCustody(Protocol):
    name: str

    def store(self, *, connection_id: str, generation: int, grant: Grant) -> str:
        """Keep the grant for this connection generation; return a reference that is safe to audit."""

    def load(self, *, connection_id: str, generation: int | None = None) -> Grant | None:
        """The grant of this generation (the newest when ``None``), or ``None``."""


def _fernet_key(secret: str) -> bytes:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=b"revive.custody", info=b"revive.custody.fernet.v1")
    return base64.urlsafe_b64encode(hkdf.derive(secret.encode()))


@lru_cache(maxsize=8)
def _multi_fernet(secret: str, fallbacks: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(_fernet_key(s)) for s in (secret, *fallbacks)])


def custody_fernet() -> MultiFernet:
    """Encrypts with a key derived from ``SECRET_KEY``; decrypts with it or one from ``SECRET_KEY_FALLBACKS``."""
    return _multi_fernet(settings.SECRET_KEY, tuple(getattr(settings, "SECRET_KEY_FALLBACKS", ()) or ()))


def secret_seal(plaintext: str) -> str:
    """A secret encrypted at rest as the custody keeps grants."""
    return custody_fernet().encrypt(plaintext.encode()).decode()


def secret_open(ciphertext: str) -> str | None:
    """The secret ``secret_seal`` encrypted, or ``None`` when neither ``SECRET_KEY`` nor a fallback opens it."""
    try:
        return custody_fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        return None


class DatabaseCustody:
    name = "database"

    def _fernet(self) -> MultiFernet:
        return custody_fernet()

    def store(self, *, connection_id: str, generation: int, grant: Grant) -> str:
        from .models import CustodyGrant

        payload = {
            "access_token": grant.access_token,
            "refresh_token": grant.refresh_token,
            "id_token": grant.id_token,
            "token_type": grant.token_type,
            "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
            "scope": grant.scope,
        }
        ciphertext = self._fernet().encrypt(json.dumps(payload).encode()).decode()
        # Stored (or replaced) in one statement, then the older generations' grants go.
        (row,) = CustodyGrant.objects.bulk_create(
            [
                CustodyGrant(
                    connection_id=connection_id,
                    generation=generation,
                    ciphertext=ciphertext,
                    expires_at=grant.expires_at,
                )
            ],
            update_conflicts=True,
            unique_fields=["connection", "generation"],
            update_fields=["ciphertext", "expires_at", "stored_at"],
        )
        CustodyGrant.objects.filter(connection_id=connection_id, generation__lt=generation).delete()
        return f"database:{row.pk}"

    def load(self, *, connection_id: str, generation: int | None = None) -> Grant | None:
        from .models import CustodyGrant

        qs = CustodyGrant.objects.filter(connection_id=connection_id)
        row = (qs.filter(generation=generation) if generation is not None else qs.order_by("-generation")).first()
        if row is None:
            return None
        try:
            data = json.loads(self._fernet().decrypt(row.ciphertext.encode()))
        except InvalidToken:
            return None
        expires_at = datetime.fromisoformat(data["expires_at"]) if data.get("expires_at") else None
        return Grant(
            access_token=data["access_token"],
            refresh_token=data.get("refresh_token", ""),
            id_token=data.get("id_token", ""),
            token_type=data.get("token_type", "Bearer"),
            expires_at=expires_at,
            scope=data.get("scope", ""),
        )


def get_custody() -> CredentialCustody:
    return import_string(settings.REVIVE_CREDENTIAL_CUSTODY)()
