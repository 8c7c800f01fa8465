"""`streaming-module` argument parsing and help (no server started here)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from streaming_module.cli import build_parser, load_factory, main, run_until_stopped


def test_demo_defaults() -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.host, args.port, args.token_delay_ms) == ("127.0.0.1", 8080, 20.0)
    assert args.jwt_secret is None and args.redis_url is None and args.log_level == "info"


def test_demo_options() -> None:
    args = build_parser().parse_args(
        ["demo", "--host", "0.0.0.0", "--port", "0", "--token-delay-ms", "0",
         "--jwt-secret", "s3cret", "--redis-url", "redis://127.0.0.1:6379/0",
         "--redis-url", "redis://127.0.0.1:6380/0", "--log-level", "debug"]
    )  # fmt: skip
    assert args.port == 0 and args.token_delay_ms == 0.0 and args.jwt_secret == "s3cret"
    assert args.redis_url == ["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6380/0"]
    assert args.log_level == "debug"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--port", "70000"], "port must be 0-65535"),
        (["demo", "--port", "http"], "not a port number"),
        (["demo", "--token-delay-ms", "-1"], "token delay"),
        (["demo", "--log-level", "loud"], "invalid choice"),
        (["serve", "--app", "nocolon"], "package.module:factory"),
        (["serve"], "--app"),
    ],
)
def test_bad_arguments_are_explained(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("demo", "serve", "token"):
        assert command in out


def test_demo_help_shows_the_endpoints(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "POST /executions" in out and "--token-delay-ms" in out


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_load_factory_explains_what_is_wrong() -> None:
    from streaming_module.cli import CliError

    assert load_factory("os.path:join") is not None
    with pytest.raises(CliError, match="cannot import"):
        load_factory("no_such_module_here:create")
    with pytest.raises(CliError, match="no attribute"):
        load_factory("os.path:no_such_factory")
    with pytest.raises(CliError, match="not callable"):
        load_factory("os:sep")


@pytest.mark.parametrize("freeze", [True, False])
async def test_servers_freeze_the_collector_once_started_only_when_asked(
    freeze: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `demo` and `serve` pass freeze_gc=True; the library never freezes by itself.
    calls: list[str] = []
    monkeypatch.setattr(gc, "collect", lambda *args: calls.append("collect") or 0)
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    stopped = asyncio.Event()

    async def start() -> str:
        calls.append("start")
        stopped.set()  # as if Ctrl-C came right away
        return "http://127.0.0.1:1"

    async def stop() -> None:
        calls.append("stop")

    await run_until_stopped(start, stop, stop_event=stopped, freeze_gc=freeze)
    expected = ["start", "collect", "freeze", "stop"] if freeze else ["start", "stop"]
    assert calls == expected
    assert capsys.readouterr().out == "listening on http://127.0.0.1:1\n"
