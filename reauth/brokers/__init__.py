"""Connections whose grant a broker holds (Nango, Scalekit): custody stays with the broker.

Revive keeps the broker's references and the upstream identity the connection was recorded with, never a
token. The broker tells Revive when a grant dies (Nango's signed auth webhook, Scalekit's connected-account
status), the owner reconnects through the broker's own UI, and Revive proves the identity itself from what
the broker then holds (``identity``) before the usual completion advances the generation
(``reauth.services.reconnect_request_complete``).
"""


class BrokerError(Exception):
    """A broker answered with an error (``code`` is the broker's own when it gave one), or could not be reached."""

    broker = "broker"

    def __init__(self, status: int | None, code: str = "", message: str = "") -> None:
        self.status, self.code, self.message = status, code, message
        super().__init__(f"{self.broker} {status} {code}: {message}"[:300])

    @property
    def transient(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500
