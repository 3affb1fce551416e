from django.apps import AppConfig


class IdpConfig(AppConfig):
    name = "lab.idp"
    label = "idp"  # its tables and migrations were made as the top-level app ``idp``: they keep that label
    verbose_name = "Lab identity provider"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # allauth's JWK helpers reach cryptography's `serialization` as an attribute of its package; import it
        # once at start-up, or two first token requests in parallel threads race on the import and one fails.
        import cryptography.hazmat.primitives.serialization  # noqa: F401
