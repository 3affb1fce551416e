"""Who may do what in the operator console: the two groups and the one custom permission.

``sync_console_groups`` creates (or brings up to date) the groups; it takes an
app registry so the console's data migration (``console/0001_console_groups``, historical models) and the
``revive_console_groups`` command (live models) share it. Both are safe to run
again. Users still need ``is_staff`` to sign in to the admin.
"""

from __future__ import annotations

OPERATORS = "Revive operators"
AUDITORS = "Revive auditors"
OPERATE_PERMISSION = ("cases", "recoverycase", "operate_case", "Can act on recovery cases in the operator console")

# (app label, model name, verbose name): what both groups may read.
READABLE = [
    ("cases", "recoverycase", "recovery case"),
    ("cases", "caserun", "case run"),
    ("cases", "run", "run"),
    ("cases", "checkpoint", "checkpoint"),
    ("cases", "action", "action"),
    ("cases", "connection", "connection"),
    ("cases", "credentialgeneration", "credential generation"),
    ("audit", "auditevent", "audit event"),
    ("audit", "operationaudit", "operation audit"),
]
# Operators also browse the reconnect requests. Auditors do not: that admin (reauth's) offers its resend action to
# whoever may view it; auditors read a case's owner links on the case page instead.
OPERATOR_ONLY = [("reauth", "reconnectrequest", "reconnect request")]


def sync_console_groups(apps) -> dict[str, list[str]]:
    """Give the operator group read access plus ``cases.operate_case``, the auditor group read access only.

    Permissions are set exactly (anything else a group held is removed), so re-running the sync repairs a group
    someone widened by hand. Returns the permission codenames of each group.
    """
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    ContentType = apps.get_model("contenttypes", "ContentType")

    def permission(app_label: str, model: str, codename: str, name: str):
        ct, _ = ContentType.objects.get_or_create(app_label=app_label, model=model)
        perm, _ = Permission.objects.get_or_create(content_type=ct, codename=codename, defaults={"name": name})
        return perm

    def view(app: str, model: str, verbose: str):
        return permission(app, model, f"view_{model}", f"Can view {verbose}")

    readable = [view(*entry) for entry in READABLE]
    operate = permission(*OPERATE_PERMISSION)
    granted = {AUDITORS: readable, OPERATORS: readable + [view(*entry) for entry in OPERATOR_ONLY] + [operate]}
    out = {}
    for name, perms in granted.items():
        group, _ = Group.objects.get_or_create(name=name)
        group.permissions.set(perms)
        out[name] = sorted(p.codename for p in perms)
    return out
