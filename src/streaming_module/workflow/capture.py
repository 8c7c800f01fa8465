"""Our own LangChain callback handlers, attached to one node's run: token and tool capture.

A node function (:mod:`streaming_module.workflow.compile`) adds these handlers to the callbacks of
its own LangGraph run with :func:`with_handlers`; LangChain hands a run's inheritable handlers to
everything called inside it, so they see every chat model and tool the node calls, at any depth:
directly, through a chain, or inside a subgraph the node invokes.

:class:`TokenCapture` (nodes with ``@stream_token``) is where a chat model's tokens enter the
streaming services. It replaces LangGraph's ``messages`` stream mode, which we used before:

- **Any call style.** It is a streaming handler in LangChain's sense (it has ``tap_output_aiter``
  and ``tap_output_iter``), so ``ainvoke``/``invoke`` of a chat model that can stream does stream,
  as with ``astream``/``stream``. A model that cannot stream (or has ``disable_streaming``) is
  delivered once, as one token, when it ends.
- **Straight to the token stream.** Each chunk's text goes to
  ``TokenStreamingService.stream_token`` inside the callback: no queue, no task, no second
  pass over the graph's stream. A callback from another thread (a model run in a worker thread)
  is handed to the event loop with ``call_soon_threadsafe``.
- **Never the node's output.** Nothing looks at what the node returns, so a whole message is
  never sent again after its chunks, and a large output (a 6 MB string) costs nothing.
  (LangGraph's handler searches every value a node returns for messages, walking a ``str``
  character by character.)
- **Concurrent models kept apart.** A node's token stream is flushed when the chat model run
  producing its tokens changes, so no update mixes the tokens of two model runs; with
  ``include_metadata`` each update names its model run (``run_id``).
- **The ``nostream`` tag.** A chat model tagged ``nostream`` (``model.with_config(tags=
  ["nostream"])``) is not captured, as in LangGraph.
- **Metadata**, only for streams that use it (``processor``, ``include_metadata``,
  ``format="structured"``): ``langgraph_node`` (the graph node the model ran in: the subgraph's
  own node when inside one), ``langgraph_step``, ``langgraph_checkpoint_ns``, ``namespace`` (the
  graph namespace of that node, ``[]`` at the top level), ``run_id`` (the model run), the
  model's ``ls_*`` fields, ``message_id``, and ``tool_call_chunks`` on a chunk that carries
  tool-call chunks. Such a chunk usually has no text: it is streamed as an empty token with
  that metadata (so a ``processor`` and ``structured`` see every one), and under
  ``include_metadata`` it gets an update of its own (an update merges its tokens' metadata).

:class:`ToolCapture` (nodes whose events include ``tool_start``/``tool_complete``) turns LangChain
tool runs into :class:`~streaming_module.workflow.signals.ToolStarted` /
:class:`~streaming_module.workflow.signals.ToolEnded` signals.

Both ignore every other kind of callback (``ignore_*`` flags), and run inline: LangChain calls
them in place, with no task or thread per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from threading import get_ident
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler, BaseCallbackManager
from langchain_core.runnables import RunnableConfig
from langgraph.constants import TAG_NOSTREAM

from streaming_module.errors import StreamingError
from streaming_module.workflow.signals import Signal, ToolEnded, ToolStarted

if TYPE_CHECKING:
    from langchain_core.outputs import LLMResult

    from streaming_module.services.token_streaming import TokenStreamingService

logger = logging.getLogger("streaming_module.workflow")

T = TypeVar("T")

NOSTREAM_TAGS: frozenset[str] = frozenset({TAG_NOSTREAM, "nostream", "langsmith:nostream"})
"""Tags that keep a chat model's tokens out of the stream (LangGraph's, old and new)."""

# What of a chat model run's LangChain metadata a token carries.
_METADATA_KEYS = ("langgraph_node", "langgraph_step", "langgraph_checkpoint_ns")
_NS_SEP = "|"


def with_handlers(
    config: RunnableConfig, handlers: Sequence[BaseCallbackHandler]
) -> RunnableConfig:
    """``config`` with ``handlers`` added to its callbacks, inheritable (so everything run with
    the returned config gets them). The callback manager is copied, never changed in place."""
    callbacks = config.get("callbacks")
    if isinstance(callbacks, BaseCallbackManager):
        manager = callbacks.copy()
        for handler in handlers:
            manager.add_handler(handler, inherit=True)
        return {**config, "callbacks": manager}
    return {**config, "callbacks": [*(callbacks or ()), *handlers]}


def text_of(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return ""


class _ModelRun:
    """One chat model run seen by a :class:`TokenCapture`."""

    __slots__ = ("metadata", "run_id", "streamed")

    def __init__(self, run_id: UUID, metadata: dict[str, Any] | None) -> None:
        self.run_id = run_id
        self.metadata = metadata
        self.streamed = False


class TokenCapture(BaseCallbackHandler):
    """The tokens of every chat model called inside one run of one ``@stream_token`` node go to
    ``TokenStreamingService.stream_token(execution_id, node_id, ...)``. See the module docstring.

    ``with_metadata``: build and pass token metadata (the node's stream uses it);
    ``isolate_tool_chunks``: give each tool-call chunk an update of its own (``include_metadata``
    without ``structured``). Per token of the model streaming: two identity checks and the
    ``stream_token`` call (otherwise a dict lookup first, plus a dict when the metadata
    changes).
    """

    run_inline = True
    ignore_llm = False  # plain attributes: LangChain reads them on every token (not properties)
    ignore_chat_model = False
    ignore_chain = True
    ignore_agent = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True

    def __init__(
        self,
        tokens: TokenStreamingService,
        execution_id: str,
        node_id: str,
        *,
        with_metadata: bool = False,
        isolate_tool_chunks: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._tokens = tokens
        self._stream_token = tokens.stream_token
        self._execution_id = execution_id
        self._node_id = node_id
        self._with_metadata = with_metadata
        self._isolate = isolate_tool_chunks
        self._loop = loop or asyncio.get_running_loop()
        self._thread = get_ident()
        self._runs: dict[UUID, _ModelRun] = {}
        self._current: _ModelRun | None = None
        self._drops = 0  # tokens the stream refused since the last report (see _dropped)

    # LangChain's streaming-handler protocol: with these, a chat model's invoke/ainvoke streams.
    def tap_output_aiter(self, run_id: UUID, output: AsyncIterator[T]) -> AsyncIterator[T]:
        return output

    def tap_output_iter(self, run_id: UUID, output: Iterator[T]) -> Iterator[T]:
        return output

    def on_chat_model_start(
        self,
        serialized: dict[str, Any] | None,
        messages: list[list[Any]],
        *,
        run_id: UUID,
        tags: list[str] | None = None,
        metadata: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if tags and not NOSTREAM_TAGS.isdisjoint(tags):
            return
        self._runs[run_id] = _ModelRun(
            run_id, _token_metadata(metadata, run_id) if self._with_metadata else None
        )

    def on_llm_new_token(
        self, token: Any, *, chunk: Any = None, run_id: UUID, **kwargs: Any
    ) -> None:
        current = self._current
        if (
            current is not None
            and run_id is current.run_id
            and current.metadata is None
            and token.__class__ is str
            and get_ident() == self._thread
        ):
            # The hot path: plain text from the model already streaming, no metadata wanted.
            # LangChain passes its run manager's own run_id object with every chunk, so an
            # identity check finds the run (a UUID's hash is a Python-level call).
            if token:
                try:
                    self._stream_token(self._execution_id, self._node_id, token)
                except StreamingError as exc:
                    self._dropped(exc)
            return
        model = self._runs.get(run_id)
        if model is None:
            return
        model.streamed = True
        self._in_loop(self._deliver_chunk, model, token, chunk)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        model = self._runs.pop(run_id, None)
        # Streamed: its chunks were the tokens; the whole message is not sent again.
        if model is not None and not model.streamed:
            generations = response.generations
            if generations and generations[0]:
                message = getattr(generations[0][0], "message", None)
                if message is not None:
                    self._in_loop(self._deliver_message, model, message)
        # After the deliveries handed to the loop before it: they count the drops.
        self._in_loop(self._report_drops)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._runs.pop(run_id, None)
        self._in_loop(self._report_drops)

    def _in_loop(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on the event loop's thread: now when called there, else next
        (a model run in a worker thread), after what that thread handed over before."""
        if get_ident() != self._thread:
            self._loop.call_soon_threadsafe(callback, *args)
        else:
            callback(*args)

    # ------------------------------------------------------------------ delivery (loop thread)

    def _deliver_chunk(self, model: _ModelRun, token: Any, chunk: Any) -> None:
        text = token if token.__class__ is str else text_of(token)
        if model is not self._current:
            self._switch_to(model)
        meta = model.metadata
        try:
            if meta is None:
                if text:
                    self._stream_token(self._execution_id, self._node_id, text)
                return
            message = getattr(chunk, "message", None)
            message_id = getattr(message, "id", None)
            if message_id is not None and meta.get("message_id") != message_id:
                meta = model.metadata = {**meta, "message_id": message_id}
            tool_chunks = getattr(message, "tool_call_chunks", None)
            if tool_chunks:
                self._tool_chunk(text, {**meta, "tool_call_chunks": [dict(c) for c in tool_chunks]})
            elif text:
                self._stream_token(self._execution_id, self._node_id, text, meta)
        except StreamingError as exc:
            self._dropped(exc)

    def _deliver_message(self, model: _ModelRun, message: Any) -> None:
        if model is not self._current:
            self._switch_to(model)
        text = text_of(getattr(message, "content", ""))
        meta = model.metadata
        try:
            if meta is not None:
                if message.id is not None:
                    meta = {**meta, "message_id": message.id}
                tool_calls = getattr(message, "tool_calls", None)
                if tool_calls:
                    self._tool_chunk(text, {**meta, "tool_calls": [dict(c) for c in tool_calls]})
                    return
                if text:
                    self._stream_token(self._execution_id, self._node_id, text, meta)
            elif text:
                self._stream_token(self._execution_id, self._node_id, text)
        except StreamingError as exc:
            self._dropped(exc)

    def _dropped(self, exc: StreamingError) -> None:
        # The stream refused the token (closed after the node failed, or too long): the model
        # goes on, the token is lost, and the log says so: once with the reason, then once more
        # with the count when the model run ends (a model still streaming into a closed stream
        # would otherwise log a line per token). (A failing processor is not this: the stream
        # drops that token itself and reports it once, by an `error` event.)
        self._drops += 1
        if self._drops == 1:
            logger.warning(
                "token of %s:%s dropped: %s (further drops are counted, not logged one by one)",
                self._execution_id,
                self._node_id,
                exc,
            )

    def _report_drops(self) -> None:
        if self._drops > 1:
            logger.warning(
                "%d tokens of %s:%s dropped in all",
                self._drops,
                self._execution_id,
                self._node_id,
            )
        self._drops = 0

    def _tool_chunk(self, text: str, meta: dict[str, Any]) -> None:
        if self._isolate:
            self._flush()
            self._stream_token(self._execution_id, self._node_id, text, meta)
            self._flush()
        else:
            self._stream_token(self._execution_id, self._node_id, text, meta)

    def _flush(self) -> None:
        # A stream that is not open holds nothing to flush (closing it flushed it).
        if self._tokens.has_token_stream(self._execution_id, self._node_id):
            self._tokens.flush_tokens_nowait(self._execution_id, self._node_id)

    def _switch_to(self, model: _ModelRun) -> None:
        """Another model run streams now: what the previous one buffered leaves first."""
        if self._current is not None:
            self._flush()
        self._current = model


def _token_metadata(metadata: dict[str, Any] | None, run_id: UUID) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if metadata:
        for key, value in metadata.items():
            if key in _METADATA_KEYS or key.startswith("ls_"):
                out[key] = value
        checkpoint_ns = metadata.get("langgraph_checkpoint_ns")
        if isinstance(checkpoint_ns, str):
            out["namespace"] = checkpoint_ns.split(_NS_SEP)[:-1] if checkpoint_ns else []
    out["run_id"] = str(run_id)
    return out


class ToolCapture(BaseCallbackHandler):
    """LangChain tool runs inside one node's run become ``ToolStarted``/``ToolEnded`` signals,
    sent with ``send`` (the run's synchronous signal entry). Tool callbacks are gated by
    ``ignore_agent``, which therefore stays ``False``."""

    run_inline = True
    ignore_llm = True
    ignore_chat_model = True
    ignore_chain = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True

    def __init__(self, node_id: str, send: Callable[[Signal], None]) -> None:
        self._node_id = node_id
        self._send = send

    def on_tool_start(
        self,
        serialized: dict[str, Any] | None,
        input_str: str,
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        name = (serialized or {}).get("name") or kwargs.get("name") or "tool"
        self._send(ToolStarted(self._node_id, name, input_str, str(run_id)))

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._send(ToolEnded(self._node_id, getattr(output, "content", output), str(run_id)))


__all__ = ["NOSTREAM_TAGS", "TokenCapture", "ToolCapture", "text_of", "with_handlers"]
