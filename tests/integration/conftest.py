"""Fixtures of the Redis integration tests (see ``tests/redis_support.py``).

- ``redis_url``: ``REDIS_URL`` (default the machine's ``redis://127.0.0.1:6379/0``) when it
  answers PING, else a private ``redis-server`` for the session, else the Redis tests are skipped.
- ``prefix``: a fresh ``key_prefix`` per test; its keys are deleted afterwards.
- ``make_broker``: builds :class:`RedisBroker` instances ("processes") on that Redis and prefix,
  closed after the test.
- ``private_redis``: a private server for one test, for faults (pause, restart, stop).
- ``three_redis``: three private servers for the session (sharding).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from streaming_module.config import BrokerOptions

if TYPE_CHECKING:  # the redis package is imported only by the tests that use these fixtures
    from redis_support import RedisServer
    from streaming_module.broker.redis import RedisBroker

BrokerFactory = Callable[..., "RedisBroker"]


def _private() -> RedisServer:
    pytest.importorskip("redis")
    from redis_support import RedisServer

    try:
        return RedisServer().start()
    except RuntimeError as exc:
        pytest.skip(f"cannot start a private redis-server: {exc}")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    pytest.importorskip("redis")
    from redis_support import answers

    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    if answers(url):
        yield url
        return
    server = _private()
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    from redis_support import delete_prefix

    key_prefix = f"smtest:{uuid.uuid4().hex[:10]}"
    yield key_prefix
    delete_prefix(redis_url, key_prefix)


@pytest.fixture
async def make_broker(redis_url: str, prefix: str) -> AsyncIterator[BrokerFactory]:
    from streaming_module.broker.redis import RedisBroker

    made: list[RedisBroker] = []

    def make(
        url: str | list[str] | None = None, *, options: dict[str, Any] | None = None, **kw: Any
    ) -> RedisBroker:
        opts = BrokerOptions(
            backend="redis", redis_url=url or redis_url, key_prefix=prefix, **(options or {})
        )
        broker = RedisBroker(opts, **kw)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.aclose()


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    server = _private()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def three_redis() -> Iterator[list[RedisServer]]:
    servers: list[RedisServer] = []
    try:
        for _ in range(3):
            servers.append(_private())
        yield servers
    finally:
        for server in servers:
            server.close()
