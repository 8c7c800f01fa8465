"""The package root: everything public importable from it, nothing heavy loaded until used
(`import streaming_module` and `streaming-module token --help` load neither LangGraph nor
aiohttp), test helpers in `streaming_module.testing`."""

from __future__ import annotations

import importlib

import pytest

import streaming_module
import streaming_module.testing
from fresh_python import run_fresh

HEAVY = ("langgraph", "langchain_core", "aiohttp", "pydantic", "dependency_injector", "reactivex")


def test_import_streaming_module_loads_no_langgraph_until_a_workflow_name_is_used() -> None:
    out = run_fresh(
        f"""
        import sys
        HEAVY = {HEAVY!r}
        def loaded():
            return sorted({{m.split(".")[0] for m in sys.modules}} & set(HEAVY))

        import streaming_module
        print("import:", loaded())
        from streaming_module import StreamingModule, StreamingModuleOptions
        container = StreamingModule.for_root(websocket={{"enabled": False}})
        container.token_streaming()
        print("container:", "langgraph" in sys.modules, "langchain_core" in sys.modules)
        from streaming_module import DeclarativeWorkflowBase
        print("workflow:", "langgraph" in sys.modules)
        """
    )
    assert out.splitlines() == [
        "import: []",
        "container: False False",
        "workflow: True",
    ]


def test_the_cli_loads_nothing_heavy_to_print_its_help() -> None:
    out = run_fresh(
        f"""
        import contextlib, io, sys
        from streaming_module.cli import main
        for argv in (["--help"], ["token", "--help"], ["demo", "--help"], ["serve", "--help"]):
            with contextlib.redirect_stdout(io.StringIO()) as shown:
                try:
                    main(argv)
                except SystemExit as exit:
                    assert exit.code == 0, (argv, exit.code)
            assert "usage: streaming-module" in shown.getvalue(), argv
        print(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r})))
        """
    )
    assert out.strip() == "[]"


def test_every_name_in_all_resolves_to_the_object_in_its_module() -> None:
    exported = set(streaming_module._EXPORTS)
    assert set(streaming_module.__all__) == (exported - {"FakeClock"}) | {"__version__"}
    for name in streaming_module.__all__:
        if name == "__version__":
            continue
        module, attribute = streaming_module._EXPORTS[name]
        assert getattr(streaming_module, name) is getattr(
            importlib.import_module(module), attribute
        )
    assert set(streaming_module.__all__) <= set(dir(streaming_module))


def test_the_manuals_aliases_stay() -> None:
    from streaming_module import (
        FilterCriteria,
        StreamToken,
        StreamTokenDecoratorMetadata,
        WebSocketGatewayConfig,
        stream_token,
    )
    from streaming_module.config import EventFilterCriteria, GatewayOptions, StreamTokenOptions

    assert StreamTokenDecoratorMetadata is StreamTokenOptions
    assert FilterCriteria is EventFilterCriteria
    assert WebSocketGatewayConfig is GatewayOptions
    assert StreamToken is stream_token
    assert streaming_module.StreamingModule.forRoot == streaming_module.StreamingModule.for_root


def test_workflow_at_the_root_is_the_decorator_even_after_the_subpackage_is_imported() -> None:
    import streaming_module.workflow.base
    from streaming_module import workflow
    from streaming_module.workflow import workflow as decorator

    assert workflow is decorator
    assert streaming_module.workflow is decorator
    assert streaming_module.Workflow is decorator


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        _ = streaming_module.NoSuchThing  # type: ignore[attr-defined]
    with pytest.raises(ImportError):
        exec("from streaming_module import NoSuchThing", {})


def test_test_helpers_live_in_streaming_module_testing() -> None:
    assert "FakeClock" in streaming_module.testing.__all__
    assert "FakeClock" not in streaming_module.__all__
    # Still importable from the root, for code written before the testing module existed.
    from streaming_module import FakeClock

    assert FakeClock is streaming_module.testing.FakeClock
    clock = FakeClock()
    fired: list[str] = []
    clock.call_later(0.1, lambda: fired.append("flush"))
    clock.advance(0.05)
    assert fired == []
    clock.advance(0.1)
    assert fired == ["flush"]
