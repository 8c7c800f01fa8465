"""Origin checks on the upgrade and CORS on the HTTP endpoints."""

from __future__ import annotations

import contextlib

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from streaming_module.config import CorsOptions, GatewayOptions
from streaming_module.errors import ForbiddenError
from streaming_module.gateway.cors import (
    check_origin,
    cors_headers,
    cors_middleware,
    is_same_origin,
)

APP = "https://app.example.com"
LISTED = CorsOptions(origin=["http://localhost:3000", APP], credentials=True)


# ------------------------------------------------------------------ check_origin


def test_no_origin_header_is_allowed_whatever_the_policy() -> None:
    check_origin(None, None, "127.0.0.1:8080")
    check_origin(CorsOptions(origin=False), None, None)


def test_cors_off_allows_same_origin_only() -> None:
    check_origin(None, "http://127.0.0.1:8080", "127.0.0.1:8080")
    with pytest.raises(ForbiddenError) as exc_info:
        check_origin(None, "https://evil.example", "127.0.0.1:8080")
    error = exc_info.value
    assert error.close_code == 4403
    assert error.code == "forbidden"
    assert error.context == {"reason": "origin_not_allowed", "origin": "https://evil.example"}
    assert "'https://evil.example'" in error.message
    assert "gateway.cors" in error.message


@pytest.mark.parametrize(
    ("origin", "host", "same"),
    [
        ("http://localhost:8080", "LOCALHOST:8080", True),
        ("https://example.com", "example.com", True),
        ("https://example.com", "example.com:443", True),
        ("http://example.com", "example.com:80", True),
        ("http://[::1]:8080", "[::1]:8080", True),
        ("http://127.0.0.1:8081", "127.0.0.1:8080", False),
        ("https://example.com", "example.com:80", False),
        ("http://evil.com", "example.com", False),
        ("null", "example.com", False),
        ("http://example.com:notaport", "example.com", False),
        ("http://example.com", None, False),
        ("ftp://example.com", "example.com", False),
    ],
)
def test_same_origin_compares_host_and_port(origin: str, host: str | None, same: bool) -> None:
    assert is_same_origin(origin, host) is same


@pytest.mark.parametrize(
    ("origin", "host", "scheme", "same"),
    [
        ("http://127.0.0.1:8080", "127.0.0.1:8080", "http", True),
        ("https://127.0.0.1:8080", "127.0.0.1:8080", "http", False),  # another origin (RFC 6454)
        ("http://app.example", "app.example", "https", False),
        ("https://app.example", "app.example", "https", True),
        ("https://app.example:443", "app.example", "https", True),
        ("http://[::1]:8080", "[::1]:8080", "http", True),
        ("ftp://127.0.0.1:8080", "127.0.0.1:8080", "http", False),
    ],
)
def test_same_origin_compares_the_scheme_too(
    origin: str, host: str, scheme: str, same: bool
) -> None:
    assert is_same_origin(origin, host, scheme) is same
    with contextlib.nullcontext() if same else pytest.raises(ForbiddenError):
        check_origin(None, origin, host, scheme)


def test_listed_origins_are_allowed_and_others_refused() -> None:
    check_origin(LISTED, APP, "api.example.com")
    check_origin(LISTED, "http://localhost:3000", "api.example.com")
    with pytest.raises(ForbiddenError, match=r"add it to gateway\.cors\.origin"):
        check_origin(LISTED, "http://localhost:3001", "api.example.com")
    with pytest.raises(ForbiddenError):
        check_origin(LISTED, "http://app.example.com", "api.example.com")  # scheme matters


def test_same_origin_is_allowed_even_when_not_listed() -> None:
    check_origin(LISTED, "http://api.example.com:8080", "api.example.com:8080")


def test_cors_true_allows_any_origin() -> None:
    cors = GatewayOptions(cors=True).cors_options
    assert cors is not None
    check_origin(cors, "https://anything.example", "api.example.com")
    assert GatewayOptions(cors=False).cors_options is None


# ------------------------------------------------------------------ headers


def test_headers_echo_an_allowed_origin_with_credentials() -> None:
    assert cors_headers(LISTED, APP) == {
        "Access-Control-Allow-Origin": APP,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }


def test_headers_without_credentials() -> None:
    headers = cors_headers(CorsOptions(origin=[APP]), APP)
    assert headers == {"Access-Control-Allow-Origin": APP, "Vary": "Origin"}


def test_no_allow_origin_for_a_refused_or_missing_origin_or_cors_off() -> None:
    assert cors_headers(LISTED, "https://evil.example") == {"Vary": "Origin"}
    assert cors_headers(LISTED, None) == {"Vary": "Origin"}
    assert cors_headers(None, APP) == {}


# ------------------------------------------------------------------ middleware


async def _hello(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def _missing(request: web.Request) -> web.Response:
    raise web.HTTPNotFound()


@pytest.fixture
async def client(aiohttp_client: object) -> TestClient[web.Request, web.Application]:
    app = web.Application(middlewares=[cors_middleware(LISTED)])
    app.router.add_get("/health", _hello)
    app.router.add_post("/executions", _hello)
    app.router.add_get("/missing", _missing)
    return await aiohttp_client(app)  # type: ignore[operator,no-any-return]


async def test_middleware_adds_headers_for_an_allowed_origin(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/health", headers={"Origin": APP})
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert response.headers["Vary"] == "Origin"


async def test_middleware_refuses_a_disallowed_origin_with_403_json(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.post("/executions", headers={"Origin": "https://evil.example"})
    assert response.status == 403
    body = await response.json()
    assert body["code"] == "forbidden"
    assert "https://evil.example" in body["message"]
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_middleware_lets_requests_without_origin_through(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/health")
    assert response.status == 200
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_middleware_answers_preflight(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.options(
        "/executions",
        headers={
            "Origin": APP,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert response.status == 204
    assert response.headers["Access-Control-Allow-Origin"] == APP
    assert response.headers["Access-Control-Allow-Methods"] == "POST"
    assert response.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    assert int(response.headers["Access-Control-Max-Age"]) > 0


async def test_middleware_refuses_preflight_from_a_disallowed_origin(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.options(
        "/executions",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert response.status == 403


async def test_middleware_adds_headers_to_http_errors(
    client: TestClient[web.Request, web.Application],
) -> None:
    response = await client.get("/missing", headers={"Origin": APP})
    assert response.status == 404
    assert response.headers["Access-Control-Allow-Origin"] == APP
