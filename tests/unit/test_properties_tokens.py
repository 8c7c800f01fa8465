"""Property-based tests of token buffering: under any interleaving of tokens, flushes, timers,
re-configurations and closes, across several streams at once, no token is lost, duplicated or
reordered, and each leaves within its flush interval.

Two levels: the pure ``TokenBuffer`` (a state machine against a plain list model), and the
``TokenStreamingService`` driven through a ``FakeClock`` with subscribers at its three levels
(node, execution, global). Deterministic: ``derandomize=True`` and a bounded ``max_examples``.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from streaming_module.config import StreamTokenOptions
from streaming_module.core.clock import FakeClock
from streaming_module.core.token_buffer import TokenBuffer
from streaming_module.errors import TokenStreamingError
from streaming_module.services.token_streaming import TokenStreamingService
from streaming_module.types import StreamUpdate, TokenData

PROPERTY = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

TOKENS = st.sampled_from(["a", "bb", " ", "", "\n", "ccc", "d:e", "é", "  x "])


def _shout(token: str, metadata: dict[str, Any] | None) -> str:
    return token.upper() + "!"


# Stream configs the tests switch between. `accepts` / `process` model filter and processor.
CONFIGS: list[dict[str, Any]] = [
    {"buffer_size": 3, "flush_interval": 50},
    {"buffer_size": 1},
    {"buffer_size": 5, "batch_size": 2, "flush_interval": 0, "format": "json"},
    {
        "buffer_size": 4,
        "flush_interval": 20,
        "filter": {"exclude_whitespace": True},
        "processor": _shout,
        "format": "structured",
    },
    {"buffer_size": 6, "batch_size": 4, "flush_interval": 100, "filter": {"min_length": 2}},
]


def _expected(config: dict[str, Any], token: str) -> str | None:
    """What a stream with ``config`` turns ``token`` into; ``None`` when it drops it."""
    rules = config.get("filter", {})
    if rules.get("exclude_whitespace") and not token.strip():
        return None
    if len(token) < rules.get("min_length", 0):
        return None
    processor = config.get("processor")
    return processor(token, None) if processor is not None else token


# ============================================================================ TokenBuffer


class TokenBufferMachine(RuleBasedStateMachine):
    """The pure buffer against a model: a list of what went in, and what came out."""

    def __init__(self) -> None:
        super().__init__()
        self.config_index = 0
        self.buffer = TokenBuffer(StreamTokenOptions(**CONFIGS[0]), default_buffer_size=50)
        self.accepted: list[str] = []  # every token the model says must come out, in order
        self.pending = 0  # of those, how many are still buffered
        self.emitted: list[str] = []
        self.next_index = 0
        self.offered = 0
        self.dropped = 0

    @rule(token=TOKENS)
    def offer(self, token: str) -> None:
        config = CONFIGS[self.config_index]
        buffered = self.buffer.offer(token, {"at": self.offered})
        self.offered += 1
        expected = _expected(config, token)
        if expected is None:
            self.dropped += 1
            assert buffered == 0
        else:
            self.accepted.append(expected)
            self.pending += 1
            assert buffered == self.pending

    @rule()
    def drain(self) -> None:
        batches = self.buffer.drain()
        config = CONFIGS[self.config_index]
        batch_size = config.get("batch_size")
        drained: list[str] = []
        for batch in batches:
            data = batch.data
            assert data.index == self.next_index
            assert data.total_tokens == self.next_index + batch.token_count
            self.next_index = data.total_tokens
            assert 1 <= batch.token_count <= (batch_size or self.pending)
            if config.get("format", "text") != "text":
                assert data.tokens is not None and "".join(data.tokens) == data.content
                assert len(data.tokens) == batch.token_count
            drained.append(data.content)
        assert "".join(drained) == "".join(self.accepted[len(self.accepted) - self.pending :])
        self.emitted.extend(drained)
        self.pending = 0

    @precondition(lambda self: self.pending == 0)
    @rule(index=st.integers(0, len(CONFIGS) - 1))
    def configure(self, index: int) -> None:
        # The contract: re-configure an empty buffer (the service drains first).
        self.config_index = index
        self.buffer.configure(StreamTokenOptions(**CONFIGS[index]), default_buffer_size=50)

    @invariant()
    def nothing_lost_duplicated_or_reordered(self) -> None:
        out = "".join(self.emitted)
        done = "".join(self.accepted[: len(self.accepted) - self.pending])
        assert out == done
        buffer = self.buffer
        assert buffer.pending == self.pending
        assert buffer.tokens_in == self.offered
        assert buffer.tokens_dropped == self.dropped
        assert buffer.tokens_in - buffer.tokens_dropped - buffer.tokens_out == buffer.pending


TokenBufferMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, derandomize=True
)
test_token_buffer_state_machine = TokenBufferMachine.TestCase


# ============================================================================ the service

EXECUTIONS = ("exec-a", "exec-b")
NODES = ("llm", "tool")
KEYS = [(e, n) for e in EXECUTIONS for n in NODES]

OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("token"), st.integers(0, len(KEYS) - 1), TOKENS),
        st.tuples(st.just("token"), st.integers(0, len(KEYS) - 1), TOKENS),
        st.tuples(st.just("flush"), st.integers(0, len(KEYS) - 1), st.none()),
        st.tuples(
            st.just("advance"), st.none(), st.sampled_from([0.001, 0.019, 0.02, 0.05, 0.2, 1.0])
        ),
        st.tuples(st.just("close"), st.integers(0, len(KEYS) - 1), st.none()),
        st.tuples(st.just("close_execution"), st.integers(0, len(EXECUTIONS) - 1), st.none()),
        st.tuples(
            st.just("reinit"), st.integers(0, len(KEYS) - 1), st.integers(0, len(CONFIGS) - 1)
        ),
    ),
    max_size=80,
)


@dataclass
class Subscriber:
    """One level's subscriber; it re-subscribes (between operations) once its stream ended."""

    updates: list[StreamUpdate[TokenData]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    completed: bool = True  # not subscribed yet


@dataclass
class Lifetime:
    """One opening of a stream: the tokens that must come out and when each must be out by."""

    expected: list[str] = field(default_factory=list)
    deadlines: list[float] = field(default_factory=list)
    largest_batch: list[int] = field(default_factory=list)  # per token, from its config


def _subscribe(
    service: TokenStreamingService, clock: FakeClock, sub: Subscriber, *key: str
) -> None:
    sub.completed = False

    def on_next(update: StreamUpdate[TokenData]) -> None:
        assert not sub.completed, "an update after completion"
        sub.updates.append(update)
        sub.times.append(clock.monotonic())

    def on_completed() -> None:
        sub.completed = True

    observable = (
        service.get_token_stream(key[0], key[1])
        if len(key) == 2
        else service.get_token_stream(key[0])
    )
    observable.subscribe(on_next=on_next, on_completed=on_completed)


@PROPERTY
@given(
    operations=OPERATIONS,
    idle_timeout_ms=st.sampled_from([0, 300]),
    initial=st.lists(st.integers(0, len(CONFIGS) - 1), min_size=len(KEYS), max_size=len(KEYS)),
)
def test_the_service_never_loses_duplicates_or_reorders_across_streams(
    operations: list[tuple[str, Any, Any]], idle_timeout_ms: int, initial: list[int]
) -> None:
    asyncio.run(_scenario(operations, idle_timeout_ms, initial))


async def _scenario(
    operations: list[tuple[str, Any, Any]], idle_timeout_ms: int, initial: list[int]
) -> None:
    import random

    clock = FakeClock()
    service = TokenStreamingService(
        {"stream_idle_timeout_ms": idle_timeout_ms}, clock=clock, rng=random.Random(0)
    )
    configs = {key: CONFIGS[i] for key, i in zip(KEYS, initial, strict=True)}
    lifetimes: dict[tuple[str, str], list[Lifetime]] = {key: [] for key in KEYS}
    node_subs = {key: Subscriber() for key in KEYS}
    execution_subs = {e: Subscriber() for e in EXECUTIONS}
    everything = Subscriber()
    service.get_global_token_stream().subscribe(
        on_next=lambda u: (everything.updates.append(u), everything.times.append(clock.monotonic()))
    )
    streamed = 0

    def resubscribe() -> None:
        for key, sub in node_subs.items():
            if sub.completed:
                _subscribe(service, clock, sub, *key)
        for execution_id, sub in execution_subs.items():
            if sub.completed:
                _subscribe(service, clock, sub, execution_id)

    async def ensure_open(key: tuple[str, str]) -> None:
        if not service.has_token_stream(*key):
            await service.initialize_token_stream(
                execution_id=key[0], node_id=key[1], config=configs[key]
            )
            lifetimes[key].append(Lifetime())

    for op, target, argument in operations:
        resubscribe()
        if op == "token":
            key = KEYS[target]
            await ensure_open(key)
            config = configs[key]
            service.stream_token(key[0], key[1], argument)
            streamed += 1
            out = _expected(config, argument)
            if out is not None:
                interval = config.get("flush_interval", 100) / 1000
                deadline = clock.monotonic() + interval if interval > 0 else float("inf")
                life = lifetimes[key][-1]
                life.expected.append(out)
                life.deadlines.append(deadline)
                life.largest_batch.append(config.get("batch_size") or config["buffer_size"])
        elif op == "flush":
            if service.has_token_stream(*KEYS[target]):
                await service.flush_tokens(*KEYS[target])
            else:  # never opened, or closed: the same clear error as stream_token
                with pytest.raises(TokenStreamingError, match=":".join(KEYS[target])):
                    await service.flush_tokens(*KEYS[target])
        elif op == "advance":
            clock.advance(argument)
        elif op == "close":
            service.close_token_stream(*KEYS[target])
        elif op == "close_execution":
            service.close_execution_token_streams(EXECUTIONS[target])
        else:  # reinit: flushes under the old config, then applies the new one
            key = KEYS[target]
            configs[key] = CONFIGS[argument]
            if service.has_token_stream(*key):
                await service.initialize_token_stream(
                    execution_id=key[0], node_id=key[1], config=configs[key]
                )
    final_time = clock.monotonic()
    await service.aclose()

    # 1. Per stream, every lifetime's tokens came out exactly, in order, in well-formed updates.
    for key in KEYS:
        mine = [u for u in everything.updates if (u.execution_id, u.node_id) == key]
        runs: list[list[StreamUpdate[TokenData]]] = []
        for update in mine:
            if update.data.index == 0:  # a stream's token indexes start at 0 each time it opens
                runs.append([])
            runs[-1].append(update)
        with_tokens = [life for life in lifetimes[key] if life.expected]
        assert len(runs) == len(with_tokens), key
        for run, life in zip(runs, with_tokens, strict=True):
            assert "".join(u.data.content for u in run) == "".join(life.expected), key
            assert run[0].data.index == 0
            for before, after in itertools.pairwise(run):
                assert after.data.index == before.data.total_tokens
            assert run[-1].data.total_tokens == len(life.expected)
            for update in run:
                if update.data.tokens is not None:
                    assert (
                        update.data.tokens
                        == life.expected[update.data.index : update.data.total_tokens]
                    )

    # 2. Each token left by its deadline (flush interval after it was streamed), or at the end.
    for key in KEYS:
        mine = [
            (u, t)
            for u, t in zip(everything.updates, everything.times, strict=True)
            if (u.execution_id, u.node_id) == key
        ]
        lives = iter([life for life in lifetimes[key] if life.expected])
        life = None
        for update, received in mine:
            if update.data.index == 0:
                life = next(lives)
            assert life is not None
            for i in range(update.data.index, update.data.total_tokens):
                deadline = min(life.deadlines[i], final_time)
                assert received <= deadline + 1e-9, (key, i, received, life.deadlines[i])
            # A buffer flushes when full: no update holds more than its config allows.
            count = update.data.total_tokens - update.data.index
            assert count <= life.largest_batch[update.data.index], (key, update.data)

    # sequence_number counts an execution's updates, all nodes together, from 1; it restarts
    # only when the execution is released (all its streams closed).
    for execution_id in EXECUTIONS:
        numbers = [u.metadata.sequence_number for u in everything.updates
                   if u.execution_id == execution_id]  # fmt: skip
        for before, after in itertools.pairwise(numbers):
            assert after in (before + 1, 1), (execution_id, numbers)
        assert numbers[:1] in ([], [1])

    # 3. Node- and execution-level subscribers saw exactly the global updates of theirs.
    for key, sub in node_subs.items():
        assert sub.updates == [u for u in everything.updates if (u.execution_id, u.node_id) == key]
    for execution_id, sub in execution_subs.items():
        assert sub.updates == [u for u in everything.updates if u.execution_id == execution_id]

    # 4. The counters add up.
    stats = service.token_statistics()
    assert stats.tokens_in == streamed
    assert stats.tokens_out == sum(
        len(life.expected) for lives in lifetimes.values() for life in lives
    )
    assert stats.tokens_in == stats.tokens_out + stats.tokens_dropped
    assert stats.buffered_tokens == 0
