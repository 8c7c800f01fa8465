"""`streaming-module` argument parsing and help (no server started here)."""

from __future__ import annotations

import asyncio
import gc
import socket
import sys
import uuid
from pathlib import Path

import pytest

from streaming_module import cli
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
        (["demo", "--redis-url", "localhost:6379"], "not a Redis URL"),
        (["demo", "--jwt-secret", ""], "must not be empty"),
        (["token", "--jwt-secret", "s", "--expires-in", "soon"], "not a duration"),
        (["token", "--jwt-secret", "s", "--expires-in", "-5"], "--expires-in"),
        (["serve", "--app", "nocolon"], "package.module:factory"),
        (["serve"], "--app"),
        (["launch"], "invalid choice"),
    ],
)
def test_a_bad_value_is_one_line_with_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err
    assert err.count("\n") == 1 and err.startswith("streaming-module"), err  # no usage block
    assert "--help" in err  # where the usage is


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


def test_token_prints_only_the_token(capsys: pytest.CaptureFixture[str]) -> None:
    from streaming_module.config import AuthenticationOptions
    from streaming_module.gateway.auth import JwtAuthenticator

    secret = "cli-unit-secret-" + "s" * 40
    assert main(["token", "--jwt-secret", secret, "--expires-in", "5m"]) == 0
    token = capsys.readouterr().out.strip()
    authenticator = JwtAuthenticator(AuthenticationOptions(enabled=True, secret_key=secret))
    assert authenticator.verify(token).subject == "demo-user"


def _userapp(tmp_path: Path, body: str) -> str:
    """A package ``<name>/streaming.py`` in ``tmp_path``; its import name."""
    name = f"userapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / name / "streaming.py").write_text(body)
    return f"{name}.streaming"


@pytest.fixture
def in_a_user_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current folder is ``tmp_path`` and, as for the installed ``streaming-module``
    script, it is not on ``sys.path``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setattr(sys, "modules", dict(sys.modules))  # the user's modules go away after
    return tmp_path


def test_app_is_imported_from_the_current_folder(in_a_user_folder: Path) -> None:
    module = _userapp(in_a_user_folder, "def create():\n    return {'websocket': {'port': 1}}\n")
    factory = load_factory(f"{module}:create")
    assert factory() == {"websocket": {"port": 1}}
    assert sys.modules[module].__file__ == str(in_a_user_folder / module.replace(".", "/")) + ".py"


def test_bad_options_from_the_app_are_one_line_with_status_2(
    in_a_user_folder: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)  # keep pytest's handlers
    module = _userapp(
        in_a_user_folder,
        "def create():\n    return {'websocket': {'port': 'eighty'}, 'defaultBufferSize': -1}\n",
    )
    assert main(["serve", "--app", f"{module}:create"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "websocket.port" in err and "defaultBufferSize" in err, err


def test_a_busy_port_is_reported_once_with_the_port_0_hint(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # never "listening on"
    lines = captured.err.splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], lines
    assert "already in use" in lines[0] and "--port 0" in lines[0]
    assert not [r for r in caplog.records if "in use" in r.getMessage()]  # not logged too
    assert "stopped" not in caplog.text  # it never started


def test_a_host_that_is_not_here_is_a_bad_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "setup_logging", lambda level: None)
    assert main(["demo", "--host", "192.0.2.1", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "192.0.2.1:0" in err and "--host" in err, err


async def test_the_announcement_follows_the_listening_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stopped = asyncio.Event()

    async def start() -> str:
        stopped.set()
        return "http://127.0.0.1:1"

    async def stop() -> None:
        pass

    def announce(url: str) -> None:
        print(f"open {url}/?token=t")

    await run_until_stopped(start, stop, stop_event=stopped, announce=announce)
    assert capsys.readouterr().out.splitlines() == [
        "listening on http://127.0.0.1:1",
        "open http://127.0.0.1:1/?token=t",
    ]


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import streaming_module

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"streaming-module {streaming_module.__version__}\n"
