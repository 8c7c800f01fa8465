"""`streaming-module` argument parsing and help (no server started here)."""

from __future__ import annotations

import pytest

from streaming_module.cli import build_parser, load_factory, main


def test_demo_defaults() -> None:
    args = build_parser().parse_args(["demo"])
    assert (args.host, args.port, args.token_delay_ms) == ("127.0.0.1", 8080, 20.0)
    assert args.jwt_secret is None and args.redis_url is None and args.log_level == "info"


def test_demo_options() -> None:
    args = build_parser().parse_args(
        ["demo", "--host", "0.0.0.0", "--port", "0", "--token-delay-ms", "0",
         "--jwt-secret", "s3cret", "--redis-url", "redis://127.0.0.1:6379/0",
         "--log-level", "debug"]
    )  # fmt: skip
    assert args.port == 0 and args.token_delay_ms == 0.0 and args.jwt_secret == "s3cret"
    assert args.redis_url == "redis://127.0.0.1:6379/0" and args.log_level == "debug"


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
