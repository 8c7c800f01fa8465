"""Acceptance: SPEC.md "Decorators and workflows" and the manual's "Streaming Decorators" and
"Complete Usage Example", on real LangGraph graphs with LangChain's offline fake chat models.

Every workflow here gets its services from the container ``StreamingModule.for_root`` built, the
way an application does: nothing is passed to the constructor.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from typing import Any, TypedDict

import pytest
from dependency_injector.wiring import Provide, inject
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage

from streaming_module import (
    DeclarativeWorkflowBase,
    EventStreamProcessorService,
    Node,
    ProgressTrackingService,
    StreamEvent,
    StreamEventType,
    StreamingConfigError,
    StreamingModule,
    StreamProgress,
    StreamToken,
    StreamUpdate,
    TokenStreamingService,
    Workflow,
    node,
    stream_event,
    stream_progress,
    stream_token,
    workflow,
)

ET = StreamEventType


def chat(text: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(content=text)]))


class State(TypedDict, total=False):
    prompt: str
    content: str
    summary: str
    steps: list[str]
    n: int


@pytest.fixture
def container() -> Iterator[Any]:
    c = StreamingModule.for_root(websocket={"enabled": False}, wire=[sys.modules[__name__]])
    yield c
    c.unwire()


def subscribe_all(container: Any, execution_id: str) -> list[StreamUpdate[Any]]:
    """Everything the three services publish for ``execution_id``, in arrival order."""
    seen: list[StreamUpdate[Any]] = []
    container.token_streaming().get_token_stream(execution_id).subscribe(on_next=seen.append)
    container.event_processor().get_event_stream(execution_id).subscribe(on_next=seen.append)
    container.progress_tracking().get_progress_stream(execution_id).subscribe(on_next=seen.append)
    return seen


def text_of(updates: list[StreamUpdate[Any]], node_id: str | None = None) -> str:
    return "".join(
        u.data.content
        for u in updates
        if u.type is ET.TOKEN and (node_id is None or u.node_id == node_id)
    )


def events_of(updates: list[StreamUpdate[Any]], node_id: str) -> list[str]:
    return [
        u.type.value
        for u in updates
        if u.node_id == node_id and u.type not in (ET.TOKEN, ET.PROGRESS)
    ]


def statuses(updates: list[StreamUpdate[Any]]) -> list[str]:
    return [u.data.status for u in updates if u.type is ET.STATUS]


# --------------------------------------------------------------------------- graph shape


@workflow(name="ordered")
class Ordered(DeclarativeWorkflowBase[State]):
    @node(type="task")
    async def third_by_name(self, state: State) -> State:
        return {"steps": [*state.get("steps", []), "a"]}

    @node(type="task", name="renamed")
    async def second(self, state: State) -> State:
        return {"steps": [*state["steps"], "b"]}

    @node(type="task")
    async def alpha(self, state: State) -> State:
        return {"steps": [*state["steps"], "c"]}


async def test_nodes_run_in_definition_order_and_ids_are_method_names(container: Any) -> None:
    """ "The class compiles to a real `langgraph.graph.StateGraph` (nodes in definition order
    unless edges or routing say otherwise) ... A node's id (its LangGraph node name,
    `metadata.node_id`, ...) is the method's name unless `@node(name=...)` says otherwise." """
    from langgraph.graph.state import CompiledStateGraph

    wf = Ordered()
    assert isinstance(wf.graph, CompiledStateGraph)
    assert set(wf.graph.get_graph().nodes) >= {"third_by_name", "renamed", "alpha"}
    seen = subscribe_all(container, "run-1")
    final = await wf.run({"steps": []}, execution_id="run-1")
    assert final["steps"] == ["a", "b", "c"]
    starts = [u.node_id for u in seen if u.type is ET.NODE_START]
    assert starts == ["third_by_name", "renamed", "alpha"]


# --------------------------------------------------------------------------- tokens


