"""StreamingWebSocketGateway: the aiohttp WebSocket server that delivers executions' frames.

The gateway speaks the protocol of ``docs/protocol.md``. Frames come from a
:class:`~streaming_module.broker.base.Broker` (sequenced, replayable); each connection is a
:class:`~streaming_module.gateway.connection.ClientConnection` with its own bounded queue and
writer task. Before any HTTP is read, a TCP connection over the connection cap gets 503; a
request must arrive whole within ``websocket.request_timeout_ms``; every request's path length
and body nesting are checked before its handler. Security runs at the upgrade, before any frame
flows: Origin (HTTP 403), this address's connection rate (HTTP 429), JWT (HTTP 401), then the
server-wide rate and open-connection caps (HTTP 429) — two steps, so that a refused token spends
only its own address's budget. Then per client frame (pings and pongs included) the request
limit (close ``RATE_LIMITED``); on subscribe, the token's ``executions`` claim (``error`` with
code ``forbidden``); at the token's ``exp`` (plus leeway) the close ``UNAUTHORIZED``. Close codes
are :class:`~streaming_module.protocol.close_codes.CloseCode`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, hdrs, web
from aiohttp.abc import AbstractAccessLogger

from streaming_module.broker.base import Broker
from streaming_module.config import StreamingModuleOptions
from streaming_module.core.clock import Clock, SystemClock
from streaming_module.errors import (
    AuthenticationError,
    BrokerError,
    ClientNotFoundError,
    ForbiddenError,
    ProtocolError,
    RateLimitError,
    StreamingConfigError,
    WebSocketError,
)
from streaming_module.gateway._aiohttp import (
    ConnectionCap,
    GatewayWebSocketResponse,
    read_body_once,
)
from streaming_module.gateway.auth import Claims, JwtAuthenticator
from streaming_module.gateway.connection import ClientConnection, ClientSubscription
from streaming_module.gateway.cors import check_origin, cors_middleware
from streaming_module.gateway.limits import (
    ConnectionRateLimiter,
    RequestRateLimiter,
    ThrottledLogFilter,
    default_max_open_connections,
)
from streaming_module.protocol.close_codes import CloseCode
from streaming_module.protocol.frames import (
    GAP,
    PONG,
    REPLY_TYPES,
    SUBSCRIBED,
    UNSUBSCRIBED,
    WORKFLOW_UPDATE,
    encode_reply,
)
from streaming_module.protocol.json import dumps, nesting_exceeds
from streaming_module.protocol.messages import (
    Ack,
    Ping,
    SubscribeExecution,
    UnsubscribeExecution,
    decode_client_message,
)

if TYPE_CHECKING:
    from streaming_module.gateway.runs import RunsApi

logger = logging.getLogger("streaming_module.gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_SUBSCRIPTIONS_PER_CONNECTION = 256
"""Executions one connection may subscribe to at once (each costs a broker listener, ~200 B)."""

SHUTDOWN_DRAIN_TIMEOUT = 1.0
"""Seconds given to each client's queued frames to go out before the ``GOING_AWAY`` close on
shutdown."""

RESERVED_TYPES = REPLY_TYPES | {GAP}
"""Frame types only the gateway itself sends; ``broadcast_to_execution`` refuses them."""

MAX_PATH_LENGTH = 1024
"""Longest request path (bytes, query string excluded) the HTTP side reads; longer ones get 414
without their path being echoed anywhere. Execution ids are at most 256 characters."""

MAX_BODY_DEPTH = 64
"""How deeply an HTTP request body may nest JSON arrays and objects; deeper bodies get 400
``too_deep`` before any handler parses them."""

TOKEN_REFRESH_PATH = "/auth/refresh"
"""Where :meth:`StreamingWebSocketGateway.enable_token_refresh` serves by default."""

MAX_SESSION_SECONDS = 24 * 3600
"""How long after a token chain's first token (its ``auth_time``, else its ``iat``) refreshing
stops: a stolen token cannot be kept alive forever; its bearer must get a new one from whoever
issues tokens."""

_NOT_CARRIED = frozenset({"sub", "iat", "exp", "nbf", "iss", "aud", "executions", "auth_time"})

ACCEPT_LOG_FILTER = ThrottledLogFilter(
    match=lambda record: record.getMessage().startswith("socket.accept()")
)
"""Put on the ``asyncio`` logger when a gateway first starts (once per process, and left there):
a failing ``accept()`` (out of file descriptors, say) is logged at most once a second, with a
count, instead of a traceback each time."""


class RedactingAccessLogger(AbstractAccessLogger):
    """aiohttp's access log without query strings: a browser's JWT travels as ``?token=``
    and must never reach a log."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %s %.3fs',
            request.remote,
            request.method,
            request.path,
            response.status,
            time,
        )


