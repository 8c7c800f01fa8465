"""The runs API served by the gateway: start, read and cancel registered workflows over HTTP, and
watch them as native SSE with Last-Event-ID resume. Real server on 127.0.0.1, real workflows."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import jwt
import pytest

from interop_support import read_sse, serve, text_of_frames
from streaming_module.broker.memory import InMemoryBroker
from streaming_module.gateway.runs import RunsApi
from streaming_module.protocol import sse

SECRET = "runs-api-test-secret-" + "k" * 40


def token(**claims: Any) -> str:
    return jwt.encode({"sub": "t", "exp": int(time.time()) + 600, **claims}, SECRET, "HS256")


async def wait_status(session: aiohttp.ClientSession, url: str, status: str) -> dict[str, Any]:
    for _ in range(500):
        async with session.get(url) as response:
            body: dict[str, Any] = await response.json()
        if body["status"] == status:
            return body
        await asyncio.sleep(0.01)
    raise AssertionError(f"{url} stayed {body['status']}")


async def test_a_registered_workflow_runs_over_http_and_its_result_is_the_streamed_text() -> None:
    async with serve() as server, aiohttp.ClientSession() as session:
        async with session.post(
            server.url + "/executions",
            json={
                "workflow": "writer",
                "prompt": "Write about tides",
                "words": 40,
                "executionId": "w-1",
            },
        ) as response:
            assert response.status == 202 and await response.json() == {"executionId": "w-1"}
        body = await wait_status(session, server.url + "/executions/w-1", "completed")
        assert body["workflow"] == "writer" and body["result"]["words"] == 40
        async with session.get(server.url + "/executions/w-1/events") as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events, _ = await read_sse(response)
        frames = [e.json() for e in events]
        assert [e.id for e in events] == [str(f["sequence"]) for f in frames]
        assert [e.event for e in events] == [f["type"] for f in frames]
        assert [f["sequence"] for f in frames] == list(range(1, len(frames) + 1))
        assert frames[-1]["payload"]["status"] == "completed"
        assert text_of_frames(frames) == body["result"]["content"]


async def test_input_is_given_to_the_workflow_as_is_and_the_default_workflow_is_the_first() -> None:
    async with serve() as server, aiohttp.ClientSession() as session:
        async with session.post(
            server.url + "/executions", json={"input": {"prompt": "owls", "words": 5}}
        ) as response:
            execution_id = (await response.json())["executionId"]
        body = await wait_status(session, f"{server.url}/executions/{execution_id}", "completed")
        assert body["workflow"] == "writer" and len(body["result"]["content"].split()) == 5
        for payload, status, code in [
            ({"workflow": "nope", "prompt": "x"}, 404, "unknown_workflow"),
            ({"input": {}, "prompt": "x"}, 400, "invalid_body"),
            ({"workflow": "blocker", "prompt": "x", "words": 3}, 400, "invalid_body"),
            ({}, 400, "invalid_prompt"),
        ]:
            async with session.post(server.url + "/executions", json=payload) as response:
                assert response.status == status, payload
                assert await response.json() == {"code": code, "message": await_message(response)}


def await_message(response: aiohttp.ClientResponse) -> Any:
    """Matches any non-empty message (the body's other key is checked exactly)."""

    class NonEmpty:
        def __eq__(self, other: object) -> bool:
            return isinstance(other, str) and bool(other)

    return NonEmpty()


async def test_cancel_stops_the_run_and_its_subgraph_and_a_disconnect_does_not() -> None:
    async with serve() as server, aiohttp.ClientSession() as session:
        await session.post(
            server.url + "/executions",
            json={"workflow": "blocker", "prompt": "x", "executionId": "b-1"},
        )
        # A watcher that goes away does not cancel the run.
        async with session.get(server.url + "/executions/b-1/events") as response:
            await read_sse(response, stop_after=1)
        await asyncio.wait_for(server.gate.entered.wait(), 5)
        await asyncio.sleep(0.05)
        assert not server.gate.cancelled.is_set()
        async with session.post(server.url + "/executions/b-1/cancel") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "cancelled"
        assert server.gate.cancelled.is_set()  # the subgraph's node was cancelled too
        async with session.get(server.url + "/executions/b-1/events") as response:
            events, _ = await read_sse(response)
        assert events[-1].json()["payload"]["status"] == "cancelled"
        async with session.post(server.url + "/executions/b-1/cancel") as response:
            assert response.status == 409 and (await response.json())["code"] == "not_running"
        async with session.post(server.url + "/executions/none/cancel") as response:
            assert response.status == 404


async def test_another_instance_reads_the_record_and_cancels_through_the_broker() -> None:
    """Two RunsApi on one broker stand for two gateways sharing Redis."""

    class Waits:
        def __init__(self) -> None:
            self.started = asyncio.Event()

        async def run(self, state: Any, execution_id: str) -> Any:
            self.started.set()
            await asyncio.sleep(3600)

    broker = InMemoryBroker()
    here, there = RunsApi(broker), RunsApi(broker)
    waits = Waits()
    here.register("waits", waits)
    there.register("waits", Waits())
    run = await here.start(here.parse_start({"prompt": "p", "executionId": "far"}))
    await waits.started.wait()
    assert (await there.describe("far"))["status"] == "started"
    answer = await there.cancel("far")
    assert answer["status"] == "cancelling"
    await asyncio.wait_for(asyncio.gather(run.task, return_exceptions=True), 5)
    assert (await there.describe("far"))["status"] == "cancelled"
    await here.aclose()
    await there.aclose()


async def test_jwt_comes_first_and_the_executions_claim_scopes_every_endpoint() -> None:
    async with serve(jwt_secret=SECRET) as server, aiohttp.ClientSession() as session:
        base = server.url
        forged = jwt.encode({"sub": "t", "exp": int(time.time()) + 60}, "x" * 40, "HS256")
        for method, path in [
            ("POST", "/executions"),
            ("GET", "/executions/unknown"),
            ("POST", "/executions/unknown/cancel"),
            ("GET", "/executions/unknown/events"),
        ]:
            for headers in ({}, {"Authorization": f"Bearer {forged}"}):
                async with session.request(
                    method, base + path, headers=headers, data=b"not json"
                ) as response:
                    assert response.status == 401, (method, path)
                    assert (await response.json())["code"] == "unauthorized"
        mine = {"Authorization": f"Bearer {token(executions=['mine'])}"}
        async with session.post(
            base + "/executions", headers=mine, json={"prompt": "x", "executionId": "other"}
        ) as response:
            assert response.status == 403
        async with session.post(
            base + "/executions",
            headers=mine,
            json={"prompt": "x", "executionId": "mine", "words": 3},
        ) as r:
            assert r.status == 202
        async with session.get(f"{base}/executions/mine/events?token={token()}") as response:
            events, _ = await read_sse(response)
        assert events[-1].json()["payload"]["status"] == "completed"
        async with session.get(base + "/executions/other/events", headers=mine) as response:
            assert response.status == 403


async def test_sse_resumes_after_last_event_id_and_ends_with_204_once_complete() -> None:
    async with serve(token_delay_ms=2) as server, aiohttp.ClientSession() as session:
        await session.post(
            server.url + "/executions",
            json={"prompt": "Write about rivers", "words": 120, "executionId": "r-1"},
        )
        url = server.url + "/executions/r-1/events"
        async with session.get(url) as response:
            first, parser = await read_sse(response, stop_after=5)
        assert parser.comments == [] or all(c == "keep-alive" for c in parser.comments)
        last = first[-1].id
        async with session.get(url, headers={"Last-Event-ID": last}) as response:
            rest, _ = await read_sse(response)
        frames = [e.json() for e in first + rest]
        assert [f["sequence"] for f in frames] == list(range(1, len(frames) + 1))
        result = await wait_status(session, server.url + "/executions/r-1", "completed")
        assert text_of_frames(frames) == result["result"]["content"]
        # ?lastSequence= works as the header does; the header wins over it.
        async with session.get(url + "?lastSequence=2", headers={"Last-Event-ID": "3"}) as r:
            resumed, _ = await read_sse(r)
        assert resumed[0].json()["sequence"] == 4
        # Resuming at the final frame: nothing left, and 204 stops an EventSource.
        async with session.get(url, headers={"Last-Event-ID": rest[-1].id}) as response:
            assert response.status == 204
        async with session.get(url, headers={"Last-Event-ID": "soon"}) as response:
            assert response.status == 400
            assert (await response.json())["code"] == "invalid_resume_point"


async def test_a_stream_opened_before_the_run_gets_every_frame_and_idles_with_heartbeats() -> None:
    async with serve(sse_heartbeat=0.05) as server, aiohttp.ClientSession() as session:
        url = server.url + "/executions/early/events"
        async with session.get(url) as response:
            chunk = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
            assert chunk.startswith(b"retry: ")
            beat = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 5)
            assert beat == sse.HEARTBEAT
            await session.post(
                server.url + "/executions",
                json={"prompt": "x", "words": 10, "executionId": "early"},
            )
            events, _ = await read_sse(response)
        frames = [e.json() for e in events]
        assert frames[0]["sequence"] == 1 and frames[0]["payload"]["status"] == "started"
        assert frames[-1]["payload"]["status"] == "completed"