@workflow(name="two-models")
class TwoModels(DeclarativeWorkflowBase[State]):
    @node(type="llm")
    @stream_token(buffer_size=50, flush_interval=0)
    async def generate(self, state: State) -> State:
        reply = await chat("the quick brown fox").ainvoke(state["prompt"])
        return {"content": str(reply.content)}

    @node(type="llm")
    @stream_token({"bufferSize": 3})
    async def stream_chars(self, state: State) -> State:
        model = FakeListChatModel(responses=["abc def"])
        parts = [str(c.content) async for c in model.astream("x")]
        return {"summary": "".join(parts)}

    @node(type="llm")
    async def silent(self, state: State) -> State:
        reply = await chat("never streamed").ainvoke("x")
        return {"summary": state["summary"] + "|" + str(reply.content)}


async def test_stream_token_captures_ainvoke_and_astream_tokens_in_that_node_only(
    container: Any,
) -> None:
    """ "tokens of any LangChain chat model called inside a `@stream_token` node (LangGraph
    `messages` stream mode) go through `TokenStreamingService` for that execution and node";
    issue 3: "`ainvoke` or `astream` ... nodes without the decorator stream no tokens"."""
    seen = subscribe_all(container, "tok")
    final = await TwoModels().run({"prompt": "go"}, execution_id="tok")
    assert text_of(seen, "generate") == "the quick brown fox"
    assert text_of(seen, "stream_chars") == "abc def"
    assert text_of(seen, "silent") == ""
    assert final["summary"] == "abc def|never streamed"
    for update in seen:
        if update.type is ET.TOKEN:
            assert update.metadata.execution_id == "tok"
            assert update.node_id in ("generate", "stream_chars")


async def test_run_returns_only_after_every_update_reached_subscribers(container: Any) -> None:
    """ "A run publishes `status: started` first and exactly one final status last; `run()`
    returns ... only once every update of the run, tokens included, has reached in-process
    subscribers." """
    seen = subscribe_all(container, "ordered-run")
    await TwoModels().run({"prompt": "go"}, execution_id="ordered-run")
    assert statuses(seen) == ["started", "completed"]
    assert seen[0].type is ET.STATUS and seen[0].data.status == "started"
    assert seen[-1].type is ET.STATUS and seen[-1].data.status == "completed"
    assert text_of(seen) == "the quick brown foxabc def"
    # Tokens of a node come between its start and its completion.
    kinds = [(u.type, u.node_id) for u in seen]
    start = kinds.index((ET.NODE_START, "generate"))
    end = kinds.index((ET.NODE_COMPLETE, "generate"))
    token_positions = [i for i, k in enumerate(kinds) if k == (ET.TOKEN, "generate")]
    assert token_positions and all(start < i < end for i in token_positions)


async def test_stream_yields_the_runs_updates_and_ends_after_the_final_status(
    container: Any,
) -> None:
    """ "`wf.stream(input, execution_id=None)` is an async iterator of `StreamUpdate`s. Every run
    has an `execution_id` (generated when not given)"."""
    updates = [u async for u in TwoModels().stream({"prompt": "go"})]
    assert all(isinstance(u, StreamUpdate) for u in updates)
    assert statuses(updates) == ["started", "completed"]
    assert updates[-1].data.status == "completed"
    ids = {u.metadata.execution_id for u in updates}
    assert len(ids) == 1 and next(iter(ids))
    assert text_of(updates) == "the quick brown foxabc def"


# --------------------------------------------------------------------------- events


@workflow(name="events")
class Events(DeclarativeWorkflowBase[State]):
    @node(type="task")
    async def plain(self, state: State) -> State:
        return {"n": 1}

    @node(type="tool")
    @stream_event(events=[ET.TOOL_START, ET.TOOL_COMPLETE, ET.UPDATES])
    async def tooling(self, state: State) -> State:
        return {"n": 2}

    @node(type="task")
    @stream_event({"events": ["values"], "transformer": lambda e: {**e, "enriched": True}})
    async def valued(self, state: State) -> State:
        return {"n": 3}


async def test_default_node_events_and_what_stream_event_names(container: Any) -> None:
    """ "With `streaming=True`, a node without `@stream_event` publishes `node_start`,
    `node_complete` and `error`; a node with it publishes what its `events` list names." """
    seen = subscribe_all(container, "ev")
    await Events().run({}, execution_id="ev")
    assert events_of(seen, "plain") == ["node_start", "node_complete"]
    # LangGraph reports a node's update once the node has returned, so after tool_complete.
    assert events_of(seen, "tooling") == ["tool_start", "tool_complete", "updates"]
    assert events_of(seen, "valued") == ["values"]
    [values] = [u for u in seen if u.node_id == "valued"]
    assert values.metadata.enriched is True
    for update in seen:
        assert update.metadata.execution_id == "ev"
        if update.type is not ET.STATUS and update.type is not ET.PROGRESS:
            assert update.node_id is not None


