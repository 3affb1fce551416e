from django.apps import AppConfig


class ReauthConfig(AppConfig):
    name = "reauth"
    verbose_name = "Owner reconnect"
    default_auto_field = "django.db.models.BigAutoField"
