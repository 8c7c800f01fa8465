"""A conditional loop: a condition node sends the draft back until it is good enough, then ends.

Run: ``python examples/conditional_loop.py`` (offline). A ``@node(type="condition")`` method returns
the next node's name or ``END``; nodes otherwise run in definition order.
"""

from __future__ import annotations

import asyncio
import operator
from typing import Annotated, TypedDict

from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage

from streaming_module import StreamingModule
from streaming_module.types import StreamEventType
from streaming_module.workflow import (
    END,
    DeclarativeWorkflowBase,
    node,
    stream_progress,
    stream_token,
    workflow,
)

DRAFTS = ["a first rough draft", "a better second draft", "a polished final draft"]


class State(TypedDict, total=False):
    topic: str
    draft: str
    rounds: int
    history: Annotated[list[str], operator.add]


@workflow(name="conditional-loop")
class DraftLoop(DeclarativeWorkflowBase[State]):
    def __init__(self, **services: object) -> None:
        super().__init__(**services)  # type: ignore[arg-type]
        self.llm = GenericFakeChatModel(messages=iter([AIMessage(content=d) for d in DRAFTS]))

    @node(type="llm")
    @stream_token(flush_interval=0, buffer_size=2)
    @stream_progress(interval=0)
    async def write(self, state: State) -> State:
        reply = await self.llm.ainvoke(state["topic"])
        return {"draft": str(reply.content), "rounds": state.get("rounds", 0) + 1,
                "history": [str(reply.content)]}  # fmt: skip

    @node(type="condition")
    async def review(self, state: State) -> str:
        return END if "final" in state["draft"] else "write"


async def main() -> None:
    container = StreamingModule.for_root(websocket={"enabled": False})
    async with container:
        wf = DraftLoop()
        async for update in wf.stream({"topic": "streaming", "history": []}):
            if update.type is StreamEventType.TOKEN:
                print(f"token    {update.data.content!r}")
            elif update.type is StreamEventType.STATUS:
                print(f"status   {update.data.status}")
                if update.data.result:
                    print(f"rounds   {update.data.result['rounds']}")
            elif update.type is not StreamEventType.PROGRESS:
                print(f"event    [{update.node_id}] {update.type.value}")


if __name__ == "__main__":
    asyncio.run(main())
