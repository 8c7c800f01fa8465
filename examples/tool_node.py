"""A tool node: a LangChain tool called inside a node publishes tool_start/tool_complete events.

Run: ``python examples/tool_node.py`` (offline).
"""

from __future__ import annotations

import asyncio
from typing import TypedDict

from langchain_core.tools import tool

from streaming_module import StreamingModule
from streaming_module.types import StreamEventType
from streaming_module.workflow import DeclarativeWorkflowBase, node, stream_event, workflow


@tool
def word_count(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())


class State(TypedDict, total=False):
    text: str
    words: int
    report: str


@workflow(name="tool-node")
class ToolWorkflow(DeclarativeWorkflowBase[State]):
    @node(type="tool")
    @stream_event(events=["tool_start", "tool_complete", "updates"], delivery="at-least-once")
    async def count_words(self, state: State) -> State:
        return {"words": await word_count.ainvoke({"text": state["text"]})}

    @node
    async def report(self, state: State) -> State:
        return {"report": f"{state['words']} words"}


async def main() -> None:
    container = StreamingModule.for_root(websocket={"enabled": False})
    async with container:
        wf = ToolWorkflow()
        async for update in wf.stream({"text": "tools stream their start and end"}):
            if update.type is StreamEventType.STATUS:
                print(f"status   {update.data.status}")
            elif update.type is not StreamEventType.PROGRESS:
                print(f"event    [{update.node_id}] {update.type.value} {update.data}")


if __name__ == "__main__":
    asyncio.run(main())
