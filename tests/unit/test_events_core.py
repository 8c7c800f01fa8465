"""The pure event rules: types, priorities, filter criteria, grouping, batching, transforming."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from streaming_module.config import EventFilterCriteria, parse_options
from streaming_module.core.events import (
    Batcher,
    EventFilter,
    aggregate_for_execution,
    check_priority,
    chunk,
    coerce_event_type,
    coerce_event_types,
    default_priority,
    event_priority,
    filter_updates,
    group_by_type,
    merge_transformed,
)
from streaming_module.errors import EventStreamingError, StreamingConfigError
from streaming_module.types import StreamEventType, StreamMetadata, StreamUpdate

T0 = datetime(2026, 1, 1, tzinfo=UTC)
E = StreamEventType


def ev(
    kind: StreamEventType,
    *,
    execution_id: str = "exec-1",
    node_id: str | None = "node-a",
    seconds: float = 0,
    seq: int = 1,
    data: Any = None,
    **extra: Any,
) -> StreamUpdate[Any]:
    meta = StreamMetadata(T0 + timedelta(seconds=seconds), seq, execution_id, node_id, **extra)
    return StreamUpdate(kind, data, meta)


def criteria(**kwargs: Any) -> EventFilterCriteria:
    return parse_options(EventFilterCriteria, kwargs, what="criteria")


# --------------------------------------------------------------------------- types and priorities


def test_event_types_are_accepted_as_members_values_or_names() -> None:
    assert coerce_event_type(E.TOOL_START) is E.TOOL_START
    assert coerce_event_type("tool_start") is E.TOOL_START
    assert coerce_event_type("TOOL_START") is E.TOOL_START
    assert coerce_event_types(["token", E.ERROR]) == {E.TOKEN, E.ERROR}
    assert coerce_event_types("debug") == {E.DEBUG}


def test_an_unknown_event_type_names_the_valid_ones() -> None:
    with pytest.raises(EventStreamingError) as info:
        coerce_event_type("tool_begin")
    assert "'tool_begin'" in info.value.message
    assert "'tool_start'" in info.value.message
    assert info.value.code == "unknown_event_type"
    with pytest.raises(EventStreamingError):
        coerce_event_type(42)  # type: ignore[arg-type]


def test_default_priorities_follow_the_event_type() -> None:
    assert default_priority(E.ERROR) == "high"
    assert default_priority(E.DEBUG) == "low"
    assert default_priority(E.NODE_START) == "medium"
    assert event_priority(ev(E.ERROR)) == "high"
    assert event_priority(ev(E.NODE_START, priority="critical")) == "critical"
    assert event_priority(StreamUpdate(E.DEBUG, None)) == "low"


def test_a_bad_priority_is_refused_with_the_valid_levels() -> None:
    assert check_priority("critical") == "critical"
    with pytest.raises(EventStreamingError, match=r"'urgent'.*'low', 'medium', 'high'"):
        check_priority("urgent")


# --------------------------------------------------------------------------- filtering


def test_event_types_keep_only_those_types() -> None:
    events = [ev(E.TOOL_START), ev(E.PROGRESS), ev(E.VALUES)]
    kept = filter_updates(events, criteria(event_types=["progress", "values"]))
    assert [e.type for e in kept] == [E.PROGRESS, E.VALUES]


def test_exclude_types_drop_those_types() -> None:
    events = [ev(E.TOOL_START), ev(E.DEBUG), ev(E.VALUES)]
    kept = filter_updates(events, criteria(excludeTypes=[E.DEBUG, E.VALUES]))
    assert [e.type for e in kept] == [E.TOOL_START]


def test_include_debug_false_drops_debug_even_when_listed() -> None:
    events = [ev(E.DEBUG), ev(E.NODE_START)]
    assert filter_updates(events, criteria(include_debug=False, event_types=["debug"])) == []
    assert filter_updates(events, criteria()) == events  # debug is included by default


def test_min_priority_keeps_events_at_or_above_the_level() -> None:
    low = ev(E.DEBUG)
    medium = ev(E.NODE_START)
    high = ev(E.ERROR)
    critical = ev(E.VALUES, priority="critical")
    events = [low, medium, high, critical]
    assert filter_updates(events, criteria(min_priority="low")) == events
    assert filter_updates(events, criteria(minPriority="medium")) == [medium, high, critical]
    assert filter_updates(events, criteria(min_priority="high")) == [high, critical]
    assert filter_updates(events, criteria(min_priority="critical")) == [critical]


def test_node_and_execution_ids_select_where_events_come_from() -> None:
    a = ev(E.NODE_START, node_id="a")
    b = ev(E.NODE_START, node_id="b", execution_id="exec-2")
    no_node = ev(E.VALUES, node_id=None)
    no_meta = StreamUpdate(E.VALUES, None)
    events = [a, b, no_node, no_meta]
    assert filter_updates(events, criteria(node_ids=["b"])) == [b]
    assert filter_updates(events, criteria(execution_ids=["exec-1"])) == [a, no_node]


def test_a_time_range_keeps_events_inside_it_inclusive() -> None:
    events = [ev(E.VALUES, seconds=s) for s in (0, 10, 20, 30)]
    kept = filter_updates(
        events,
        criteria(start_time=T0 + timedelta(seconds=10), end_time="2026-01-01T00:00:20Z"),
    )
    assert [e.metadata.timestamp.second for e in kept if e.metadata] == [10, 20]
    assert filter_updates([StreamUpdate(E.VALUES, None)], criteria(since=T0)) == []


def test_every_rule_must_hold_together() -> None:
    f = EventFilter(
        criteria(event_types=["progress", "error"], min_priority="high", node_ids=["a"])
    )
    assert f(ev(E.ERROR, node_id="a"))
    assert not f(ev(E.ERROR, node_id="b"))
    assert not f(ev(E.PROGRESS, node_id="a"))  # medium
    assert f(ev(E.PROGRESS, node_id="a", priority="high"))


def test_bad_criteria_name_the_bad_key() -> None:
    with pytest.raises(StreamingConfigError, match="eventTypez"):
        criteria(eventTypez=["token"])
    with pytest.raises(StreamingConfigError, match="min_priority"):
        criteria(min_priority="urgent")
    with pytest.raises(StreamingConfigError, match="ISO-8601"):
        criteria(start_time="yesterday")


# --------------------------------------------------------------------------- grouping, batching


def test_grouping_keeps_first_seen_type_order_and_arrival_order() -> None:
    events = [ev(E.TOKEN, seq=1), ev(E.ERROR, seq=2), ev(E.TOKEN, seq=3)]
    groups = group_by_type(events)
    assert list(groups) == [E.TOKEN, E.ERROR]
    assert [e.metadata.sequence_number for e in groups[E.TOKEN] if e.metadata] == [1, 3]


def test_aggregating_one_execution_leaves_the_others_out() -> None:
    events = [
        ev(E.NODE_START, execution_id="x"),
        ev(E.NODE_START, execution_id="y"),
        ev(E.NODE_COMPLETE, execution_id="x"),
        StreamUpdate(E.VALUES, None),
    ]
    out = aggregate_for_execution("x", events)
    assert {k: len(v) for k, v in out.items()} == {E.NODE_START: 1, E.NODE_COMPLETE: 1}


def test_chunk_gives_every_item_once_in_order() -> None:
    assert list(chunk(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(chunk([], 3)) == []
    with pytest.raises(ValueError):
        list(chunk([1], 0))


def test_batcher_releases_full_batches_and_drains_the_rest() -> None:
    b = Batcher(2)
    assert b.add(1) is None
    assert len(b) == 1
    assert b.add(2) == [1, 2]
    assert b.drain() is None
    b.add(3)
    assert b.drain() == [3]
    with pytest.raises(ValueError):
        Batcher(0)


# --------------------------------------------------------------------------- transforming


def test_a_spread_dict_like_the_manual_becomes_a_new_enriched_update() -> None:
    original = ev(E.TOOL_START, data={"tool": "search"}, seq=4)
    out = merge_transformed(original, {**original, "enriched": True})
    assert out is not original
    assert out.type is E.TOOL_START
    assert out.data == {"tool": "search"}
    assert out.metadata is not None
    assert out.metadata.enriched is True
    assert out.metadata.sequence_number == 4
    assert "enriched" not in original.metadata.extra  # type: ignore[union-attr]


def test_a_dict_may_set_type_data_metadata_fields_and_an_iso_timestamp() -> None:
    original = ev(E.TOOL_START)
    out = merge_transformed(
        original,
        {
            "type": "tool_complete",
            "data": 7,
            "timestamp": "2026-02-01T00:00:00Z",
            "node_id": "other",
            "metadata": {"agent_type": "writer"},
        },
    )
    assert out.type is E.TOOL_COMPLETE
    assert out.data == 7
    assert out.metadata is not None
    assert out.metadata.timestamp == datetime(2026, 2, 1, tzinfo=UTC)
    assert out.metadata.node_id == "other"
    assert out.metadata.agent_type == "writer"
    assert out.metadata.execution_id == "exec-1"


def test_a_returned_update_is_used_as_is_and_other_results_are_refused() -> None:
    original = ev(E.VALUES)
    replacement = ev(E.UPDATES)
    assert merge_transformed(original, replacement) is replacement
    with pytest.raises(EventStreamingError, match="StreamUpdate or a dict"):
        merge_transformed(original, None)
    with pytest.raises(EventStreamingError, match="metadata of type int"):
        merge_transformed(original, {"metadata": 3})
    with pytest.raises(EventStreamingError, match="timestamp"):
        merge_transformed(original, {"timestamp": "soon"})
    with pytest.raises(EventStreamingError, match="needs metadata"):
        merge_transformed(StreamUpdate(E.VALUES, None), {"enriched": True})
    assert merge_transformed(StreamUpdate(E.VALUES, 1), {"data": 2}).data == 2
