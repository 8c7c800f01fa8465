"""``streaming-module``: run the demo, serve your own container, issue a token.

The first line a server command prints to stdout is exactly ``listening on http://HOST:PORT``
(the real port, also with ``--port 0``); logs go to stderr. Ctrl-C or SIGTERM shuts down cleanly:
runs are cancelled, connections closed with ``GOING_AWAY``, the port released.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import gc
import importlib
import inspect
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NoReturn, cast

logger = logging.getLogger("streaming_module.cli")

LOG_LEVELS = ("debug", "info", "warning", "error")

_DESCRIPTION = (
    "Real-time streaming for LangGraph workflows: tokens, events and progress over WebSockets."
)
_MAIN_EPILOG = """\
Run 'streaming-module COMMAND --help' for a command's options. Start with:
  streaming-module demo      then open http://127.0.0.1:8080
"""

_DEMO_EPILOG = """\
endpoints:
  GET  /  and  /demo          the live demo page (open it in a browser)
  WS   /  and  /ws            the streaming WebSocket (subscribe_execution, lastSequence resume)
  POST /executions            {"prompt": "...", "executionId"?: "...", "words"?: 1..1000000}
  GET  /executions/{id}       {"executionId", "status", "result"}
  GET  /health                liveness

examples:
  streaming-module demo                         # http://127.0.0.1:8080
  streaming-module demo --port 0 --token-delay-ms 0
  streaming-module demo --jwt-secret "$SECRET"  # prints the page's URL with a fresh ?token=
  streaming-module token --jwt-secret "$SECRET" # another token for the same server
"""

_SERVE_EPILOG = """\
The factory is called with no arguments (it may be async) and returns either a
StreamingContainer (from StreamingModule.for_root) or options for one (a dict or
StreamingModuleOptions). --host/--port override the options' websocket host and port.

example:
  # myapp/streaming.py
  def create():
      return StreamingModule.for_root(websocket={"enabled": True}, wire=["myapp.handlers"])

  streaming-module serve --app myapp.streaming:create --port 9000
"""


class CliError(Exception):
    """A usage problem to report in one line, with exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: the usage itself is one ``--help`` away."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# --------------------------------------------------------------------------- parsing


def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535 (0 picks a free one), got {port}")
    return port


def _delay(value: str) -> float:
    try:
        delay = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of milliseconds: {value!r}") from None
    if not 0 <= delay <= 60_000:
        raise argparse.ArgumentTypeError("token delay must be 0-60000 ms")
    return delay


def _words(value: str) -> int:
    try:
        words = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if not 1 <= words <= 1_000_000:
        raise argparse.ArgumentTypeError("words must be 1-1000000")
    return words


