"""The owner's side of a broker reconnect: where the hosted page sends the owner."""

from __future__ import annotations

from ..errors import ReconnectProviderNotConfigured, ReconnectProviderUnreachable
from . import BrokerError, nango, scalekit


def reconnect_start(connection) -> str:
    """Open a re-authorization at the connection's broker; the URL of the broker's page for the owner.

    Nango: a reconnect session for this one connection, opened in Nango's Connect UI. Scalekit: a fresh magic
    link for the connected account. Called outside any transaction (it is a network call).
    """
    try:
        if connection.provider == "nango":
            return nango.connect_url(
                nango.reconnect_session(
                    integration_id=connection.broker_integration, connection_id=connection.broker_connection
                )
            )
        return scalekit.magic_link(connection)
    except BrokerError as exc:
        if exc.transient:
            raise ReconnectProviderUnreachable(data={"broker": connection.provider}) from None
        raise ReconnectProviderNotConfigured(data={"broker": connection.provider, "code": exc.code}) from None
