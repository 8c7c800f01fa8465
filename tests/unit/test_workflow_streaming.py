"""Declarative workflows on real LangGraph: what a subscriber sees for each decorator option,
routing, subgraphs, errors and cancellation. Offline: LangChain's fake chat models."""

from __future__ import annotations

import asyncio
import operator
from contextlib import aclosing
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langchain_core.tools import tool
from langgraph.graph import START, StateGraph

from streaming_module.errors import StreamingConfigError, WorkflowError
from streaming_module.types import StreamEventType, StreamUpdate
from streaming_module.workflow import (
    END,
    DeclarativeWorkflowBase,
    Node,
    StreamEvent,
    StreamProgress,
    StreamToken,
    Workflow,
    node,
    stream_all,
    stream_event,
    stream_progress,
    stream_token,
    workflow,
)

ET = StreamEventType


def chat(text: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(content=text)]))


async def collect(wf: DeclarativeWorkflowBase[Any], data: Any, **kw: Any) -> list[StreamUpdate]:
    return [u async for u in wf.stream(data, **kw)]


def text_of(updates: list[StreamUpdate], node_id: str | None = None) -> str:
    return "".join(
        u.data.content
        for u in updates
        if u.type is ET.TOKEN and (node_id is None or u.node_id == node_id)
    )


def kinds(updates: list[StreamUpdate], node_id: str) -> list[str]:
    return [u.type.value for u in updates if u.node_id == node_id and u.type is not ET.TOKEN]


class Story(TypedDict, total=False):
    prompt: str
    content: str
    summary: str
    log: Annotated[list[str], operator.add]
    rounds: int


# --------------------------------------------------------------------------- tokens


@workflow(name="writer")
class Writer(DeclarativeWorkflowBase[Story]):
    @node(type="llm")
    @stream_token(buffer_size=50, flush_interval=0)
    async def generate(self, state: Story) -> Story:
        reply = await chat("the quick brown fox").ainvoke(state["prompt"])
        return {"content": str(reply.content)}

    @node(type="llm")
    async def summarize(self, state: Story) -> Story:
        parts = [str(c.content) async for c in chat("short summary").astream("x")]
        return {"summary": "".join(parts)}


async def test_tokens_of_a_stream_token_node_reach_subscribers_and_others_stream_none(
    services: dict[str, Any],
) -> None:
    wf = Writer(**services)
    updates = await collect(wf, {"prompt": "fox"}, execution_id="ex-1")
    assert text_of(updates, "generate") == "the quick brown fox"
    assert text_of(updates, "summarize") == ""
    assert all(u.execution_id == "ex-1" for u in updates)
    statuses = [u.data.status for u in updates if u.type is ET.STATUS]
    assert statuses == ["started", "completed"]
    assert updates[0].type is ET.STATUS and updates[-1].type is ET.STATUS
    assert updates[-1].data.result["summary"] == "short summary"


async def test_tokens_come_between_node_start_and_node_complete(services: dict[str, Any]) -> None:
    updates = await collect(Writer(**services), {"prompt": "fox"})
    seq = [u.type.value for u in updates if u.node_id == "generate"]
    assert seq[0] == "node_start" and seq[-1] == "node_complete"
    assert "token" in seq[1:-1]


async def test_run_returns_final_state_from_one_graph_run(services: dict[str, Any]) -> None:
    calls: list[str] = []

    @workflow
    class Once(DeclarativeWorkflowBase[Story]):
        @node
        async def only(self, state: Story) -> Story:
            calls.append("x")
            return {"content": "done"}

    result = await Once(**services).run({"prompt": "p"})
    assert result["prompt"] == "p" and result["content"] == "done"
    assert calls == ["x"]