def _secret(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("the JWT secret must not be empty")
    return value


def _redis_url(value: str) -> str:
    # Only the scheme, so a typo fails here with exit status 2; the broker checks the rest.
    if value.partition("://")[0].lower() not in ("redis", "rediss", "unix"):
        from streaming_module.config import mask_url

        raise argparse.ArgumentTypeError(
            f"not a Redis URL: {mask_url(value)!r} (e.g. redis://127.0.0.1:6379/0, rediss:// or "
            "unix://)"
        )
    return value


def _duration(value: str) -> str:
    from streaming_module.config import parse_duration

    try:
        parse_duration(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _app_ref(value: str) -> str:
    module, sep, attr = value.partition(":")
    if not sep or not module or not attr:
        raise argparse.ArgumentTypeError(
            f"expected package.module:factory, got {value!r} (e.g. myapp.streaming:create)"
        )
    return value


def _add_server_arguments(parser: argparse.ArgumentParser, *, default_port: int | None) -> None:
    parser.add_argument(
        "--host", default=None if default_port is None else "127.0.0.1",
        help="interface to bind (default: 127.0.0.1; 0.0.0.0 for every interface)",
    )  # fmt: skip
    parser.add_argument(
        "--port", type=_port, default=default_port,
        help="TCP port (default: %(default)s; 0 picks a free port, printed on start)"
        if default_port is not None
        else "TCP port (default: the options' websocket.port; 0 picks a free port)",
    )  # fmt: skip
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info",
        help="log verbosity on stderr (default: %(default)s)",
    )  # fmt: skip


def _version() -> str:
    # From the installed metadata: importing the package for __version__ would load it all.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("streaming_module")
    except PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="streaming-module",
        description=_DESCRIPTION,
        epilog=_MAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    demo = commands.add_parser(
        "demo",
        help="run the AI content generation demo: page, WebSocket and HTTP API on one port",
        # Raw formatting keeps the epilog's layout, so the description is wrapped by hand.
        description="Run the manual's AI content generation workflow with an offline,\n"
        "deterministic streaming chat model behind the WebSocket gateway, with the demo\n"
        "page and the HTTP API on the same port.",
        epilog=_DEMO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_server_arguments(demo, default_port=8080)
    demo.add_argument(
        "--token-delay-ms", type=_delay, default=20.0, metavar="MS",
        help="pause between generated tokens (default: %(default)g; 0 streams as fast as it can)",
    )  # fmt: skip
    demo.add_argument(
        "--words", type=_words, default=300, metavar="N",
        help="default answer length in words when a request gives none (default: %(default)s)",
    )  # fmt: skip
    demo.add_argument(
        "--jwt-secret", default=None, type=_secret, metavar="SECRET",
        help="require a JWT signed with SECRET (HS256) for the WebSocket and /executions; "
        "the page's URL with a fresh ?token= is printed on start",
    )  # fmt: skip
    demo.add_argument(
        "--redis-url", action="append", dest="redis_url", default=None, type=_redis_url,
        metavar="URL",
        help="keep and fan out frames in Redis (e.g. redis://127.0.0.1:6379/0) instead of memory; "
        "repeat to spread executions over several servers (same list on every process)",
    )  # fmt: skip
    demo.add_argument(
        "--no-rate-limit", action="store_true",
        help="lift the demo's rate limits (new connections and frames per minute, connections "
        "open per address), e.g. for a load test from one address",
    )  # fmt: skip

    serve = commands.add_parser(
        "serve",
        help="serve your own StreamingContainer (or its options) the same way",
        description="Serve a StreamingContainer built by your own factory, the way the demo\n"
        "is served.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument(
        "--app", required=True, type=_app_ref, metavar="MODULE:FACTORY",
        help="factory returning a StreamingContainer or its options, e.g. myapp.streaming:create",
    )  # fmt: skip
    _add_server_arguments(serve, default_port=None)

    token = commands.add_parser(
        "token",
        help="print a JWT for a server started with --jwt-secret",
        description="Print a signed JWT (HS256) to stdout, for clients of a server that requires "
        "one.",
    )
    token.add_argument(
        "--jwt-secret", required=True, type=_secret, metavar="SECRET", help="the server's secret"
    )
    token.add_argument(
        "--subject", default="demo-user", help="the 'sub' claim (default: %(default)s)"
    )
    token.add_argument(
        "--execution", action="append", dest="executions", metavar="ID",
        help="restrict the token to this execution id (repeat for several; default: any)",
    )  # fmt: skip
    token.add_argument(
        "--expires-in", default="1h", type=_duration, metavar="DURATION",
        help="lifetime such as 30m, 1h or 7d (default: %(default)s)",
    )  # fmt: skip
    return parser


# --------------------------------------------------------------------------- running


def setup_logging(level: str) -> None:
    """Readable logs on stderr: time, level, logger, message."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log line per request is noise at info level.
    logging.getLogger("aiohttp.access").setLevel(max(logging.WARNING, root.level))


async def run_until_stopped(
    start: Callable[[], Awaitable[str]],
    stop: Callable[[], Awaitable[None]],
    *,
    stop_event: asyncio.Event | None = None,
    freeze_gc: bool = False,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Start a server, print ``listening on URL``, wait for Ctrl-C/SIGTERM, then stop it.

    ``announce(url)``, when given, runs right after that line (the demo prints its page's URL
    with a token there).

    ``freeze_gc`` (the ``demo`` and ``serve`` commands set it): once started, collect and then
    :func:`gc.freeze` everything alive — the modules, classes and functions of langgraph,
    langchain, pydantic, aiohttp and the app, ~hundreds of thousands of objects that live as long
    as the process. The cyclic collector then never walks them again: a full collection in a
    process with langgraph loaded took ~100 ms (a stall of the event loop and the latency tail)
    and now only walks what was allocated since. It costs nothing but keeps any garbage cycle
    already alive at start-up for good, hence the collection first. It is a process-wide
    choice, so the CLI makes it, never the library."""
    stop_event = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop_event.set)
            installed.append(sig)
    started = False
    try:
        url = await start()
        started = True
        if freeze_gc:
            gc.collect()
            gc.freeze()
            logger.debug("froze %d start-up objects out of the collector", gc.get_freeze_count())
        print(f"listening on {url}", flush=True)
        if announce is not None:
            announce(url)
        logger.info("serving on %s; press Ctrl-C to stop", url)
        await stop_event.wait()
        logger.info("shutting down")
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        await stop()
        if started:
            logger.info("stopped")


async def _demo(args: argparse.Namespace) -> None:
    from streaming_module.demo.app import DEMO_RATE_LIMIT, DemoServer

    server = DemoServer(
        host=args.host,
        port=args.port,
        token_delay_ms=args.token_delay_ms,
        jwt_secret=args.jwt_secret,
        redis_url=args.redis_url,
        default_words=args.words,
        rate_limit=None if args.no_rate_limit else DEMO_RATE_LIMIT,
    )
    if args.jwt_secret is not None:
        server.gateway.enable_token_refresh()  # the page renews its token before it expires

    async def start() -> str:
        await server.start()
        return server.url

    def announce(url: str) -> None:
        if args.jwt_secret is not None:
            # The user's own line, on stdout like the URL; never through a logger (no token is
            # ever logged). A fresh token each start, valid for the options' expiresIn.
            from streaming_module.gateway.auth import JwtAuthenticator

            options = server.container.options().gateway.authentication
            token = JwtAuthenticator(options).issue_token("demo-user")
            print(
                f"open {url}/?token={token} (valid for {options.expires_in}; "
                "more with 'streaming-module token')",
                flush=True,
            )

    await run_until_stopped(start, server.stop, freeze_gc=True, announce=announce)


def load_factory(reference: str) -> Callable[[], Any]:
    """``package.module:factory`` → the factory object (``module:attr.attr`` also works).

    The module is imported from the current folder first, as uvicorn and gunicorn do: the
    ``streaming-module`` console script's own folder is on ``sys.path``, the user's is not."""
    module_name, _, attr_path = reference.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r} from --app {reference!r}: {exc}") from exc
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise CliError(f"{module_name!r} has no attribute {attr_path!r}") from None
    if not callable(target):
        raise CliError(f"{reference!r} is not callable; point --app at a factory function")
    return target  # type: ignore[no-any-return]


