"""Celery's Redis transport, with the one repair that lets a worker outlive a Redis restart (Celery 5.7, kombu 5.7).

When the broker connection breaks, Celery 5.7's consumer first collects the connection (its transport is torn
down: ``transport.client`` becomes None) and then closes it. Closing the channel restores the messages the worker
holds unacknowledged -- tasks waiting for their countdown (every retry with backoff), late-acknowledged tasks --
and that needs a new Redis client, built from ``transport.client.hostname``: ``AttributeError``. Celery treats the
AttributeError as unrecoverable and the worker exits ("Unrecoverable error: AttributeError ... 'hostname'").

Here that state raises the connection error it stands for instead -- exactly what the restore raises when the
transport is intact and Redis is down -- which kombu ignores while closing, and the worker reconnects. The
messages stay in Redis's unacknowledged index, from which the transport restores them after its visibility
timeout (and Revive's sweep re-dispatches recovery work before that).

Selected by ``CELERY_BROKER_TRANSPORT`` in the settings; the broker URL stays ``redis://...``.
"""

from __future__ import annotations

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    def _connparams(self, asynchronous: bool = False) -> dict:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection was closed; Redis is unreachable")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel
