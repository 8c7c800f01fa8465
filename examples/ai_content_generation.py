"""The manual's "Complete Usage Example", in Python, offline.

Run: ``python examples/ai_content_generation.py``. The demo's offline, deterministic chat model
stands in for a real LLM (it streams a word per chunk with its leading space, as real tokenizers
do, so the manual's ``excludeWhitespace`` filter keeps the text readable); swap in any LangChain
chat model and the tokens stream the same way. Prints the tokens, events and progress as they
stream.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import Any, TypedDict

from langchain_core.language_models import BaseChatModel

from streaming_module import StreamingModule
from streaming_module.demo.model import DemoChatModel
from streaming_module.types import StreamEventType
from streaming_module.workflow import (
    DeclarativeWorkflowBase,
    Node,
    StreamEvent,
    StreamProgress,
    StreamToken,
    Workflow,
)


class AIWritingState(TypedDict, total=False):
    prompt: str
    content: str
    tokens: list[str]
    progress: float
    completed: bool
    quality_score: float


@Workflow(
    name="ai-content-generation",
    streaming=True,
    channels={"prompt": None, "content": None, "tokens": None, "progress": None, "completed": None},
)
class AIContentGenerationWorkflow(DeclarativeWorkflowBase[AIWritingState]):
    def __init__(self, llm: BaseChatModel | None = None, **services: Any) -> None:
        super().__init__(**services)  # the services come from the container for_root built
        self.llm = llm or DemoChatModel(words=60)

    @Node(type="llm")
    @StreamToken(
        enabled=True,
        bufferSize=50,
        format="text",
        filter={"minLength": 1, "excludeWhitespace": True},
        flushInterval=100,
    )
    @StreamProgress(enabled=True, interval=500, granularity="fine", includeETA=True)
    async def generate_content(self, state: AIWritingState) -> AIWritingState:
        # Tokens are streamed automatically via @StreamToken.
        response = await self.llm.ainvoke(state["prompt"])
        return {"content": str(response.content), "completed": True}

    @Node(type="tool")
    @StreamEvent(
        events=[
            StreamEventType.TOOL_START,
            StreamEventType.TOOL_COMPLETE,
            StreamEventType.PROGRESS,
        ],
        bufferSize=100,
        delivery="at-least-once",
        transformer=lambda event: {**event, "enriched": True},
    )
    async def process_tokens(self, state: AIWritingState) -> AIWritingState:
        if not state.get("content"):
            return {}
        tokens = state["content"].split(" ")
        processed: list[str] = []
        for i, token in enumerate(tokens):
            processed.append(await self.process_token(token))
            await self.progress.update(i + 1, len(tokens))  # published as progress events
        return {"tokens": processed}

    @Node(type="condition")
    @StreamEvent(
        events=[StreamEventType.VALUES, StreamEventType.UPDATES],
        filter={"includeDebug": False, "minPriority": "medium"},
    )
    async def quality_check(self, state: AIWritingState) -> AIWritingState:
        if not state.get("content"):
            return {}
        quality_score = await self.assess_quality(state["content"])
        return {"completed": quality_score > 0.7, "quality_score": quality_score}

    async def process_token(self, token: str) -> str:
        return token.lower().strip()

    async def assess_quality(self, content: str) -> float:
        return random.Random(len(content)).random()  # placeholder, deterministic


async def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    container = StreamingModule.for_root(websocket={"enabled": False}, default_buffer_size=50)
    async with container:
        wf = AIContentGenerationWorkflow()
        async for update in wf.stream({"prompt": "Why stream?"}, execution_id="execution-123"):
            kind = update.type
            if kind is StreamEventType.TOKEN:
                print(f"token    [{update.node_id}] {update.data.content!r}")
            elif kind is StreamEventType.PROGRESS:
                where = update.node_id or "workflow"
                print(f"progress [{where}] {update.data.progress:.1f}%  eta={update.data.eta}")
            elif kind is StreamEventType.STATUS:
                print(f"status   {update.data.status}")
            else:
                extras = ", ".join(f"{k}={v}" for k, v in sorted(update.metadata.extra.items()))
                print(f"event    [{update.node_id}] {kind.value} ({extras})")


if __name__ == "__main__":
    asyncio.run(main())
