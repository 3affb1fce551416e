from __future__ import annotations

import json
import threading

from django.contrib.auth import logout
from django.http import HttpResponseRedirect, JsonResponse


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


class ClaimsRequestMiddleware:
    """The ``claims`` authorization parameter as the lab needs it: recorded, then taken off the request.

    Microsoft Entra reads ``claims`` (OIDC Core §5.5, with Entra's ``access_token`` target) to issue a token that
    satisfies a claims challenge (continuous access evaluation) or declares client capabilities (``xms_cc``).
    allauth's provider only understands a top-level ``sub`` there and refuses anything else, so the lab provider
    records every claims request it is sent (``GET /lab/claims-requests``, for the lab and the tests to check what
    the owner's sign-in carried) and hands allauth the request without it.
    """

    requests: list[dict] = []
    _lock = threading.Lock()

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.method == "GET" and request.path == "/identity/o/authorize" and "claims" in request.GET:
            try:
                claims = json.loads(request.GET["claims"])
            except ValueError:
                claims = None
            with self._lock:
                self.requests.append(
                    {
                        "client_id": request.GET.get("client_id", ""),
                        "login_hint": request.GET.get("login_hint", ""),
                        "claims": claims,
                    }
                )
            query = request.GET.copy()
            query.pop("claims")
            return HttpResponseRedirect(f"{request.path}?{query.urlencode()}")
        if request.method == "GET" and request.path == "/lab/claims-requests":
            with self._lock:
                return JsonResponse({"requests": list(self.requests)})
        return self.get_response(request)
