"""The /lab/ page offers the runtimes the console lab runs on, and refuses one it does not know."""

import pytest
from django.urls import reverse

from lab.runtimes import RUNTIMES


@pytest.mark.django_db
def test_lab_page_offers_every_runtime_and_refuses_an_unknown_one(admin_client):
    page = admin_client.get(reverse("lab:index"))
    assert page.status_code == 200
    html = page.content.decode()
    assert '<select name="runtime">' in html
    for runtime in RUNTIMES:
        assert f'<option value="{runtime}">' in html
    refused = admin_client.post(reverse("lab:start"), {"scenario": "revoked", "provider": "oidc", "runtime": "celery"})
    assert refused.status_code == 400 and b"runtime" in refused.content