async def test_token_options_filter_processor_and_batching(services: dict[str, Any]) -> None:
    @workflow
    class Filtered(DeclarativeWorkflowBase[Story]):
        @Node(type="llm")
        @StreamToken(
            {
                "bufferSize": 2,
                "batchSize": 1,
                "flushInterval": 0,
                "filter": {"excludeWhitespace": True, "pattern": r"^[a-z]+$"},
                "processor": lambda token, meta: token.upper(),
            }
        )
        async def generate(self, state: Story) -> Story:
            reply = await chat("abc DEF ghi").ainvoke("p")
            return {"content": str(reply.content)}

    updates = await collect(Filtered(**services), {"prompt": "p"})
    tokens = [u.data.content for u in updates if u.type is ET.TOKEN]
    assert tokens == ["ABC", "GHI"]  # whitespace and the pattern drop, processor upper-cases


async def test_node_can_push_its_own_tokens(services: dict[str, Any]) -> None:
    @workflow
    class Pusher(DeclarativeWorkflowBase[Story]):
        @node(type="llm")
        @stream_token(flush_interval=0)
        async def custom_model(self, state: Story) -> Story:
            for word in ["a", "b", "c"]:
                self.stream_token(word)
            return {"content": "abc"}

        @node
        async def silent(self, state: Story) -> Story:
            self.stream_token("never")
            return {}

    updates = await collect(Pusher(**services), {"prompt": "p"})
    assert text_of(updates, "custom_model") == "abc"
    assert text_of(updates, "silent") == ""


async def test_disabled_stream_token_streams_nothing(services: dict[str, Any]) -> None:
    @workflow
    class Off(DeclarativeWorkflowBase[Story]):
        @node(type="llm")
        @stream_token(enabled=False)
        async def generate(self, state: Story) -> Story:
            return {"content": str((await chat("x y").ainvoke("p")).content)}

    assert text_of(await collect(Off(**services), {})) == ""


def test_bad_decorator_options_fail_at_definition_naming_the_key() -> None:
    with pytest.raises(StreamingConfigError, match="bufferSise"):

        @stream_token(bufferSise=3)
        async def generate(self: Any, state: Any) -> Any: ...


# --------------------------------------------------------------------------- events


async def test_default_events_with_streaming_and_none_without(services: dict[str, Any]) -> None:
    @workflow(streaming=False)
    class Quiet(DeclarativeWorkflowBase[Story]):
        @node
        async def step(self, state: Story) -> Story:
            return {"content": "x"}

    updates = await collect(Quiet(**services), {})
    assert [u.type for u in updates] == [ET.STATUS, ET.STATUS]

    updates = await collect(Writer(**services), {"prompt": "p"})
    assert kinds(updates, "summarize") == ["node_start", "node_complete"]


async def test_stream_event_selects_filters_transforms_and_records_delivery(
    services: dict[str, Any],
) -> None:
    @workflow
    class Evented(DeclarativeWorkflowBase[Story]):
        @node(type="tool")
        @stream_event(
            events=[ET.TOOL_START, ET.TOOL_COMPLETE, ET.UPDATES, ET.VALUES],
            delivery="at-most-once",
            transformer=lambda event: {**event, "enriched": True},
        )
        async def process(self, state: Story) -> Story:
            return {"content": "processed"}

        @node(type="condition")
        @StreamEvent(events=["values", "updates"], filter={"eventTypes": ["updates"]})
        async def check(self, state: Story) -> Story:
            return {"summary": "ok"}

    updates = await collect(Evented(**services), {"prompt": "p"})
    process = [u for u in updates if u.node_id == "process"]
    assert [u.type for u in process] == [ET.TOOL_START, ET.TOOL_COMPLETE, ET.UPDATES, ET.VALUES]
    assert all(u.metadata["delivery"] == "at-most-once" for u in process)
    assert all(u.metadata.enriched is True for u in process)
    assert process[2].data["update"] == {"content": "processed"}
    assert process[3].data["values"]["content"] == "processed"
    check = [u for u in updates if u.node_id == "check"]
    assert [u.type for u in check] == [ET.UPDATES]
    assert "enriched" not in check[0].metadata.extra


