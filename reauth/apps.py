from django.apps import AppConfig


class ReauthConfig(AppConfig):
    name = "reauth"
    verbose_name = "Owner reconnect"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import handlers, tasks  # noqa: F401  (connects to cases.signals; registers its outbox handler and tasks)