class StreamingWebSocketGateway:
    """The WebSocket gateway: an aiohttp application (``app``) with the WebSocket at ``/`` and
    ``/ws`` and ``GET /health``; :meth:`start` serves it, :meth:`setup` mounts the WebSocket into
    an application of yours instead."""

    def __init__(
        self,
        options: StreamingModuleOptions | None = None,
        broker: Broker | None = None,
        clock: Clock | None = None,
    ) -> None:
        if broker is None:
            from streaming_module.broker import create_broker

            options = options or StreamingModuleOptions()
            broker = create_broker(options.broker)
        self.options = options or StreamingModuleOptions()
        self.broker = broker
        self.clock: Clock = clock or SystemClock()
        gateway = self.options.gateway
        self._cors = gateway.cors_options
        self._authenticator = JwtAuthenticator(gateway.authentication, self.clock)
        self._connection_limiter = ConnectionRateLimiter.from_options(self.options, self.clock)
        self._connections: dict[str, ClientConnection] = {}
        self._index_handler: Handler | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._host: str | None = None
        self._accepting = True
        self._runs: RunsApi | None = None
        self._max_session: float = MAX_SESSION_SECONDS
        self.connection_cap: ConnectionCap | None = None
        """The cap on open TCP connections while serving (see :meth:`start`)."""
        self.app = web.Application(
            middlewares=[cors_middleware(self._cors), _json_errors, self._request_guard]
        )
        self.app.router.add_get("/health", self._health)
        self.app.router.add_get("/", self._root)
        self.app.router.add_get("/ws", self.websocket_handler)
        self.app.on_shutdown.append(self._on_shutdown)

    # ------------------------------------------------------------------ serving
    @property
    def port(self) -> int | None:
        """The port being served (the real one when started with port 0), else None."""
        return self._port

    @property
    def url(self) -> str | None:
        """``http://host:port`` being served, else None. The WebSocket is at ``ws://host:port/``
        and ``/ws``."""
        if self._port is None:
            return None
        return f"http://{self._host}:{self._port}"

    @property
    def ws_url(self) -> str | None:
        if self._port is None:
            return None
        return f"ws://{self._host}:{self._port}/ws"

    async def start(self, host: str | None = None, port: int | None = None) -> None:
        """Serve ``app`` on ``host``:``port`` (default ``options.websocket.host``/``port``; 0 picks
        a free port, see :attr:`port`)."""
        if self._runner is not None:
            return
        host = host if host is not None else self.options.websocket.host
        port = port if port is not None else self.options.websocket.port
        self._accepting = True
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            shutdown_timeout=5.0,
            access_log_class=RedactingAccessLogger,
            # aiohttp closes a connection that has not sent a whole request this long after it
            # opened or after the previous response (its default: an hour).
            keepalive_timeout=self.options.websocket.request_timeout_ms / 1000,
        )
        await runner.setup()
        assert runner.server is not None
        # Every TCP connection, before any HTTP: a backstop below the file-descriptor limit
        # (WebSocket connections are capped again, with a 429, at the upgrade).
        rate_limit = self.options.gateway.rate_limit
        self.connection_cap = ConnectionCap(
            default_max_open_connections(),
            2 * rate_limit.max_open_connections_per_address if rate_limit is not None else None,
        )
        self.connection_cap.install(runner.server)
        asyncio_logger = logging.getLogger("asyncio")
        if ACCEPT_LOG_FILTER not in asyncio_logger.filters:
            asyncio_logger.addFilter(ACCEPT_LOG_FILTER)
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        addresses = runner.addresses  # getsockname() of each listening socket
        self._port = int(addresses[0][1]) if addresses else port
        self._host = host
        logger.info("WebSocket gateway listening on %s", self.url)

    async def stop(self) -> None:
        """Close every client with ``CloseCode.GOING_AWAY`` (after a short drain), stop serving,
        and leave no task running."""
        await self.close_all(CloseCode.GOING_AWAY, "server shutting down")
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        self._port = None

    def setup(self, app: web.Application, path: str = "/ws") -> None:
        """Mount the WebSocket endpoint at ``path`` in your own aiohttp application; its clients
        are closed with ``CloseCode.GOING_AWAY`` when that application shuts down."""
        app.router.add_get(path, self.websocket_handler)
        app.on_shutdown.append(self._on_shutdown)

    @property
    def runs(self) -> RunsApi:
        """The runs API on this gateway's app (``POST /executions``, SSE, AG-UI, AI SDK; see
        ``gateway/runs.py``), created and mounted on first use — before the server starts."""
        if self._runs is None:
            from streaming_module.gateway.runs import RunsApi

            self._runs = RunsApi(self.broker, authenticator=self._authenticator, cors=self._cors)
            self._runs.setup(self.app)
        return self._runs

    def register_workflow(
        self,
        name: str,
        workflow: Any,
        *,
        agui: str | None = None,
        ai_chat: str | None = None,
        **options: Any,
    ) -> None:
        """Serve ``workflow`` over HTTP as ``name``: start, read, cancel and watch its runs.
        ``agui`` / ``ai_chat``: paths at which to serve it to AG-UI clients (``POST {agui}``,
        ``GET {agui}/runs/{runId}/events``) and to the AI SDK's ``useChat`` (``POST
        {ai_chat}``, ``GET {ai_chat}/{chatId}/stream``). ``options`` are
        :meth:`RunsApi.register`'s (``make_input``, ``options``, ``default``)."""
        registration = self.runs.register(name, workflow, **options)
        if agui is not None or ai_chat is not None:
            # Imported only then: it loads the AG-UI package.
            from streaming_module.gateway import interop

            if agui is not None:
                interop.serve_agui(self.runs, registration, agui)
            if ai_chat is not None:
                interop.serve_ai_chat(self.runs, registration, ai_chat)

    async def cancel_runs(self) -> None:
        """Cancel the runs this gateway's runs API started (each publishes its final status)
        and wait for them; nothing to do when no workflow was registered. The ``server``
        resource calls it first on shutdown, while the services still run."""
        if self._runs is not None:
            await self._runs.aclose()

    def enable_token_refresh(
        self, path: str = TOKEN_REFRESH_PATH, *, max_session: float = MAX_SESSION_SECONDS
    ) -> None:
        """Serve ``POST path``: a valid token (same rules as everywhere) is traded for a fresh
        one with the same subject, ``executions`` and other claims, valid for ``expires_in`` —
        ``{"token", "expiresAt"}`` — until ``max_session`` seconds after the chain's first token
        (then 401 ``session_expired``). For pages that keep a connection longer than a token
        lives (the demo page refreshes at 80% of its token's life). Off unless called: it lets
        any token holder extend its token, so only a server that issues tokens should offer it.
        Call it before the server starts; needs the signing secret (``HS*``)."""
        if not self._authenticator.enabled:
            raise StreamingConfigError(
                "token refresh needs authentication enabled (gateway.authentication.enabled)",
                errors=[("gateway.authentication.enabled", "required for token refresh")],
            )
        self._max_session = max_session
        self.app.router.add_post(path, self._refresh_token)

    async def _refresh_token(self, request: web.Request) -> web.Response:
        try:
            claims = self._authenticator.authenticate_request(request)
            assert claims is not None  # authentication is enabled
            raw = claims.raw
            started = raw.get("auth_time", raw.get("iat"))
            now = self.clock.now().timestamp()
            if claims.subject is None or not isinstance(started, (int, float)):
                raise AuthenticationError(
                    "only a token with 'sub' and 'iat' can be refreshed; get a new one",
                    context={"reason": "not_refreshable"},
                )
            if now - started > self._max_session:
                raise AuthenticationError(
                    f"this token's session began over {self._max_session:g} s ago and cannot be "
                    "extended any more; get a new token",
                    context={"reason": "session_expired"},
                )
        except AuthenticationError as exc:
            return _http_error(exc, 401, {"WWW-Authenticate": 'Bearer error="invalid_token"'})
        carried = {k: v for k, v in raw.items() if k not in _NOT_CARRIED}
        token = self._authenticator.issue_token(
            claims.subject,
            claims.executions,
            extra_claims={**carried, "auth_time": int(started)},
        )
        fresh = self._authenticator.verify(token)
        return web.json_response(
            {"token": token, "expiresAt": fresh.expires_at},
            headers={"Cache-Control": "no-store"},
        )

    def set_index_handler(self, handler: Handler | None) -> None:
        """What ``GET /`` without an Upgrade header answers (the demo page, typically); by
        default a short JSON description."""
        self._index_handler = handler

    async def close_all(self, code: int = CloseCode.GOING_AWAY, reason: str = "") -> None:
        """Stop accepting clients and close every connection with ``code`` once its queue
        drains (at most :data:`SHUTDOWN_DRAIN_TIMEOUT` seconds)."""
        self._accepting = False
        connections = list(self._connections.values())
        if connections:
            await asyncio.gather(
                *(c.close(code, reason, drain_timeout=SHUTDOWN_DRAIN_TIMEOUT) for c in connections),
                return_exceptions=True,
            )

    async def _on_shutdown(self, app: web.Application) -> None:
        await self.close_all(CloseCode.GOING_AWAY, "server shutting down")

    # ------------------------------------------------------------------ server side API
    async def broadcast_to_execution(self, execution_id: str, message: Any) -> None:
        """Send ``message`` to the execution's subscribers as a sequenced, replayable frame.

        ``message`` has the manual's shape ``{"type": "workflow_update", "payload": ...,
        "timestamp": ...}``; ``type`` defaults to ``workflow_update`` and a message without
        ``payload`` is sent whole as the payload. The frame's timestamp is the broker's."""
        if isinstance(message, Mapping) and "payload" in message:
            frame_type = message.get("type") or WORKFLOW_UPDATE
            payload = message["payload"]
        else:
            frame_type, payload = WORKFLOW_UPDATE, message
        if not isinstance(frame_type, str) or frame_type in RESERVED_TYPES:
            raise WebSocketError(
                f"cannot broadcast a frame of type {frame_type!r}: "
                f"{sorted(RESERVED_TYPES)} are protocol replies; use 'workflow_update'",
                code="invalid_message",
            )
        self.broker.publish(execution_id, frame_type, payload)

    async def send_to_client(self, client_id: str, message: Any) -> None:
        """Queue ``message`` (any JSON-able value, sent as is) for one client. Raises
        :class:`ClientNotFoundError` when no such client is connected."""
        connection = self._connections.get(client_id)
        if connection is None or connection.closing:
            raise ClientNotFoundError(
                f"no connected client {client_id!r}; see get_connections() for connected ids",
                context={"client_id": client_id},
            )
        connection.send(dumps(message))

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    def get_connections(self) -> list[dict[str, Any]]:
        """One dict per connected client: ``clientId``, ``remote``, ``subject``,
        ``connectedAt``, ``subscriptions``, ``acks``, ``queued``, ``queuedBytes``,
        ``framesSent``, ``coalesced``, ``compressed``, ``directWrites``."""
        return [c.info() for c in self._connections.values()]

    def get_connection(self, client_id: str) -> ClientConnection | None:
        return self._connections.get(client_id)

    def get_subscriptions(self, execution_id: str | None = None) -> dict[str, list[str]]:
        """Subscribed client ids per execution id (only ``execution_id`` when given)."""
        out: dict[str, list[str]] = {}
        for connection in self._connections.values():
            for ex_id in connection.subscriptions:
                if execution_id is None or ex_id == execution_id:
                    out.setdefault(ex_id, []).append(connection.id)
        return out

    # ------------------------------------------------------------------ HTTP
    async def _health(self, request: web.Request) -> web.Response:
        """Always 200 (a shared broker's outage hits every instance alike, so it is no reason
        for a load balancer to drop this one): ``status`` is ``degraded`` when the broker cannot
        reach its backend, and ``broker`` says which server and why."""
        broker = await self.broker.health()
        return web.json_response(
            {
                "status": "ok" if broker.get("status") == "ok" else "degraded",
                "connections": len(self._connections),
                "accepting": self._accepting,
                "broker": broker,
                # What a soak watches for leaks (bench/soak.py): O(connections + tasks) per call.
                "subscriptions": sum(len(c.subscriptions) for c in self._connections.values()),
                "executions": getattr(self.broker, "execution_count", None),
                "tasks": len(asyncio.all_tasks()),
            }
        )

    async def _root(self, request: web.Request) -> web.StreamResponse:
        if _is_upgrade(request):
            return await self.websocket_handler(request)
        if self._index_handler is not None:
            return await self._index_handler(request)
        return web.json_response(
            {
                "service": "streaming_module WebSocket gateway",
                "websocket": ["/", "/ws"],
                "health": "/health",
                "protocol": "JSON text frames; send subscribe_execution with an executionId",
            }
        )

    @web.middleware
    async def _request_guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Before any handler: a path over :data:`MAX_PATH_LENGTH` gets 414; a body that does
        not arrive whole within ``websocket.request_timeout_ms`` gets 408; a body nested deeper
        than :data:`MAX_BODY_DEPTH` gets 400 ``too_deep``. The body stays cached for the
        handler (``request.json()`` reads it from memory)."""
        if len(request.rel_url.raw_path) > MAX_PATH_LENGTH:
            return web.json_response(
                {
                    "code": "uri_too_long",
                    "message": f"the request path is longer than {MAX_PATH_LENGTH} bytes",
                },
                status=414,
            )
        if request.body_exists:
            try:
                async with asyncio.timeout(self.options.websocket.request_timeout_ms / 1000):
                    body = await read_body_once(request)
            except TimeoutError:
                return web.json_response(
                    {
                        "code": "request_timeout",
                        "message": "the request body did not arrive within "
                        f"{self.options.websocket.request_timeout_ms} ms",
                    },
                    status=408,
                    headers={"Connection": "close"},
                )
            if nesting_exceeds(body, MAX_BODY_DEPTH):
                return web.json_response(
                    {
                        "code": "too_deep",
                        "message": "the body nests JSON arrays or objects deeper than "
                        f"{MAX_BODY_DEPTH} levels",
                    },
                    status=400,
                )
        return await handler(request)

    # ------------------------------------------------------------------ WebSocket
    async def websocket_handler(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler of the WebSocket endpoint (mount it wherever you like)."""
        if not self.options.gateway.enabled:
            return _refusal(
                WebSocketError("the WebSocket gateway is disabled", code="gateway_disabled"), 404
            )
        if not _is_upgrade(request):
            return web.json_response(
                {"code": "upgrade_required", "message": "connect with a WebSocket client"},
                status=426,
                headers={"Upgrade": "websocket"},
            )
        if not self._accepting:
            return _refusal(
                WebSocketError("server is shutting down", code="shutting_down"),
                503,
                {"Retry-After": "1"},
            )
        limiter = self._connection_limiter
        try:
            check_origin(self._cors, request.headers.get(hdrs.ORIGIN), request.host, request.scheme)
            # Two steps, so that a refused token spends only its own address's budget: the
            # attempt counts against that address; the server-wide count and the open-connection
            # slot are taken only once the token passed.
            limiter.check_attempt(request.remote)
            claims = self._authenticator.authenticate_request(request)
            slot = limiter.admit(request.remote)
        except ForbiddenError as exc:
            return _refusal(exc, 403)
        except RateLimitError as exc:
            retry = exc.context.get("retry_after")
            headers = {"Retry-After": str(max(1, round(retry)))} if retry is not None else {}
            return _refusal(exc, 429, headers)
        except AuthenticationError as exc:
            # RFC 6750: a token was given and refused -> error="invalid_token".
            given = exc.context.get("reason") not in (None, "missing")
            challenge = 'Bearer error="invalid_token"' if given else "Bearer"
            return _refusal(exc, 401, {"WWW-Authenticate": challenge})

        with slot:  # the open-connection caps count it until it ends
            return await self._serve(request, claims)

    async def _serve(self, request: web.Request, claims: Claims | None) -> web.StreamResponse:
        """An admitted upgrade, until its connection ends."""
        ws_options = self.options.websocket
        compression = self.options.gateway.compression
        ws = GatewayWebSocketResponse(
            autoping=False,  # our own heartbeat sees pongs and answers pings
            compress=compression.enabled,
            # aiohttp refuses a message of max_msg_size bytes or more; ours is "over" the limit.
            max_msg_size=ws_options.max_message_size + 1,
            timeout=5.0,
        )
        await ws.prepare(request)
        client_id = secrets.token_hex(8)
        connection = ClientConnection(
            client_id,
            ws,
            clock=self.clock,
            remote=request.remote,
            claims=claims,
            send_queue_size=ws_options.send_queue_size,
            send_queue_bytes=ws_options.send_queue_bytes,
            slow_client_policy=ws_options.slow_client_policy,
            compress_threshold=compression.threshold if compression.enabled else None,
            heartbeat=self.options.gateway.heartbeat,
        )
        self._connections[client_id] = connection
        connection.start()
        if claims is not None:
            seconds_left = self._authenticator.seconds_left(claims)
            if seconds_left is not None:  # closed with UNAUTHORIZED at exp + leeway
                connection.expire_in(seconds_left)
        logger.info("client %s connected from %s", client_id, request.remote)
        try:
            await self._read_loop(
                connection, RequestRateLimiter(self.options.gateway.rate_limit, self.clock)
            )
        except Exception:
            logger.exception("client %s: connection loop failed", client_id)
            connection.close_soon(CloseCode.INTERNAL_ERROR, "internal error")
        finally:
            self._connections.pop(client_id, None)
            await connection.aclose()
            logger.info(
                "client %s disconnected (close code %s)",
                client_id,
                connection.close_code or ws.close_code,
            )
        return ws

    async def _read_loop(self, connection: ClientConnection, limiter: RequestRateLimiter) -> None:
        ws = connection.ws
        max_size = self.options.websocket.max_message_size
        while not connection.closing:
            msg = await ws.receive()
            kind = msg.type
            if kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                if kind is WSMsgType.ERROR:
                    logger.info("client %s: %s", connection.id, msg.data)
                return
            connection.heard_from_client()
            try:
                limiter.check()  # every frame counts: text, binary, ping and pong alike
            except RateLimitError as exc:
                connection.send_error(exc.code, exc.message)
                await connection.close(CloseCode.RATE_LIMITED, "rate limited", drain_timeout=0.5)
                return
            if kind is WSMsgType.PONG:
                continue
            if kind is WSMsgType.PING:
                # (a control frame: at most 125 bytes, aiohttp's reader enforces it)
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await ws.pong(msg.data)
                continue
            if kind is WSMsgType.BINARY:
                connection.send_error(
                    "binary_not_supported", "binary frames are not supported; send JSON text"
                )
                continue
            if ws.compress and _utf8_over(msg.data, max_size):
                # aiohttp checks a decompressed message against max_msg_size + 1 (see above).
                await connection.close(CloseCode.MESSAGE_TOO_BIG, "message too big")
                return
            try:
                await self._on_message(connection, decode_client_message(msg.data))
            except WebSocketError as exc:
                connection.send_error(exc.code, exc.message)

    async def _on_message(
        self,
        connection: ClientConnection,
        message: SubscribeExecution | UnsubscribeExecution | Ping | Ack,
    ) -> None:
        if isinstance(message, SubscribeExecution):
            await self._subscribe(connection, message)
        elif isinstance(message, UnsubscribeExecution):
            execution_id = message.payload.execution_id
            sub = connection.subscriptions.pop(execution_id, None)
            if sub is not None:
                sub.close()
            connection.acks.pop(execution_id, None)
            connection.send(
                encode_reply(
                    UNSUBSCRIBED,
                    {"executionId": execution_id, "wasSubscribed": sub is not None},
                    execution_id=execution_id,
                )
            )
        elif isinstance(message, Ping):
            payload = dict(message.payload or {})
            payload["timestamp"] = self.clock.now().isoformat()
            connection.send(encode_reply(PONG, payload))
        else:
            execution_id = message.payload.execution_id
            if execution_id not in connection.subscriptions:
                raise ProtocolError(
                    f"ack for execution {execution_id!r}, which this connection is not "
                    "subscribed to",
                    code="not_subscribed",
                )
            sequence = message.payload.sequence
            if sequence > connection.acks.get(execution_id, 0):
                connection.acks[execution_id] = sequence

    async def _subscribe(self, connection: ClientConnection, message: SubscribeExecution) -> None:
        payload = message.payload
        execution_id = payload.execution_id
        claims = connection.claims
        if isinstance(claims, Claims) and self._authenticator.seconds_left(claims) == 0:
            # (its close at exp is due now too; answer first, so the client knows why)
            connection.send_error(
                "unauthorized", "the token expired: reconnect with a fresh one and subscribe again"
            )
            await connection.close(CloseCode.UNAUTHORIZED, "token expired", drain_timeout=0.5)
            return
        if claims is not None and not claims.may_subscribe(execution_id):
            raise ForbiddenError(
                f"this token may not subscribe to execution {execution_id!r} (its 'executions' "
                "claim does not list it)",
                context={"execution_id": execution_id},
            )
        previous = connection.subscriptions.pop(execution_id, None)
        if previous is not None:
            previous.close()  # re-subscribing replaces the filter and resume point
        elif len(connection.subscriptions) >= MAX_SUBSCRIPTIONS_PER_CONNECTION:
            raise ProtocolError(
                f"at most {MAX_SUBSCRIPTIONS_PER_CONNECTION} subscriptions per connection; "
                "unsubscribe from some first",
                code="too_many_subscriptions",
            )
        kinds = message.kinds
        reply = encode_reply(
            SUBSCRIBED,
            {
                "executionId": execution_id,
                "events": sorted(kinds),
                "lastSequence": payload.last_sequence,
            },
            execution_id=execution_id,
        )
        subscription = ClientSubscription(connection, execution_id, kinds, reply)
        connection.subscriptions[execution_id] = subscription
        connection.begin_replay()
        try:
            subscription.broker_subscription = await self.broker.subscribe(
                execution_id, subscription, last_sequence=payload.last_sequence
            )
        except BrokerError as exc:
            if connection.subscriptions.get(execution_id) is subscription:
                del connection.subscriptions[execution_id]
            raise WebSocketError(exc.message, code=exc.code) from None
        finally:
            connection.end_replay()
        subscription.confirm()  # `subscribed`, if no frame came to send it first
        if connection.subscriptions.get(execution_id) is not subscription:
            subscription.close()  # closed or replaced while subscribing