async def build_container(reference: str, host: str | None, port: int | None) -> Any:
    """Call the ``--app`` factory and return its container, its ``server`` resource set to
    listen on ``host``/``port`` (when given; else where its options say) even when its options
    leave the WebSocket server disabled. The options themselves are left as the factory made
    them."""
    from dependency_injector import providers

    from streaming_module.config import StreamingModuleOptions
    from streaming_module.container import StreamingContainerInstance
    from streaming_module.module import StreamingModule

    produced = load_factory(reference)()
    if inspect.isawaitable(produced):
        produced = await produced
    if isinstance(produced, (StreamingModuleOptions, Mapping)):
        produced = StreamingModule.for_root(produced)
    if not isinstance(produced, StreamingContainerInstance):
        raise CliError(
            f"--app {reference!r} returned {type(produced).__name__}; return a StreamingContainer "
            "(StreamingModule.for_root(...)) or its options (a dict or StreamingModuleOptions)"
        )
    server = cast("providers.Resource[Any]", produced.server)
    server.add_kwargs(enabled=True, host=host, port=port)
    return produced


async def _serve(args: argparse.Namespace) -> None:
    container = await build_container(args.app, args.host, args.port)

    async def start() -> str:
        await container.init_resources()
        host = args.host if args.host is not None else container.options().websocket.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{container.gateway().port}"

    await run_until_stopped(start, container.shutdown_resources, freeze_gc=True)


def _token(args: argparse.Namespace) -> None:
    from streaming_module.config import AuthenticationOptions
    from streaming_module.gateway.auth import JwtAuthenticator

    options = AuthenticationOptions(
        enabled=True, secret_key=args.jwt_secret, expires_in=args.expires_in
    )
    authenticator = JwtAuthenticator(options)
    print(authenticator.issue_token(args.subject, executions=args.executions), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``streaming-module`` console script. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.command == "token":
            _token(args)
            return 0
        setup_logging(args.log_level)
        runner = _demo if args.command == "demo" else _serve
        asyncio.run(runner(args))
    except CliError as exc:
        return _fail(str(exc), 2)
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        return 130
    except OSError as exc:
        return _fail(*_listen_error(exc, args))
    except Exception as exc:
        from streaming_module.errors import StreamingConfigError, StreamingError

        if isinstance(exc, StreamingConfigError):  # a bad value, e.g. --redis-url
            return _fail(exc.message, 2)
        if isinstance(exc, StreamingError):  # e.g. Redis unreachable
            return _fail(exc.message, 1)
        raise
    return 0


def _fail(message: str, status: int) -> int:
    """Report once, on one line, on stderr (not through the logger: it is the CLI's answer)."""
    parts = [part.strip(" -") for part in message.splitlines() if part.strip()] or [message]
    # "invalid options (2 problems):" then one "- path: message" line per problem
    head, rest = (parts[0] + " ", parts[1:]) if parts[0].endswith(":") else ("", parts)
    one_line = head + "; ".join(rest)
    print(f"streaming-module: error: {one_line}", file=sys.stderr, flush=True)
    return status


def _listen_error(exc: OSError, args: argparse.Namespace) -> tuple[str, int]:
    """What a server command could not do, and its exit status: 2 for a bad ``--host``, 1 for
    a busy port or anything else the environment refused."""
    host, port = getattr(args, "host", None), getattr(args, "port", None)
    where = f"{host}:{port}" if host is not None and port is not None else "the configured port"
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: the address is already in use (another server, or an "
            "earlier demo still running); choose another with --port, or --port 0 to pick a "
            "free one",
            1,
        )
    if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
        reason = exc.strerror or str(exc)
        return (
            f"cannot listen on {where}: {reason}; --host takes an address of this machine, "
            "e.g. 127.0.0.1, or 0.0.0.0 for every interface",
            2,
        )
    return f"{exc}", 1


__all__ = ["build_parser", "load_factory", "main", "run_until_stopped", "setup_logging"]
