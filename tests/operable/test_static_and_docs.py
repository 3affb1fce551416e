"""Under gunicorn with DEBUG off: the admin is styled and the API docs render with no network beyond Revive."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
import pytest

from tests.operable.conftest import superuser

pytestmark = pytest.mark.browser

DOCS = ["/api/v1/docs", "/api/v2/admin/operator/docs"]


def _only_local_requests(page, base_url: str) -> list[str]:
    """Every request the page makes; any to another host is aborted (this machine is offline in spirit)."""
    seen: list[str] = []

    def route(route):
        seen.append(route.request.url)
        if urlsplit(route.request.url).netloc != urlsplit(base_url).netloc:
            route.abort()
        else:
            route.continue_()

    page.route("**/*", route)
    return seen


def test_admin_is_styled_under_gunicorn_with_debug_off(served, chromium):
    superuser("root", "pw-root-1")
    server = served()

    css = httpx.get(f"{server.url}/admin/login/").text
    stylesheet = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', css)
    assert stylesheet, "the login page links the collected, hashed admin stylesheet"
    asset = httpx.get(server.url + stylesheet[1], headers={"Accept-Encoding": "gzip"})
    assert asset.status_code == 200 and asset.headers["Content-Encoding"] == "gzip"
    assert "immutable" in asset.headers["Cache-Control"] and "max-age=315360000" in asset.headers["Cache-Control"]

    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    try:
        requests = _only_local_requests(page, server.url)
        page.goto(f"{server.url}/admin/login/")
        page.fill("#id_username", "root")
        page.fill("#id_password", "pw-root-1")
        page.click("input[type=submit]")
        page.wait_for_url(f"{server.url}/admin/")
        header = page.locator("#header")
        # base.css paints the header with the admin's header colour and lays the page out in flex: unstyled, it is
        # a transparent block.
        assert header.evaluate("e => getComputedStyle(e).display") == "flex"
        assert header.evaluate("e => getComputedStyle(e).backgroundColor") not in ("rgba(0, 0, 0, 0)", "transparent")
        assert page.locator("body").evaluate("e => getComputedStyle(e).fontFamily") != '"Times New Roman"'
        assert all(urlsplit(url).netloc == urlsplit(server.url).netloc for url in requests), requests
    finally:
        page.close()


@pytest.mark.parametrize("path", DOCS)
def test_docs_page_references_no_external_host(client, path):
    response = client.get(path)

    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui-bundle" in html and "/static/ninja/" in html
    hosts = {urlsplit(url).netloc for url in re.findall(r'(?:src|href)="([^"]+)"', html)}
    assert hosts <= {""}, f"the docs page loads from {hosts}"
    assert "cdn" not in html.lower()


def test_docs_render_offline_under_gunicorn(served, chromium):
    server = served()
    page = chromium.new_page(viewport={"width": 1280, "height": 900})
    try:
        requests = _only_local_requests(page, server.url)
        page.goto(f"{server.url}/api/v1/docs")
        page.wait_for_selector(".swagger-ui .info .title", timeout=60_000)
        assert "Revive worker API" in page.locator(".swagger-ui .info .title").inner_text()
        page.wait_for_selector(".opblock-summary-path", timeout=60_000)
        paths = page.locator(".opblock-summary-path").all_inner_texts()
        assert any("/begin" in path for path in paths), paths
        external = [url for url in requests if urlsplit(url).netloc != urlsplit(server.url).netloc]
        assert external == [], f"the docs asked another host: {external}"
    finally:
        page.close()
