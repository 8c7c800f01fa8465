"""Token capture: our callback handler on each ``@stream_token`` node's run, against real LangGraph
graphs and LangChain's fake chat models (offline). What a subscriber sees for every way a node can
call a chat model: the four call styles, subgraphs at any depth (streamed while they run), two
models at once, the ``nostream`` tag, tool-call chunks, the metadata given to ``processor`` and
``include_metadata``, models in worker threads and models that do not stream."""

from __future__ import annotations

import asyncio
import logging
import operator
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, BaseMessage
from langgraph.graph import START, StateGraph

from streaming_module.services.token_streaming import TokenStreamingService
from streaming_module.types import StreamEventType, StreamUpdate
from streaming_module.workflow import (
    DeclarativeWorkflowBase,
    node,
    stream_event,
    stream_token,
    workflow,
)

ET = StreamEventType


def chat(text: str, **kwargs: Any) -> GenericFakeChatModel:
    """A chat model streaming ``text`` word by word (words and the spaces between them)."""
    return GenericFakeChatModel(messages=iter([AIMessage(content=text)]), **kwargs)


def chunks_of(text: str) -> list[str]:
    out: list[str] = []
    for i, word in enumerate(text.split(" ")):
        out += [" ", word] if i else [word]
    return out


class State(TypedDict, total=False):
    prompt: str
    content: str
    other: str
    messages: Annotated[list[BaseMessage], operator.add]


async def collect(wf: DeclarativeWorkflowBase[Any], data: Any) -> list[StreamUpdate[Any]]:
    return [u async for u in wf.stream(data)]


def tokens(updates: list[StreamUpdate[Any]], node_id: str) -> list[StreamUpdate[Any]]:
    return [u for u in updates if u.type is ET.TOKEN and u.node_id == node_id]


def text(updates: list[StreamUpdate[Any]], node_id: str) -> str:
    return "".join(u.data.content for u in tokens(updates, node_id))


# --------------------------------------------------------------------------- call styles


@workflow
class CallStyles(DeclarativeWorkflowBase[State]):
    @node(type="llm")
    @stream_token(format="json", flush_interval=0)
    async def with_astream(self, state: State) -> State:
        parts = [str(c.content) async for c in chat("one two three").astream("p")]
        return {"content": "".join(parts)}

    @node(type="llm")
    @stream_token(format="json", flush_interval=0)
    async def with_ainvoke(self, state: State) -> State:
        reply = await chat("four five").ainvoke("p")
        return {"content": str(reply.content)}

    @node(type="llm")
    @stream_token(format="json", flush_interval=0)
    async def with_stream(self, state: State) -> State:
        parts = [str(c.content) for c in chat("six seven").stream("p")]
        return {"content": "".join(parts)}

    @node(type="llm")
    @stream_token(format="json", flush_interval=0)
    async def with_invoke(self, state: State) -> State:
        reply = chat("eight nine ten").invoke("p")
        return {"content": str(reply.content)}


async def test_every_call_style_streams_the_models_chunks_once(services: dict[str, Any]) -> None:
    updates = await collect(CallStyles(**services), {"prompt": "p"})
    for node_id, said in [
        ("with_astream", "one two three"),
        ("with_ainvoke", "four five"),
        ("with_stream", "six seven"),
        ("with_invoke", "eight nine ten"),
    ]:
        streamed = [t for u in tokens(updates, node_id) for t in u.data.tokens]
        assert streamed == chunks_of(said), node_id  # chunk by chunk, nothing sent twice


async def test_a_model_in_a_worker_thread_streams_in_order_before_the_node_ends(
    services: dict[str, Any],
) -> None:
    @workflow
    class Threaded(DeclarativeWorkflowBase[State]):
        @node(type="llm")
        @stream_token(format="json", buffer_size=1, flush_interval=0)
        async def generate(self, state: State) -> State:
            reply = await asyncio.to_thread(chat("made in a thread").invoke, "p")
            return {"content": str(reply.content)}

    updates = await collect(Threaded(**services), {"prompt": "p"})
    assert [u.data.content for u in tokens(updates, "generate")] == chunks_of("made in a thread")
    kinds = [u.type for u in updates if u.node_id == "generate"]
    assert kinds[0] is ET.NODE_START and kinds[-1] is ET.NODE_COMPLETE