async def test_min_priority_and_event_batching(services: dict[str, Any]) -> None:
    @workflow
    class Batched(DeclarativeWorkflowBase[Story]):
        @node
        @stream_event(events=["node_start", "updates", "node_complete"], batch_size=3)
        async def step(self, state: Story) -> Story:
            return {"content": "x"}

        @node
        @stream_event(events=["node_start", "error"], filter={"minPriority": "high"})
        async def failing(self, state: Story) -> Story:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await collect(Batched(**services), {})
    # batching holds events until three are pending (or the node ends); order is kept
    wf = Batched(**services)
    seen: list[StreamUpdate] = []
    sub = services["event_processor"].get_event_stream().subscribe(on_next=seen.append)
    with pytest.raises(RuntimeError, match="boom"):
        await wf.run({})
    sub.dispose()
    step = [u for u in seen if u.node_id == "step"]
    assert [u.type for u in step] == [ET.NODE_START, ET.NODE_COMPLETE, ET.UPDATES]
    assert [u.metadata.batch_index for u in step] == [0, 1, 0]
    failing = [u for u in seen if u.node_id == "failing"]
    assert [u.type for u in failing] == [ET.ERROR]  # node_start is medium: filtered out


async def test_langchain_tools_inside_a_node_publish_tool_events(services: dict[str, Any]) -> None:
    @tool
    def word_count(text: str) -> int:
        """Count words."""
        return len(text.split())

    @workflow
    class Tools(DeclarativeWorkflowBase[Story]):
        @node(type="task")
        @stream_event(events=["tool_start", "tool_complete"])
        async def count(self, state: Story) -> Story:
            n = await word_count.ainvoke({"text": state["prompt"]})
            return {"summary": str(n)}

    updates = await collect(Tools(**services), {"prompt": "one two three"})
    tool_events = [u for u in updates if u.node_id == "count"]
    assert [u.type for u in tool_events] == [ET.TOOL_START, ET.TOOL_COMPLETE]
    assert tool_events[0].data["tool"] == "word_count"
    assert tool_events[1].data["output"] == 3


# --------------------------------------------------------------------------- progress


async def test_stream_progress_zero_to_hundred_and_manual_updates(
    services: dict[str, Any],
) -> None:
    @workflow
    class Counting(DeclarativeWorkflowBase[Story]):
        @node
        @stream_progress(interval=0, milestones=[50])
        async def work(self, state: Story) -> Story:
            for i in range(4):
                await self.progress.update(i + 1, 4, {"item": i})
            return {}

        @node
        async def other(self, state: Story) -> Story:
            await self.progress.update(1, 2)  # no @stream_progress: ignored
            return {}

    updates = await collect(Counting(**services), {})
    work = [u.data for u in updates if u.type is ET.PROGRESS and u.node_id == "work"]
    assert work[0].progress == 0 and work[-1].progress == 100
    assert [d.progress for d in work[1:]] == [25, 50, 75, 100, 100]
    assert [d.milestone for d in work if d.milestone] == [50]
    assert not [u for u in updates if u.type is ET.PROGRESS and u.node_id == "other"]
    overall = [u.data.progress for u in updates if u.type is ET.PROGRESS and u.node_id is None]
    assert overall[0] == 0 and overall[-1] == 100 and 50 in overall


async def test_progress_is_per_branch_in_parallel(services: dict[str, Any]) -> None:
    @workflow(edges=[(START, ["left", "right"]), (["left", "right"], "join")])
    class Parallel(DeclarativeWorkflowBase[Story]):
        @node
        @stream_progress(interval=0)
        async def left(self, state: Story) -> Story:
            for i in range(3):
                await self.progress.update(i + 1, 3)
                await asyncio.sleep(0)
            return {"log": ["left"]}

        @node
        @stream_progress(interval=0)
        async def right(self, state: Story) -> Story:
            for i in range(2):
                await self.progress.update(i + 1, 2)
                await asyncio.sleep(0)
            return {"log": ["right"]}

        @node
        async def join(self, state: Story) -> Story:
            return {"log": ["join"]}

    updates = await collect(Parallel(**services), {"log": []})
    left = [u.data.current for u in updates if u.type is ET.PROGRESS and u.node_id == "left"]
    right = [u.data.current for u in updates if u.type is ET.PROGRESS and u.node_id == "right"]
    assert left == [0, 1, 2, 3, 3] and right == [0, 1, 2, 2]
    assert sorted(updates[-1].data.result["log"][:2]) == ["left", "right"]
    assert updates[-1].data.result["log"][-1] == "join"


