from django.apps import AppConfig


class OperationsConfig(AppConfig):
    """What operators of the platform run: Revive's doctor, the Restate recovery routes and their admin panel, the
    operators' notifications of cases, and the operator commands (keys, connections, reaping, the API schema).

    It depends on ``cases`` (the runtimes' clients, the API's error shape, ``cases.signals``); ``cases`` never imports it.
    """

    name = "operations"
    verbose_name = "Operations"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Connects the notifications' receiver to ``cases.signals.case_state_changed`` and registers their outbox
        # kinds (``operator.email``, ``operator.webhook``) in every process Django sets up (the Celery worker too, before
        # it dispatches a row of them), and the beat task ``cases.notify_stale_cases``.
        from . import notifications, tasks  # noqa: F401