async def test_a_model_that_does_not_stream_is_delivered_once_when_it_ends(
    services: dict[str, Any],
) -> None:
    @workflow
    class Whole(DeclarativeWorkflowBase[State]):
        @node(type="llm")
        @stream_token(format="json", flush_interval=0)
        async def generate(self, state: State) -> State:
            reply = await chat("all at once", disable_streaming=True).ainvoke("p")
            return {"content": str(reply.content)}

    updates = await collect(Whole(**services), {"prompt": "p"})
    assert [t for u in tokens(updates, "generate") for t in u.data.tokens] == ["all at once"]


async def test_a_node_returning_its_message_does_not_send_it_again(
    services: dict[str, Any],
) -> None:
    """LangGraph's ``messages`` mode sends a node's returned messages when the node ends (and
    again when their ids differ from the chunks'); ours never looks at what a node returns."""

    @workflow
    class Chat(DeclarativeWorkflowBase[State]):
        @node(type="llm")
        @stream_token(flush_interval=0)
        async def reply(self, state: State) -> State:
            answer = await chat("hello there").ainvoke("p")
            return {"messages": [answer, AIMessage(content=str(answer.content))]}

    updates = await collect(Chat(**services), {"prompt": "p", "messages": []})
    assert text(updates, "reply") == "hello there"
    assert len(updates[-1].data.result["messages"]) == 2


# --------------------------------------------------------------------------- subgraphs


def streaming_subgraph(words: str, seen: list[StreamUpdate[Any]], live: list[int]) -> Any:
    """A plain LangGraph graph whose node streams ``words``; after each chunk it records how
    many token updates subscribers have by then."""

    async def inner(state: State) -> State:
        parts = []
        async for chunk in chat(words).astream("p"):
            parts.append(str(chunk.content))
            live.append(len([u for u in seen if u.type is ET.TOKEN]))
        return {"content": "".join(parts)}

    graph = StateGraph(State)
    graph.add_node("inner", inner)
    graph.add_edge(START, "inner")
    return graph.compile()


async def test_subgraph_tokens_are_streamed_while_the_subgraph_runs(
    services: dict[str, Any],
) -> None:
    seen: list[StreamUpdate[Any]] = []
    live: list[int] = []
    sub = streaming_subgraph("tokens from deep inside", seen, live)
    outer = StateGraph(State)
    outer.add_node("middle", sub)  # a subgraph inside a subgraph
    outer.add_edge(START, "middle")
    nested = outer.compile()

    @workflow
    class Parent(DeclarativeWorkflowBase[State]):
        research = stream_token(buffer_size=1, flush_interval=0)(node(nested, name="research"))

    services["token_streaming"].get_global_token_stream().subscribe(on_next=seen.append)
    final = await Parent(**services).run({"prompt": "p"})
    assert final["content"] == "tokens from deep inside"
    said = chunks_of("tokens from deep inside")
    assert [u.data.content for u in seen] == said
    assert all(u.node_id == "research" for u in seen)
    # Each chunk had reached subscribers before the subgraph's node got the next one.
    assert live == list(range(1, len(said) + 1))


async def test_a_subgraph_invoked_inside_a_node_streams_as_that_node(
    services: dict[str, Any],
) -> None:
    seen: list[StreamUpdate[Any]] = []
    live: list[int] = []
    sub = streaming_subgraph("from the subgraph", seen, live)

    @workflow
    class Caller(DeclarativeWorkflowBase[State]):
        @node(type="llm")
        @stream_token(buffer_size=1, flush_interval=0, include_metadata=True)
        async def delegate(self, state: State) -> State:
            out = await sub.ainvoke(state)
            return {"other": out["content"]}

    services["token_streaming"].get_global_token_stream().subscribe(on_next=seen.append)
    await Caller(**services).run({"prompt": "p"})
    assert "".join(u.data.content for u in seen) == "from the subgraph"
    assert live == list(range(1, len(chunks_of("from the subgraph")) + 1))
    first = seen[0].metadata
    assert first.langgraph_node == "inner"  # the subgraph's own node ...
    assert seen[0].node_id == "delegate"  # ... streamed as the workflow's node
    assert len(first.namespace) == 1 and first.namespace[0].startswith("delegate:")


