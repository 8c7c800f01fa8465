"""The pure token logic (filter, processor, batching, formats) and the rate meter, with plain
values and a fake clock."""

from __future__ import annotations

import re
from typing import Any

import pytest

from streaming_module.config import StreamTokenOptions, TokenFilterOptions
from streaming_module.core.clock import FakeClock
from streaming_module.core.rate import RateMeter
from streaming_module.core.token_buffer import TokenBuffer, compile_filter


def make(**config: Any) -> TokenBuffer:
    return TokenBuffer(StreamTokenOptions.model_validate(config), default_buffer_size=10)


# ---------------------------------------------------------------------------- filter


def test_no_filter_rules_means_no_predicate() -> None:
    assert compile_filter(None) is None
    assert compile_filter(TokenFilterOptions()) is None


@pytest.mark.parametrize(
    ("rules", "kept"),
    [
        ({"min_length": 2}, ["ab", "abc", "  "]),
        ({"max_length": 2}, ["", "a", "ab", " ", "  "]),
        ({"exclude_whitespace": True}, ["a", "ab", "abc"]),
        ({"pattern": r"^[a-z]+$"}, ["a", "ab", "abc"]),
        ({"pattern": re.compile("b")}, ["ab", "abc"]),
        ({"minLength": 1, "excludeWhitespace": True, "maxLength": 2}, ["a", "ab"]),
        ({"min_length": 1, "pattern": "c", "exclude_whitespace": True}, ["abc"]),
    ],
)
def test_filter_rules_keep_only_matching_tokens(rules: dict[str, Any], kept: list[str]) -> None:
    keep = compile_filter(TokenFilterOptions.model_validate(rules))
    assert keep is not None
    assert [t for t in ["", "a", "ab", "abc", " ", "  "] if keep(t)] == kept


def test_filter_drops_before_buffering_and_counts_dropped() -> None:
    buf = make(filter={"exclude_whitespace": True, "min_length": 2})
    results = [buf.offer(t) for t in ["Hello", " ", "a", "World", "\n"]]
    assert results == [1, 0, 0, 2, 0]
    assert buf.tokens == ["Hello", "World"]
    assert (buf.tokens_in, buf.tokens_dropped) == (5, 3)


def test_disabled_stream_drops_every_token() -> None:
    buf = make(enabled=False)
    assert buf.offer("a") == 0
    assert buf.drain() == []
    assert buf.counters().tokens_dropped == 1


# ---------------------------------------------------------------------------- processor


def test_processor_sees_only_tokens_that_passed_the_raw_filter() -> None:
    seen: list[tuple[str, Any]] = []

    def shout(token: str, metadata: dict[str, Any] | None) -> str:
        seen.append((token, metadata))
        return token.upper() + " "  # the output is not filtered again

    buf = make(processor=shout, filter={"exclude_whitespace": True})
    buf.offer("hi", {"n": 1})
    buf.offer("  ")
    buf.offer("yo")
    assert seen == [("hi", {"n": 1}), ("yo", None)]
    assert buf.drain()[0].data.content == "HI YO "


def test_processor_returning_a_non_string_is_a_type_error() -> None:
    buf = make(processor=lambda token, metadata: 42)
    with pytest.raises(TypeError, match="must return a str"):
        buf.offer("a")
    assert buf.pending == 0


# ---------------------------------------------------------------------------- batching, formats


def test_a_drain_of_25_tokens_with_batch_size_10_gives_10_10_5() -> None:
    buf = make(batch_size=10, buffer_size=100)
    tokens = [f"t{i} " for i in range(25)]
    for t in tokens:
        buf.offer(t)
    batches = buf.drain()
    assert [b.token_count for b in batches] == [10, 10, 5]
    assert [b.data.index for b in batches] == [0, 10, 20]
    assert [b.data.total_tokens for b in batches] == [10, 20, 25]
    assert "".join(b.data.content for b in batches) == "".join(tokens)
    assert buf.counters().updates_emitted == 3
    assert buf.counters().tokens_out == 25


def test_index_and_total_carry_on_across_drains() -> None:
    buf = make()
    for t in "abc":
        buf.offer(t)
    first = buf.drain()
    for t in "de":
        buf.offer(t)
    second = buf.drain()
    assert (first[0].data.index, first[0].data.total_tokens) == (0, 3)
    assert (second[0].data.index, second[0].data.total_tokens) == (3, 5)
    assert buf.drain() == []


def test_text_format_has_content_only() -> None:
    buf = make(format="text", include_metadata=False)
    buf.offer("Hel", {"a": 1})
    buf.offer("lo")
    (batch,) = buf.drain()
    assert batch.data.content == "Hello"
    assert batch.data.tokens is None and batch.data.role is None
    assert batch.extra is None


def test_json_format_adds_the_token_list() -> None:
    buf = make(format="json")
    buf.offer("Hel")
    buf.offer("lo")
    (batch,) = buf.drain()
    assert (batch.data.content, batch.data.tokens, batch.data.role) == (
        "Hello",
        ["Hel", "lo"],
        None,
    )


def test_structured_format_adds_role_and_per_token_metadata() -> None:
    buf = make(format="structured", batch_size=2)
    buf.offer("a", {"logprob": -0.1})
    buf.offer("b")
    buf.offer("c", {"logprob": -2.0})
    first, second = buf.drain()
    assert first.data.role == "assistant" and first.data.tokens == ["a", "b"]
    assert first.extra == {"token_metadata": [{"logprob": -0.1}, {}]}
    assert second.data.content == "c"
    assert second.extra == {"token_metadata": [{"logprob": -2.0}]}


def test_include_metadata_merges_in_token_order_without_reserved_keys() -> None:
    buf = make(include_metadata=True)
    buf.offer("a", {"model": "m1", "step": 1, "node_id": "spoof", "timestamp": 0})
    buf.offer("b", {"step": 2})
    (batch,) = buf.drain()
    assert batch.extra == {"model": "m1", "step": 2}


def test_configure_applies_to_later_tokens_and_keeps_counters() -> None:
    buf = make(format="text")
    buf.offer("a")
    buf.drain()
    buf.configure(StreamTokenOptions(format="json", buffer_size=3), default_buffer_size=10)
    buf.offer("b")
    (batch,) = buf.drain()
    assert batch.data.tokens == ["b"] and batch.data.index == 1
    assert buf.buffer_size == 3


# ---------------------------------------------------------------------------- rate meter


def test_rate_is_the_current_rate_not_a_lifetime_average() -> None:
    clock = FakeClock()
    meter = RateMeter(clock, window=1.0)
    for _ in range(10):
        meter.add(100)
        clock.advance(0.1)
    assert meter.rate() == pytest.approx(1000, rel=0.15)
    clock.advance(2.0)
    assert meter.rate() == 0.0
    assert meter.total == 1000


def test_rate_at_start_is_taken_over_the_time_observed() -> None:
    clock = FakeClock()
    meter = RateMeter(clock, window=1.0, resolution=10)
    meter.add(50)
    clock.advance(0.5)
    meter.add(50)
    assert meter.rate() == pytest.approx(200)


def test_rate_forgets_counts_older_than_the_window() -> None:
    clock = FakeClock()
    meter = RateMeter(clock, window=1.0, resolution=10)
    meter.add(1000)
    clock.advance(0.95)
    meter.add(10)
    assert meter.count() == 1010
    clock.advance(0.2)
    assert meter.count() == 10


def test_rate_meter_rejects_nonsense() -> None:
    for window in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="window"):
            RateMeter(FakeClock(), window=window)
    with pytest.raises(ValueError, match="resolution"):
        RateMeter(FakeClock(), resolution=0)
