"""Brokers: where the frames of an execution are sequenced, kept for replay and fanned out.

:func:`create_broker` builds the one the options name: ``memory`` (default, one process) or
``redis`` (Redis Streams, several processes; needs the ``redis`` extra).
"""

from __future__ import annotations

import importlib

from streaming_module.broker.base import GAP, Broker, Frame, Listener, RunRecord, Subscription
from streaming_module.broker.memory import InMemoryBroker
from streaming_module.config import BrokerOptions
from streaming_module.core.clock import Clock
from streaming_module.errors import BrokerError


def create_broker(options: BrokerOptions | None = None, clock: Clock | None = None) -> Broker:
    """The broker for ``options.backend``: :class:`InMemoryBroker` for ``memory``; for ``redis``
    the Redis Streams broker (raises :class:`BrokerError` when it or the ``redis`` package is
    not installed)."""
    options = options or BrokerOptions()
    if options.backend == "memory":
        return InMemoryBroker(options, clock)
    if options.backend == "redis":
        try:
            module = importlib.import_module("streaming_module.broker.redis")
            broker_class = module.RedisBroker
        except ImportError as exc:
            raise BrokerError(
                f"broker backend 'redis' is not available ({exc}); install the extra with "
                "`pip install 'streaming_module[redis]'` or use backend 'memory'",
                context={"backend": "redis"},
            ) from exc
        except AttributeError as exc:
            raise BrokerError(
                "streaming_module.broker.redis has no RedisBroker; use backend 'memory'",
                context={"backend": "redis"},
            ) from exc
        broker: Broker = broker_class(options, clock)
        return broker
    raise BrokerError(f"unknown broker backend {options.backend!r}; use 'memory' or 'redis'")


__all__ = [
    "GAP",
    "Broker",
    "BrokerError",
    "Frame",
    "InMemoryBroker",
    "Listener",
    "RunRecord",
    "Subscription",
    "create_broker",
]
