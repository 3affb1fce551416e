from django.conf import settings
from django.db import models


class LabIdentity(models.Model):
    """What the lab provider says about a user besides ``sub``: Entra's tenant and object ids, an Auth0-style org."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="lab_identity")
    tenant_id = models.CharField(max_length=64, help_text="Sent as the `tid` claim.")
    object_id = models.CharField(max_length=64, help_text="Sent as the `oid` claim.")
    org_id = models.CharField(max_length=64, blank=True, default="", help_text="Sent as the `org_id` claim when set.")

    def __str__(self) -> str:
        return f"{self.user} ({self.tenant_id}/{self.object_id})"