async def test_bounds_a_body_too_large_and_a_result_too_large_for_the_record() -> None:
    async with serve(max_body_bytes=200, max_record_bytes=10) as server:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                server.url + "/executions", json={"prompt": "x" * 500}
            ) as response:
                assert response.status == 413 and (await response.json())["code"] == "too_large"
            await session.post(
                server.url + "/executions", json={"prompt": "x", "words": 10, "executionId": "big"}
            )
            local = await wait_status(session, server.url + "/executions/big", "completed")
            assert local["result"]["content"]
        # Another instance only has the broker's record: too big to keep there.
        record = await server.gateway.broker.load_run("big")
        assert record.status == "completed" and record.result is None


async def test_one_token_subject_cannot_take_every_run_slot() -> None:
    async with (
        serve(jwt_secret=SECRET, max_running=4, max_running_per_subject=2) as server,
        aiohttp.ClientSession() as session,
    ):
        greedy = {"Authorization": f"Bearer {token(sub='greedy')}"}
        other = {"Authorization": f"Bearer {token(sub='other')}"}
        start = server.url + "/executions"
        for n in range(2):
            body = {"workflow": "blocker", "prompt": "x", "executionId": f"g{n}"}
            async with session.post(start, headers=greedy, json=body) as response:
                assert response.status == 202
        body = {"workflow": "blocker", "prompt": "x", "executionId": "g2"}
        async with session.post(start, headers=greedy, json=body) as response:
            assert response.status == 429
            refusal = await response.json()
        assert refusal["code"] == "too_many_runs" and "at most 2" in refusal["message"]
        # Everyone else still gets a run slot, and the refused id was never taken.
        body = {"workflow": "blocker", "prompt": "x", "executionId": "o0"}
        async with session.post(start, headers=other, json=body) as response:
            assert response.status == 202
        async with session.get(start + "/g2", headers=greedy) as response:
            assert response.status == 404
        server.gate.release.set()
        await wait_status(session, f"{start}/g0?token={token(sub='greedy')}", "completed")


