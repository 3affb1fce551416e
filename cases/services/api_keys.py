"""API keys: created with a raw value shown once, authenticated from a short per-process cache, revoked."""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import audit_record

from ..models import DEFAULT_NAMESPACE, ApiKey
from .common import SYSTEM


def _hash_api_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@transaction.atomic
def api_key_create(
    *,
    name: str,
    role: str = ApiKey.Role.WORKER,
    system_operate: bool = False,
    actor: str = SYSTEM,
    namespace: str = DEFAULT_NAMESPACE,
) -> tuple[ApiKey, str]:
    """Create a key and return it with its raw value, which is never stored and cannot be shown again."""
    prefix = secrets.token_hex(4)
    raw = f"rvk_{prefix}_{secrets.token_urlsafe(32)}"
    key = ApiKey.objects.create(
        name=name,
        role=role,
        system_operate=system_operate,
        prefix=prefix,
        key_hash=_hash_api_key(raw),
        namespace_id=namespace,
    )
    audit_record(
        actor=actor,
        action="api_key.created",
        entity_type="api_key",
        entity_id=str(key.pk),
        after={"name": name, "role": role, "system_operate": system_operate, "prefix": prefix, "namespace": namespace},
    )
    return key, raw


class _ApiKeyCache:
    """Live API keys of this process by hash, each trusted for ``REVIVE_API_KEY_CACHE_SECONDS``.

    Every worker API call authenticates, so a key found in the database is kept here for a few
    seconds and the call costs no round trip. Only live keys are kept (a key created in another
    process works at once); a key revoked or changed in another process is refused or re-read
    once its entry expires, so revocation takes effect within that window everywhere, and at once
    in the process that revoked it. The cache is bounded and forgets everything when full.
    """

    MAX_ENTRIES = 1024

    def __init__(self) -> None:
        self._entries: dict[str, tuple[ApiKey, float]] = {}

    def get(self, key_hash: str) -> ApiKey | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        key, expires = entry
        if time.monotonic() >= expires:
            self._entries.pop(key_hash, None)
            return None
        return key

    def put(self, key: ApiKey) -> None:
        ttl = settings.REVIVE_API_KEY_CACHE_SECONDS
        if ttl <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[key.key_hash] = (key, time.monotonic() + ttl)

    def clear(self) -> None:
        self._entries.clear()


api_key_cache = _ApiKeyCache()


def api_key_forget() -> None:
    """A key's access changed (revoked, role, namespace, system operate): this process re-reads every key.

    Cleared at once and again when the change commits, so a request of this process that read the key before the
    change committed cannot keep the old access in the cache. Other processes re-read within
    ``REVIVE_API_KEY_CACHE_SECONDS``.
    """
    api_key_cache.clear()
    transaction.on_commit(api_key_cache.clear)


def api_key_authenticate(raw: str | None) -> ApiKey | None:
    """The live key whose hash matches ``raw``, or None. No database round trip while the key is cached."""
    if not raw or len(raw) > 200:
        return None
    key_hash = _hash_api_key(raw)
    key = api_key_cache.get(key_hash)
    if key is not None:
        return key
    key = ApiKey.objects.filter(key_hash=key_hash, revoked_at__isnull=True).first()
    if key is not None:
        now = timezone.now()
        if key.last_used_at is None or now - key.last_used_at > timedelta(minutes=1):
            ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)
            key.last_used_at = now
        api_key_cache.put(key)
    return key


@transaction.atomic
def api_key_revoke(*, key_id: int, actor: str) -> ApiKey:
    """Revoke a key: refused at once by this process, by every other within ``REVIVE_API_KEY_CACHE_SECONDS``."""
    key = ApiKey.objects.select_for_update().get(pk=key_id)
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.save(update_fields=["revoked_at"])
        audit_record(
            actor=actor,
            action="api_key.revoked",
            entity_type="api_key",
            entity_id=str(key.pk),
            before={"revoked": False},
            after={"revoked": True},
        )
    api_key_forget()
    return key
