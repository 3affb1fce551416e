from django.apps import AppConfig


class CasesConfig(AppConfig):
    name = "cases"
    verbose_name = "Recovery cases"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import pipeline, tasks  # noqa: F401  (registers the pipeline's outbox handlers and Celery tasks)