@workflow(name="quiet", streaming=False)
class Quiet(DeclarativeWorkflowBase[State]):
    @node
    async def step(self, state: State) -> State:
        return {"n": 1}


async def test_without_streaming_plain_nodes_publish_no_node_events(container: Any) -> None:
    """ "With `streaming=True`, a node without `@stream_event` publishes `node_start` ..." — and
    with ``streaming=False`` it does not; the run still has its statuses."""
    seen = subscribe_all(container, "quiet")
    await Quiet().run({}, execution_id="quiet")
    assert events_of(seen, "step") == []
    assert statuses(seen) == ["started", "completed"]


# --------------------------------------------------------------------------- progress


@workflow(name="progress")
class Progress(DeclarativeWorkflowBase[State]):
    @node(type="task")
    @stream_progress(interval=0, granularity="detailed", milestones=[50])
    async def crunch(self, state: State) -> State:
        for i in range(1, 5):
            await self.progress.update(i, 4)
        return {"n": 4}

    @node(type="task")
    @StreamProgress({"interval": 0, "includeETA": True, "includeMetrics": True})
    async def idle(self, state: State) -> State:
        return {"n": 5}


async def test_progress_is_zero_then_100_per_node_plus_updates_inside(container: Any) -> None:
    """ "progress is tracked per `@stream_progress`, automatically at node start/end and by
    `self.progress.update(...)` inside the node"; "Every update's `metadata` carries ... its
    `node_id` whenever it comes from a node (..., a node's progress)"."""
    seen = subscribe_all(container, "pr")
    await Progress().run({}, execution_id="pr")
    crunch = [u.data for u in seen if u.type is ET.PROGRESS and u.node_id == "crunch"]
    assert crunch[0].progress == 0
    assert crunch[-1].progress == 100
    assert [d.progress for d in crunch if 0 < d.progress < 100] == [25, 50, 75]
    assert [d.milestone for d in crunch if d.milestone is not None] == [50]
    idle = [u.data for u in seen if u.type is ET.PROGRESS and u.node_id == "idle"]
    assert [d.progress for d in idle] == [0, 100]
    assert idle[-1].eta == 0 and idle[-1].metrics is not None
    # Progress stops before the final status.
    assert seen[-1].type is ET.STATUS


# --------------------------------------------------------------------------- errors, cancel


class Boom(Exception):
    pass


ERROR = Boom("kaput")


@workflow(name="failing")
class Failing(DeclarativeWorkflowBase[State]):
    @node(type="llm")
    @stream_token(buffer_size=100, flush_interval=0)
    async def explode(self, state: State) -> State:
        self.stream_token("partial ")
        raise ERROR


async def test_errors_are_reraised_unchanged_with_an_error_event_and_failed_status(
    container: Any,
) -> None:
    """issue 3: "Errors inside a node: an `error` event with the node and message, the stream
    closed cleanly, the exception raised from `run()` unchanged"."""
    seen = subscribe_all(container, "bad")
    with pytest.raises(Boom) as info:
        await Failing().run({}, execution_id="bad")
    assert info.value is ERROR
    errors = [u for u in seen if u.type is ET.ERROR]
    assert len(errors) == 1 and errors[0].node_id == "explode"
    assert "kaput" in str(errors[0].data["error"])
    assert statuses(seen) == ["started", "failed"]
    assert seen[-1].type is ET.STATUS
    assert text_of(seen) == "partial "  # what was buffered was not lost
    assert container.token_streaming().get_active_token_streams() == []
    with pytest.raises(Boom):
        async for _ in Failing().stream({}):
            pass


@workflow(name="slow")
class Slow(DeclarativeWorkflowBase[State]):
    started: asyncio.Event

    @node(type="llm")
    @stream_token(flush_interval=0)
    async def wait(self, state: State) -> State:
        self.stream_token("x")
        self.started.set()
        await asyncio.Event().wait()
        return {}


