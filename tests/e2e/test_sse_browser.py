"""Native SSE in a real browser: Chromium's EventSource on GET /executions/{id}/events, cut by
the server mid-run, reconnecting by itself with Last-Event-ID. Debian's Chromium through
Playwright (never a downloaded browser); the demo server runs in this process."""

from __future__ import annotations

import asyncio
from typing import Any

from browser_support import BROWSER_MARKS

pytestmark = BROWSER_MARKS
SECRET = "sse-browser-secret-" + "q" * 40

# Opens an EventSource and records every frame, open and error; closes it on the final status
# (else a finished stream makes an EventSource reconnect: the server then answers 204).
WATCH = """
([url]) => {
  window.seen = {frames: [], opens: 0, errors: 0, done: false, states: []};
  const source = new EventSource(url);
  window.source = source;
  source.onopen = () => { window.seen.opens += 1; };
  source.onerror = () => { window.seen.errors += 1; window.seen.states.push(source.readyState); };
  for (const type of ['token', 'event', 'progress', 'status', 'gap', 'message']) {
    source.addEventListener(type, (event) => {
      const frame = JSON.parse(event.data);
      window.seen.frames.push({id: event.lastEventId, type: event.type, frame});
      if (frame.type === 'status' && ['completed', 'failed', 'cancelled']
          .includes(frame.payload.status)) { window.seen.done = true; source.close(); }
    });
  }
}
"""


async def test_event_source_streams_the_exact_text_and_resumes_after_a_server_cut(
    browser: Any,
) -> None:
    from streaming_module.demo.app import DemoServer

    async with DemoServer(port=0, token_delay_ms=3) as demo:
        demo.gateway.runs.options.sse_retry_ms = 100
        page = await browser.new_page()
        await page.goto(demo.url + "/demo")
        await page.evaluate(WATCH, [demo.url + "/executions/sse-1/events"])
        run = await demo.app.start("Write about glaciers", execution_id="sse-1", words=600)
        await page.wait_for_function("window.seen.frames.length > 20", timeout=30_000)
        cut = demo.gateway.runs.sse_connections.cut("sse-1")
        assert cut == 1
        await page.wait_for_function("window.seen.done", timeout=60_000)
        seen = await page.evaluate("window.seen")
        assert run.task is not None
        await asyncio.wait_for(asyncio.shield(run.task), 10)
        frames = [f["frame"] for f in seen["frames"]]
        sequences = [f["sequence"] for f in frames]
        assert sequences == list(range(1, len(frames) + 1))  # nothing lost, nothing twice
        assert [f["id"] for f in seen["frames"]] == [str(s) for s in sequences]
        assert [f["type"] for f in seen["frames"]] == [f["type"] for f in frames]
        text = "".join(f["payload"]["content"] for f in frames if f["type"] == "token")
        assert text == run.result["content"]
        assert seen["opens"] >= 2 and seen["errors"] >= 1  # it reconnected by itself
        await page.close()


async def test_event_source_with_a_bad_token_is_refused_before_any_frame(browser: Any) -> None:
    from streaming_module.demo.app import DemoServer

    async with DemoServer(port=0, token_delay_ms=0, jwt_secret=SECRET) as demo:
        page = await browser.new_page()
        await page.goto(demo.url + "/demo")
        await page.evaluate(WATCH, [demo.url + "/executions/x/events?token=forged"])
        await page.wait_for_function("window.seen.errors >= 1", timeout=10_000)
        seen = await page.evaluate("window.seen")
        assert seen["frames"] == [] and seen["opens"] == 0
        assert seen["states"][-1] == 2  # CLOSED: a 401 is not retried
        await page.close()