async def test_ids_are_matched_whole_and_not_echoed_at_length() -> None:
    async with serve() as server, aiohttp.ClientSession() as session:
        for bad in ("abc\n", "abc\nINJECTED", " abc", "a" * 129):
            body = {"prompt": "x", "executionId": bad}
            async with session.post(server.url + "/executions", json=body) as response:
                assert response.status == 400, bad
                assert (await response.json())["code"] == "invalid_execution_id"
        long_id = "z" * 900
        async with session.get(f"{server.url}/executions/{long_id}") as response:
            assert response.status == 404
            message = (await response.json())["message"]
        assert long_id not in message and len(message) < 300


async def test_the_servers_own_channels_cannot_be_watched_or_read() -> None:
    async with serve() as server, aiohttp.ClientSession() as session:
        body = {"prompt": "x", "words": 3, "executionId": "first"}
        async with session.post(server.url + "/executions", json=body) as response:
            assert response.status == 202  # the cancel channel exists from the first run on
        await wait_status(session, server.url + "/executions/first", "completed")
        for path in ("/executions/@runs%2Fcontrol/events", "/executions/@chat%2Fx"):
            async with session.get(server.url + path) as response:
                assert response.status == 404, path
        async with session.ws_connect(server.url + "/ws") as ws:
            subscribe = {"executionId": "@runs/control", "lastSequence": 0}
            await ws.send_json({"type": "subscribe_execution", "payload": subscribe})
            reply = await ws.receive_json(timeout=5)
        assert reply["type"] == "error" and reply["payload"]["code"] == "invalid_payload"
        assert "reserved" in reply["payload"]["message"]


@pytest.mark.parametrize("bad", ["-1", "1.5", "x" * 100])
def test_resume_points_are_parsed_strictly(bad: str) -> None:
    with pytest.raises(sse.ResumeError):
        sse.resume_point(bad, None)


async def test_an_sse_stream_ends_when_its_token_expires_and_the_reconnect_is_refused() -> None:
    async with serve(jwt_secret=SECRET) as server, aiohttp.ClientSession() as session:
        good = {"Authorization": f"Bearer {token()}"}
        await session.post(
            server.url + "/executions",
            headers=good,
            json={"workflow": "blocker", "prompt": "x", "executionId": "exp-1"},
        )
        short = jwt.encode({"sub": "t", "exp": int(time.time()) + 2}, SECRET, "HS256")
        url = f"{server.url}/executions/exp-1/events?token={short}"
        async with session.get(url) as response:
            assert response.status == 200
            events, _ = await read_sse(response, within=10)  # ends by itself, unfinished
        frames = [e.json() for e in events]
        assert frames[0]["payload"]["status"] == "started"
        assert [f for f in frames if f["type"] == "status"] == frames[:1]  # no final status
        await asyncio.sleep(
            max(
                0.0,
                jwt.decode(short, options={"verify_signature": False})["exp"] + 0.1 - time.time(),
            )
        )
        async with session.get(url) as response:
            assert response.status == 401
        server.gate.release.set()