async def test_cancelling_a_run_leaves_no_task_and_publishes_cancelled(container: Any) -> None:
    """issue 3: "cancellation of a run cancels the graph and closes its streams, leaving no task
    running"; SPEC: "exactly one final status last"."""
    before = set(asyncio.all_tasks())
    seen = subscribe_all(container, "cx")
    wf = Slow()
    wf.started = asyncio.Event()
    task = asyncio.create_task(wf.run({}, execution_id="cx"))
    await wf.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(3):
        await asyncio.sleep(0)
    left = [t for t in asyncio.all_tasks() - before if not t.done() and t is not task]
    assert left == []
    assert statuses(seen) == ["started", "cancelled"]
    assert seen[-1].type is ET.STATUS
    assert container.token_streaming().get_active_token_streams() == []
    assert container.progress_tracking().get_active_trackers() == []


# --------------------------------------------------------------------------- services, wiring


@workflow(name="needs-services")
class NeedsServices(DeclarativeWorkflowBase[State]):
    @node
    async def step(self, state: State) -> State:
        return {"n": 1}


async def test_services_come_from_the_container_without_passing_them() -> None:
    """ "`DeclarativeWorkflowBase` gets the services it needs from the container that `for_root`
    built, without the user passing them"."""
    # Not wired, no services passed: the workflow is created while this container runs. (Other
    # tests' containers may still be alive in this process; they are not chosen.)
    container = StreamingModule.for_root(websocket={"enabled": False})
    async with container:
        wf = NeedsServices()
        assert wf.token_streaming is container.token_streaming()
        assert wf.event_processor is container.event_processor()
        assert wf.progress_tracking is container.progress_tracking()
        seen = subscribe_all(container, "svc")
        await wf.run({}, execution_id="svc")
        assert statuses(seen) == ["started", "completed"]


@workflow(name="injected")
class Injected(DeclarativeWorkflowBase[State]):
    @inject
    def __init__(
        self,
        tokens: TokenStreamingService = Provide["token_streaming"],
        **services: Any,
    ) -> None:
        super().__init__(**services)
        self.tokens = tokens

    @node
    async def step(self, state: State) -> State:
        return {"n": 1}


def test_a_subclass_injects_more_with_provide_string_ids(container: Any) -> None:
    """ "a subclass may inject more for its own use"; issue 3: "`Provide[...]`, including string
    ids like `Provide["token_streaming"]`"."""
    wf = Injected()
    assert wf.tokens is container.token_streaming()
    assert wf.token_streaming is container.token_streaming()


async def test_overriding_a_provider_reaches_a_workflow(container: Any) -> None:
    """ "Tests override providers the dependency-injector way" — and a workflow built after the
    override uses the replacement."""
    fake = EventStreamProcessorService()
    seen: list[Any] = []
    fake.get_event_stream("ov").subscribe(on_next=seen.append)
    with container.event_processor.override(fake):
        wf = NeedsServices()
        assert wf.event_processor is fake
        await wf.run({}, execution_id="ov")
    assert statuses(seen) == ["started", "completed"]
    assert NeedsServices().event_processor is container.event_processor()


async def test_application_code_publishing_for_an_execution_reaches_its_subscribers(
    container: Any,
) -> None:
    """ "Whatever the services publish for an execution — from a run or from application code —
    reaches that execution's subscribers." """
    seen = subscribe_all(container, "app")
    tokens: TokenStreamingService = container.token_streaming()
    await tokens.initialize_token_stream(execution_id="app", node_id="mine", config={})
    tokens.stream_token("app", "mine", "hello")
    await tokens.flush_tokens("app", "mine")
    container.event_processor().emit_event("app", ET.DEBUG, {"x": 1}, node_id="mine")
    tracker = container.progress_tracking().create_tracker("app", "mine", {"interval": 0})
    await tracker.update(1, 2)
    assert [u.type for u in seen] == [ET.TOKEN, ET.DEBUG, ET.PROGRESS]
    assert all(u.metadata.execution_id == "app" and u.node_id == "mine" for u in seen)
    assert isinstance(container.progress_tracking(), ProgressTrackingService)


# --------------------------------------------------------------------------- decorator options


