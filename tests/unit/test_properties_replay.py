"""Property-based tests of resuming: for any history of appends, evictions (by count, by age, of
a whole execution) and any ``lastSequence``, a resuming client is given exactly the frames after
it that are still held, preceded by a gap for exactly what is not: nothing skipped silently,
nothing twice, nothing out of order. On the pure ``ReplayLog`` and through the in-memory broker
with a ``FakeClock``. Deterministic: ``derandomize=True`` and a bounded ``max_examples``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streaming_module.broker.base import GAP, Frame, Subscription
from streaming_module.broker.memory import InMemoryBroker
from streaming_module.config import BrokerOptions
from streaming_module.core.clock import FakeClock
from streaming_module.core.replay import ReplayLog
from streaming_module.errors import BrokerError

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


# ============================================================================ ReplayLog

APPENDS = st.lists(
    st.tuples(st.integers(1, 3), st.sampled_from([0.0, 0.0, 0.4, 1.0, 3.0])),  # seq step, dt
    max_size=60,
)


@PROPERTY
@given(
    appends=APPENDS,
    max_entries=st.integers(1, 8),
    max_age=st.sampled_from([0.5, 2.0, 100.0]),
    after_choices=st.lists(st.integers(-2, 200), min_size=1, max_size=5),
    wait=st.sampled_from([0.0, 0.3, 5.0]),
)
def test_since_returns_exactly_what_is_held_after_any_sequence_with_the_right_gap(
    appends: list[tuple[int, float]],
    max_entries: int,
    max_age: float,
    after_choices: list[int],
    wait: float,
) -> None:
    log: ReplayLog[int] = ReplayLog(max_entries, max_age)
    sequence, now = 0, 0.0
    appended: list[tuple[int, float]] = []
    for step, dt in appends:
        sequence += step  # steps over 1: frames that were never kept (not replayable)
        now += dt
        log.append(sequence, now, sequence)
        appended.append((sequence, now))
    now += wait
    last = appended[-1][0] if appended else 0
    for raw_after in after_choices:
        after = min(max(raw_after, 0), last + 2) if raw_after >= 0 else raw_after % (last + 1)
        replay = log.since(after, now)
        # What a model says is still held: the newest max_entries, none older than max_age
        # (age is checked at every append and at this call, so an entry that fell out once
        # stays out).
        held = _model_held(appended, max_entries, max_age, now)
        assert list(log) == [s for s, _ in held]
        assert replay.items == [s for s, _ in held if s > after]
        evicted = [s for s, _ in appended if s not in {h for h, _ in held}]
        highest_evicted = max(evicted, default=0)
        assert log.evicted_through == highest_evicted
        if highest_evicted > after:
            assert replay.gap is not None
            assert (replay.gap.first, replay.gap.last) == (after + 1, highest_evicted)
            # The gap covers only what is gone: every held item comes after it.
            assert all(item > replay.gap.last for item in replay.items)
        else:
            assert replay.gap is None
        # Nothing after `after` is skipped silently: each appended sequence is replayed or
        # inside the gap.
        covered = set(replay.items)
        if replay.gap is not None:
            covered |= set(range(replay.gap.first, replay.gap.last + 1))
        assert {s for s, _ in appended if s > after} <= covered


def _model_held(
    appended: list[tuple[int, float]], max_entries: int, max_age: float, now: float
) -> list[tuple[int, float]]:
    held: list[tuple[int, float]] = []
    for sequence, at in appended:
        held.append((sequence, at))
        if len(held) > max_entries:
            held.pop(0)
        held = _drop_old(held, at - max_age)
    return _drop_old(held, now - max_age)


def _drop_old(held: list[tuple[int, float]], cutoff: float) -> list[tuple[int, float]]:
    # The log evicts from the front only: the first entry not older than the cutoff stops it.
    i = 0
    while i < len(held) and held[i][1] < cutoff:
        i += 1
    return held[i:]


# ============================================================================ the broker

EXECUTIONS = ("exec-1", "exec-2", "exec-3")

BROKER_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 2), st.booleans()),  # replayable?
        st.tuples(st.just("publish"), st.integers(0, 2), st.just(True)),
        st.tuples(st.just("publish"), st.integers(0, 2), st.just(True)),
        st.tuples(st.just("advance"), st.none(), st.sampled_from([0.1, 1.0, 4.0, 30.0])),
        st.tuples(st.just("advance"), st.none(), st.sampled_from([0.1, 1.0, 4.0, 30.0])),
        st.tuples(st.just("end"), st.integers(0, 2), st.none()),
        st.tuples(st.just("end"), st.integers(0, 2), st.none()),
        # Resume from a sequence the client could have seen: the last one, or a few before.
        st.tuples(st.just("resume"), st.integers(0, 2), st.integers(0, 4)),
        st.tuples(st.just("resume_from_start"), st.integers(0, 2), st.none()),
        st.tuples(st.just("live"), st.integers(0, 2), st.none()),
        st.tuples(st.just("leave"), st.integers(0, 9), st.none()),
    ),
    max_size=70,
)


@dataclass
class Watcher:
    """One subscription: from where it resumed, what it was given, and what it must be given."""

    execution_id: str
    after: int | None
    last_at_subscribe: int
    subscription: Subscription | None = None
    frames: list[Frame] = field(default_factory=list)
    owed: list[int] = field(default_factory=list)  # live frames published while subscribed


@PROPERTY
# Pinned: an ended one-frame execution evicted by retention, then resumed from the start (its
# tombstone must still give a gap); and a log that evicted by count under a live subscriber.
@example(
    operations=[
        ("publish", 0, True),
        ("end", 0, None),
        ("advance", None, 30.0),
        ("resume_from_start", 0, None),
        ("publish", 0, True),
    ],
    replay_max_frames=4,
    replay_max_age_ms=60_000,
    retention_after_end_ms=5000,
    max_executions=3,
)
@example(
    operations=[("live", 1, None)]
    + [("publish", 1, True)] * 5
    + [("resume", 1, 4), ("resume", 1, 1), ("resume_from_start", 1, None)],
    replay_max_frames=2,
    replay_max_age_ms=60_000,
    retention_after_end_ms=0,
    max_executions=3,
)
@given(
    operations=BROKER_OPS,
    replay_max_frames=st.integers(1, 6),
    replay_max_age_ms=st.sampled_from([2000, 60_000]),
    retention_after_end_ms=st.sampled_from([0, 5000]),
    max_executions=st.integers(1, 4),
)
def test_the_broker_resumes_any_subscriber_exactly_with_an_honest_gap(
    operations: list[tuple[str, Any, Any]],
    replay_max_frames: int,
    replay_max_age_ms: int,
    retention_after_end_ms: int,
    max_executions: int,
) -> None:
    # The broker remembers the last sequence of at most `max_executions` evicted executions
    # (tombstones). While every execution id fits in that bound, a resume is always exact;
    # beyond it an evicted execution may be forgotten entirely and its numbering restart (see
    # broker/memory.py), so only order, uniqueness and live delivery are checked there.
    exact = max_executions >= len(EXECUTIONS)
    asyncio.run(
        _broker_scenario(
            operations,
            BrokerOptions(
                replay_max_frames=replay_max_frames,
                replay_max_age_ms=replay_max_age_ms,
                retention_after_end_ms=retention_after_end_ms,
                max_executions=max_executions,
            ),
            exact=exact,
        )
    )


async def _broker_scenario(
    operations: list[tuple[str, Any, Any]], options: BrokerOptions, *, exact: bool
) -> None:
    clock = FakeClock()
    broker = InMemoryBroker(options, clock)
    published: dict[str, list[tuple[int, bool]]] = {e: [] for e in EXECUTIONS}
    watchers: list[Watcher] = []

    async def watch(execution_id: str, after: int | None) -> None:
        watcher = Watcher(execution_id, after, broker.last_sequence(execution_id))
        try:
            watcher.subscription = await broker.subscribe(
                execution_id, watcher.frames.append, last_sequence=after
            )
        except BrokerError as refused:  # max_executions is a hard bound: all of them watched
            assert refused.code == "too_many_executions"  # (a tenth is kept for publishers)
            bound = options.max_executions
            assert broker.execution_count >= bound - bound // 10
            return
        watchers.append(watcher)

    for op, target, argument in operations:
        if op == "publish":
            execution_id = EXECUTIONS[target]
            try:
                frame = broker.publish(execution_id, "token", {"n": 1}, replayable=argument)
            except BrokerError as refused:  # full of watched executions that have frames
                assert refused.code == "too_many_executions"
                assert broker.execution_count == options.max_executions
                continue
            numbers = published[execution_id]
            if exact:
                # Sequence numbers rise by one per frame of the execution, and never restart.
                assert frame.sequence == (numbers[-1][0] + 1 if numbers else 1)
            elif numbers and frame.sequence <= numbers[-1][0]:
                numbers.clear()  # forgotten past the tombstone bound: a new numbering
            numbers.append((frame.sequence, argument))
            for watcher in watchers:
                live = watcher.subscription is not None and not watcher.subscription.closed
                if watcher.execution_id == execution_id and live:
                    watcher.owed.append(frame.sequence)
        elif op == "advance":
            clock.advance(argument)
        elif op == "end":
            broker.end_execution(EXECUTIONS[target])
        elif op == "resume":
            execution_id = EXECUTIONS[target]
            await watch(execution_id, max(0, broker.last_sequence(execution_id) - argument))
        elif op == "resume_from_start":
            await watch(EXECUTIONS[target], 0)
        elif op == "live":
            await watch(EXECUTIONS[target], None)
        elif watchers:  # leave
            watcher = watchers[target % len(watchers)]
            if watcher.subscription is not None:
                watcher.subscription.close()

    for watcher in watchers:
        _check_watcher(watcher, published[watcher.execution_id], exact=exact)
    await broker.aclose()


def _check_watcher(watcher: Watcher, published: list[tuple[int, bool]], *, exact: bool) -> None:
    frames = watcher.frames
    gaps = [f for f in frames if f.type == GAP]
    data = [f for f in frames if f.type != GAP]
    sequences = [f.sequence for f in data]
    # In order, no duplicate.
    assert sequences == sorted(set(sequences)), sequences
    if watcher.after is None:
        # Live only: exactly the frames published while subscribed, replayable or not.
        assert not gaps
        assert sequences == watcher.owed
        return
    after = watcher.after
    # At most one gap, first, starting right after lastSequence, ending before any frame.
    assert len(gaps) <= 1
    gap_last = after
    if gaps:
        assert frames[0] is gaps[0]
        gap = gaps[0].payload
        assert gap["from"] == after + 1
        assert after + 1 <= gap["to"] <= watcher.last_at_subscribe
        gap_last = gap["to"]
        if exact:
            # Honest: something the client did not get was really there (not invented).
            assert any(after < s <= gap_last for s, _ in published)
    assert all(s > gap_last for s in sequences)
    # Live frames come after the replay, every one of them.
    assert [s for s in sequences if s > watcher.last_at_subscribe] == watcher.owed
    if not exact:
        return
    # Complete: every replayable frame up to the subscription, after the gap, is replayed ...
    replayed = [s for s in sequences if s <= watcher.last_at_subscribe]
    expected_replay = [
        s for s, replayable in published if replayable and gap_last < s <= watcher.last_at_subscribe
    ]
    assert replayed == expected_replay
