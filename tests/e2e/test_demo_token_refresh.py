"""The demo page outlives its token: it trades the token for a fresh one before it expires
(``POST /auth/refresh``), the server closes the page's socket at the old token's exp (4401
"token expired") — or ends its SSE stream there —, and the page reconnects with the fresh token
and resumes with the full text. Debian's Chromium through Playwright, as the other browser
tests."""

from __future__ import annotations

import os
from typing import Any

import pytest
from browser_support import BROWSER_MARKS

os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ["no_proxy"] = "127.0.0.1,localhost"

pytestmark = BROWSER_MARKS

SECRET = "refresh-browser-secret-" + "r" * 40


@pytest.mark.parametrize("protocol", ["websocket", "sse"])
async def test_the_page_renews_its_token_and_resumes_after_the_close_at_exp(
    browser: Any, protocol: str
) -> None:
    from streaming_module.demo.app import DemoServer
    from streaming_module.gateway.auth import JwtAuthenticator

    server = DemoServer(port=0, token_delay_ms=5, jwt_secret=SECRET)
    server.gateway.enable_token_refresh()  # as 'streaming-module demo --jwt-secret' does
    async with server:
        authenticator = JwtAuthenticator(server.container.options().gateway.authentication)
        token = authenticator.issue_token("browser-refresh", expires_in=3)
        page = await browser.new_page()
        refreshed: list[int] = []
        page.on(
            "response",
            lambda r: refreshed.append(r.status) if r.url.endswith("/auth/refresh") else None,
        )
        await page.goto(f"{server.url}/?token={token}")
        await page.get_by_test_id("protocol").select_option(protocol)
        await page.get_by_test_id("prompt").fill("Write about tides")
        await page.get_by_test_id("words").select_option("1000")  # ~5 s at 5 ms a token
        await page.get_by_test_id("start").click()
        await page.wait_for_function(
            "document.querySelector('[data-testid=status]').textContent === 'completed'",
            timeout=60_000,
        )
        state = await page.evaluate("window.streamingDemo.state()")
        text = await page.get_by_test_id("output").text_content()
        record = server.app.executions[state["executionId"]]
        assert text == record.result["content"]
        assert len((text or "").split()) == 1000
        assert refreshed and refreshed[0] == 200
        log = await page.get_by_test_id("event-log").text_content() or ""
        # The connection the server ended at exp ...
        ended = "token expired" if protocol == "websocket" else "SSE stream ended by the server"
        assert ended in log, log
        assert state["reconnects"] >= 1  # ... came back with the fresh token and resumed
        await page.close()
