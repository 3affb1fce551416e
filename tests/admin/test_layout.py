"""The console's layout at the widths operators use (1280 and 1440 px): nothing overlaps, nothing scrolls sideways.

Chromium renders the case page and the case list with realistic data (long run and connection ids, a ledger with
evidence, an ambiguous action, several runs); the test reads every section's box from the page and saves a
full-page screenshot of each (into ``REVIVE_SCREENSHOTS`` when set, else the test's temporary directory).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cases import services
from cases.models import CaseState

from .conftest import PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTHS = [1280, 1440]
CASE_SECTIONS = ["#incident-record", ".timeline-picture", "#operations", "#timeline", "#ledger"]

BOXES = """
selectors => selectors.flatMap(sel => [...document.querySelectorAll(sel)].map(e => {
  const r = e.getBoundingClientRect();
  return {sel, left: r.left, right: r.right, top: r.top + scrollY, bottom: r.bottom + scrollY,
          scrollW: e.scrollWidth, clientW: e.clientWidth};
}))
"""


def _overlap(a: dict, b: dict) -> bool:
    return (
        min(a["right"], b["right"]) - max(a["left"], b["left"]) > 1
        and min(a["bottom"], b["bottom"]) - max(a["top"], b["top"]) > 1
    )


def _no_sideways_scroll(page) -> tuple[int, int]:
    return page.evaluate("() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]")


@pytest.fixture
def crowded_case(make_case, make_connection, make_run):
    """A case awaiting approval, with long ids and a second run joined, and a dozen other cases for the list."""
    conn = make_connection(
        "conn_microsoft_exchange_online_operations_mailbox_emea_0042",
        provider_tenant="72f988bf-86f1-41af-91ab-2d7cd011db47",
        owner_email="executive.assistant.operations@contoso-international.example",
    )
    run = make_run("run_7f2c9e1d4b8a4f6e9c3d2b1a0f9e8d7c_nightly_executive_briefing")
    case = make_case(CaseState.AWAITING_APPROVAL, connection=conn, run=run)
    for n in range(12):
        make_case(
            [CaseState.OPENED, CaseState.AWAITING_OWNER, CaseState.RESUME_FAILED][n % 3],
            connection=make_connection(
                f"conn_tenant_{n:02d}_shared_mailbox_with_a_long_name",
                owner_email=f"owner.{n}.with.a.long.address@contoso-international.example",
            ),
        )
    assert services.case_lock  # the fixture went through the services
    return case


@pytest.mark.parametrize("width", WIDTHS)
def test_case_page_and_list_fit_without_overlap(chromium, live_server, superuser, crowded_case, width, tmp_path):
    shots = Path(os.environ.get("REVIVE_SCREENSHOTS") or tmp_path)
    context = chromium.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{live_server.url}/admin/login/?next=/admin/")
        page.fill("#id_username", superuser.username)
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_selector("#recovery-dashboard")

        page.goto(f"{live_server.url}/admin/cases/recoverycase/{crowded_case.pk}/change/")
        page.wait_for_selector("#ledger-table")
        page.screenshot(path=str(shots / f"case-page-{width}.png"), full_page=True)
        boxes = page.evaluate(BOXES, CASE_SECTIONS)
        assert {b["sel"] for b in boxes} == set(CASE_SECTIONS), boxes
        clashes = [(a["sel"], b["sel"]) for i, a in enumerate(boxes) for b in boxes[i + 1 :] if _overlap(a, b)]
        assert clashes == [], f"sections overlap at {width}px: {clashes}"
        for table, section in (
            ("#timeline-table", "#timeline"),
            ("#ledger-table", "#ledger"),
            ("#runs-table", "#ledger"),
            ("#links-table", "#ledger"),
        ):
            [inner], [outer] = page.evaluate(BOXES, [table]), page.evaluate(BOXES, [section])
            assert inner["right"] <= outer["right"] + 1, f"{table} spills out of {section} at {width}px"
        spilling = [b for b in page.evaluate(BOXES, ["#incident-record dd"]) if b["scrollW"] > b["clientW"] + 1]
        assert spilling == [], f"incident record values run into their neighbours at {width}px"
        scroll_width, client_width = _no_sideways_scroll(page)
        assert scroll_width <= client_width, f"the case page scrolls sideways at {width}px"

        page.goto(f"{live_server.url}/admin/cases/recoverycase/")
        page.wait_for_selector("#result_list")
        page.screenshot(path=str(shots / f"case-list-{width}.png"), full_page=True)
        scroll_width, client_width = _no_sideways_scroll(page)
        assert scroll_width <= client_width, f"the case list scrolls sideways at {width}px ({scroll_width})"
        [results] = page.evaluate(BOXES, ["#changelist .results"])  # Django scrolls the table inside this box
        columns = page.evaluate(
            "() => [...document.querySelectorAll('#result_list thead th')].map("
            "th => [th.className, Math.round(th.getBoundingClientRect().width)])"
        )
        assert results["scrollW"] <= results["clientW"] + 1, f"the case table scrolls sideways at {width}px: {columns}"
        [result_list] = page.evaluate(BOXES, ["#result_list"])
        assert result_list["right"] <= results["right"] + 1 <= client_width + 1
    finally:
        context.close()
