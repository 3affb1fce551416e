"""Namespaces at the worker API's boundary.

A run id or connection id is unique per namespace: the same ``run_7f2`` may be two runs in two namespaces. Inside
Revive each is stored under a qualified id -- the id itself in ``default`` (so nothing that existed before
namespaces changes), ``<namespace>~<id>`` elsewhere. ``~`` is not allowed in a worker-facing id (the API's id
pattern), so a qualified id can never be forged or collide, and every service keeps looking rows up by id: a key
of namespace B asking for A's ``run_7f2`` asks for ``B~run_7f2``, which does not exist, and gets exactly the answer
for a run that does not exist.

The worker API qualifies every id it receives with its key's namespace (``qualify``) and strips the qualification
from every id it answers with (``unqualify``), error bodies included.
"""

from __future__ import annotations

import re
from typing import Any

from django.db import transaction

from audit.services import audit_record

from .models import DEFAULT_NAMESPACE, Namespace

SEPARATOR = "~"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def qualify(namespace: str, external_id: str) -> str:
    """The stored id of a worker-facing id in ``namespace``."""
    return external_id if namespace == DEFAULT_NAMESPACE else f"{namespace}{SEPARATOR}{external_id}"


def qualify_optional(namespace: str, external_id: str | None) -> str | None:
    return None if external_id is None else qualify(namespace, external_id)


def unqualify(stored_id: str | None) -> str | None:
    """The worker-facing id of a stored id (whatever its namespace)."""
    if stored_id is None:
        return None
    return stored_id.split(SEPARATOR, 1)[1] if SEPARATOR in stored_id else stored_id


def unqualify_data(data: Any) -> Any:
    """``unqualify`` every string in an error's ``data`` (ids are the only strings there that may carry ``~``)."""
    if isinstance(data, dict):
        return {k: unqualify_data(v) for k, v in data.items()}
    if isinstance(data, list):
        return [unqualify_data(v) for v in data]
    if isinstance(data, str):
        return unqualify(data)
    return data


@transaction.atomic
def namespace_ensure(*, name: str, actor: str) -> Namespace:
    """The namespace called ``name``, created (and audited) if it does not exist yet."""
    if not NAME.fullmatch(name or ""):
        from revive_site.errors import ValidationFailed

        raise ValidationFailed(
            "A namespace name is 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit.",
            data={"field": "namespace"},
        )
    namespace, created = Namespace.objects.get_or_create(name=name)
    if created:
        audit_record(
            actor=actor, action="namespace.created", entity_type="namespace", entity_id=name, after={"name": name}
        )
    return namespace


def namespaces_visible_to(user) -> list[str] | None:
    """The namespaces a console user sees, or None for every one.

    Superusers see every namespace; a staff user listed as an operator of some namespaces (``Namespace.operators``)
    sees only those; one listed in none sees every namespace (the console before namespaces).
    """
    if user.is_superuser:
        return None
    names = list(user.revive_namespaces.values_list("name", flat=True))
    return names or None
