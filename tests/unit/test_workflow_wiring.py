"""DeclarativeWorkflowBase finds the container for_root built without global wiring: services or
a container passed win, then the container that wired the workflow's module, then the one
running in the current context, then the only live one; otherwise an error that names the fix.
Subclasses inject more; tests override providers the dependency-injector way."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any, TypedDict

import pytest
from dependency_injector.wiring import Provide, inject

from fresh_python import run_fresh
from streaming_module import StreamingModule
from streaming_module.broker.base import Frame
from streaming_module.config import StreamingModuleOptions
from streaming_module.errors import StreamingConfigError, WorkflowError
from streaming_module.services import registry
from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.types import StreamEventType
from streaming_module.workflow import DeclarativeWorkflowBase, node, stream_token, workflow


class State(TypedDict, total=False):
    text: str
    buffer: int


@workflow(name="wired")
class Wired(DeclarativeWorkflowBase[State]):
    @inject
    def __init__(
        self, options: StreamingModuleOptions = Provide["options"], **services: Any
    ) -> None:
        super().__init__(**services)
        self.options = options

    @node
    async def step(self, state: State) -> State:
        return {"buffer": self.options.default_buffer_size}


@workflow(name="echo")
class Echo(DeclarativeWorkflowBase[State]):
    @node
    @stream_token(flush_interval=0)
    async def say(self, state: State) -> State:
        self.stream_token(state["text"])
        return {"text": state["text"]}


@pytest.fixture
def container() -> Iterator[Any]:
    """A container that wired this module (and nothing else): its workflow classes use it."""
    c = StreamingModule.for_root(
        websocket={"enabled": False}, default_buffer_size=7, wire=[sys.modules[__name__]]
    )
    yield c
    c.unwire()


def offline() -> Any:
    return StreamingModule.for_root(websocket={"enabled": False})


# --------------------------------------------------------------------------- wiring, overrides


async def test_services_and_extra_injections_come_from_the_wiring_container(
    container: Any,
) -> None:
    # Other containers alive, even one running in this context, do not take a wired class.
    async with offline():
        wf = Wired()
    assert wf.token_streaming is container.token_streaming()
    assert wf.event_processor is container.event_processor()
    assert wf.progress_tracking is container.progress_tracking()
    assert (await wf.run({}))["buffer"] == 7


async def test_overriding_a_provider_reaches_new_workflows(container: Any) -> None:
    fake = EventStreamProcessorService()
    seen: list[Any] = []
    fake.get_event_stream().subscribe(on_next=seen.append)
    with container.event_processor.override(fake):
        wf = Wired()
        await wf.run({}, execution_id="ex-override")
    assert wf.event_processor is fake
    assert [u.data.status for u in seen if u.type is StreamEventType.STATUS] == [
        "started",
        "completed",
    ]


async def test_explicit_services_win_over_the_container(container: Any) -> None:
    mine = EventStreamProcessorService()
    wf = Wired(event_processor=mine)
    assert wf.event_processor is mine
    assert wf.token_streaming is container.token_streaming()


def test_an_explicit_container_wins_over_the_wiring(container: Any) -> None:
    other = offline()
    wf = Wired(container=other)
    assert wf.token_streaming is other.token_streaming()
    assert wf.event_processor is other.event_processor()
    assert wf.progress_tracking is other.progress_tracking()
    assert wf.options is container.options()  # the subclass's own injection is still wired


def test_for_root_wires_nothing_it_was_not_asked_to() -> None:
    c = offline()
    assert c.wired_to_modules == [] and c.wired_to_packages == []


# --------------------------------------------------------------------------- the running container


async def test_two_containers_each_get_their_own_workflows_frames() -> None:
    """The bug global wiring had: the last container built received every workflow's frames."""
    first, second = offline(), offline()
    seen: dict[str, list[Frame]] = {"first": [], "second": []}
    for name, c in (("first", first), ("second", second)):
        for execution_id in ("run-1", "run-2"):
            await c.broker().subscribe(execution_id, seen[name].append)

    async def run_inside(c: Any, execution_id: str, text: str) -> None:
        async with c:
            wf = Echo()
            assert wf.token_streaming is c.token_streaming()
            await wf.run({"text": text}, execution_id=execution_id)

    # Concurrently, each in its own task: each task's context has its own running container.
    await asyncio.gather(run_inside(first, "run-1", "one"), run_inside(second, "run-2", "two"))
    # One after the other in the same task: the current container changes with `async with`.
    third = offline()
    await third.broker().subscribe("run-3", seen.setdefault("third", []).append)
    await run_inside(third, "run-3", "three")

    for name, execution_id, text in (
        ("first", "run-1", "one"),
        ("second", "run-2", "two"),
        ("third", "run-3", "three"),
    ):
        frames = seen[name]
        assert {f.execution_id for f in frames} == {execution_id}
        assert [f.payload["content"] for f in frames if f.type == "token"] == [text]
        assert [f.payload["status"] for f in frames if f.type == "status"] == [
            "started",
            "completed",
        ]