@workflow
class Inner(DeclarativeWorkflowBase[State]):
    @node(type="llm")
    @stream_token(flush_interval=0)
    async def write(self, state: State) -> State:
        self.stream_token("[pushed]")
        await self.progress.update(1, 2)
        reply = await chat("inner words").ainvoke("p")
        return {"content": str(reply.content)}


async def test_another_workflow_as_a_node_streams_as_that_node(services: dict[str, Any]) -> None:
    inner = Inner(**services)

    @workflow
    class Outer(DeclarativeWorkflowBase[State]):
        delegated = stream_event(events=["node_start", "node_complete", "progress"])(
            stream_token(flush_interval=0)(node(inner, name="delegated"))
        )

    updates = await collect(Outer(**services), {"prompt": "p"})
    assert text(updates, "delegated") == "[pushed]inner words"
    assert not [u for u in updates if u.node_id == "write"]  # the inner node is not the run's
    kinds = [u.type for u in updates if u.node_id == "delegated" and u.type is not ET.TOKEN]
    assert kinds == [ET.NODE_START, ET.PROGRESS, ET.NODE_COMPLETE]
    assert updates[-1].data.result["content"] == "inner words"


# --------------------------------------------------------------------------- several models


async def test_two_models_streaming_at_once_in_one_node_are_kept_apart(
    services: dict[str, Any],
) -> None:
    first = "alpha beta gamma delta epsilon"
    second = "one two three four five six"

    @workflow
    class Both(DeclarativeWorkflowBase[State]):
        @node(type="llm")
        @stream_token(format="json", include_metadata=True, buffer_size=50, flush_interval=0)
        async def generate(self, state: State) -> State:
            a, b = await asyncio.gather(chat(first).ainvoke("p"), chat(second).ainvoke("p"))
            return {"content": str(a.content), "other": str(b.content)}

    updates = tokens(await collect(Both(**services), {"prompt": "p"}), "generate")
    by_run: dict[str, str] = {}
    for update in updates:  # every update holds the tokens of one model run, and names it
        by_run[update.metadata.run_id] = by_run.get(update.metadata.run_id, "") + (
            update.data.content
        )
    assert sorted(by_run.values()) == sorted([first, second])
    assert len(updates) > 2  # they did stream at the same time, and were cut apart


async def test_a_nostream_tagged_model_is_not_streamed(services: dict[str, Any]) -> None:
    @workflow
    class Quiet(DeclarativeWorkflowBase[State]):
        @node(type="llm")
        @stream_token(flush_interval=0)
        async def generate(self, state: State) -> State:
            hidden = await chat("internal draft").with_config(tags=["nostream"]).ainvoke("p")
            shown = await chat("final answer").ainvoke("p")
            return {"content": str(shown.content), "other": str(hidden.content)}

    updates = await collect(Quiet(**services), {"prompt": "p"})
    assert text(updates, "generate") == "final answer"
    assert updates[-1].data.result["other"] == "internal draft"


# --------------------------------------------------------------------------- metadata, tools


def tool_calling_model() -> GenericFakeChatModel:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "lookup", "arguments": '{"q": "tides"}'},
    }
    return GenericFakeChatModel(
        messages=iter([AIMessage(content="Let me look.", additional_kwargs={"tool_calls": [call]})])
    )


