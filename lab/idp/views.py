from django.http import HttpResponse
from django.urls import reverse
from django.utils.html import escape


def index(request):
    who = escape(request.user.get_username()) if request.user.is_authenticated else "nobody"
    return HttpResponse(
        "<!doctype html><html lang=en><title>Revive lab identity provider</title>"
        "<h1>Revive lab identity provider</h1>"
        f"<p>Signed in: {who}. Discovery: <a href='/.well-known/openid-configuration'>/.well-known/openid-configuration</a>. "
        f"<a href='{reverse('account_login')}'>Sign in</a> · <a href='{reverse('account_logout')}'>Sign out</a></p>",
        content_type="text/html; charset=utf-8",
    )
