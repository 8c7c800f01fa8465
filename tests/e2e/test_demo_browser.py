"""The demo page in a real browser: Debian's Chromium driven by Playwright for Python.

Never a downloaded browser: without /usr/bin/chromium these tests skip and say why. The demo
server runs in this process (same event loop as Playwright's async API), so a test can also cut
connections from the server side. `UPDATE_SCREENSHOT=1 pytest tests/e2e/test_demo_browser.py`
retakes docs/demo.png.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import BROWSER_MARKS

os.environ["NO_PROXY"] = "127.0.0.1,localhost"
os.environ["no_proxy"] = "127.0.0.1,localhost"

SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"
RUN_TIMEOUT_MS = 60_000

pytestmark = BROWSER_MARKS


@pytest.fixture
async def demo() -> AsyncIterator[Any]:
    from streaming_module.demo.app import DemoServer

    # A few ms per token: fast enough for a test, slow enough to watch and to interrupt.
    async with DemoServer(port=0, token_delay_ms=4) as server:
        yield server


def screenshot_path(tmp_path: Path) -> Path:
    """docs/demo.png (the README's picture) when it is missing or UPDATE_SCREENSHOT=1, else a
    scratch file, so a test run leaves the working tree clean."""
    if os.environ.get("UPDATE_SCREENSHOT") == "1" or not SCREENSHOT.exists():
        SCREENSHOT.parent.mkdir(exist_ok=True)
        return SCREENSHOT
    return tmp_path / "demo.png"


RECORD_PROGRESS = """
window.progressSeen = [];
new MutationObserver(() => window.progressSeen.push(
  Number(document.querySelector('[data-testid=progress]').getAttribute('aria-valuenow'))
)).observe(document.querySelector('[data-testid=progress]'), {attributes: true});
"""


async def result_content(demo: Any, execution_id: str) -> str:
    record = demo.app.executions[execution_id]
    for _ in range(100):
        if record.status == "completed":
            return str(record.result["content"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {execution_id} is {record.status}")


async def start_run(page: Any, prompt: str, words: str = "300") -> None:
    await page.get_by_test_id("prompt").fill(prompt)
    await page.get_by_test_id("words").select_option(words)
    await page.get_by_test_id("start").click()


async def log_lines(page: Any) -> list[str]:
    return [
        text or ""
        for text in await page.locator("[data-testid=event-log] li .msg").all_text_contents()
    ]


def eta_seconds(text: str | None) -> int | None:
    """``"ETA 7 s"`` -> 7; anything else (estimating, <1 s, done) -> None."""
    parts = (text or "").split()
    return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() and parts[2] == "s" else None


async def wait_completed(page: Any) -> None:
    await page.wait_for_function(
        "document.querySelector('[data-testid=status]').textContent === 'completed'",
        timeout=RUN_TIMEOUT_MS,
    )


async def test_a_run_streams_into_the_page_and_completes(
    demo: Any, browser: Any, tmp_path: Path
) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(demo.url + "/")
    assert await page.get_by_test_id("status").text_content() == "idle"
    await page.evaluate(RECORD_PROGRESS)

    await start_run(page, "Write a short article about how streaming makes AI apps feel alive")
    # Text appears token by token: partial text first, while the run is still going.
    await page.wait_for_function(
        "document.querySelector('[data-testid=output]').textContent.split(' ').length > 20",
        timeout=RUN_TIMEOUT_MS,
    )
    assert await page.get_by_test_id("status").text_content() != "completed"

    await wait_completed(page)
    progress = page.get_by_test_id("progress")
    assert await progress.get_attribute("aria-valuenow") == "100"
    seen = await page.evaluate("window.progressSeen")
    assert any(0 < v < 100 for v in seen) and seen == sorted(seen), seen  # it moved, forwards
    execution_id = await page.get_by_test_id("execution-id").text_content()
    assert execution_id
    text = await page.get_by_test_id("output").text_content()
    assert text == await result_content(demo, execution_id)
    assert len((text or "").split()) == 300
    log = await page.get_by_test_id("event-log").text_content() or ""
    assert "node_start" in log and "run completed" in log
    assert await page.get_by_test_id("eta").text_content() == "done"
    assert not errors, errors

    # The README's picture: the finished run, its text from the top, the bar settled.
    await page.evaluate("document.querySelector('[data-testid=output]').scrollTop = 0")
    await page.wait_for_timeout(400)
    await page.screenshot(path=str(screenshot_path(tmp_path)), full_page=True)

    # Phone width: nothing overflows sideways, every part stays visible.
    await page.set_viewport_size({"width": 390, "height": 844})
    overflow = await page.evaluate(
        "document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    assert overflow <= 0
    for part in ("prompt", "start", "output", "progress", "status", "event-log"):
        assert await page.get_by_test_id(part).is_visible(), part
    await page.close()


async def test_a_connection_killed_mid_run_resumes_with_the_full_text(
    demo: Any, browser: Any
) -> None:
    page = await browser.new_page()
    await page.goto(demo.url + "/demo")
    await start_run(page, "Write about lighthouses", words="1000")
    await page.wait_for_function(
        "document.querySelector('[data-testid=output]').textContent.length > 300",
        timeout=RUN_TIMEOUT_MS,
    )
    # 1) The browser's socket dies (as on a network drop).
    assert await page.evaluate("window.streamingDemo.dropConnection()")
    await page.wait_for_function(
        "window.streamingDemo.state().reconnects >= 1", timeout=RUN_TIMEOUT_MS
    )
    # 2) The server cuts every connection while the run goes on.
    for _ in range(500):  # the page's reconnect is asynchronous
        if demo.gateway.get_connections():
            break
        await asyncio.sleep(0.02)
    state = await page.evaluate("window.streamingDemo.state()")
    if not state["finished"]:
        for info in demo.gateway.get_connections():
            connection = demo.gateway.get_connection(info["clientId"])
            if connection is not None:
                await connection.close(1011, "cut by the test", drain_timeout=0)

    await wait_completed(page)
    state = await page.evaluate("window.streamingDemo.state()")
    text = await page.get_by_test_id("output").text_content()
    assert text == await result_content(demo, state["executionId"])
    assert len((text or "").split()) == 1000
    assert state["reconnects"] >= 1
    log = await page.get_by_test_id("event-log").text_content() or ""
    assert "reconnected" in log and "resuming from sequence" in log
    assert await page.get_by_test_id("progress").get_attribute("aria-valuenow") == "100"
    await page.close()


async def test_the_log_reads_in_the_order_things_happened(demo: Any, browser: Any) -> None:
    page = await browser.new_page()
    await page.goto(demo.url + "/")

    # The answer to POST /executions comes after the run's first frames (held back here, as a
    # slow network would); the run was accepted before it started all the same.
    async def hold_the_answer(route: Any) -> None:
        response = await route.fetch()
        await page.wait_for_function(
            "document.querySelector('[data-testid=event-log]').textContent.includes('run started')",
            timeout=RUN_TIMEOUT_MS,
        )
        await route.fulfill(response=response)

    await page.route("**/executions", hold_the_answer)
    await start_run(page, "Write about tides", words="60")
    await wait_completed(page)
    lines = await log_lines(page)

    def where(text: str) -> int:
        found = [i for i, line in enumerate(lines) if text in line]
        assert len(found) == 1, (text, lines)
        return found[0]

    assert where("new run") < where("subscribed to") < where("POST /executions → 202")
    assert where("POST /executions → 202") < where("run started") < where("node_start")
    assert where("node_start") < where("run completed") == len(lines) - 1
    await page.close()


async def test_the_eta_keeps_counting_down_while_reconnecting(browser: Any) -> None:
    from streaming_module.demo.app import DemoServer

    # 1,000 words at 10 ms: ~10 s of generation, time enough to lose the network mid-run.
    async with DemoServer(port=0, token_delay_ms=10) as server:
        context = await browser.new_context()
        page = await context.new_page()
        await page.goto(server.url + "/")
        await start_run(page, "Write about glaciers", words="1000")
        await page.wait_for_function(
            "/^ETA ([4-9]|\\d\\d+) s$/.test(document.querySelector('[data-testid=eta]')"
            ".textContent)",
            timeout=RUN_TIMEOUT_MS,
        )
        # The network goes away: the socket drops and reconnecting fails for a while.
        await context.set_offline(True)
        assert await page.evaluate("window.streamingDemo.dropConnection()")
        await page.wait_for_function(
            "document.querySelector('[data-testid=connection]').dataset.state === 'reconnecting'",
            timeout=RUN_TIMEOUT_MS,
        )
        frames = await page.locator("#stat-frames").text_content()
        before = eta_seconds(await page.get_by_test_id("eta").text_content())
        assert before is not None
        # No frame arrives, yet the ETA moves on (it used to stay where the last frame left it).
        await page.wait_for_function(
            "before => { const text = document.querySelector('[data-testid=eta]').textContent;"
            " const m = /^ETA (\\d+) s$/.exec(text);"
            " return m ? Number(m[1]) < before : text === 'ETA <1 s'; }",
            arg=before,
            timeout=RUN_TIMEOUT_MS,
        )
        assert await page.locator("#stat-frames").text_content() == frames
        connection = await page.get_by_test_id("connection").get_attribute("data-state")
        assert connection == "reconnecting"

        # The network is back: the page resumes and the run completes with the full text.
        await context.set_offline(False)
        await wait_completed(page)
        state = await page.evaluate("window.streamingDemo.state()")
        text = await page.get_by_test_id("output").text_content()
        assert text == await result_content(server, state["executionId"])
        assert await page.get_by_test_id("eta").text_content() == "done"
        await context.close()


async def test_the_page_uses_the_token_from_its_url(browser: Any) -> None:
    from streaming_module.demo.app import DemoServer
    from streaming_module.gateway.auth import JwtAuthenticator

    secret = "browser-test-secret-" + "y" * 40
    async with DemoServer(port=0, token_delay_ms=0, jwt_secret=secret) as server:
        authenticator = JwtAuthenticator(server.container.options().gateway.authentication)
        token = authenticator.issue_token("browser-test")
        page = await browser.new_page()
        # Without the token the page loads but cannot start a run; it says what to do.
        await page.goto(server.url + "/")
        await start_run(page, "Write about owls", words="60")
        await page.wait_for_function(
            "document.querySelector('[data-testid=status]').textContent === 'error'",
            timeout=RUN_TIMEOUT_MS,
        )
        stage = page.locator("#stage")
        advice = await stage.text_content() or ""
        assert "needs a token" in advice and "?token=" in advice, advice
        assert "streaming-module token --jwt-secret" in advice, advice
        assert await stage.is_visible()
        # in full, not cut off with an ellipsis
        assert await stage.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
        # With ?token= it streams to the end.
        await page.goto(f"{server.url}/?token={token}")
        await start_run(page, "Write about owls", words="60")
        await wait_completed(page)
        text = await page.get_by_test_id("output").text_content()
        execution_id = await page.get_by_test_id("execution-id").text_content()
        assert execution_id and text == await result_content(server, execution_id)
        await page.close()
