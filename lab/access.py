"""Who may use the recovery lab: superusers and the "Revive lab" group (``lab.use_lab``), nobody else.

The lab injects faults: it revokes grants, opens cases and creates worker API keys. Being staff (or even an
operator) is not enough. The permission has no model behind it; it hangs on a content type of its own
(``lab.lab``), created with the group by ``sync_lab_group`` (the lab's data migration, safe to run again).
"""

from __future__ import annotations

LAB_GROUP = "Revive lab"
LAB_PERMISSION = "lab.use_lab"


def sync_lab_group(apps) -> list[str]:
    """Create (or repair) the lab group holding exactly ``lab.use_lab``; return its permission codenames."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    ContentType = apps.get_model("contenttypes", "ContentType")
    ct, _ = ContentType.objects.get_or_create(app_label="lab", model="lab")
    perm, _ = Permission.objects.get_or_create(
        content_type=ct, codename="use_lab", defaults={"name": "Can run recovery lab scenarios"}
    )
    group, _ = Group.objects.get_or_create(name=LAB_GROUP)
    group.permissions.set([perm])
    return [perm.codename]


def may_use_lab(user) -> bool:
    return bool(user.is_active and user.is_staff and user.has_perm(LAB_PERMISSION))
