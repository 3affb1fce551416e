import json

from django.core.management.base import BaseCommand, CommandError

from operations.doctor import doctor_config, doctor_rows, revive_doctor
from operations.probes import DEGRADED, OK, UNREACHABLE

EXIT_CODES = {OK: 0, DEGRADED: 1, UNREACHABLE: 2}


class Command(BaseCommand):
    help = (
        "Read the health of Revive's parts (database, Redis, Celery workers, each configured runtime), changing "
        "nothing. Exit status: 0 when every part is ok, 1 when one is degraded, 2 when one is unreachable."
    )

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print the readout of the API route as JSON.")
        parser.add_argument(
            "--timeout",
            type=float,
            default=None,
            help="Seconds per probe call (default REVIVE_DOCTOR_PROBE_TIMEOUT); the doctor answers "
            "within twice that plus a second.",
        )
        parser.add_argument(
            "--worker-timeout",
            type=float,
            default=None,
            help="Seconds to wait for Celery workers to answer (default REVIVE_DOCTOR_WORKER_REPLY_TIMEOUT).",
        )

    def handle(self, *args, **options):
        for option in ("timeout", "worker_timeout"):
            if options[option] is not None and options[option] <= 0:
                raise CommandError(f"--{option.replace('_', '-')} must be a positive number of seconds.")
        readout = revive_doctor(probe_timeout=options["timeout"], worker_reply_timeout=options["worker_timeout"])
        rows = doctor_rows(readout)
        if options["json"]:
            self.stdout.write(json.dumps(readout, indent=2))
        else:
            self._table(
                rows, doctor_config(probe_timeout=options["timeout"], worker_reply_timeout=options["worker_timeout"])
            )
        not_ok = [row for row in rows if row.status != OK]
        if not_ok:
            worst = max(EXIT_CODES.get(row.status, 2) for row in not_ok)
            raise CommandError(
                f"{len(not_ok)} of {len(rows)} parts not ok: " + ", ".join(f"{r.part} ({r.status})" for r in not_ok),
                returncode=worst,
            )

    def _table(self, rows, config) -> None:
        header = ("PART", "STATUS", "LATENCY", "DETAIL")
        cells = [(r.part, r.status, "-" if r.latency_ms is None else f"{r.latency_ms} ms", r.detail) for r in rows]
        widths = [max(len(str(line[i])) for line in [header, *cells]) for i in range(3)]
        style = {OK: self.style.SUCCESS, DEGRADED: self.style.WARNING, UNREACHABLE: self.style.ERROR}

        def line(part, status, latency, detail, paint=lambda text: text):
            status = paint(f"{status:<{widths[1]}}")
            return f"{part:<{widths[0]}}  {status}  {latency:>{widths[2]}}  {detail}".rstrip()

        self.stdout.write(
            f"Revive doctor (probe timeout {config.probe_timeout:g}s, workers answer within "
            f"{config.worker_reply_timeout:g}s)"
        )
        if not any(row.part.startswith("runtime ") for row in rows):
            self.stdout.write("(no runtime configured: REVIVE_RUNTIMES is empty)")
        self.stdout.write(line(*header))
        indent = " " * (widths[0] + widths[1] + widths[2] + 6)
        for row, (part, status, latency, detail) in zip(rows, cells, strict=False):
            self.stdout.write(line(part, status, latency, detail, style.get(row.status, self.style.ERROR)))
            if row.error:
                self.stdout.write(f"{indent}error: {row.error}")
