from __future__ import annotations

from django.contrib.auth import logout
from django.http import HttpResponseRedirect



class SelectAccountMiddleware:
    """``prompt=select_account`` as Microsoft Entra ID does it: the user may sign in as another account.

    allauth's provider knows ``login`` (re-authenticate the *same* user) and ``none``; the lab needs the
    account picker so that an owner refused as the wrong account can try the right one. Signing the
    current user out and dropping ``select_account`` from the request gives exactly that.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        prompt = request.GET.get("prompt", "")
        if request.method == "GET" and request.path == "/identity/o/authorize" and "select_account" in prompt.split():
            if request.user.is_authenticated:
                logout(request)
            query = request.GET.copy()
            rest = [p for p in prompt.split() if p != "select_account"]
            if rest:
                query["prompt"] = " ".join(rest)
            else:
                query.pop("prompt")
            return HttpResponseRedirect(f"{request.path}?{query.urlencode()}")
        return self.get_response(request)