async def test_tool_call_chunks_reach_processor_structured_and_include_metadata(
    services: dict[str, Any],
) -> None:
    seen_by_processor: list[tuple[str, dict[str, Any]]] = []

    def processor(token: str, metadata: Any) -> str:
        seen_by_processor.append((token, dict(metadata or {})))
        return token

    @workflow
    class Tools(DeclarativeWorkflowBase[State]):
        @node(type="llm")
        @stream_token(format="structured", processor=processor, flush_interval=0)
        async def structured(self, state: State) -> State:
            reply = await tool_calling_model().ainvoke("p")
            return {"content": str(reply.content)}

        @node(type="llm")
        @stream_token(include_metadata=True, flush_interval=0)
        async def merged(self, state: State) -> State:
            reply = await tool_calling_model().ainvoke("p")
            return {"other": str(reply.content)}

        @node(type="llm")
        @stream_token(flush_interval=0)
        async def plain(self, state: State) -> State:
            reply = await tool_calling_model().ainvoke("p")
            return {"other": str(reply.content)}

    updates = await collect(Tools(**services), {"prompt": "p"})
    expected_chunk = {"name": "lookup", "args": '{"q": "tides"}', "id": "call_1"}

    [structured] = tokens(updates, "structured")
    assert structured.data.content == "Let me look."
    carried = [
        m["tool_call_chunks"]
        for m in structured.metadata.token_metadata
        if m.get("tool_call_chunks")
    ]
    assert len(carried) == 1 and expected_chunk.items() <= carried[0][0].items()
    assert [
        m["tool_call_chunks"][0]["id"] for _, m in seen_by_processor if m.get("tool_call_chunks")
    ] == ["call_1"]

    merged = tokens(updates, "merged")
    assert "".join(u.data.content for u in merged) == "Let me look."
    with_tools = [u for u in merged if u.metadata.get("tool_call_chunks")]
    assert len(with_tools) == 1 and with_tools[0].data.content == ""  # an update of its own
    assert expected_chunk.items() <= with_tools[0].metadata.tool_call_chunks[0].items()

    assert [u.data.content for u in tokens(updates, "plain")] == ["Let me look."]


async def test_processor_and_include_metadata_get_node_namespace_and_model_run(
    services: dict[str, Any],
) -> None:
    seen: list[dict[str, Any]] = []

    @workflow
    class Meta(DeclarativeWorkflowBase[State]):
        @node(type="llm")
        @stream_token(
            include_metadata=True,
            flush_interval=0,
            processor=lambda token, metadata: seen.append(dict(metadata)) or token,
        )
        async def generate(self, state: State) -> State:
            reply = await FakeListChatModel(responses=["ab"]).ainvoke("p")
            return {"content": str(reply.content)}

    updates = await collect(Meta(**services), {"prompt": "p"})
    assert len(seen) == 2  # FakeListChatModel streams characters
    assert {m["run_id"] for m in seen} == {seen[0]["run_id"]}
    for metadata in seen:
        assert metadata["langgraph_node"] == "generate"
        assert metadata["namespace"] == []
        assert isinstance(metadata["langgraph_step"], int)
        assert metadata["ls_model_type"] == "chat"
        assert metadata["message_id"]
    [update] = tokens(updates, "generate")
    assert update.metadata.run_id == seen[0]["run_id"]
    assert update.metadata.langgraph_node == "generate"


async def test_tokens_the_stream_refuses_are_logged_once_with_the_reason_then_counted(
    services: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A model whose chunks the stream refuses (here: longer than ``max_token_length``) goes
    on; the log names the first refusal and its reason, then the count when the model ends,
    not a line per token."""
    services["token_streaming"] = TokenStreamingService({"max_token_length": 4})
    words = " ".join(f"longword{i}" for i in range(30)) + " ok"

    @workflow
    class Refused(DeclarativeWorkflowBase[State]):
        @node(type="llm")
        @stream_token(flush_interval=0)
        async def generate(self, state: State) -> State:
            reply = await chat(words).ainvoke("p")
            return {"content": str(reply.content)}

    with caplog.at_level(logging.WARNING, logger="streaming_module.workflow"):
        updates = await collect(Refused(**services), {"prompt": "p"})

    assert text(updates, "generate") == " " * 30 + "ok"  # what fits still streams
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 2, dropped
    assert "longer than" in dropped[0] or "max_token_length" in dropped[0], dropped[0]
    assert dropped[1].startswith("30 tokens of ") and dropped[1].endswith(
        ":generate dropped in all"
    )
