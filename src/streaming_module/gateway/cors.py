"""Origin checks for the WebSocket upgrade and CORS headers for the HTTP endpoints.

Browsers do not apply CORS to WebSockets: any page may open a WebSocket to any server, sending the
user's cookies along. So the gateway checks the ``Origin`` header itself, on the upgrade, with
:func:`check_origin` (``aiohttp-cors`` does not cover WebSockets). The rules:

- no ``Origin`` header: allowed. Browsers always send one on a WebSocket upgrade and on
  cross-origin requests; its absence means a non-browser client (a script, a server), which CORS
  does not concern (authenticate those with a JWT);
- same origin (the ``Origin``'s scheme, host and port equal the request's: its scheme, and the
  ``Host`` header's host and port): allowed, so the server's own pages (the demo at ``/``) always
  work. ``https://host`` is not the same origin as a plain-HTTP ``host`` (RFC 6454);
- CORS off (``cors=False``, the default): nothing else;
- otherwise the configured ``cors.origin``: a list of exact origins (``"https://app.example.com"``,
  scheme and port included), ``"*"`` or ``True`` for any.

A refusal is a :class:`~streaming_module.errors.ForbiddenError` (HTTP 403; close code
``FORBIDDEN``).

Same-origin is judged from the ``Host`` header, which a DNS-rebinding page controls; the origin
check is a guard against other sites riding a user's browser, not a replacement for
authentication.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from streaming_module.config import CorsOptions
from streaming_module.errors import ForbiddenError

_log = logging.getLogger("streaming_module.gateway.cors")

_DEFAULT_PORTS = {"http": 80, "ws": 80, "https": 443, "wss": 443}
_SECURE = {"http": False, "ws": False, "https": True, "wss": True}
PREFLIGHT_MAX_AGE = 600
"""Seconds a browser may cache a preflight answer."""


def _host_port(origin: str, host: str | None) -> tuple[tuple[str, int], tuple[str, int]] | None:
    try:
        parts = urlsplit(origin)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or not host:
            return None
        default = _DEFAULT_PORTS[parts.scheme]
        origin_port = parts.port or default
        served = urlsplit("//" + host.strip())
        if not served.hostname:
            return None
        return (parts.hostname, origin_port), (served.hostname, served.port or default)
    except ValueError:  # a port that is not a number, or out of range
        return None


def is_same_origin(origin: str, host: str | None, scheme: str | None = None) -> bool:
    """True when ``origin`` (e.g. ``"http://127.0.0.1:8080"``) names the host and port of the
    ``Host`` header (e.g. ``"127.0.0.1:8080"``) and, when ``scheme`` (the request's: ``http`` or
    ``https``) is given, its scheme too (``ws``/``wss`` count as ``http``/``https``). Hostnames
    compare case-insensitively; a missing port is the scheme's default."""
    if scheme is not None:
        origin_scheme = origin.partition(":")[0].lower()
        if _SECURE.get(origin_scheme) is None or _SECURE.get(origin_scheme) != _SECURE.get(
            scheme.lower()
        ):
            return False
    pair = _host_port(origin, host)
    return pair is not None and pair[0] == pair[1]


def is_origin_allowed(
    cors: CorsOptions | None, origin: str | None, host: str | None, scheme: str | None = None
) -> bool:
    """Whether :func:`check_origin` would let this request through."""
    if origin is None or is_same_origin(origin, host, scheme):
        return True
    return cors is not None and cors.allows(origin)


def check_origin(
    cors: CorsOptions | None, origin: str | None, host: str | None, scheme: str | None = None
) -> None:
    """Allow the request, or raise :class:`ForbiddenError` (context ``reason``
    ``origin_not_allowed`` and the ``origin``) saying how to allow it.

    ``cors`` is ``GatewayOptions.cors_options``: ``None`` when CORS is off (then only same-origin
    and non-browser clients pass). ``origin`` and ``host`` are the request's ``Origin`` and
    ``Host`` headers, ``scheme`` its scheme (``request.scheme``; ``None`` compares hosts only).
    """
    if is_origin_allowed(cors, origin, host, scheme):
        return
    shown = repr(origin)[:200]
    if cors is None:
        how = (
            f"CORS is off, so only same-origin pages connect; to allow it set "
            f"gateway.cors={{'origin': [{shown}]}}"
        )
    else:
        how = f"add it to gateway.cors.origin (now {cors.origin!r})"
    raise ForbiddenError(
        f"origin {shown} is not allowed; {how}",
        context={"reason": "origin_not_allowed", "origin": origin},
    )


def cors_headers(cors: CorsOptions | None, origin: str | None) -> dict[str, str]:
    """The CORS headers for an HTTP response to a request from ``origin``: the origin echoed in
    ``Access-Control-Allow-Origin`` when ``cors`` allows it, ``Access-Control-Allow-Credentials:
    true`` when ``cors.credentials``, and ``Vary: Origin`` whenever CORS is on (the answer depends
    on the origin, so caches must key on it). Empty when CORS is off or the origin is refused."""
    if cors is None:
        return {}
    headers = {"Vary": "Origin"}
    if origin is None or not cors.allows(origin):
        return headers
    headers["Access-Control-Allow-Origin"] = origin
    if cors.credentials:
        headers["Access-Control-Allow-Credentials"] = "true"
    return headers


def _forbidden(error: ForbiddenError) -> web.Response:
    return web.json_response(
        {"code": error.code, "message": error.message}, status=403, headers={"Vary": "Origin"}
    )


def cors_middleware(cors: CorsOptions | None) -> Middleware:
    """An aiohttp middleware enforcing :func:`check_origin` on every request and adding
    :func:`cors_headers` to responses. Preflight requests (``OPTIONS`` with
    ``Access-Control-Request-Method``) are answered here with 204, allowing the requested method
    and headers for ``PREFLIGHT_MAX_AGE`` seconds. A refused origin gets 403 with JSON
    ``{"code": "forbidden", "message": ...}`` and the handler does not run.

    Usage: ``web.Application(middlewares=[cors_middleware(options.gateway.cors_options)])``.
    """

    @web.middleware  # aiohttp treats undecorated middlewares as deprecated old-style ones
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        try:
            check_origin(cors, origin, request.headers.get("Host"), request.scheme)
        except ForbiddenError as exc:
            _log.info("refused %s %s from origin %r", request.method, request.path, origin)
            return _forbidden(exc)
        headers = cors_headers(cors, origin)
        if (
            request.method == "OPTIONS"
            and origin is not None
            and "Access-Control-Request-Method" in request.headers
        ):
            headers["Access-Control-Allow-Methods"] = request.headers[
                "Access-Control-Request-Method"
            ]
            requested = request.headers.get("Access-Control-Request-Headers")
            if requested:
                headers["Access-Control-Allow-Headers"] = requested
            headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
            return web.Response(status=204, headers=headers)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            exc.headers.update(headers)
            raise
        if not response.prepared:  # a WebSocket or streamed response already sent its headers
            response.headers.update(headers)
        return response

    return middleware


__all__ = [
    "PREFLIGHT_MAX_AGE",
    "check_origin",
    "cors_headers",
    "cors_middleware",
    "is_origin_allowed",
    "is_same_origin",
]
