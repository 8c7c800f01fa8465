"""Run records and health of the in-memory broker; the broker options that configure Redis."""

from __future__ import annotations

import pytest

from streaming_module.broker.base import RunRecord
from streaming_module.broker.memory import InMemoryBroker
from streaming_module.config import BrokerOptions, mask_url, parse_options
from streaming_module.errors import StreamingConfigError


async def test_the_memory_broker_keeps_run_records_bounded_like_executions() -> None:
    broker = InMemoryBroker(BrokerOptions(max_executions=3))
    assert await broker.load_run("nope") is None
    record = RunRecord("a", "started", workflow="wf", updated="t0")
    await broker.save_run(record)
    record.status = "changed by the caller"  # the broker kept its own copy
    loaded = await broker.load_run("a")
    assert loaded == RunRecord("a", "started", workflow="wf", updated="t0")
    assert loaded is not None
    loaded.status = "changed again"
    assert (await broker.load_run("a")) == RunRecord("a", "started", workflow="wf", updated="t0")
    await broker.save_run(RunRecord("a", "completed", "wf", {"content": "x"}, None, "t1"))
    for name in ("b", "c", "d"):
        await broker.save_run(RunRecord(name, "pending"))
    assert await broker.load_run("a") is None  # least recently saved, dropped at the bound
    assert [await broker.load_run(n) is not None for n in ("b", "c", "d")] == [True] * 3
    await broker.aclose()
    assert await broker.load_run("b") is None


async def test_the_memory_broker_reports_healthy() -> None:
    broker = InMemoryBroker()
    broker.publish("e", "token", {"content": "x"})
    assert await broker.health() == {"backend": "memory", "status": "ok", "executions": 1}
    assert await broker.fetch_last_sequence("e") == 1


def test_redis_url_may_be_a_list() -> None:
    options = BrokerOptions(backend="redis", redis_url=["redis://a:6379/0", "rediss://b/1"])
    assert options.redis_urls == ["redis://a:6379/0", "rediss://b/1"]
    assert BrokerOptions(backend="redis", redis_url="unix:///tmp/r.sock").redis_urls == [
        "unix:///tmp/r.sock"
    ]
    assert BrokerOptions().redis_urls == []
    assert BrokerOptions().producer_lease_ms <= 10_000


@pytest.mark.parametrize(
    "value, message",
    [
        ([], "at least one Redis URL"),
        (["redis://:hunter2@a/0", "http://:hunter2@b/0"], "is not a Redis URL"),
        (["redis://:hunter2@a/0", "redis://:hunter2@a/0"], "listed twice"),
        ("mysql://:hunter2@db/0", "is not a Redis URL"),
    ],
)
def test_bad_redis_urls_are_explained_with_passwords_masked(value: object, message: str) -> None:
    with pytest.raises(StreamingConfigError) as caught:
        parse_options(BrokerOptions, {"backend": "redis", "redis_url": value}, what="broker")
    text = str(caught.value)
    assert message in text and "hunter2" not in text


def test_key_prefix_may_not_break_the_hash_tags() -> None:
    with pytest.raises(StreamingConfigError, match="key_prefix"):
        parse_options(BrokerOptions, {"key_prefix": "app{x}"}, what="broker")


def test_mask_url() -> None:
    assert mask_url("redis://user:s3cret@h:6380/2") == "redis://user:***@h:6380/2"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"