def test_decorator_options_accept_camel_snake_dicts_and_keywords_and_name_unknown_keys() -> None:
    """ "Everywhere an options object is taken (criteria, decorator options, a stream's
    `config`), a plain dict with the same keys works too"; "Unknown keys are an error that names
    the key"."""
    from streaming_module.workflow.decorators import spec_of

    async def a(self: Any, state: Any) -> Any: ...

    async def b(self: Any, state: Any) -> Any: ...

    async def c(self: Any, state: Any) -> Any: ...

    async def d(self: Any, state: Any) -> Any: ...

    StreamToken(bufferSize=5, flushInterval=7, filter={"minLength": 2})(a)
    stream_token({"buffer_size": 5, "flush_interval": 7, "filter": {"min_length": 2}})(b)
    stream_token({"bufferSize": 1}, buffer_size=5, flushInterval=7, filter={"minLength": 2})(c)
    stream_token({"flushInterval": 7, "filter": {"minLength": 2}}, bufferSize=5)(d)
    for fn in (a, b, c, d):
        token = spec_of(fn).token
        assert token is not None
        assert (token.buffer_size, token.flush_interval) == (5, 7)
        assert token.filter is not None and token.filter.min_length == 2
    with pytest.raises(StreamingConfigError, match="bufferSise"):
        stream_token(bufferSise=5)
    with pytest.raises(StreamingConfigError, match="excludeWhitespaces"):
        stream_token(filter={"excludeWhitespaces": True})
    with pytest.raises(StreamingConfigError, match="includeDebugs"):
        StreamEvent(events=["values"], filter={"includeDebugs": False})
    with pytest.raises(StreamingConfigError, match="showPercent"):
        stream_progress(format={"showPercent": True})


def test_node_and_workflow_take_the_manuals_options_object_too() -> None:
    """Manual: ``@Node({ type: 'llm' })``, ``@Workflow({ name, streaming, channels })``; SPEC:
    "Everywhere an options object is taken (..., decorator options, ...), a plain dict with the
    same keys works too." """

    @Workflow(
        {
            "name": "dict-options",
            "streaming": True,
            "channels": {"prompt": None, "content": None},
        }
    )
    class DictOptions(DeclarativeWorkflowBase[Any]):
        @Node({"type": "llm"})
        async def first(self, state: Any) -> Any:
            return {"content": "x"}

        @Node({"type": "task", "name": "second_step"})
        async def second(self, state: Any) -> Any:
            return {}

    compiled = DictOptions.__streaming_compiled__  # type: ignore[attr-defined]
    assert compiled.name == "dict-options"
    assert compiled.order == ["first", "second_step"]
    assert compiled.nodes["first"].options.type == "llm"
    with pytest.raises(StreamingConfigError, match="tpye"):
        Node({"tpye": "llm"})


# --------------------------------------------------------------------------- the manual's example


class AIWritingState(TypedDict, total=False):
    prompt: str
    content: str
    tokens: list[str]
    progress: float
    completed: bool
    qualityScore: float


ANSWER = "Streaming lets a user watch an answer appear word by word"


@Workflow(
    name="ai-content-generation",
    streaming=True,
    channels={"prompt": None, "content": None, "tokens": None, "progress": None, "completed": None},
)
class AIContentGenerationWorkflow(DeclarativeWorkflowBase[AIWritingState]):
    """The manual's "Complete Usage Example", ported keeping its camelCase method names."""

    llm = None

    @Node(type="llm")
    @StreamToken(
        enabled=True,
        bufferSize=50,
        format="text",
        filter={"minLength": 1, "excludeWhitespace": True},
        flushInterval=100,
    )
    @StreamProgress(enabled=True, interval=500, granularity="fine", includeETA=True)
    async def generateContent(self, state: AIWritingState) -> AIWritingState:
        llm = GenericFakeChatModel(messages=iter([AIMessage(content=ANSWER)]))
        response = await llm.ainvoke(state["prompt"])
        return {"content": str(response.content), "completed": True}

    @Node(type="tool")
    @StreamEvent(
        events=[ET.TOOL_START, ET.TOOL_COMPLETE, ET.PROGRESS],
        bufferSize=100,
        delivery="at-least-once",
        transformer=lambda event: {**event, "enriched": True},
    )
    async def processTokens(self, state: AIWritingState) -> AIWritingState:
        if not state.get("content"):
            return state
        tokens = state["content"].split(" ")
        processed: list[str] = []
        for i, token in enumerate(tokens):
            processed.append(await self.processToken(token))
            await self.updateProgress((i + 1) / len(tokens) * 100)
        return {"tokens": processed}

    @Node(type="condition")
    @StreamEvent(
        events=[ET.VALUES, ET.UPDATES],
        filter={"includeDebug": False, "minPriority": "medium"},
    )
    async def qualityCheck(self, state: AIWritingState) -> AIWritingState:
        if not state.get("content"):
            return state
        quality_score = await self.assessQuality(state["content"])
        return {"completed": quality_score > 0.7, "qualityScore": quality_score}

    async def processToken(self, token: str) -> str:
        return token.lower().strip()

    async def updateProgress(self, progress: float) -> None:
        await self.progress.update(progress, 100)

    async def assessQuality(self, content: str) -> float:
        return 0.9