def _utf8_over(text: str, limit: int) -> bool:
    """Whether ``text`` is more than ``limit`` bytes as UTF-8 (encodes only when it might be)."""
    return len(text) * 4 > limit and len(text.encode("utf-8", "surrogatepass")) > limit


def _is_upgrade(request: web.Request) -> bool:
    return (
        "websocket" in request.headers.get(hdrs.UPGRADE, "").lower()
        and "upgrade" in request.headers.get(hdrs.CONNECTION, "").lower()
    )


@web.middleware
async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's own errors (no such route 404, 405, 413, ...) answer in the shape of ours,
    ``{"code", "message"}``, instead of a text body; their headers (``Allow``) are kept."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        code = exc.reason.lower().replace(" ", "_").replace("-", "_")
        target = f"{request.method} {request.path}"[:200]
        message = f"{exc.reason}: {target}"
        if isinstance(exc, web.HTTPMethodNotAllowed):
            message += f"; allowed: {', '.join(sorted(exc.allowed_methods))}"
        headers = exc.headers.copy()
        headers.popall(hdrs.CONTENT_TYPE, None)
        headers.popall(hdrs.CONTENT_LENGTH, None)
        return web.json_response(
            {"code": code, "message": message}, status=exc.status, headers=headers
        )


ERROR_HEADER = "Streaming-Error"
"""Response header repeating a refused upgrade's ``{"code", "message", "reason"?}`` as ASCII JSON:
WebSocket client libraries report a refused handshake's status and headers, not its body."""


def _refusal(
    exc: WebSocketError, status: int, headers: Mapping[str, str] | None = None
) -> web.Response:
    logger.info("refused a WebSocket upgrade (%d %s): %s", status, exc.code, exc.message)
    return _http_error(exc, status, headers)


def _http_error(
    exc: WebSocketError, status: int, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``{"code", "message"}`` with ``status``, repeated in :data:`ERROR_HEADER`."""
    body: dict[str, Any] = {"code": exc.code, "message": exc.message}
    reason = exc.context.get("reason")
    all_headers = dict(headers or {})
    all_headers[ERROR_HEADER] = json.dumps(
        {**body, "reason": reason} if isinstance(reason, str) else body, ensure_ascii=True
    )
    return web.json_response(body, status=status, headers=all_headers)


__all__ = [
    "ERROR_HEADER",
    "MAX_BODY_DEPTH",
    "MAX_PATH_LENGTH",
    "MAX_SUBSCRIPTIONS_PER_CONNECTION",
    "SHUTDOWN_DRAIN_TIMEOUT",
    "TOKEN_REFRESH_PATH",
    "RedactingAccessLogger",
    "StreamingWebSocketGateway",
]
