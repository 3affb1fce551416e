"""Gunicorn's configuration for Revive, read from the repository root: ``gunicorn revive_site.wsgi``.

* The access log never holds a query string (``%(U)s`` is the path alone), and
  its lines go through Django's logging (``LOGGING`` in the settings): the
  redaction filter rewrites reconnect-link paths, and ``REVIVE_LOG_FORMAT=json``
  makes them JSON like every other line.
* Gunicorn's own lines (the master's too) use Django's ``LOGGING`` from the settings module, so under
  ``REVIVE_LOG_FORMAT=json`` every line of the process's output is one JSON object.
* With ``PROMETHEUS_MULTIPROC_DIR`` set, a worker that exits is marked dead so
  its live gauges leave ``/metrics``; its counters stay summed in.

* Each worker's liveness file lives in ``/dev/shm`` (memory) where there is one: gunicorn touches it on every
  pass of a worker's loop, and on a disk-backed ``/tmp`` that busy machines flush, the touch waits for the disk --
  a fifth of a worker's time under load, measured with py-spy.

Bind address, worker count and the rest are gunicorn's own options (command line or ``GUNICORN_CMD_ARGS``).
"""

import copy
import importlib
import os

wsgi_app = "revive_site.wsgi:application"
worker_class = "gthread"
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
threads = 8
accesslog = "-"
# remote address, "METHOD path protocol", status, bytes, duration, request id: no %(r)s, %(q)s or %(a)s, which carry queries
access_log_format = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(B)s %(M)sms %({x-request-id}o)s'


def _django_logging() -> dict:
    settings = importlib.import_module(os.environ.get("DJANGO_SETTINGS_MODULE", "revive_site.settings"))
    return copy.deepcopy(settings.LOGGING)


logconfig_dict = _django_logging()


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
