from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _default_namespace(sender, using="default", **kwargs):
    """``default`` always exists: every row without a namespace belongs to it (also after a test's flush)."""
    from .models import DEFAULT_NAMESPACE, Namespace

    Namespace.objects.using(using).get_or_create(name=DEFAULT_NAMESPACE)


class CasesConfig(AppConfig):
    name = "cases"
    verbose_name = "Recovery cases"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_default_namespace, sender=self, dispatch_uid="cases.default_namespace")
        from . import pipeline, tasks  # noqa: F401  (registers the outbox handlers and Celery tasks)