async def test_the_manuals_complete_usage_example_with_camel_case_node_ids(
    container: Any,
) -> None:
    """The manual's "Complete Usage Example" (SPEC: "Everything the manual shows must work in
    Python form"): tokens from ``generateContent`` (whitespace filtered), tool events enriched by
    the transformer from ``processTokens``, values/updates from ``qualityCheck``, progress, and
    one final status with the final state."""
    wf = AIContentGenerationWorkflow()
    updates = [u async for u in wf.stream({"prompt": "Why stream?"}, execution_id="execution-123")]
    assert wf.compiled.order == ["generateContent", "processTokens", "qualityCheck"]
    assert text_of(updates, "generateContent") == ANSWER.replace(" ", "")
    assert {u.node_id for u in updates if u.type is ET.TOKEN} == {"generateContent"}
    tool = [u for u in updates if u.node_id == "processTokens"]
    assert tool[0].type is ET.TOOL_START and tool[-1].type is ET.TOOL_COMPLETE
    assert all(u.metadata.enriched is True for u in tool)
    assert [u.data.progress for u in tool if u.type is ET.PROGRESS][-1] == 100
    generate_progress = [
        u.data.progress for u in updates if u.type is ET.PROGRESS and u.node_id == "generateContent"
    ]
    assert generate_progress[0] == 0 and generate_progress[-1] == 100
    assert {u.type for u in updates if u.node_id == "qualityCheck"} == {ET.VALUES, ET.UPDATES}
    final = updates[-1]
    assert final.type is ET.STATUS and final.data.status == "completed"
    assert final.data.result["content"] == ANSWER
    assert final.data.result["qualityScore"] == 0.9
    assert final.data.result["tokens"][0] == "streaming"
    assert all(u.metadata.execution_id == "execution-123" for u in updates)


def test_workflow_decorators_are_reexported_with_their_manual_names() -> None:
    """ "the manual's CamelCase names (`StreamToken`, `StreamEvent`, `StreamProgress`, `Workflow`,
    `Node`) are exported as aliases" — the same objects as the snake_case ones."""
    assert (StreamToken, StreamEvent, StreamProgress, Workflow, Node) == (
        stream_token,
        stream_event,
        stream_progress,
        workflow,
        node,
    )


@workflow(name="token-metadata")
class TokenMetadata(DeclarativeWorkflowBase[State]):
    @node(type="llm")
    @stream_token(
        flush_interval=0,
        include_metadata=True,
        processor=lambda token, metadata: f"{token}@{(metadata or {}).get('langgraph_node')}",
    )
    async def annotated(self, state: State) -> State:
        reply = await chat("hi there").ainvoke("x")
        return {"content": str(reply.content)}


async def test_processor_and_include_metadata_get_the_chat_models_token_metadata(
    container: Any,
) -> None:
    """ "`@stream_token` / ... take every option the manual shows" — the manual's
    ``processor: (token, metadata) => ...`` and ``includeMetadata: true``: in a workflow the
    metadata of a chat model's token (its node, step, model) reaches the processor and, with
    ``include_metadata``, the update."""
    seen = subscribe_all(container, "meta")
    await TokenMetadata().run({}, execution_id="meta")
    [update] = [u for u in seen if u.type is ET.TOKEN]
    assert update.data.content == "hi@annotated @annotatedthere@annotated"
    assert update.metadata.langgraph_node == "annotated"
    assert isinstance(update.metadata.langgraph_step, int)
    assert update.metadata.execution_id == "meta" and update.node_id == "annotated"
