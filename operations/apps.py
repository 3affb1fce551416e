from django.apps import AppConfig


class OperationsConfig(AppConfig):
    """What operators of the platform run: Revive's doctor, the Restate recovery routes and their admin panel.

    It depends on ``cases`` (the runtimes' clients, the API's error shape); ``cases`` never imports it.
    """

    name = "operations"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"
