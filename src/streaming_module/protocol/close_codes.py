"""Every WebSocket close code the gateway and the client use, in one place.

Codes 1000-1011 are RFC 6455's; 4000-4999 are reserved for applications, and ours mirror the
HTTP status a client already knows (4401 ~ 401, 4403 ~ 403, 4408 ~ 408, 4429 ~ 429). A client
decides from the code whether to reconnect, and how:

==== ====================== ===============================================================
Code Name                   Meaning / what a client should do
==== ====================== ===============================================================
1000 NORMAL                 Closed on request. Nothing to do.
1001 GOING_AWAY             The server is shutting down. Reconnect later with ``lastSequence``.
1002 PROTOCOL_ERROR         The client broke RFC 6455: an unmasked frame, a control frame over
                            125 bytes or fragmented (sent by aiohttp). Fix the client.
1007 INVALID_PAYLOAD        A text frame that is not UTF-8 (sent by aiohttp). Fix the client.
1008 POLICY_VIOLATION       The connection broke a policy (e.g. its ``Origin`` is not allowed
                            when the refusal cannot be an HTTP 403). Do not retry unchanged.
1009 MESSAGE_TOO_BIG        A client frame exceeded ``websocket.max_message_size``. Send smaller
                            frames.
1011 INTERNAL_ERROR         The server failed unexpectedly. Reconnect with ``lastSequence``.
4008 SLOW_CONSUMER          The client read too slowly and its send queue
                            (``websocket.send_queue_size``) filled. Resumable: reconnect and
                            subscribe with ``lastSequence`` to receive what it missed.
4401 UNAUTHORIZED           Missing, expired or forged JWT. Get a new token.
4403 FORBIDDEN              The token does not allow this. Do not retry with the same token.
4408 HEARTBEAT_TIMEOUT      No pong (nor any frame) within ``heartbeat.timeout`` ms of a ping.
                            Reconnect with ``lastSequence``.
4429 RATE_LIMITED           More than ``rate_limit.max_requests_per_connection`` frames per
                            window. Back off, then reconnect.
==== ====================== ===============================================================

``CloseCode`` members are integers: they compare equal to the number a WebSocket library reports
and can be passed wherever a close code is expected.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class CloseCode(IntEnum):
    """A WebSocket close code (see the module docstring for what a client should do)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SLOW_CONSUMER = 4008
    UNAUTHORIZED = 4401
    FORBIDDEN = 4403
    HEARTBEAT_TIMEOUT = 4408
    RATE_LIMITED = 4429


RESUMABLE: Final[frozenset[CloseCode]] = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SLOW_CONSUMER,
        CloseCode.HEARTBEAT_TIMEOUT,
    }
)
"""Codes after which reconnecting with ``lastSequence`` recovers every retained frame."""

__all__ = ["RESUMABLE", "CloseCode"]
