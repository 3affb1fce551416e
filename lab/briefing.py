"""The seed's workflow: "Nightly executive briefing", a LangGraph graph of five checkpoints.

    01 / collect calendar → 02 / collect inbox → 03 / rank risks → 04 / record summary → 05 / prepare brief

Every mutating step goes through ``revive_sdk.langgraph.protect_action``: 01–04
record their output in the workspace (no provider credential), 05 sends the brief
through the mail service with the connection's credential. The credential is the
grant in Revive's credential custody (``reauth.custody``), refreshed at the
provider's token endpoint on every use -- the lab's OpenID Connect provider, or the
local stand-in of Entra / Auth0 -- so a revoked refresh token is seen exactly as a
worker sees it in production: as the provider's error body.

Revive's worker knows the graph as ``lab-briefing`` (``REVIVE_LANGGRAPH_GRAPHS``)
and resumes it in place. An ambiguous send is settled by the resumed worker's
``reconcile`` callback: the mail service is asked for the message by its
idempotency key. The non-secret addresses travel in the graph's state; the
worker's API key and the token client's secret come from the environment
(``REVIVE_LAB_API_KEY``, ``REVIVE_LAB_IDP_CLIENT_SECRET``). A worker without Django (the LangGraph Agent Server's
process, ``--runtime langgraph-server``) is given ``REVIVE_LAB_CREDENTIAL_URL`` instead: it asks the lab process for
the access token over loopback (``lab.langgraph_server.CredentialDesk``), as the TypeScript worker asks on its stdin.
"""

from __future__ import annotations

import operator
import os
import threading
from typing import Annotated, Any, TypedDict

import httpx
from langgraph.graph import END, START, StateGraph
from langgraph.types import RetryPolicy

from revive_sdk import ProviderError, Revive
from revive_sdk import langgraph as revive_lg
from revive_sdk.flows import RefreshMemo

GRAPH_NAME = "lab-briefing"
WORKFLOW = "Nightly executive briefing"
STEPS = [
    ("01", "collect calendar", "collect_calendar_01"),
    ("02", "collect inbox", "collect_inbox_02"),
    ("03", "rank risks", "rank_risks_03"),
    ("04", "record summary", "record_summary_04"),
    ("05", "prepare brief", "send_exec_05"),
]
SEND_ACTION = "send_exec_05"
MAIL_TIMEOUT = float(os.environ.get("REVIVE_LAB_MAIL_TIMEOUT", "1.0"))

_local = threading.local()


class BriefingState(TypedDict, total=False):
    vault: dict
    run_id: str
    connection_id: str
    token_url: str
    nango_url: str
    nango_integration: str
    nango_connection: str
    scalekit_url: str
    scalekit_connector: str
    scalekit_identifier: str
    mail_url: str
    recipient: str
    log: Annotated[list, operator.add]


def revive() -> Revive:
    """One SDK client per thread (LangGraph runs nodes on a thread pool)."""
    key = (os.environ["REVIVE_LAB_URL"], os.environ["REVIVE_LAB_API_KEY"])
    client = getattr(_local, "client", None)
    if client is None or getattr(_local, "key", None) != key:
        client = _local.client = Revive(*key)
        _local.key = key
    return client


# --------------------------------------------------------------------------- the credential


# One memo of refresh rounds per connection in this process, shared by the threads LangGraph runs nodes on.
_MEMOS: dict[str, RefreshMemo] = {}
_MEMOS_LOCK = threading.Lock()


def refusal(resp: httpx.Response) -> ProviderError:
    """The provider's (or the broker's) refusal as the worker reports it: status, body, content type."""
    try:
        body: Any = resp.json()
    except ValueError:
        body = resp.text
    return ProviderError(resp.status_code, body, {"Content-Type": resp.headers.get("content-type", "")})


def credential(state: BriefingState) -> str:
    """An access token for the connection, refreshed through Revive's single-flight refresh claim.

    The lab refreshes at every use (``is_fresh`` is never true), so a revoked grant shows at once; the claim makes
    concurrent workers of one connection refresh one at a time and reuse each other's result instead of
    presenting the same rotating refresh token twice. The grant lives in Revive's credential custody, which this
    worker (Revive's own lab) reads and writes directly; Revive's worker API only answers who refreshes.
    """
    conn_id = state["connection_id"]
    if os.environ.get("REVIVE_LAB_CREDENTIAL_URL"):  # a worker without custody: the lab process refreshes for it
        return desk_credential(conn_id)
    if state.get("vault"):
        return token_vault_credential(state)
    if state.get("nango_url"):  # held by a broker: the broker refreshes, Revive's custody holds nothing
        return nango_credential(state)
    if state.get("scalekit_url"):
        return scalekit_credential(state)
    with _MEMOS_LOCK:
        memo = _MEMOS.setdefault(conn_id, RefreshMemo())
    helper = revive().single_flight_credential(
        conn_id,
        load=lambda: _stored_access_token(conn_id),
        refresh=lambda: refresh_grant(state),
        is_fresh=lambda token: False,
    )
    helper.memo = memo
    return helper()


