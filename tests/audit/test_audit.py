import pytest
from django.db import connection, transaction
from django.db.utils import DatabaseError

from audit.models import AppendOnlyError, AuditEvent
from audit.redaction import REDACTED, redact, redact_url
from audit.services import audit_record
from cases import services
from tests.conftest import DEAD_GRANT

pytestmark = pytest.mark.django_db


@pytest.fixture
def event():
    with transaction.atomic():
        return audit_record(actor="test", action="thing.done", entity_type="thing", entity_id="1", after={"state": "x"})


def test_orm_refuses_update_and_delete(event):
    event.outcome = "changed"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.filter(pk=event.pk).update(outcome="changed")
    with pytest.raises(AppendOnlyError):
        AuditEvent.objects.all().delete()
    assert AuditEvent.objects.get(pk=event.pk).outcome == "ok"


@pytest.mark.parametrize("sql", ["UPDATE audit_auditevent SET outcome = 'x'", "DELETE FROM audit_auditevent"])
def test_postgresql_trigger_refuses_update_and_delete(event, sql):
    assert connection.vendor == "postgresql"
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cur:
        cur.execute(sql)
    assert AuditEvent.objects.filter(pk=event.pk, outcome="ok").exists()


@pytest.mark.django_db(transaction=True)
def test_audit_record_refuses_to_run_outside_a_transaction():
    with pytest.raises(RuntimeError):
        audit_record(actor="t", action="a", entity_type="e", entity_id="1")


@pytest.mark.parametrize(
    "value, expected",
    [
        ("http://user:secret@host:9080/v1", f"http://{REDACTED}@host:9080/v1"),
        ("https://token@example.com/p?q=1#f", f"https://{REDACTED}@example.com/p?q=1#f"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://host/no-user", "http://host/no-user"),
        ("http://User:Pw@MyHost.Example:9080/Path?", f"http://{REDACTED}@MyHost.Example:9080/Path?"),
        ("https://Host.EXAMPLE/x", "https://Host.EXAMPLE/x"),
        ("http://a@b@HoSt/p#", f"http://{REDACTED}@HoSt/p#"),
        ("http://tok@[FE80::1]:9/x", f"http://{REDACTED}@[FE80::1]:9/x"),
    ],
)
def test_url_userinfo_is_redacted_keeping_host_path_query_fragment(value, expected):
    assert redact_url(value) == expected
    assert redact({"serviceUrl": value}) == {"serviceUrl": expected}


def test_secret_keys_and_secret_looking_values_are_redacted():
    out = redact(
        {
            "refresh_token": "rt-123",
            "client_secret": "cs",
            "nested": [{"Authorization": "Bearer abc.def"}],
            "note": "sent with Bearer abcdef123 and eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
            "error_codes": [700082],
            "state": "opened",
        }
    )
    assert out["refresh_token"] == out["client_secret"] == REDACTED
    assert out["nested"][0]["Authorization"] == REDACTED
    assert "abcdef123" not in out["note"] and "eyJhbGci" not in out["note"]
    assert out["error_codes"] == [700082] and out["state"] == "opened"


def test_every_transition_writes_exactly_one_audit_event(make_run, make_connection):
    """Walk the whole happy path and an ambiguous detour; count events per service call."""
    run, conn = make_run(), make_connection()

    def delta(fn):
        before = AuditEvent.objects.count()
        fn()
        return AuditEvent.objects.count() - before

    def begin(g=1, key="send"):
        return services.action_begin(
            run_id=run.pk, checkpoint_id="05", connection_id=conn.pk, action_key=key, generation=g, actor="w"
        )

    assert delta(begin) == 2  # checkpoint recorded + action executing
    assert (
        delta(
            lambda: services.action_mark_ambiguous(
                run_id=run.pk, action_key="send", generation=1, reason="t", actor="w"
            )
        )
        == 1
    )
    assert (
        delta(
            lambda: services.action_reconcile(
                run_id=run.pk, action_key="send", found=False, evidence={}, generation=1, actor="w"
            )
        )
        == 1
    )
    assert delta(begin) == 1  # reconciled_absent -> executing
    # fail: action.failed + case.opened + reconnect.requested (the owner's link) + run.parked
    assert (
        delta(
            lambda: services.action_fail(
                run_id=run.pk, action_key="send", generation=1, provider_error=DEAD_GRANT, actor="w"
            )
        )
        == 4
    )
    ref = run.first_cases.get().reference
    # reauthorize: lease.advanced + case.reauthorized
    assert delta(lambda: services.case_reauthorize(case_id=ref, actor="owner")) == 2
    # resume: case.resuming + run.unparked
    assert delta(lambda: services.case_resume_begin(case_id=ref, actor="system")) == 2
    # next begin: action executing (beginning the parked action is not yet being past it)
    assert delta(lambda: begin(2)) == 1
    # commit: action.committed + run.resumed (past its parked action) + case.resumed
    assert delta(lambda: services.action_commit(run_id=run.pk, action_key="send", generation=2, actor="w")) == 3
    assert delta(lambda: begin(2)) == 0  # a replay changes nothing
    actions = list(AuditEvent.objects.values_list("action", flat=True))
    for name in [
        "case.opened",
        "case.reauthorized",
        "lease.advanced",
        "case.resuming",
        "case.resumed",
        "action.committed",
    ]:
        assert actions.count(name) == 1, name


def _event(action: str) -> None:
    audit_record(actor="t", action=action, entity_type="test", entity_id="1")


def test_a_batch_writes_its_events_in_one_insert_in_the_order_recorded():
    from audit.services import audit_batch

    with transaction.atomic(), audit_batch():
        _event("t.one")
        _event("t.two")
        assert not AuditEvent.objects.filter(entity_type="test").exists()  # held until the batch ends
    assert list(AuditEvent.objects.filter(entity_type="test").order_by("id").values_list("action", flat=True)) == [
        "t.one",
        "t.two",
    ]


def test_a_batch_keeps_no_event_of_a_savepoint_rolled_back_inside_it_and_none_when_it_raises():
    from audit.services import audit_batch

    with transaction.atomic(), audit_batch():
        _event("t.before")
        try:
            with transaction.atomic():
                _event("t.rolled_back")  # written at once, inside the savepoint, so its rollback takes it
                raise RuntimeError
        except RuntimeError:
            pass
        _event("t.after")
    with pytest.raises(RuntimeError), transaction.atomic(), audit_batch():
        _event("t.raised")
        raise RuntimeError
    assert list(AuditEvent.objects.filter(entity_type="test").order_by("id").values_list("action", flat=True)) == [
        "t.before",
        "t.after",
    ]