async def test_nested_containers_and_tasks_started_inside() -> None:
    outer, inner = offline(), offline()
    async with outer:
        async with inner:
            assert Echo().token_streaming is inner.token_streaming()
            # A task started inside sees the container its creator ran in.
            in_task = await asyncio.create_task(_make_echo())
            assert in_task.token_streaming is inner.token_streaming()
        assert Echo().token_streaming is outer.token_streaming()


async def _make_echo() -> Echo:
    return Echo()


def test_several_live_containers_and_no_hint_is_an_error_naming_the_fixes() -> None:
    first, second = offline(), offline()
    with pytest.raises(WorkflowError) as info:
        Echo()
    assert info.value.code == "ambiguous_container"
    assert info.value.context["live_containers"] >= 2
    message = str(info.value)
    for fix in ("async with container:", "container=", "wire=[", "token_streaming="):
        assert fix in message
    assert Echo(container=second).token_streaming is second.token_streaming()
    assert first.token_streaming() is not second.token_streaming()


async def test_a_container_is_current_while_it_runs_and_live_until_shut_down() -> None:
    c = offline()
    assert c in registry.live() and registry.current() is None
    async with c:
        assert registry.current() is c
    assert registry.current() is None
    assert c not in registry.live()


async def test_a_container_that_fails_to_start_is_left_shut_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    c = StreamingModule.for_root(
        websocket={"enabled": True, "port": 0},
        gateway={"authentication": {"enabled": True, "strategy": "jwt"}},
    )
    with pytest.raises(StreamingConfigError, match="secret"):
        async with c:
            pass
    assert registry.current() is None
    assert c not in registry.live()


# --------------------------------------------------------------------------- a fresh process


_ONLY_LIVE_SCRIPT = """
import asyncio, gc
from typing import TypedDict
from streaming_module import DeclarativeWorkflowBase, StreamingModule, WorkflowError, node, workflow

class State(TypedDict, total=False):
    n: int

@workflow
class Lonely(DeclarativeWorkflowBase[State]):
    @node
    async def step(self, state: State) -> State:
        return {"n": 1}

def error_code():
    try:
        Lonely()
    except WorkflowError as exc:
        return exc.code, str(exc)
    return None, ""

code, message = error_code()
assert code == "not_wired", code
assert "StreamingModule.for_root" in message and "container=" in message, message

only = StreamingModule.for_root(websocket={"enabled": False})
assert Lonely().token_streaming is only.token_streaming()

dropped = StreamingModule.for_root(websocket={"enabled": False})
del dropped  # nobody refers to it any more (after a collection): it does not count
assert Lonely().event_processor is only.event_processor()

async def main():
    async with only:
        pass
asyncio.run(main())
code, _ = error_code()  # a shut-down container is not live
assert code == "not_wired", code
print("ok")
"""


def test_the_only_live_container_is_found_and_none_is_a_clear_error() -> None:
    """In a fresh process, where no other container can be alive."""
    assert run_fresh(_ONLY_LIVE_SCRIPT).strip() == "ok"