def desk_credential(connection_id: str) -> str:
    """The access token from the lab process (``lab.langgraph_server.CredentialDesk``), which refreshes the grant in
    custody as ``credential`` does there; a refusal comes back as the provider's answer and is raised as it."""
    resp = httpx.post(
        os.environ["REVIVE_LAB_CREDENTIAL_URL"],
        json={"connection_id": connection_id},
        timeout=60,
        headers={"Authorization": f"Bearer {os.environ.get('REVIVE_LAB_CREDENTIAL_TOKEN', '')}"},
    )
    resp.raise_for_status()
    answer = resp.json()
    if "error" in answer:
        error = answer["error"]
        raise ProviderError(
            error.get("status"), error.get("body"), error.get("headers") or {}, error_kind=error.get("error_kind")
        )
    return answer["token"]


def token_vault_credential(state: BriefingState) -> str:
    """The upstream access token from Auth0 Token Vault (exchanged now, stored nowhere); the subject token is the
    owner's Auth0 refresh token from custody. A refused exchange raises ``ProviderError``: Revive classifies it."""
    from reauth.custody import get_custody
    from revive_sdk.auth0 import TokenVault

    vault = TokenVault(
        state["vault"]["url"],
        os.environ.get("REVIVE_LAB_VAULT_CLIENT_ID", "revive-lab-vault"),
        os.environ.get("REVIVE_LAB_VAULT_CLIENT_SECRET", ""),
    )
    try:
        grant = get_custody().load(connection_id=state["connection_id"])
        subject = grant.refresh_token if grant is not None else ""
        return vault.credential(connection=state["vault"]["connection"], subject_token=lambda: subject)()
    finally:
        vault.close()


def _stored_access_token(connection_id: str) -> str | None:
    from reauth.custody import get_custody

    grant = get_custody().load(connection_id=connection_id)
    return grant.access_token if grant is not None else None


def refresh_grant(state: BriefingState) -> str:
    """Refresh the custody grant at the provider's token endpoint; the new grant goes back to custody.

    Raises ``ProviderError`` with the provider's own answer when the refresh is refused. The provider may rotate
    refresh tokens, so the new one is stored under the same generation.
    """
    from cases.models import Connection
    from reauth.custody import Grant, get_custody

    custody, conn_id = get_custody(), state["connection_id"]
    generation = Connection.objects.values_list("current_generation", flat=True).get(pk=conn_id)
    grant = custody.load(connection_id=conn_id)
    if grant is None or not grant.refresh_token:
        raise ProviderError(400, {"error": "invalid_grant", "error_description": "no refresh token in custody"}, {})
    resp = httpx.post(
        state["token_url"],
        timeout=10,
        data={
            "grant_type": "refresh_token",
            "refresh_token": grant.refresh_token,
            "client_id": os.environ.get("REVIVE_LAB_IDP_CLIENT_ID", "revive-lab"),
            "client_secret": os.environ.get("REVIVE_LAB_IDP_CLIENT_SECRET", ""),
        },
    )
    if resp.status_code != 200:
        raise refusal(resp)
    token = resp.json()
    custody.store(
        connection_id=conn_id,
        generation=generation,
        grant=Grant(
            access_token=token["access_token"],
            refresh_token=token.get("refresh_token") or grant.refresh_token,
            id_token=grant.id_token,
            expires_at=grant.expires_at,
            scope=grant.scope,
        ),
    )
    return token["access_token"]


def nango_credential(state: BriefingState) -> str:
    """A broker-held connection: ask Nango (the lab's stand-in) for a fresh access token, as Nango's SDK does.

    Nango refreshes at the provider; a refusal comes back as Nango's ``refresh_token_external_error`` with the
    provider's body inside, raised as ``ProviderError`` for Revive to classify.
    """
    resp = httpx.get(
        f"{state['nango_url']}/connections/{state['nango_connection']}",
        timeout=15,
        params={"provider_config_key": state["nango_integration"], "force_refresh": "true"},
        headers={"Authorization": f"Bearer {os.environ.get('REVIVE_LAB_NANGO_SECRET_KEY', '')}"},
    )
    if resp.status_code != 200:
        raise refusal(resp)
    return resp.json()["credentials"]["access_token"]


