"""A task that keeps a worker busy, for the doctor's test (the worker imports this module with ``-I``)."""

import time

from celery import shared_task


@shared_task(name="tests.operable.busy")
def busy(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@shared_task(name="tests.operable.fails")
def fails() -> None:
    raise RuntimeError("this task always fails")
