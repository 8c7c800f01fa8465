"""The manual's "AI content generation" workflow, as the demo runs it.

Three nodes, in order:

- ``generateContent`` (``llm``): asks the chat model for the text. Its tokens stream through
  ``@stream_token`` (buffered, flushed every 100 ms, whitespace-only tokens filtered: the demo
  model never emits one, so the token frames carry exactly the final ``content``), and its
  progress — tokens received out of the words requested — through ``@stream_progress`` with ETA.
- ``processTokens`` (``tool``): splits the content into words and normalises them, publishing
  ``tool_start``, ``tool_complete`` and ``progress`` events (the manual's ``@stream_event``).
- ``qualityCheck`` (``condition``): scores the text (deterministically: lexical variety and
  sentence length, not the manual's ``Math.random()`` placeholder) and publishes its ``values``
  and ``updates``.

The chat model is given to the constructor (``AIContentGenerationWorkflow(llm=model)``); the
streaming services come from the container ``StreamingModule.for_root`` built.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any, TypedDict

from langchain_core.language_models.chat_models import BaseChatModel

from streaming_module.types import StreamEventType
from streaming_module.workflow import (
    DeclarativeWorkflowBase,
    node,
    stream_event,
    stream_progress,
    stream_token,
    workflow,
)

QUALITY_THRESHOLD = 0.7
# Progress reports per node are cheap but not free: report every this many words at most.
_REPORTS = 200


class AIWritingState(TypedDict, total=False):
    """The manual's ``AIWritingState``, plus the requested length and the quality score."""

    prompt: str
    words: int
    content: str
    tokens: list[str]
    progress: float
    completed: bool
    qualityScore: float  # the manual's key, as clients read it


def _enrich(event: Any) -> Any:
    """The manual's transformer: ``(event) => ({ ...event, enriched: true })``."""
    return {**event, "enriched": True}


_MAX_EVENT_TEXT = 4000
_MAX_EVENT_ITEMS = 50


def _compact(event: Any) -> Any:
    """Keep ``values``/``updates`` events small on the wire: a long text or list in the state
    is replaced by a short summary (the full state is what ``run()`` returns)."""

    def shrink(value: Any) -> Any:
        if isinstance(value, str) and len(value) > _MAX_EVENT_TEXT:
            return value[:200] + f"… ({len(value):,} characters)"
        if isinstance(value, list) and len(value) > _MAX_EVENT_ITEMS:
            return [*value[:10], f"… ({len(value):,} items)"]
        if isinstance(value, dict):
            return {k: shrink(v) for k, v in value.items()}
        return value

    data = event.get("data") if hasattr(event, "get") else None
    if not isinstance(data, dict):
        return event
    return {**event, "data": shrink(data)}


def assess_quality(content: str) -> float:
    """A deterministic score in [0, 1]: lexical variety blended with how close the average
    sentence is to a comfortable 10-20 words."""
    words = re.findall(r"[A-Za-z']+", content.lower())
    if not words:
        return 0.0
    variety = len(set(words)) / len(words)
    sentences = [s for s in re.split(r"[.!?]+", content) if s.strip()]
    average = len(words) / max(1, len(sentences))
    shape = 1.0 if 10 <= average <= 20 else max(0.0, 1 - abs(average - 15) / 30)
    return round(min(1.0, 0.55 + 0.25 * shape + 0.4 * variety), 3)


@workflow(
    name="ai-content-generation",
    streaming=True,
    channels={
        "prompt": None,
        "content": None,
        "tokens": None,
        "progress": None,
        "completed": None,
    },
)
class AIContentGenerationWorkflow(DeclarativeWorkflowBase[AIWritingState]):
    """Generate text from a prompt, post-process it and check its quality, streaming all of it."""

    def __init__(self, *, llm: BaseChatModel, **services: Any) -> None:
        super().__init__(**services)
        self.llm = llm

    @node(type="llm")
    @stream_token(
        enabled=True,
        buffer_size=50,
        format="text",
        filter={"min_length": 1, "exclude_whitespace": True},
        flush_interval=100,
    )
    @stream_progress(enabled=True, interval=500, granularity="fine", include_eta=True)
    async def generateContent(self, state: AIWritingState) -> AIWritingState:
        expected = int(state.get("words") or getattr(self.llm, "words", 0) or 1)
        every = max(1, expected // _REPORTS)
        parts: list[str] = []
        received = 0
        await self.progress.update(0, expected)
        # Streaming the model inside the node: LangGraph's `messages` mode picks up every token
        # and @stream_token sends it on; counting them here drives the progress bar.
        async for chunk in self.llm.astream(state["prompt"], words=expected):
            text = chunk.text if isinstance(chunk.text, str) else str(chunk.content)
            if not text:
                continue
            parts.append(text)
            # One word per chunk, or several for a long answer (DemoChatModel.words_per_chunk);
            # no word contains whitespace, so this counts words either way.
            before = received
            received += len(text.split())
            if received // every != before // every:
                await self.progress.update(min(received, expected), expected)
        await self.progress.update(expected, expected)
        self.logger.debug("generated %d tokens for %s", received, self.execution_id)
        return {"content": "".join(parts), "completed": True}

    @node(type="tool")
    @stream_event(
        events=[
            StreamEventType.TOOL_START,
            StreamEventType.TOOL_COMPLETE,
            StreamEventType.PROGRESS,
        ],
        buffer_size=100,
        delivery="at-least-once",
        transformer=_enrich,
    )
    async def processTokens(self, state: AIWritingState) -> AIWritingState:
        content = state.get("content")
        if not content:
            return {}
        tokens = content.split(" ")
        every = max(1, len(tokens) // 20)
        processed: list[str] = []
        for i, token in enumerate(tokens):
            processed.append(self._process_token(token))
            if (i + 1) % every == 0 or i + 1 == len(tokens):
                await self.progress.update(i + 1, len(tokens))
                await asyncio.sleep(0)  # a long text never starves the server
        return {"tokens": processed, "progress": 100.0}

    @node(type="condition")
    @stream_event(
        events=[StreamEventType.VALUES, StreamEventType.UPDATES],
        filter={"include_debug": False, "min_priority": "medium"},
        transformer=_compact,
    )
    async def qualityCheck(self, state: AIWritingState) -> AIWritingState:
        content = state.get("content")
        if not content:
            return {}
        # In a worker thread: scoring a 1,000,000-word text takes ~1 s of regex work, which
        # would otherwise stall every other request and connection of the server.
        score = (
            await asyncio.to_thread(assess_quality, content)
            if len(content) > 100_000
            else assess_quality(content)
        )
        return {"completed": score > QUALITY_THRESHOLD, "qualityScore": score}

    @staticmethod
    def _process_token(token: str) -> str:
        return token.lower().strip()


__all__ = ["AIContentGenerationWorkflow", "AIWritingState", "assess_quality"]