def test_progress_outside_a_node_is_an_error(services: dict[str, Any]) -> None:
    with pytest.raises(WorkflowError, match="inside a running node"):
        _ = Writer(**services).progress


# --------------------------------------------------------------------------- routing


async def test_condition_node_loops_then_ends(services: dict[str, Any]) -> None:
    @workflow(channels={"rounds": None, "log": operator.add})
    class Loop(DeclarativeWorkflowBase[Any]):
        @node
        async def draft(self, state: dict[str, Any]) -> dict[str, Any]:
            return {"rounds": state.get("rounds", 0) + 1, "log": ["draft"]}

        @node(type="condition")
        async def review(self, state: dict[str, Any]) -> str:
            return "draft" if state["rounds"] < 3 else END

        @node
        async def never(self, state: dict[str, Any]) -> dict[str, Any]:
            return {"log": ["never"]}

    result = await Loop(**services).run({"log": []})
    assert result == {"rounds": 3, "log": ["draft", "draft", "draft"]}


async def test_condition_returning_a_dict_goes_on_in_order(services: dict[str, Any]) -> None:
    @workflow
    class Checked(DeclarativeWorkflowBase[Story]):
        @node(type="condition")
        async def check(self, state: Story) -> Story:
            return {"summary": "checked"}

        @node(name="finish")
        async def finish_it(self, state: Story) -> Story:
            return {"content": state["summary"] + "!"}

    wf = Checked(**services)
    assert list(wf.graph.get_graph().nodes) == ["__start__", "check", "finish", "__end__"]
    assert (await wf.run({}))["content"] == "checked!"


async def test_condition_choosing_an_unknown_node_fails_the_run(services: dict[str, Any]) -> None:
    @workflow
    class Bad(DeclarativeWorkflowBase[Story]):
        @node(type="condition")
        async def check(self, state: Story) -> str:
            return "nowhere"

    with pytest.raises(WorkflowError, match="nowhere"):
        await Bad(**services).run({})


def test_malformed_workflows_are_refused_at_definition() -> None:
    with pytest.raises(WorkflowError, match="unknown node 'ghost'"):

        @workflow(edges=[("a", "ghost")])
        class BadEdge(DeclarativeWorkflowBase[Story]):
            @node
            async def a(self, state: Story) -> Story:
                return {}

    with pytest.raises(WorkflowError, match="no @node"):

        @workflow
        class Bare(DeclarativeWorkflowBase[Story]):
            @stream_token
            async def a(self, state: Story) -> Story:
                return {}

    with pytest.raises(WorkflowError, match="no state type"):

        @workflow
        class Stateless(DeclarativeWorkflowBase):  # type: ignore[type-arg]
            @node
            async def a(self, state: Any) -> Any:
                return {}


def test_graph_is_compiled_once_per_class(services: dict[str, Any]) -> None:
    assert Writer(**services).graph is Writer(**services).graph


# --------------------------------------------------------------------------- subgraphs


