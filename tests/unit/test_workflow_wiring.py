"""DeclarativeWorkflowBase gets its services from the container for_root built; subclasses inject
more; tests override providers the dependency-injector way."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any, TypedDict

import pytest
from dependency_injector.wiring import Provide, inject

from streaming_module import StreamingModule
from streaming_module.config import StreamingModuleOptions
from streaming_module.errors import WorkflowError
from streaming_module.services.event_processor import EventStreamProcessorService
from streaming_module.types import StreamEventType
from streaming_module.workflow import DeclarativeWorkflowBase, node, workflow


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


@pytest.fixture
def container() -> Iterator[Any]:
    c = StreamingModule.for_root(
        websocket={"enabled": False},
        default_buffer_size=7,
        wire=["streaming_module.workflow.base", sys.modules[__name__]],
    )
    yield c
    c.unwire()


async def test_services_and_extra_injections_come_from_the_container(container: Any) -> None:
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
    assert Wired(event_processor=mine).event_processor is mine


def test_without_a_container_the_error_says_what_to_do() -> None:
    @workflow
    class Lonely(DeclarativeWorkflowBase[State]):
        @node
        async def step(self, state: State) -> State:
            return {}

    with pytest.raises(WorkflowError, match=r"StreamingModule\.for_root"):
        Lonely()