def scalekit_credential(state: BriefingState) -> str:
    """A Scalekit connected account: its token, if the account is ``ACTIVE``; otherwise its status is the refusal."""
    base = state["scalekit_url"]
    env_token = httpx.post(
        f"{base}/oauth/token",
        timeout=15,
        data={
            "grant_type": "client_credentials",
            "client_id": os.environ.get("REVIVE_LAB_SCALEKIT_CLIENT_ID", ""),
            "client_secret": os.environ.get("REVIVE_LAB_SCALEKIT_CLIENT_SECRET", ""),
        },
    ).json()["access_token"]
    resp = httpx.get(
        f"{base}/api/v1/connected_accounts/auth",
        timeout=15,
        headers={"Authorization": f"Bearer {env_token}"},
        params={
            "connector": state["scalekit_connector"],
            "identifier": state["scalekit_identifier"],
            "refresh": "true",
        },
    )
    account = resp.json().get("connected_account") if resp.status_code == 200 else None
    if not account or account.get("status") != "ACTIVE":
        raise ProviderError(
            resp.status_code if resp.status_code != 200 else 400,
            {"connected_account": {"status": (account or {}).get("status", "UNKNOWN")}},
            {},
        )
    return account["authorization_details"]["oauth_token"]["access_token"]


# --------------------------------------------------------------------------- the mail service


def send_brief(state: BriefingState, ctx) -> dict:
    resp = httpx.post(
        f"{state['mail_url']}/v1.0/me/sendMail",
        timeout=MAIL_TIMEOUT,
        headers={"Authorization": f"Bearer {ctx.credential}", "Idempotency-Key": ctx.idempotency_key},
        json={
            "subject": WORKFLOW,
            "to": state.get("recipient", "exec-team@contoso.example"),
            "run_id": state["run_id"],
            "generation": ctx.generation,
            "pid": os.getpid(),
        },
    )
    if resp.status_code >= 400:
        raise ProviderError(resp.status_code, resp.text, dict(resp.headers))
    return resp.json()


def find_brief(mail_url: str, idempotency_key: str) -> dict | None:
    found = httpx.get(f"{mail_url}/v1.0/me/messages", params={"idempotencyKey": idempotency_key}, timeout=10)
    found.raise_for_status()
    value = found.json()["value"]
    return value[0] if value else None


# --------------------------------------------------------------------------- the graph


def step_arguments(index: int, state: BriefingState) -> dict:
    """The ``protect_action`` arguments of checkpoint ``index`` (for any runtime's helper and either SDK client)."""
    checkpoint, label, action_key = STEPS[index]
    arguments = dict(
        run_id=state["run_id"], checkpoint_id=checkpoint, connection_id=state["connection_id"], action_key=action_key
    )
    if action_key == SEND_ACTION:

        def reconcile(ctx):
            credential(state)  # Graph's message lookup needs a token too
            return find_brief(state["mail_url"], ctx.idempotency_key)

        return {
            **arguments,
            "credential": lambda: credential(state),
            "execute": lambda ctx: send_brief(state, ctx),
            "reconcile": reconcile,
        }
    return {**arguments, "execute": lambda ctx: {"step": f"{checkpoint} / {label}", "key": ctx.idempotency_key[-12:]}}


def run_step(index: int, state: BriefingState, protect) -> dict:
    """Checkpoint ``index`` through a runtime's synchronous ``protect_action`` (LangGraph, Temporal): its log entry."""
    result = protect(revive(), **step_arguments(index, state))
    entry = {"checkpoint": STEPS[index][0], "pid": os.getpid(), "result": result}
    if worker := os.environ.get("REVIVE_LAB_WORKER_NAME"):  # a worker process of its own (worker:lab-A, -B)
        entry["worker"] = worker
    return entry


def record_checkpoints(run_id: str) -> None:
    for checkpoint, label, _ in STEPS:
        revive().record_checkpoint(run_id=run_id, checkpoint_id=checkpoint, label=f"{checkpoint} / {label}")


def _step(index: int):
    def node(state: BriefingState) -> dict:
        return {"log": [run_step(index, state, revive_lg.protect_action)]}

    node.__name__ = STEPS[index][2]
    return node


def briefing(retry_policy: RetryPolicy | None = None) -> StateGraph:
    """The graph; ``retry_policy``: how the runtime retries a step that raised (none in Revive's own worker)."""
    graph = StateGraph(BriefingState)
    previous = START
    for i, (checkpoint, label, _action_key) in enumerate(STEPS):
        name = f"{checkpoint}_{label.replace(' ', '_')}"
        graph.add_node(name, _step(i), retry_policy=retry_policy)
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph


def register(run_id: str, *, thread_id: str) -> None:
    revive_lg.register_run(revive(), run_id=run_id, thread_id=thread_id, graph=GRAPH_NAME, workflow_name=WORKFLOW)
    record_checkpoints(run_id)
