"""The operator console at scale (P4): each admin page's time and statement count on a large database.

Seeds a fresh PostgreSQL database in bulk (``INSERT … SELECT generate_series``): ``--cases`` recovery
cases (default 100,000), each with its run, checkpoint, blocked-run row and connection (1,000
connections over 50 tenants), ``--ledger`` action rows (default 1,000,000) and as many audit events,
then ANALYZE. It then requests every console page as a signed-in superuser through Django's test
client, in-process, and prints for each the median time of ``--repeat`` requests, the part of it spent
waiting for the database, and the statements PostgreSQL received (libpq's trace: transaction control and
session reads included). The rest of a page's time is Python: the admin's templates.

    .venv/bin/python bench/console_scale.py [--cases 100000] [--ledger 1000000] [--repeat 3]

Target, printed, never asserted: <= 200 ms per page, the same number of statements whatever the size
(run it with ``--cases 1000 --ledger 10000`` to compare).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import bench_database, stop_on_sigterm  # noqa: E402

CONNECTIONS = 1000
TENANTS = 50

SEED = [
    # connections and their first generation
    """INSERT INTO cases_connection (id, provider, display_name, owner_email, owner_name, provider_subject, provider_tenant,
                                     provider_issuer, provider_org, current_generation, created_at, updated_at, namespace_id,
                                     broker_account, broker_check_failures, broker_connection, broker_integration, upstream_provider)
       SELECT 'conn_' || i, 'entra', '', 'owner' || i || '@example.com', '', 'oid-' || i, 'tid-' || (i % {tenants}), '', '',
              1 + ({cases} / {connections}), now(), now(), 'default', '', 0, '', '', ''
       FROM generate_series(0, {connections} - 1) i""",
    """INSERT INTO cases_credentialgeneration (connection_id, number, state, issued_at)
       SELECT 'conn_' || i, 1, 'issued', now() FROM generate_series(0, {connections} - 1) i""",
    # one run per case, with a checkpoint
    """INSERT INTO cases_run (id, runtime, runtime_ref, workflow_name, state, created_at, updated_at, namespace_id,
                               continuations, resume_claimed_by)
       SELECT 'run_' || i, 'langgraph', jsonb_build_object('thread_id', 'run_' || i), 'Nightly executive briefing',
              CASE WHEN i % 50 = 0 THEN 'parked' ELSE 'completed' END, now(), now(), 'default', 0, ''
       FROM generate_series(0, {cases} - 1) i""",
    """INSERT INTO cases_checkpoint (run_id, checkpoint_id, label, runtime_ref, created_at)
       SELECT 'run_' || i, '05', '05 / prepare brief', '{{}}', now() FROM generate_series(0, {cases} - 1) i""",
    # the ledger: --ledger actions spread over the runs
    """INSERT INTO cases_action (run_id, action_key, idempotency_key, connection_id, checkpoint_id, params_hash, state, generation,
                                 attempts, result, external_ref, error, evidence, reconciled_by, reconciliations, lock_expires_at,
                                 created_at, updated_at)
       SELECT 'run_' || (n % {cases}), 'send_exec_' || (n / {cases}), 'rv1_' || md5(n::text), 'conn_' || ((n % {cases}) % {connections}),
              NULL, '', CASE WHEN n % 97 = 0 THEN 'ambiguous' ELSE 'committed' END, 1, 1, '{{"ok": true}}', 'msg-' || n, NULL, NULL, '',
              '[]', NULL, now() - (n || ' seconds')::interval, now()
       FROM generate_series(0, {ledger} - 1) n""",
    # the cases: one per (connection, generation); most closed, some open in every state
    """INSERT INTO cases_recoverycase (reference, connection_id, rejected_generation, resumed_generation, failure_class, provider,
                                       provider_code, provider_message, provider_error, owner_required, state, run_id, checkpoint_id,
                                       action_id, opened_at, state_changed_at, closed_at, namespace_id)
       SELECT 'CASERV-' || lpad(i::text, 6, '0'), 'conn_' || (i % {connections}), 1 + i / {connections}, NULL, 'dead_grant', 'entra',
              'AADSTS700082', 'The refresh token has expired.', '{{}}', true,
              (ARRAY['closed','closed','closed','closed','resumed','abandoned','opened','awaiting_owner','reauthorized',
                     'awaiting_approval','resume_failed','resuming'])[1 + i % 12],
              'run_' || i, NULL, NULL, now() - (i || ' minutes')::interval, now(), NULL, 'default'
       FROM generate_series(0, {cases} - 1) i""",
    """INSERT INTO cases_caserun (case_id, run_id, checkpoint_id, action_id, joined_at, resumed_at, resume_attempts)
       SELECT c.id, c.run_id, NULL, NULL, c.opened_at, CASE WHEN c.state IN ('closed', 'resumed') THEN now() END, 0
       FROM cases_recoverycase c""",
    # the audit log: one event per ledger row
    """INSERT INTO audit_auditevent (occurred_at, actor, action, entity_type, entity_id, case_id, case_reference, run_id, connection_id,
                                     before, after, arguments, outcome, trace_id)
       SELECT now() - (n || ' seconds')::interval, 'worker:fleet-' || (n % 7), 'action.committed', 'action',
              'run_' || (n % {cases}) || '/send_exec_' || (n / {cases}), NULL, '', 'run_' || (n % {cases}),
              'conn_' || ((n % {cases}) % {connections}), '{{"state": "executing"}}', '{{"state": "committed"}}', '{{}}', 'ok', ''
       FROM generate_series(0, {ledger} - 1) n""",
]


def seed(cases: int, ledger: int) -> None:
    from django.db import connection

    params = {"cases": cases, "ledger": ledger, "connections": min(CONNECTIONS, cases), "tenants": TENANTS}
    with connection.cursor() as cur:
        for sql in SEED:
            t0 = time.perf_counter()
            cur.execute("SET session_replication_role = replica")  # bulk load: skip the FK and audit-guard triggers
            cur.execute(sql.format(**params))
            inserted = cur.rowcount
            cur.execute("SET session_replication_role = DEFAULT")
            table = sql.split("INSERT INTO ")[1].split()[0]
            print(f"bench: seeded {table:<28} {inserted:>9,} rows in {time.perf_counter() - t0:5.1f} s", flush=True)
        cur.execute("VACUUM ANALYZE")


def pages(cases: int) -> list[tuple[str, str]]:
    from django.contrib.admin.utils import quote

    from cases.models import Action, RecoveryCase
    from console.admin.cases import RecoveryCaseAdmin

    mid = f"{cases // 2:06d}"
    deep = max(cases // 2 // RecoveryCaseAdmin.list_per_page, 1)
    case_pk = RecoveryCase.objects.get(reference=f"CASERV-{mid}").pk
    action = Action.objects.filter(run_id=f"run_{cases // 2}").order_by("pk").first()
    return [
        ("dashboard", "/admin/"),
        ("cases: list (by urgency)", "/admin/cases/recoverycase/"),
        ("cases: open", "/admin/cases/recoverycase/?state=open"),
        ("cases: tenant filter", "/admin/cases/recoverycase/?tenant=tid-7"),
        ("cases: tenant + age", "/admin/cases/recoverycase/?tenant=tid-7&age=older"),
        (f"cases: page {deep}", f"/admin/cases/recoverycase/?p={deep}"),  # half-way down the list
        ("cases: search case id", f"/admin/cases/recoverycase/?q=CASERV-{mid}"),
        ("cases: search run id", f"/admin/cases/recoverycase/?q=run_{cases // 2}"),
        ("cases: search owner e-mail", "/admin/cases/recoverycase/?q=OWNER7@example.com"),
        ("cases: search action key", "/admin/cases/recoverycase/?q=send_exec_3"),
        ("case page", f"/admin/cases/recoverycase/{case_pk}/change/"),
        ("ledger: list", "/admin/cases/action/"),
        (f"ledger: page {cases // 500}", f"/admin/cases/action/?p={cases // 500}"),
        ("ledger: state filter", "/admin/cases/action/?state__exact=ambiguous"),
        ("ledger: search action key", "/admin/cases/action/?q=send_exec_4"),
        ("ledger: search run id", f"/admin/cases/action/?q=run_{cases // 3}"),
        ("ledger: search idempotency key", f"/admin/cases/action/?q={action.idempotency_key}"),
        ("ledger: entry", f"/admin/cases/action/{action.pk}/change/"),
        ("runs: list", "/admin/cases/run/"),
        ("runs: search run id", f"/admin/cases/run/?q=run_{cases // 4}"),
        ("run page", f"/admin/cases/run/{quote(f'run_{cases // 4}')}/change/"),
        ("connections: list", "/admin/cases/connection/"),
        ("connections: search e-mail", "/admin/cases/connection/?q=owner9@example.com"),
        ("audit log: list", "/admin/audit/auditevent/"),
        ("audit log: search run id", f"/admin/audit/auditevent/?q=run_{cases // 5}"),
        ("audit log: operator acts", "/admin/audit/auditevent/?q=operator:"),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=100_000)
    ap.add_argument("--ledger", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    stop_on_sigterm()
    with bench_database():
        from django.contrib.auth.models import User
        from django.db import connection
        from django.test import Client

        from bench.pgtrace import count_statements

        t0 = time.perf_counter()
        seed(args.cases, args.ledger)
        print(
            f"bench: seeded in {time.perf_counter() - t0:.0f} s; {args.cases:,} cases, {args.ledger:,} ledger rows, "
            f"{args.ledger:,} audit events",
            flush=True,
        )
        admin = User.objects.create_superuser("bench", "bench@example.com", "bench")
        client = Client()
        client.force_login(admin)
        rows = []
        for name, url in pages(args.cases):
            resp = client.get(url)  # warm: templates, plans, caches
            assert resp.status_code == 200, (name, url, resp.status_code)
            times, db_times = [], []
            for _ in range(args.repeat):
                db_ms = [0.0]

                def timed_query(execute, sql, params, many, context):
                    t = time.perf_counter()
                    try:
                        return execute(sql, params, many, context)
                    finally:
                        db_ms[0] += (time.perf_counter() - t) * 1000

                with count_statements() as trace, connection.execute_wrapper(timed_query):
                    t1 = time.perf_counter()
                    resp = client.get(url)
                    times.append((time.perf_counter() - t1) * 1000)
                db_times.append(db_ms[0])
                assert resp.status_code == 200, (name, url, resp.status_code)
            rows.append((name, url, statistics.median(times), statistics.median(db_times), len(trace)))
    print()
    print(f"P4, the console at {args.cases:,} cases / {args.ledger:,} ledger rows (median of {args.repeat})")
    print(f"{'page':<32}{'ms':>8}{'db ms':>8}{'stmts':>7}  url")
    for name, url, ms, db_ms, statements in rows:
        print(f"{name:<32}{ms:>8.1f}{db_ms:>8.1f}{statements:>7}  {url}")
    slow = [name for name, _, ms, _, _ in rows if ms > 200]
    print(f"P4 target: every page <= 200 ms [{'met' if not slow else 'MISSED: ' + ', '.join(slow)}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