async def test_subgraph_tokens_are_attributed_to_the_parent_node(services: dict[str, Any]) -> None:
    async def inner(state: Story) -> Story:
        reply = await chat("from the subgraph").ainvoke("p")
        return {"content": str(reply.content)}

    sub = StateGraph(Story)
    sub.add_node("inner", inner)
    sub.add_edge(START, "inner")
    compiled_sub = sub.compile()

    @workflow
    class Parent(DeclarativeWorkflowBase[Story]):
        research = stream_token(flush_interval=0)(node(compiled_sub, name="research"))

        @node(type="llm")
        @stream_token(flush_interval=0)
        async def via_method(self, state: Story) -> Story:
            out = await compiled_sub.ainvoke(state)
            return {"summary": out["content"]}

    updates = await collect(Parent(**services), {"prompt": "p"})
    assert text_of(updates, "research") == "from the subgraph"
    assert text_of(updates, "via_method") == "from the subgraph"
    assert not [u for u in updates if u.node_id == "inner"]
    assert updates[-1].data.result["summary"] == "from the subgraph"


# --------------------------------------------------------------------------- errors, cancel


class Boom(Exception):
    pass


async def test_node_error_publishes_error_closes_streams_and_reraises_unchanged(
    services: dict[str, Any],
) -> None:
    raised = Boom("model exploded")

    @workflow
    class Failing(DeclarativeWorkflowBase[Story]):
        @node(type="llm")
        @stream_all(token={"flushInterval": 0, "bufferSize": 100})
        async def generate(self, state: Story) -> Story:
            self.stream_token("partial ")
            raise raised

    wf = Failing(**services)
    seen: list[StreamUpdate] = []
    sub = services["event_processor"].get_event_stream().subscribe(on_next=seen.append)
    tokens: list[StreamUpdate] = []
    services["token_streaming"].get_global_token_stream().subscribe(on_next=tokens.append)
    with pytest.raises(Boom) as info:
        await wf.run({}, execution_id="ex-fail")
    sub.dispose()
    assert info.value is raised
    error = next(u for u in seen if u.type is ET.ERROR)
    assert error.node_id == "generate" and error.data["error"] == "model exploded"
    assert seen[-1].data.status == "failed" and seen[-1].data.error == "model exploded"
    assert [t.data.content for t in tokens] == ["partial "]
    assert services["token_streaming"].get_active_token_streams() == []
    assert services["progress_tracking"].get_active_trackers() == []

    updates: list[StreamUpdate] = []
    with pytest.raises(Boom):
        async for update in Failing(**services).stream({}):
            updates.append(update)
    assert updates[-1].data.status == "failed"


async def test_cancelling_a_run_cancels_the_graph_and_leaves_no_task(
    services: dict[str, Any],
) -> None:
    entered = asyncio.Event()
    cancelled_inside = asyncio.Event()

    @workflow
    class Slow(DeclarativeWorkflowBase[Story]):
        @node(type="llm")
        @stream_token(flush_interval=0)
        @stream_progress
        async def wait(self, state: Story) -> Story:
            self.stream_token("before")
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled_inside.set()
                raise
            return {}

    seen: list[StreamUpdate] = []
    services["event_processor"].get_event_stream().subscribe(on_next=seen.append)
    before = asyncio.all_tasks()
    task = asyncio.create_task(Slow(**services).run({}, execution_id="ex-c"))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled_inside.is_set()
    assert seen[-1].data.status == "cancelled"
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    assert services["token_streaming"].get_active_token_streams() == []
    assert services["progress_tracking"].get_active_trackers() == []


async def test_leaving_stream_early_cancels_the_run(services: dict[str, Any]) -> None:
    @workflow
    class Endless(DeclarativeWorkflowBase[Story]):
        @node
        async def forever(self, state: Story) -> Story:
            await asyncio.Event().wait()
            return {}

    before = asyncio.all_tasks()
    seen: list[StreamUpdate] = []
    services["event_processor"].get_event_stream().subscribe(on_next=seen.append)
    async with aclosing(Endless(**services).stream({})) as updates:
        async for update in updates:
            if update.type is ET.NODE_START:
                break
    assert seen[-1].data.status == "cancelled"
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()


# --------------------------------------------------------------------------- aliases


def test_camel_case_aliases_are_the_same_decorators() -> None:
    assert Workflow is workflow and Node is node and StreamToken is stream_token
    assert StreamEvent is stream_event and StreamProgress is stream_progress
