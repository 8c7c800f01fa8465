"""The demo page's protocol switch and "drop connection" control in Debian's Chromium: the same
run watched over SSE, AG-UI and the AI SDK stream, cut mid-run by the visitor's button, resumes
with the full text."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from browser_support import BROWSER_MARKS

pytestmark = BROWSER_MARKS
RUN_TIMEOUT_MS = 60_000


@pytest.mark.parametrize("protocol", ["sse", "agui", "aisdk", "websocket"])
async def test_each_protocol_streams_the_run_and_resumes_after_the_drop_button(
    browser: Any, protocol: str
) -> None:
    from streaming_module.demo.app import DemoServer

    async with DemoServer(port=0, token_delay_ms=3) as demo:
        page = await browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(demo.url + "/demo")
        await page.get_by_test_id("protocol").select_option(protocol)
        await page.get_by_test_id("prompt").fill("Write about lighthouses")
        await page.get_by_test_id("words").select_option("1000")
        await page.get_by_test_id("start").click()
        await page.wait_for_function(
            "document.querySelector('[data-testid=output]').textContent.length > 400",
            timeout=RUN_TIMEOUT_MS,
        )
        await page.get_by_test_id("drop-connection").click()
        await page.wait_for_function(
            "document.querySelector('[data-testid=status]').textContent === 'completed'",
            timeout=RUN_TIMEOUT_MS,
        )
        state = await page.evaluate("window.streamingDemo.state()")
        run = demo.app.executions[state["executionId"]]
        assert run.task is not None
        await asyncio.wait_for(asyncio.shield(run.task), 10)
        text = await page.get_by_test_id("output").text_content()
        assert text == run.result["content"]
        assert state["reconnects"] >= 1
        log = await page.get_by_test_id("event-log").text_content() or ""
        assert "dropped on purpose" in log or protocol == "websocket"
        assert await page.get_by_test_id("progress").get_attribute("aria-valuenow") == "100"
        assert not errors, errors
        await page.close()
