"""What the lab's scenarios are, and the world they run in.

A ``LabWorld`` is what a scenario needs around Revive: the provider stand-in (mail
API and, for ``entra``/``auth0``, the provider's token endpoint), the lab identity
provider process, Revive's HTTP address, a worker API key, and a mailbox directory
where Revive's reconnect e-mails land (Django's file e-mail backend, so it works
whichever process sends them). ``recovery_lab`` builds one on the embedded default;
the PostgreSQL tests build one around pytest-django's live server and a real Celery
worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .idp.driver import LabIdp
from .nango_standin import NangoStandIn
from .processes import Pidfile
from .provider_standin import ProviderStandIn
from .scalekit_standin import ScalekitStandIn
from .token_vault_standin import TokenVaultStandIn

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {
    "revoked": "A refresh token is revoked",
    "wrong-account": "A different account reconnects",
    "timeout": "The worker times out after a mutation",
    "worker-lost": "The original worker disappears",
}
# Scenarios beyond the product page's four, run by name only, each for the provider it belongs to.
EXTRA_SCENARIOS = {
    "cae": "A resource API revokes the session mid-run (Entra continuous access evaluation)",
}
SCENARIO_PROVIDERS = {"cae": ("entra",)}
ALL_SCENARIOS = {**SCENARIOS, **EXTRA_SCENARIOS}
PROVIDERS = (
    "entra",
    "oidc",
    "auth0",
    "auth0-token-vault",
    "nango",
    "scalekit",
)  # the first is the default (the product page's)
TOKEN_VAULT = "auth0-token-vault"
VAULT_CONNECTION = "google-oauth2"
VAULT_USER = "auth0|ada"


@dataclass
class LabWorld:
    revive_url: str
    api_key: str = field(repr=False)
    idp: LabIdp
    standin: ProviderStandIn
    mailbox: Path
    var_dir: Path
    worker_env: dict[str, str] = field(default_factory=dict, repr=False)
    """Environment of lab worker processes (scenario ``worker-lost``)."""
    vault: TokenVaultStandIn | None = None
    """Auth0 Token Vault and My Account API stand-in (provider ``auth0-token-vault``)."""
    children: Pidfile | None = field(default=None, repr=False)
    """Where the session records the processes it starts (``lab.session.reap_leftovers``)."""
    runtime_server: object | None = None
    """The runtime's server the lab started (``lab.runtimes``), for runtimes other than LangGraph."""
    nango: NangoStandIn | None = None
    """The Nango stand-in, for ``--provider nango`` (the broker holds the grant)."""
    scalekit: ScalekitStandIn | None = None
    """The Scalekit stand-in, for ``--provider scalekit``."""
    on_run: Callable[[str], None] | None = field(default=None, repr=False)
    """Told each scenario's run id as the scenario starts (the ``/lab/`` page finds its case by it)."""

    def broker_env(self) -> dict[str, str]:
        env = {"REVIVE_LAB_NANGO_SECRET_KEY": self.nango.secret_key} if self.nango else {}
        if self.scalekit:
            env.update(
                REVIVE_LAB_SCALEKIT_CLIENT_ID=self.scalekit.client_id,
                REVIVE_LAB_SCALEKIT_CLIENT_SECRET=self.scalekit.client_secret,
            )
        return env

    @property
    def callback_url(self) -> str:
        from reauth.provider_settings import LAB_PROVIDER_ID

        return f"{self.revive_url}/accounts/oidc/{LAB_PROVIDER_ID}/login/callback/"

    def export_env(self) -> None:
        """What the briefing's worker code reads: Revive's address and key, the token client's credentials."""
        os.environ.update(
            REVIVE_LAB_URL=self.revive_url,
            REVIVE_LAB_API_KEY=self.api_key,
            REVIVE_LAB_IDP_CLIENT_ID=self.idp.client_id,
            REVIVE_LAB_IDP_CLIENT_SECRET=self.idp.client_secret,
            **self._vault_env(),
            **self.broker_env(),
        )

    def _vault_env(self) -> dict[str, str]:
        if self.vault is None:
            return {}
        return {
            "REVIVE_LAB_VAULT_CLIENT_ID": self.vault.client_id,
            "REVIVE_LAB_VAULT_CLIENT_SECRET": self.vault.client_secret,
        }

    def worker_environment(self) -> dict[str, str]:
        return {
            **os.environ,
            **self.worker_env,
            "REVIVE_LAB_URL": self.revive_url,
            "REVIVE_LAB_API_KEY": self.api_key,
            "REVIVE_LAB_IDP_CLIENT_ID": self.idp.client_id,
            "REVIVE_LAB_IDP_CLIENT_SECRET": self.idp.client_secret,
            "PYTHONUNBUFFERED": "1",
            **self._vault_env(),
            **self.broker_env(),
        }


def token_vault_settings(vault: TokenVaultStandIn) -> dict:
    """``REVIVE_AUTH0_TOKEN_VAULT`` pointing at the stand-in, its upstream ("Google") behind the connection."""
    return {
        "domain": vault.url,
        "client_id": vault.client_id,
        "client_secret": vault.client_secret,
        "connections": {
            VAULT_CONNECTION: {
                "userinfo_url": f"{vault.url}/upstream/userinfo",
                "issuer": vault.upstream_issuer,
                "scopes": ["openid", "email"],
            }
        },
    }


def socialaccount_providers_for(idp: LabIdp) -> dict:
    """Revive's sign-in apps for the lab: the lab provider plays Entra (any tenant), an OIDC issuer and Auth0."""
    from reauth.provider_settings import socialaccount_providers

    providers = socialaccount_providers(
        lab_idp_url=idp.url, lab_client_id=idp.client_id, lab_client_secret=idp.client_secret
    )
    for app in providers["openid_connect"]["APPS"]:
        serves = app["settings"]["revive"]["serves"]
        serves.append({"provider": "auth0", "issuer": idp.issuer})
        if idp.issuer.rstrip("/") != idp.url.rstrip("/"):
            serves.append({"provider": "oidc", "issuer": idp.issuer})
    return providers
